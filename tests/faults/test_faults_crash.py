"""Crash tests (DESIGN §2.1, §2.3, §2.7): SIGKILL a push or a pull at seeded points and check,
after every kill:

- push: every snapshot in the store decodes, names only objects that exist and hash right, and
  reassembles byte for byte to the tree pushed as it; a fresh pull sees the previous state or
  the new one, never a mix; the next push completes and a fresh pull then equals the tree.
- pull: no file at a final path is partial (each equals the previous or the new version); the
  next pull completes and converges exactly (contents, modes, symlinks, mtimes).

Kill points are chosen two ways: by a seeded delay against a local file:// store, and by a
seeded request count through the fault proxy in front of a real moto server (the kill lands
while that request is held, so every stage of a transfer is hit). The default run keeps a
fast seeded subset; FAULTS_LONG=1 (with --run-slow) runs >= 200 kill points.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from cache_sync.pull import pull
from cache_sync.push import push
from tests.support import crash
from tests.support import faultkit as fk
from tests.support.faultproxy import FaultProxy

# Kill points that must LAND per test (a kill that comes after the command finished does not
# count; the loop tries up to 3x as often).
FAST = {"push_local": 3, "push_proxy": 3, "pull_local": 3, "pull_proxy": 3, "pull_final": 2}
LONG = {"push_local": 60, "push_proxy": 50, "pull_local": 50, "pull_proxy": 50,
        "pull_final": 40}


def counts() -> dict[str, int]:
    return LONG if fk.long_mode() else FAST


def _push_loop(ws: fk.Workspace, n: int, seed: int, kill) -> tuple[int, int]:
    """Mutate and push under ``kill`` until n kills landed; returns (kills landed, commits
    that landed before the kill)."""
    fk.make_tree(ws.area(), seed)
    ws.run("push")
    expected = {i: ws.tree() for i in fk.snapshot_ids(ws)}
    committed = ws.tree()
    landed = early_commits = 0
    verified: dict[str, int] = {}
    for i in range(3 * n):
        if landed >= n:
            break
        fk.mutate(ws.area(), seed * 1000 + i)
        if i % 3 == 1:  # sometimes a big change: several packs and chunks to upload
            fk.make_tree(ws.area() / f"batch{i}", seed + i, files=40, big=2)
        want = ws.tree()
        before = fk.snapshot_ids(ws)
        r = kill(ws.argv("push"), i)
        new = fk.snapshot_ids(ws) - before
        assert len(new) <= 1, f"one push made {len(new)} snapshots"
        if r.killed:
            landed += 1
            early_commits += len(new)
        else:
            assert r.returncode == 0, r.stderr
            assert new, "a finished push left no snapshot"
        for sid in new:
            expected[sid] = want
        fk.audit_store(ws, expected=expected, verified=verified)
        fresh = ws.sibling(f"fresh{i}")
        pull(fresh.settings())
        got = fresh.tree()
        assert not crash.diff_trees(committed, got) or not crash.diff_trees(want, got), (
            "a fresh pull after a killed push is a mix:\n"
            + "\n".join(crash.diff_trees(want, got)[:20]))
        # The killed push resumes: the next one completes and converges.
        before = fk.snapshot_ids(ws)
        ws.run("push")
        for sid in fk.snapshot_ids(ws) - before:
            expected[sid] = want
        shutil.rmtree(fresh.root)
        pull(fresh.settings())
        assert crash.diff_trees(want, fresh.tree(), mtime=True) == []
        shutil.rmtree(fresh.root)
        committed = want
    fk.audit_store(ws, expected=expected)
    return landed, early_commits


def _pull_loop(writer: fk.Workspace, reader: fk.Workspace, n: int, seed: int, kill) -> int:
    fk.make_tree(writer.area(), seed)
    push(writer.settings())
    pull(reader.settings())
    prev = writer.tree()
    landed = 0
    for i in range(3 * n):
        if landed >= n:
            break
        fk.mutate(writer.area(), seed * 1000 + i)
        if i % 3 == 0:  # sometimes a big change: many packs and chunks to fetch
            fk.make_tree(writer.area() / f"batch{i}", seed + i, files=40, big=2)
        push(writer.settings())
        want = writer.tree()
        r = kill(reader.argv("pull"), i)
        if r.killed:
            landed += 1
        else:
            assert r.returncode == 0, r.stderr
        crash.assert_no_partial(reader.area(), [prev, want], is_temp=fk.is_temp)
        reader.run("pull")
        got = reader.tree()
        assert crash.diff_trees(want, got, mtime=True) == []
        assert not [p for p in got if fk.is_temp(p)], "temporary files left behind"
        prev = want
    return landed


def _timed(argv, env) -> float:
    t0 = time.monotonic()
    crash.kill_after(argv, env, delay=1e6)
    return time.monotonic() - t0


@pytest.mark.timeout(3600 if fk.long_mode() else 900)
def test_push_killed_by_delay_local_store(tmp_path):
    ws = fk.workspace(tmp_path)
    rng = random.Random(11)
    # The command's own start-up: the CLI imports only the command it runs (`--version`, no
    # command, imports them all and overestimates it, so delays landed after the end).
    startup = _timed(crash.cli("push", "--help"), ws.env)
    store = tmp_path / "store"

    def kill(argv, i):
        # Interpreter start-up dominates a small push, so most kills are placed by watching
        # the store: SIGKILL once it holds k more files (k = 1 is the first object written);
        # every fourth kill is a plain seeded delay (start-up, scan, hashing).
        if i % 4 == 3:
            return crash.kill_after(argv, ws.env, rng.uniform(startup * 0.5, startup * 1.2))
        base = crash.count_files(store)
        k = rng.randint(1, 4)
        return crash.kill_when(argv, ws.env, lambda: crash.count_files(store) >= base + k)

    landed, early = _push_loop(ws, counts()["push_local"], 11, kill)
    fk.record("push_killed_by_delay_local", kill_points=landed, commits_before_kill=early)
    assert landed >= counts()["push_local"]


@pytest.mark.timeout(3600 if fk.long_mode() else 900)
def test_push_killed_at_request_count_moto(tmp_path, moto):
    bucket = moto.make_bucket()
    with FaultProxy(moto.endpoint, seed=12, max_seconds=850) as proxy:
        ws = fk.workspace(tmp_path, f"s3://{bucket}/cache",
                          {**moto.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint})
        rng = random.Random(12)

        def kill(argv, i):
            # Odd kills let the held request reach the server first: the client dies after the
            # store acted on it (e.g. the snapshot PUT landed, the local state was not saved).
            return crash.kill_at_request(argv, ws.env, proxy,
                                         rng.randint(1, 9 if i % 3 == 1 else 5), drop=i % 2 == 0)

        landed, early = _push_loop(ws, counts()["push_proxy"], 12, kill)
    fk.record("push_killed_at_request_moto", kill_points=landed, commits_before_kill=early,
              requests=proxy.request_count)
    assert landed >= counts()["push_proxy"]


@pytest.mark.timeout(3600 if fk.long_mode() else 900)
def test_pull_killed_by_delay_local_store(tmp_path):
    writer = fk.workspace(tmp_path, name="writer")
    reader = writer.sibling("reader")
    rng = random.Random(13)
    startup = _timed(crash.cli("pull", "--help"), writer.env)  # as for push

    def kill(argv, i):
        # As for push: mostly "after k files appeared in the area", sometimes a plain delay.
        if i % 4 == 3:
            return crash.kill_after(argv, reader.env, rng.uniform(startup * 0.5, startup * 1.2))
        base = crash.count_files(reader.area())
        k = rng.randint(1, 30)
        return crash.kill_when(argv, reader.env,
                               lambda: crash.count_files(reader.area()) >= base + k)

    landed = _pull_loop(writer, reader, counts()["pull_local"], 13, kill)
    fk.record("pull_killed_by_delay_local", kill_points=landed)
    assert landed >= counts()["pull_local"]


@pytest.mark.timeout(3600 if fk.long_mode() else 900)
def test_pull_killed_at_request_count_moto(tmp_path, moto):
    bucket = moto.make_bucket()
    with FaultProxy(moto.endpoint, seed=14, max_seconds=850) as proxy:
        writer = fk.workspace(tmp_path, f"s3://{bucket}/cache", moto.env(), name="writer")
        reader = writer.sibling("reader")
        reader.env["CACHE_SYNC_ENDPOINT_URL"] = proxy.endpoint
        rng = random.Random(14)

        def kill(argv, i):
            return crash.kill_at_request(argv, reader.env, proxy, rng.randint(2, 10 if i % 3 == 0 else 4))

        landed = _pull_loop(writer, reader, counts()["pull_proxy"], 14, kill)
    fk.record("pull_killed_at_request_moto", kill_points=landed, requests=proxy.request_count)
    assert landed >= counts()["pull_proxy"]


KILLPOINT = str(Path(__file__).resolve().parent.parent / "support" / "_killpoint")


@pytest.mark.timeout(3600 if fk.long_mode() else 900)
def test_pull_killed_in_its_final_phase_local_store(tmp_path):
    """SIGKILL at a seeded operation of the pull's final phase (``support/_killpoint``). The
    next command that opens the root without pulling (``verify``) rolls the journal forward:
    the area is then exactly the new snapshot, before any further pull."""
    writer = fk.workspace(tmp_path, name="writer")
    reader = writer.sibling("reader")
    rng = random.Random(15)

    def kill(argv, i):
        at = f"pull:final-op#{rng.randint(1, 40)}" if i % 5 else "pull:final-done#1"
        env = {**reader.env, "FAULTS_KILL_AT": at,
               "PYTHONPATH": KILLPOINT + os.pathsep + reader.env["PYTHONPATH"]}
        r = reader.run(*argv[argv.index("--remote") + 2:], ok=False, env=env)
        killed = r.returncode == -9
        if killed:
            reader.run("verify")  # rolls forward; fails if a file differs from the new state
            want = writer.tree()
            assert crash.diff_trees(want, reader.tree(), mtime=True) == [], at
        return crash.KillResult(killed, r.returncode, r.stdout, r.stderr, 0.0)

    landed = _pull_loop(writer, reader, counts()["pull_final"], 15, kill)
    fk.record("pull_killed_in_final_phase_local", kill_points=landed)
    assert landed >= counts()["pull_final"]
