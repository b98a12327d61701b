"""`cache-sync run` overlaps the models pull with the worker's start: the child starts once
packages/ is in place, learns through cache_sync.readiness when models/ is complete, hears
when that pull failed, and a failed or unfinished area is never pushed back."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

from tests.support.helpers import cli_env, run_cli, run_json

# The child: what it saw at its first instruction, then after waiting for models/.
CHILD = textwrap.dedent("""
    import hashlib, json, os, sys
    from pathlib import Path
    from cache_sync import readiness
    root = Path(os.environ["CACHE_SYNC_ROOT"])
    status = os.environ.get(readiness.ENV_VAR)
    seen = {"status_at_start": readiness.read(Path(status)) if status else None,
            "packages_at_start": (root / "packages" / "pkg" / "__init__.py").is_file(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0), "run_nices": []}
    if sys.platform.startswith("linux"):  # the nice value of each thread of `run`
        for tid in os.listdir(f"/proc/{os.getppid()}/task"):
            try:
                with open(f"/proc/{os.getppid()}/task/{tid}/stat") as f:
                    seen["run_nices"].append(int(f.read().rsplit(")", 1)[1].split()[16]))
            except OSError:
                pass
    try:
        readiness.wait(["models"], timeout=60)
        weights = root / "models" / "weights.bin"
        seen["models_sha"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    except readiness.AreaNotReady as err:
        seen["not_ready"] = str(err)
    (root / "packages" / "added-by-child.txt").write_text("new")
    Path(sys.argv[1]).write_text(json.dumps(seen))
""")


def _source(tmp: Path, weights: bytes) -> Path:
    src = tmp / "src"
    (src / "packages" / "pkg").mkdir(parents=True)
    (src / "packages" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (src / "models").mkdir()
    (src / "models" / "weights.bin").write_bytes(weights)
    return src


def _run_child(env: dict[str, str], tmp: Path, *run_args: str) -> tuple[dict, dict]:
    script, report = tmp / "child.py", tmp / "seen.json"
    script.write_text(CHILD)
    result = run_json(["run", *run_args, "--", sys.executable, str(script), str(report)], env,
                      timeout=180)
    return result, json.loads(report.read_text())


def test_worker_starts_while_models_pull_and_waits_for_them(moto, tmp_path):
    # Every object is served 2 s late (a fault proxy's delay), so the child, which reads the
    # status file within ~50 ms of starting, starts while models/ is still pulling however
    # fast the read path is.
    from tests.support.faultproxy import FaultProxy

    weights = os.urandom(12 << 20)
    src = _source(tmp_path, weights)
    env = cli_env(f"s3://{moto.make_bucket()}/c", {**moto.env(), "CACHE_SYNC_ROOT": str(src)})
    run_cli(["push", "packages", "models"], env)

    with FaultProxy(moto.endpoint, seed=1, max_seconds=170) as proxy:
        proxy.add("delay", method="GET", key="/objects/", seconds=2.0)  # packages' too
        env.update({"CACHE_SYNC_ROOT": str(tmp_path / "worker"),
                    "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint})
        result, seen = _run_child(env, tmp_path, "--no-push", "--overlap")
        assert proxy.injected["delay"] >= 1
    assert result["exit_code"] == 0, result
    assert seen["packages_at_start"] is True
    assert seen["status_at_start"]["pending"] == ["models"]  # started before models arrived
    # The pull beside CMD runs below it (its threads' nice +10), CMD and `run` itself do not.
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen["nice"] == base
    if sys.platform.startswith("linux"):
        assert base in seen["run_nices"] and min(19, base + 10) in seen["run_nices"]
    assert seen["models_sha"] == hashlib.sha256(weights).hexdigest()
    assert {r["area"] for r in result["pulled"]} >= {"packages", "models"}


def test_without_overlap_everything_is_pulled_first(tmp_path):
    src = _source(tmp_path, b"w" * 1000)
    env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_ROOT": str(src)})
    run_cli(["push", "packages", "models"], env)
    env["CACHE_SYNC_ROOT"] = str(tmp_path / "worker")
    _, seen = _run_child(env, tmp_path, "--no-push")  # the default: a generic CMD
    assert seen["status_at_start"] is None  # nothing to wait for: all was in place
    assert seen["models_sha"] == hashlib.sha256(b"w" * 1000).hexdigest()


def test_failed_models_pull_reaches_the_worker_and_is_not_pushed(tmp_path):
    store = tmp_path / "store"
    src = _source(tmp_path, os.urandom(3 << 20))
    env = cli_env(f"file://{store}", {"CACHE_SYNC_ROOT": str(src)})
    run_cli(["push", "packages"], env)
    before = {p for p in (store / "objects").rglob("*") if p.is_file()}
    run_cli(["push", "models"], env)
    for obj in {p for p in (store / "objects").rglob("*") if p.is_file()} - before:
        obj.write_bytes(b"corrupt" + obj.read_bytes()[7:])  # every models object damaged
    models_snapshots = sorted((store / "snapshots" / "models").iterdir())

    env.update({"CACHE_SYNC_ROOT": str(tmp_path / "worker"), "CACHE_SYNC_OVERLAP": "1"})
    result, seen = _run_child(env, tmp_path)
    assert result["exit_code"] == 0, result
    assert "models area did not arrive" in seen["not_ready"]
    # The half-pulled models area was not pushed (it would publish deletions) ...
    assert sorted((store / "snapshots" / "models").iterdir()) == models_snapshots
    # ... while what the worker added to packages/ was.
    fresh = tmp_path / "fresh"
    run_cli(["pull", "packages"], {**env, "CACHE_SYNC_ROOT": str(fresh)})
    assert (fresh / "packages" / "added-by-child.txt").read_text() == "new"
