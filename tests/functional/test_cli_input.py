"""Bad input at the CLI (issue 13's smaller items): one line naming the problem and the fix,
exit 2 (usage/config), never 0 or 3; and global options accepted after the command."""

from __future__ import annotations

import pytest

from tests.support.helpers import cli_env, run_cli


@pytest.mark.parametrize("remote,words", [
    ("file://", "has no path"),
    ("file://relative/store", "has a relative path"),
    ("s3://Bad_Bucket!!/x", "is not a valid bucket name"),
])
def test_bad_remote_exits_2_with_the_fix(tmp_path, remote, words):
    env = cli_env(remote, {"CACHE_SYNC_ROOT": str(tmp_path / "root")})
    for cmd in (["pull"], ["push"], ["status"]):
        p = run_cli(cmd, env, check=False)
        assert p.returncode == 2, (cmd, p.stderr)
        assert words in p.stderr and "file:///" in p.stderr or "bucket names" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "relative").exists()


def test_secret_without_key_id_exits_2(tmp_path):
    env = cli_env("s3://good-bucket/x", {"CACHE_SYNC_ROOT": str(tmp_path / "root"),
                                         "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-xyz",
                                         "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    p = run_cli(["pull"], env, check=False)
    assert p.returncode == 2 and "AWS_ACCESS_KEY_ID is not set" in p.stderr, p.stderr
    assert "s3cr3t" not in p.stderr + p.stdout


def test_misspelled_area_exits_2_and_suggests(tmp_path):
    env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_ROOT": str(tmp_path / "root")})
    (tmp_path / "root" / "packages").mkdir(parents=True)
    (tmp_path / "root" / "packages" / "x.py").write_text("x")
    run_cli(["push", "packages"], env)
    for cmd in ("pull", "push", "status", "verify", "log"):
        p = run_cli([cmd, "pakages"], env, check=False)
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "'pakages' is not one of the areas" in p.stderr and "'packages'" in p.stderr
    assert not (tmp_path / "root" / "pakages").exists()
    # A configured extra area is fine.
    p = run_cli(["--areas", "packages,extra", "pull", "extra"], env, check=False)
    assert p.returncode == 0, p.stderr


def test_global_options_after_the_command(tmp_path):
    src = tmp_path / "src"
    (src / "deps").mkdir(parents=True)
    (src / "deps" / "f.txt").write_text("hello")
    env = cli_env("file:///nonexistent-default-store", {})
    remote = f"file://{tmp_path}/store"
    run_cli(["push", "--root", str(src), "--remote", remote, "deps"], env)
    dst = tmp_path / "dst"
    p = run_cli(["pull", "--root", str(dst), "--remote", remote, "--json", "deps"], env)
    assert '"area": "deps"' in p.stdout
    assert (dst / "deps" / "f.txt").read_text() == "hello"
    # Options before the command still work, and the one after it wins.
    p = run_cli(["--root", "/nonexistent/elsewhere", "status", "--root", str(dst),
                 "--remote", remote, "deps"], env)
    assert "deps" in p.stdout


def test_fifos_sockets_and_devices_are_skipped_with_one_warning(tmp_path):
    import os
    import socket
    import stat
    area = tmp_path / "root" / "deps"
    area.mkdir(parents=True)
    (area / "real.txt").write_text("data")
    specials = ["a.fifo", "b.fifo", "c.sock"]
    os.mkfifo(area / "a.fifo")
    os.mkfifo(area / "b.fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(area / "c.sock"))
    try:
        try:
            os.mknod(area / "d.dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            specials.append("d.dev")
        except (PermissionError, OSError):
            pass  # no CAP_MKNOD here: FIFOs and sockets still cover the rule
        env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_ROOT": str(tmp_path / "root")})
        p = run_cli(["push", "deps"], env)  # never blocks opening a FIFO
        warnings = [ln for ln in p.stderr.splitlines() if "FIFO, socket or device" in ln]
        assert len(warnings) == 1, p.stderr
        assert f"skipped {len(specials)} " in warnings[0] and "a.fifo" in warnings[0]
    finally:
        s.close()
    dst = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_ROOT": str(tmp_path / "dst")})
    run_cli(["pull", "deps"], dst)
    assert sorted(os.listdir(tmp_path / "dst" / "deps")) == ["real.txt"]
