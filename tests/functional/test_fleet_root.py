"""Workers sharing one cache root (a network volume), through the CLI: both serve, neither
loses a scratch file, dead workers' dirs are swept, a worker arriving while a push holds the
root's lock waits and then serves, and `run` moves the serving areas only (not `pip/`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve
from tests.support.waits import wait_until, wait_until_count

# The child: a scratch file in its TMPDIR, "ready", then wait for "stop" and exit 0 only if
# its scratch file is still there.
CHILD = textwrap.dedent("""
    import os, sys, time
    me, base = sys.argv[1], sys.argv[2]
    scratch = os.path.join(os.environ["TMPDIR"], "scratch-" + me)
    open(scratch, "w").write(me)
    open(os.path.join(base, "ready-" + me), "w").write(os.environ["TMPDIR"])
    while not os.path.exists(os.path.join(base, "stop-" + me)):
        time.sleep(0.05)
    sys.exit(0 if open(scratch).read() == me else 9)
""")


def cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cache_sync", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_worker(env: dict, me: str, base: Path, *run_args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cache_sync", "run", *run_args, "--", sys.executable, "-c",
         CHILD, me, str(base)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def stop(proc: subprocess.Popen, me: str, base: Path) -> tuple[int, str]:
    (base / f"stop-{me}").touch()
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def reap(base: Path, workers: dict[str, subprocess.Popen | None]) -> None:
    """After a failure: let every child exit (its stop file), then make sure `run` is gone
    (SIGTERM is forwarded to the child; SIGKILL only as a last resort)."""
    for me, proc in workers.items():
        if proc is None or proc.poll() is not None:
            continue
        (base / f"stop-{me}").touch()
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_two_runs_on_one_root_both_serve_and_keep_their_scratch_files(tmp_path):
    env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off"}
    root = tmp_path / "cache"
    # Dead workers' leftovers: another host's, whose marker is 2 h old, and this host's with a
    # pid that no longer exists; and a live worker on another host (fresh marker).
    markers = root / ".cache-sync" / "workers"
    markers.mkdir(parents=True)
    for name in ("gone-host-7", "live-host-8"):
        (root / "tmp" / name).mkdir(parents=True)
        (root / "tmp" / name / "f").write_text(name)
        (markers / name).touch()
    old = time.time() - 7200
    os.utime(markers / "gone-host-7", (old, old))
    dead = subprocess.Popen(["true"])
    dead.wait()
    dead_dir = root / "build" / f"{os.uname().nodename}-{dead.pid}"
    dead_dir.mkdir(parents=True)
    a = start_worker(env, "a", tmp_path)
    b = None
    try:
        assert wait_until(lambda: (tmp_path / "ready-a").exists() or a.poll() is not None, 60)
        b = start_worker(env, "b", tmp_path)
        assert wait_until(lambda: (tmp_path / "ready-b").exists() or b.poll() is not None, 60)
        assert a.poll() is None and b.poll() is None  # both serve at once
        tmp_a, tmp_b = ((tmp_path / f"ready-{w}").read_text() for w in "ab")
        assert tmp_a != tmp_b and Path(tmp_a).parent == Path(tmp_b).parent == root / "tmp"
        assert (Path(tmp_a) / "scratch-a").exists()  # b's start left a's file alone
        assert not (root / "tmp" / "gone-host-7").exists() and not dead_dir.exists()
        assert (root / "tmp" / "live-host-8" / "f").read_text() == "live-host-8"
        code_b, err_b = stop(b, "b", tmp_path)
        assert code_b == 0, err_b
        assert not Path(tmp_b).exists()  # b cleaned its own dir ...
        assert (Path(tmp_a) / "scratch-a").exists()  # ... and only its own
        code_a, err_a = stop(a, "a", tmp_path)
        assert code_a == 0, err_a  # a's child found its scratch file intact at the end
    finally:
        reap(tmp_path, {"a": a, "b": b})
    assert sorted(p.name for p in (root / "tmp").iterdir()) == ["live-host-8"]
    assert sorted(p.name for p in markers.iterdir()) == ["live-host-8"]


def test_worker_arriving_while_a_push_holds_the_lock_waits_then_serves(tmp_path, moto):
    bucket = moto.make_bucket()
    with FaultProxy(moto.endpoint, seed=5, max_seconds=200) as proxy:
        env = {**hermetic_env(tmp_path), **moto.env(), "CACHE_SYNC_PROGRESS": "off",
               "CACHE_SYNC_REMOTE": f"s3://{bucket}/cache",
               "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint, "CACHE_SYNC_SMALL_FILE": "64K",
               "CACHE_SYNC_CHUNK_SIZE": "1M", "CACHE_SYNC_PACK_SIZE": "256K"}
        models = tmp_path / "cache" / "models"
        models.mkdir(parents=True)
        for i in range(6):
            (models / f"w{i}.bin").write_bytes(os.urandom(300_000))
        # a slow push (one PUT at a time, 1 s each) holds the lock for several seconds
        proxy.add("delay", method="PUT", seconds=1.0)
        pusher = subprocess.Popen([sys.executable, "-m", "cache_sync", "push"],
                                  env={**env, "CACHE_SYNC_TRANSFERS": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until_count(lambda: proxy.request_count, 1, 30)
            t0 = time.monotonic()
            third = start_worker(env, "c", tmp_path)
            assert wait_until(lambda: (tmp_path / "ready-c").exists() or third.poll()
                              is not None, 120)
            waited = time.monotonic() - t0
            # it started serving only after the push: the push's snapshot was committed (the
            # pusher process itself may still be exiting once it released the lock)
            listed = moto.client().list_objects_v2(Bucket=bucket, Prefix="cache/snapshots/")
            assert [o["Key"] for o in listed.get("Contents", [])]
            code, err = stop(third, "c", tmp_path)
        finally:
            reap(tmp_path, {"c": locals().get("third")})
            _o, push_err = pusher.communicate(timeout=60)
        assert pusher.returncode == 0, push_err
        assert code == 0, err
        assert "waiting for another cache-sync process" in err and waited > 2, (waited, err)
        assert "Traceback" not in err


def test_run_moves_the_serving_areas_install_moves_pip(tmp_path):
    """`run` neither pulls nor pushes pip/; `install` pulls pip/ before installing."""
    env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off"}
    seed = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "seed")}
    for area in ("pip", "models"):
        (tmp_path / "seed" / area).mkdir(parents=True)
        (tmp_path / "seed" / area / f"{area}.bin").write_bytes(b"x" * 1000)
    assert cli(seed, "push").returncode == 0
    child = ("import os; r = os.environ['CACHE_SYNC_ROOT']; "
             "open(os.path.join(r, 'pip', 'new-wheel'), 'w').write('w'); "
             "open(os.path.join(r, 'models', 'new-model'), 'w').write('m')")
    p = cli({**env, "CACHE_SYNC_JSON": "1"}, "run", "--", sys.executable, "-c", child)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert sorted(r["area"] for r in result["pulled"]) == ["deps", "models", "packages"]
    assert sorted(r["area"] for r in result["pushed"]) == ["deps", "models", "packages"]
    cache = tmp_path / "cache"
    assert (cache / "models" / "models.bin").exists() and not (cache / "pip" / "pip.bin").exists()
    log = json.loads(cli(env, "--json", "log", "pip").stdout)
    assert len(log["snapshots"]) == 1  # the seed's only: run pushed no pip snapshot
    # an explicit area list is the user's choice and wins over the role
    p = cli({**env, "CACHE_SYNC_AREAS": "pip"}, "run", "--no-push", "--", "true")
    assert p.returncode == 0 and (cache / "pip" / "pip.bin").exists(), p.stderr
    # install (a fresh worker): pulls pip/ before its installer runs, pushes packages and pip
    fresh = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "installer")}
    wheel = make_wheel(tmp_path / "wheels", "beta", "1.2", {"beta.py": "X = 1\n"})
    with serve(build_index(tmp_path / "idx", [wheel])) as srv:
        p = cli({**fresh, "PIP_INDEX_URL": srv.url + "/simple"}, "--json", "install",
                "--installer", "pip", "beta")
    assert p.returncode == 0, p.stderr
    assert sorted(r["area"] for r in json.loads(p.stdout)["pushed"]) == ["packages", "pip"]
    assert (tmp_path / "installer" / "pip" / "pip.bin").exists()
    assert len(json.loads(cli(env, "--json", "log", "pip").stdout)["snapshots"]) == 2


PID1_CHILD = textwrap.dedent("""
    import os, sys, time
    me, base = sys.argv[1], sys.argv[2]
    open(os.path.join(base, "ready-" + me), "w").write(
        f"{os.getppid()} {os.environ['CACHE_SYNC_READY_FILE']}")
    while not os.path.exists(os.path.join(base, "stop-" + me)):
        time.sleep(0.05)
""")


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare(1) and a new PID namespace")
def test_two_workers_each_pid_1_on_one_root_keep_their_own_readiness_files(tmp_path):
    """Two containers' `run`s are both PID 1 and share one root (a network volume): each
    has its own readiness file, and one worker's exit leaves the other's in place (which
    its imports would otherwise take for "nothing pending"). Fails with a file named by
    the pid: both are ``ready-1.json``."""
    env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off"}
    models = tmp_path / "src" / "models"
    models.mkdir(parents=True)
    (models / "w.bin").write_bytes(os.urandom(100_000))
    cli({**env, "CACHE_SYNC_ROOT": str(tmp_path / "src")}, "push", "models")
    procs: dict[str, subprocess.Popen | None] = {}
    try:
        for me in "ab":
            procs[me] = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m",
                 "cache_sync", "run", "--overlap", "--no-push", "--", sys.executable, "-c",
                 PID1_CHILD, me, str(tmp_path)],
                env={**env, "CACHE_SYNC_WORKER": f"pod-{me}"}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            assert wait_until(lambda: (tmp_path / f"ready-{me}").exists()
                              or procs[me].poll() is not None, 60), me
        seen = {me: (tmp_path / f"ready-{me}").read_text().split(" ", 1) for me in "ab"}
        assert seen["a"][0] == seen["b"][0] == "1", seen  # each run is its namespace's PID 1
        assert seen["a"][1] != seen["b"][1], seen
        code_a, err_a = stop(procs["a"], "a", tmp_path)  # type: ignore[arg-type]
        assert code_a == 0, err_a
        assert Path(seen["b"][1]).is_file()  # a's exit left b's file alone
        code_b, err_b = stop(procs["b"], "b", tmp_path)  # type: ignore[arg-type]
        assert code_b == 0, err_b
        assert not Path(seen["b"][1]).exists()
    finally:
        reap(tmp_path, procs)
