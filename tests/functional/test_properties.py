"""The store's promises under kills, races and big files (docs/design.md §4, §5), through
real processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest

from tests.support import crash
from tests.support.helpers import REPO, cli_env, describe, make_tree, run_cli, run_json


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cache_sync", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("seed", range(6))  # the fault suite adds 200+ kill points
def test_push_killed_anywhere_leaves_previous_snapshot_pullable(tmp_path, seed):
    """SIGKILL a push at a random instant: the previous snapshot still pulls byte for byte,
    and the next push completes (and converges)."""
    rnd = random.Random(seed)
    env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_CHUNK_SIZE": "256K"})
    root = tmp_path / "root"
    make_tree(root, seed=seed)
    run_cli(["--root", str(root), "push"], env)
    first = {a: describe(root / a) for a in ("packages", "models")}
    # A second generation with more data, killed somewhere in its push.
    make_tree(root / "gen2", seed=seed + 100, files=60, big=6_000_000)
    for d in ("packages", "models"):
        os.rename(root / "gen2" / d, root / d / "gen2")
    os.rmdir(root / "gen2")
    # Killed when the store has gained its k-th new file (objects, then the snapshot): a
    # point in the push's progress, not a guess of how long it takes on this machine.
    store = tmp_path / "store"
    before = crash.count_files(store)
    k = rnd.randint(1, 10)  # the push writes 24+ files (6 MB in 256 KiB chunks)
    argv = [sys.executable, "-m", "cache_sync", "--root", str(root), "push"]
    killed = crash.kill_when(argv, env, lambda: crash.count_files(store) >= before + k).killed
    assert killed, "the push ended before its k-th new store file"
    fresh = tmp_path / f"fresh{seed}"
    run_cli(["--root", str(fresh), "pull"], env)
    for area in ("packages", "models"):
        got = describe(fresh / area)
        final = describe(root / area)
        assert got in (first[area], final), f"{area} is a mix of two states"
    run_cli(["--root", str(root), "push"], env)
    fresh2 = tmp_path / f"fresh2-{seed}"
    run_cli(["--root", str(fresh2), "pull"], env)
    for area in ("packages", "models"):
        assert describe(fresh2 / area) == describe(root / area)


@pytest.mark.parametrize("backend", ["local", "moto"])
def test_four_concurrent_pushers_lose_nothing(tmp_path, backend, request):
    """Four workers pull the same snapshot, each adds different files (and one deletes one),
    all push at once: a final pull holds every addition and the deletion."""
    if backend == "local":
        url, extra = f"file://{tmp_path}/store", {}
    else:
        server = request.getfixturevalue("moto")
        url, extra = f"s3://{server.make_bucket()}/c", server.env()
    env = cli_env(url, extra)
    seed_root = tmp_path / "seed"
    make_tree(seed_root)
    run_cli(["--root", str(seed_root), "push"], env)
    workers = []
    for i in range(4):
        w = tmp_path / f"w{i}"
        run_cli(["--root", str(w), "pull"], env)
        d = w / "packages" / f"added-by-{i}"
        d.mkdir()
        for j in range(5):
            (d / f"f{j}.py").write_bytes(os.urandom(1000 + j))
        (w / "models" / f"model-{i}.bin").write_bytes(os.urandom(300_000))
        workers.append(w)
    os.unlink(workers[0] / "packages/pkg0/tool.sh")
    os.unlink(workers[0] / "packages/bin/tool")
    procs = [_spawn(["--root", str(w), "push"], env) for w in workers]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    final = tmp_path / "final"
    out = run_json(["--root", str(final), "pull"], env)
    assert len(next(a for a in out["areas"] if a["area"] == "packages")["heads"]) == 4
    for i, w in enumerate(workers):
        for j in range(5):
            rel = f"packages/added-by-{i}/f{j}.py"
            assert (final / rel).read_bytes() == (w / rel).read_bytes()
        assert (final / f"models/model-{i}.bin").read_bytes() == (
            w / f"models/model-{i}.bin").read_bytes()
    assert not (final / "packages/pkg0/tool.sh").exists()  # the deletion survives the merge
    assert (final / "packages/pkg0/mod0.py").exists()
    # The next push from the merged state records all four heads as parents: one head again.
    (final / "packages" / "after-merge.txt").write_text("x")
    run_cli(["--root", str(final), "push", "packages"], env)
    log = run_json(["--root", str(final), "log", "packages"], env)["snapshots"]
    assert sum(1 for s in log if s["head"]) == 1 and len(log[0]["parents"]) == 4


_AUDIT = textwrap.dedent("""
    import os, sys
    area = sys.argv[1]
    opened = []
    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(area):
            opened.append(args[0])
    sys.addaudithook(hook)
    from cache_sync.cli.main import main
    code = main(sys.argv[2:])
    print("OPENED", len(opened), opened[:3], file=sys.stderr)
    sys.exit(code)
""")


def test_noop_push_opens_no_file_and_writes_nothing(tmp_path):
    env = cli_env(f"file://{tmp_path}/store")
    root = tmp_path / "root"
    make_tree(root)
    run_cli(["--root", str(root), "push"], env)
    store_before = sorted(str(p) for p in (tmp_path / "store").rglob("*"))
    script = tmp_path / "audit.py"
    script.write_text(_AUDIT)
    for area in ("packages", "models"):
        proc = subprocess.run(
            [sys.executable, str(script), str(root / area), "--root", str(root), "push"],
            env=env, capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert "OPENED 0 " in proc.stderr, proc.stderr
    assert sorted(str(p) for p in (tmp_path / "store").rglob("*")) == store_before
    # Touching a file makes push read it, but an unchanged content writes no snapshot.
    os.utime(root / "packages/pkg0/tool.sh")
    out = run_json(["--root", str(root), "push", "packages"], env)
    assert out["areas"][0]["files"] == 1 and out["areas"][0]["objects"] == 0


_MEASURE = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(p.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(p.returncode)\n"
)


def _peak_rss_of(cmd: list[str], env: dict[str, str]) -> int:
    """Peak RSS of ``cmd`` alone: a fresh wrapper whose only child it is reports its
    RUSAGE_CHILDREN (this process's own counter also holds every earlier test's children)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1]) * 1024  # ru_maxrss is KiB on Linux


def test_one_gib_file_pushes_and_pulls_in_bounded_memory(tmp_path):
    """RSS stays under 300 MB for a 1 GiB file (default chunk and pack sizes)."""
    env = cli_env(f"file://{tmp_path}/store")
    for k in ("CACHE_SYNC_CHUNK_SIZE", "CACHE_SYNC_PACK_SIZE", "CACHE_SYNC_SMALL_FILE"):
        env.pop(k)
    src = tmp_path / "src" / "models"
    src.mkdir(parents=True)
    block = os.urandom(1 << 20)
    with open(src / "big.bin", "wb") as f:
        for i in range(1024):
            f.write(block[:-8] + i.to_bytes(8, "little"))  # distinct chunks, no dedup
    base = [sys.executable, "-m", "cache_sync", "--root"]
    rss_push = _peak_rss_of(base + [str(tmp_path / "src"), "push", "models"], env)
    rss_pull = _peak_rss_of(base + [str(tmp_path / "dst"), "pull", "models"], env)
    assert (tmp_path / "dst/models/big.bin").stat().st_size == 1 << 30
    assert rss_push < 300e6 and rss_pull < 300e6, (rss_push, rss_pull)
    with open(tmp_path / "dst/models/big.bin", "rb") as f:
        f.seek(1000 << 20)
        assert f.read(1 << 20) == block[:-8] + (1000).to_bytes(8, "little")


def test_credentials_never_printed_and_403_fails_fast(seaweed, tmp_path):
    """Wrong secret against a server that checks signatures: one clear line, no retry storm,
    and neither key nor secret appears anywhere in the output."""
    bucket = seaweed.make_bucket()
    secret = "Zz9-very-secret-value-that-must-not-leak"
    env = cli_env(f"s3://{bucket}/c", {**seaweed.env(), "AWS_SECRET_ACCESS_KEY": secret})
    root = tmp_path / "root"
    make_tree(root)
    for args in (["-vv", "--root", str(root), "push"], ["--json", "--root", str(root), "pull"],
                 ["-v", "--root", str(root), "status"]):
        proc = run_cli(args, env, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 3, out
        assert "access denied" in out.lower()
        assert secret not in out and seaweed.access_key not in out
        assert "Traceback" not in out
