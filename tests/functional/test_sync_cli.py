"""pull / push / status / log / verify / gc through the real CLI, on every backend (a local
directory, a moto server and SeaweedFS over HTTP)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.helpers import cli_env, describe, disk_usage, make_tree, run_cli, run_json


def test_round_trip_is_faithful(remote, tmp_path):
    """Modes, symlinks (relative, not followed), empty dirs and mtimes survive push + pull;
    the HF blobs/snapshots layout arrives with no duplicated bytes."""
    url, extra = remote
    env = cli_env(url, extra)
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    out = run_json(["--root", str(src), "push"], env)
    assert {a["area"] for a in out["areas"] if a["snapshot"]} == {"packages", "models"}
    run_cli(["--root", str(dst), "pull"], env)
    for area in ("packages", "models"):  # the area roots themselves are not tracked
        assert describe(dst / area) == describe(src / area)
    link = dst / "models/hub/models--org--tiny/snapshots/rev1/model.safetensors"
    assert link.is_symlink() and os.readlink(link).startswith("../../blobs/")
    assert os.access(dst / "packages/pkg0/tool.sh", os.X_OK)
    assert (dst / "packages/empty_dir").is_dir()
    assert disk_usage(dst / "models") == disk_usage(src / "models")  # no blob stored twice


def test_noop_push_and_uptodate_pull_transfer_nothing(remote, tmp_path):
    url, extra = remote
    env = cli_env(url, extra)
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    run_cli(["--root", str(src), "push"], env)
    again = run_json(["--root", str(src), "push"], env)
    assert all(a["up_to_date"] and a["objects"] == 0 for a in again["areas"])
    run_cli(["--root", str(dst), "pull"], env)
    second = run_json(["--root", str(dst), "pull"], env)
    assert all(a["requests"] == 0 and a["files"] == 0 for a in second["areas"])
    status = run_json(["--root", str(dst), "status", "packages", "models"], env)
    assert all(a["in_sync"] for a in status["areas"])


def test_incremental_push_and_pull(remote, tmp_path):
    url, extra = remote
    env = cli_env(url, extra)
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    run_cli(["--root", str(a), "push"], env)
    run_cli(["--root", str(b), "pull"], env)
    newpkg = a / "packages" / "newpkg"
    newpkg.mkdir()
    (newpkg / "__init__.py").write_bytes(os.urandom(20000))
    os.unlink(a / "packages/pkg1/sub/mod1.py")
    out = run_json(["--root", str(a), "push", "packages"], env)
    rep = out["areas"][0]
    assert rep["files"] == 1 and rep["objects"] == 1
    assert rep["bytes"] < 21000  # about the new file's bytes, nothing else
    pulled = run_json(["--root", str(b), "pull", "packages"], env)["areas"][0]
    assert pulled["files"] == 1 and pulled["removed"] == 1
    assert describe(b / "packages") == describe(a / "packages")


def test_untracked_local_files_survive_pull(tmp_path):
    env = cli_env(f"file://{tmp_path}/store")
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    run_cli(["--root", str(a), "push"], env)
    (b / "packages").mkdir(parents=True)
    (b / "packages" / "local-only.txt").write_text("mine")
    run_cli(["--root", str(b), "pull"], env)
    assert (b / "packages" / "local-only.txt").read_text() == "mine"


@pytest.mark.parametrize("remote", ["local", "seaweedfs-b2"], indirect=True)
def test_log_verify_gc(remote, tmp_path):
    env = cli_env(*remote)
    root = tmp_path / "root"
    make_tree(root)
    run_cli(["--root", str(root), "push"], env)
    (root / "packages" / "v2.txt").write_text("two")
    run_cli(["--root", str(root), "push", "packages"], env)
    (root / "packages" / "v3.txt").write_text("three")
    os.unlink(root / "packages/pkg0/mod0.py")
    run_cli(["--root", str(root), "push", "packages"], env)
    log = run_json(["--root", str(root), "log", "packages"], env)["snapshots"]
    assert len(log) == 3 and log[0]["head"] and log[1]["parents"] == [log[2]["id"]]
    assert run_json(["--root", str(root), "verify"], env)["ok"]
    # A local file that rots is found, by name, with a non-zero exit.
    (root / "packages/pkg0/tool.sh").write_text("tampered")
    bad = run_cli(["--root", str(root), "verify", "packages"], env, check=False)
    assert bad.returncode != 0 and "pkg0/tool.sh" in bad.stdout + bad.stderr
    # gc --keep 1 drops two snapshots; with a grace period nothing young is deleted.
    young = run_json(["--root", str(root), "gc", "--keep", "1"], env)
    assert young["snapshots_deleted"] == 2 and young["objects_deleted"] == 0
    old = run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env)
    assert old["objects_deleted"] >= 0
    fresh = tmp_path / "fresh"
    run_cli(["--root", str(fresh), "pull"], env)
    expect = describe(root / "models")
    assert describe(fresh / "models") == expect
    assert (fresh / "packages/v3.txt").read_text() == "three"
    assert not (fresh / "packages/pkg0/mod0.py").exists()


def test_gc_deletes_unreferenced_objects_only_after_grace(tmp_path):
    env = cli_env(f"file://{tmp_path}/store")
    root = tmp_path / "root"
    (root / "packages").mkdir(parents=True)
    (root / "packages" / "big.bin").write_bytes(os.urandom(300_000))
    run_cli(["--root", str(root), "push"], env)
    os.unlink(root / "packages" / "big.bin")
    (root / "packages" / "small.txt").write_text("s")
    run_cli(["--root", str(root), "push"], env)
    objects = lambda: sorted(p.name for p in (tmp_path / "store/objects").rglob("*") if p.is_file())  # noqa: E731
    before = objects()
    dry = run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0", "--dry-run"], env)
    assert dry["objects_marked"] >= 1 and objects() == before
    first = run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env)
    assert first["objects_marked"] >= 1 and objects() == before  # marked, not deleted
    # A later run deletes them once the mark is older than its delay (the store's clock:
    # move the mark's mtime back instead of waiting CACHE_SYNC_GC_WINDOW).
    for mark in (tmp_path / "store/gc/marks").iterdir():
        os.utime(mark, (0, os.stat(mark).st_mtime - 3600))
    run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env)
    assert len(objects()) < len(before)
    fresh = tmp_path / "fresh"
    run_cli(["--root", str(fresh), "pull"], env)
    assert (fresh / "packages/small.txt").read_text() == "s"


def test_dry_runs_change_nothing(tmp_path):
    env = cli_env(f"file://{tmp_path}/store")
    root = tmp_path / "root"
    make_tree(root)
    out = run_json(["--root", str(root), "push", "--dry-run"], env)
    assert out["areas"][0]["dry_run"] and not (tmp_path / "store").exists()
    run_cli(["--root", str(root), "push"], env)
    dst = tmp_path / "dst"
    dry = run_json(["--root", str(dst), "pull", "--dry-run", "packages"], env)
    assert dry["areas"][0]["files"] > 0
    assert not (dst / "packages").exists()


def test_user_errors_are_one_line_without_traceback(tmp_path):
    env = cli_env(f"file://{tmp_path}/store")
    cases = [
        (["--remote", "ftp://x", "status"], "not a supported URL"),
        (["--root", str(tmp_path), "pull", "../etc"], "not a valid area name"),
        (["--transfers", "x", "pull"], "invalid int value"),
    ]
    for args, needle in cases:
        proc = run_cli(args, env, check=False)
        assert proc.returncode != 0, args
        assert needle in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad_env = dict(env, CACHE_SYNC_TRANSFERS="many")
    proc = run_cli(["pull"], bad_env, check=False)
    assert proc.returncode == 2 and "CACHE_SYNC_TRANSFERS" in proc.stderr


def test_second_process_on_same_root_refuses_clearly(tmp_path):
    from cache_sync.staging import open_root

    env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_LOCK_TIMEOUT": "0"})
    root = tmp_path / "root"
    make_tree(root)
    with open_root(root):
        proc = run_cli(["--root", str(root), "push"], env, check=False)
    assert proc.returncode == 75
    assert "another cache-sync process" in proc.stderr and str(os.getpid()) in proc.stderr
    run_cli(["--root", str(root), "push"], env)  # and works once the lock is free


def test_pull_refuses_when_it_will_not_fit(tmp_path):
    """A tiny tmpfs as the cache root: pull refuses up front, naming needed vs free bytes."""
    import subprocess

    env = cli_env(f"file://{tmp_path}/store")
    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    (src / "models" / "w.bin").write_bytes(os.urandom(8 << 20))
    run_cli(["--root", str(src), "push"], env)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        import pytest

        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = run_cli(["--root", str(mnt / "cache"), "pull"], env, check=False)
        assert proc.returncode == 4
        assert "needs 8,388,608 bytes" in proc.stderr and "free" in proc.stderr
        assert not list((mnt / "cache").rglob("w.bin"))
    finally:
        subprocess.run(["umount", str(mnt)])


def test_corrupt_and_truncated_objects_fail_naming_object_and_file(tmp_path):
    env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_RETRIES": "2"})
    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    (src / "models" / "weights.bin").write_bytes(os.urandom(3 << 20))  # 3 chunks
    (src / "models" / "small.txt").write_text("tiny but important")
    run_cli(["--root", str(src), "push"], env)
    objs = sorted((tmp_path / "store/objects").rglob("*"), key=lambda p: p.stat().st_size)
    objs = [p for p in objs if p.is_file()]
    for victim, damage in ((objs[0], "flip"), (objs[-1], "truncate")):
        saved = victim.read_bytes()
        if damage == "flip":
            victim.write_bytes(bytes([saved[0] ^ 0xFF]) + saved[1:])
        else:
            victim.write_bytes(saved[: len(saved) // 2])
        dst = tmp_path / f"dst-{damage}"
        proc = run_cli(["--root", str(dst), "pull"], env, check=False)
        assert proc.returncode != 0
        assert victim.name in proc.stderr, proc.stderr
        assert "small.txt" in proc.stderr or "weights.bin" in proc.stderr
        for p in (dst / "models").rglob("*"):  # nothing wrong at a final path
            if p.name == "weights.bin":
                assert p.read_bytes() == (src / "models/weights.bin").read_bytes()
            if p.name == "small.txt":
                assert p.read_text() == "tiny but important"
        assert not [p for p in (dst / "models").rglob(".cs-tmp-*")]
        victim.write_bytes(saved)
        run_cli(["--root", str(dst), "pull"], env)
        assert describe(dst / "models") == describe(src / "models")


def test_kind_changes_and_moves(tmp_path):
    env = cli_env(f"file://{tmp_path}/store")
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "deps" / "x").mkdir(parents=True)
    (a / "deps" / "x" / "f").write_text("in dir")
    (a / "deps" / "y").write_text("file")
    run_cli(["--root", str(a), "push", "deps"], env)
    run_cli(["--root", str(b), "pull", "deps"], env)
    shutil.rmtree(a / "deps" / "x")
    (a / "deps" / "x").write_text("now a file")
    os.unlink(a / "deps" / "y")
    (a / "deps" / "y").mkdir()
    (a / "deps" / "y" / "moved").write_text("in dir")  # same content as old x/f: no download
    run_cli(["--root", str(a), "push", "deps"], env)
    run_cli(["--root", str(b), "pull", "deps"], env)
    assert describe(b / "deps") == describe(a / "deps")
    assert Path(b / "deps/x").read_text() == "now a file"


@pytest.mark.parametrize("remote", ["local", "seaweedfs"], indirect=True)
def test_a_pull_writes_compressed_big_files_past_the_page_cache_unless_told_not_to(
        remote, tmp_path):
    """CACHE_SYNC_DIRECT_IO through the CLI: with ``on`` (and ``auto`` on a block filesystem)
    a file of compressed chunks lands on disk without filling the page cache; ``off`` leaves
    it cached, as a buffered write does. Either way the bytes are the pushed ones."""
    from tests.support.helpers import direct_io_supported, resident_fraction

    if not direct_io_supported(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    url, extra = remote
    env = {**cli_env(url, extra), "CACHE_SYNC_CHUNK_SIZE": "4M"}
    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    rnd = __import__("random").Random(7)
    words = [rnd.randbytes(8).hex().encode() for _ in range(512)]
    data = b" ".join(rnd.choice(words) for _ in range(1_400_000))  # ~24 MiB, compressible
    (src / "models" / "weights.bin").write_bytes(data)
    run_cli(["--root", str(src), "push", "models"], env)
    cached = {}
    for setting in ("on", "auto", "off"):
        dst = tmp_path / f"dst-{setting}"
        run_cli(["--root", str(dst), "pull", "models"], {**env, "CACHE_SYNC_DIRECT_IO": setting})
        cached[setting] = resident_fraction(dst / "models" / "weights.bin")
        assert (dst / "models" / "weights.bin").read_bytes() == data, setting
    assert cached["on"] < 0.05 and cached["auto"] < 0.05, cached
    assert cached["off"] > 0.95, cached
    bad = run_cli(["--root", str(tmp_path / "dst-bad"), "pull", "models"],
                  {**env, "CACHE_SYNC_DIRECT_IO": "sometimes"}, check=False)
    assert bad.returncode == 2 and "CACHE_SYNC_DIRECT_IO" in bad.stderr
    assert "Traceback" not in bad.stderr
