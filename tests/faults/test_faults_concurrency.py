"""Concurrency (DESIGN §2.2): eight worker processes that pulled the same snapshot each add
different files and push at the same time, against one bucket; after a final pull every
worker's additions are there. Repeated through the fault proxy with transient faults injected
and with conditional writes unavailable (the proxy answers 501 to any If-Match/If-None-Match,
as Backblaze B2 does), proving the engine never sends them. Also: two cache-sync processes on
one cache root: the second refuses clearly (or waits when told to), nothing is corrupted."""

from __future__ import annotations

import subprocess
import threading

import pytest

from cache_sync.history import History
from cache_sync.local_cache import CacheState
from cache_sync.repo import list_refs
from tests.support import crash
from tests.support import faultkit as fk
from tests.support.faultproxy import FaultProxy
from tests.support.interleave import Scheduler, Script, stepped
from tests.support.waits import wait_until_count

WORKERS = 8


def _worker_files(i: int) -> dict[str, bytes]:
    files = {f"w{i}/pkg/mod{k}.py": f"worker {i} file {k}\n".encode() * (1 + 97 * k)
             for k in range(5)}
    files[f"w{i}/weights.bin"] = bytes([i]) * 300_000  # a chunked file per worker
    files[f"w{i}/bin/tool"] = b"#!/bin/sh\necho %d\n" % i
    return files


def _run_workers(seed_ws: fk.Workspace, worker_env: dict[str, str]) -> list[str]:
    errors: list[str] = []

    def work(i: int) -> None:
        ws = fk.Workspace(seed_ws.root.parent / f"worker{i}", seed_ws.remote, dict(worker_env))
        try:
            ws.run("pull", timeout=300)
            crash.write_tree(ws.area(), _worker_files(i), modes={f"w{i}/bin/tool": 0o755})
            ws.run("push", timeout=300)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            errors.append(f"worker {i}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _check_all_present(seed_ws: fk.Workspace, base: dict) -> int:
    """Returns the number of heads the final pull merged."""
    final = seed_ws.sibling("final")
    final.run("pull")
    tree = final.tree()
    for path, entry in base.items():
        assert path in tree and tree[path].same(entry), f"base file {path} lost"
    for i in range(WORKERS):
        for path, data in _worker_files(i).items():
            got = tree.get(path)
            assert got is not None, f"worker {i}'s {path} is missing after the final pull"
            assert got.digest == crash.sha256_bytes(data), f"{path} has wrong contents"
        assert tree[f"w{i}/bin/tool"].mode == 0o755
    fk.audit_store(final)
    store = fk.open_raw_store(final)
    heads = len(History(list_refs(store, fk.AREA)).heads)
    assert heads >= 2, "the workers' pushes did not overlap: nothing was merged"
    return heads


@pytest.mark.timeout(600)
def test_eight_workers_local_store(tmp_path):
    seed = fk.workspace(tmp_path, name="seed")
    fk.make_tree(seed.area(), 21, files=30)
    seed.run("push")
    errors = _run_workers(seed, seed.env)
    assert errors == []
    heads = _check_all_present(seed, seed.tree())
    fk.record("eight_workers_local", workers=WORKERS, heads_merged=heads)


@pytest.mark.timeout(600)
def test_eight_workers_with_faults_and_no_conditional_writes(tmp_path, moto):
    bucket = moto.make_bucket()
    seed = fk.workspace(tmp_path, f"s3://{bucket}/cache", moto.env(), name="seed")
    fk.make_tree(seed.area(), 22, files=30)
    seed.run("push")
    with FaultProxy(moto.endpoint, seed=22, max_seconds=550) as proxy:
        proxy.add("reject_conditional")
        proxy.add("status", prob=0.06, status=500)
        proxy.add("status", method="PUT", prob=0.04, status=503, forward=True)
        proxy.add("slowdown", prob=0.03, seconds=1 if fk.long_mode() else 0)
        proxy.add("reset", method="GET", prob=0.04)
        proxy.add("truncate", method="GET", prob=0.04)
        proxy.add("delay", prob=0.05, seconds=0.3)
        env = {**seed.env, "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint,
               "CACHE_SYNC_RETRIES": "12"}
        errors = _run_workers(seed, env)
    assert errors == [], "\n".join(errors)
    assert proxy.conditional_requests() == [], "the engine sent a conditional request"
    injected = {k: v for k, v in proxy.injected.items() if k != "reject_conditional"}
    assert sum(injected.values()) >= 5, proxy.injected
    heads = _check_all_present(seed, seed.tree())
    fk.record("eight_workers_faults_no_conditional", workers=WORKERS, heads_merged=heads,
              requests=proxy.request_count, conditional_requests=0,
              **{f"fault_{k}": v for k, v in proxy.injected.items()})


def test_a_head_that_sorts_first_but_lands_last_is_pulled(tmp_path, monkeypatch):
    """docs/design.md §5 step 1: a pull is up to date only when the heads are exactly the ones
    it synced to. Three workers push from one base; B takes its snapshot id first but is held
    at its commit (``interleave.py``) while A and C commit, and R pulls (heads A, C). Then B's
    snapshot lands: the newest head is still C's, but B's file must reach R's next pull (a
    fast path comparing only the newest head would call R up to date and drop it)."""
    for k, v in {**fk.SMALL_OBJECTS, "CACHE_SYNC_AREAS": fk.AREA,
                 "CACHE_SYNC_PROGRESS": "off"}.items():
        monkeypatch.setenv(k, v)
    base = fk.workspace(tmp_path, name="base")
    crash.write_tree(base.area(), {"base.txt": b"base\n"})
    base.cli("push")
    ws = {n: base.sibling(n) for n in "ABCR"}
    for w in ws.values():
        w.cli("pull")
    for n in "ABC":
        crash.write_tree(ws[n].area(), {f"from-{n}.txt": f"worker {n}\n".encode()})

    s = Scheduler(script=[Script("B", "push:commit"), Script("A"), Script("C"), Script("R"),
                          Script("B"), Script("R2")])
    for n in "ABC":
        s.add(n, lambda w=ws[n]: w.cli("push"))
    s.add("R", lambda: ws["R"].cli("pull"))
    s.add("R2", lambda: ws["R"].cli("pull"))
    with stepped(s):
        errors = s.run()
    assert not any(errors.values()), s.errors()
    store = fk.open_raw_store(base)
    pushed = {CacheState(ws[n].root).synced_heads(fk.AREA, store.url)[0]: n for n in "ABC"}
    heads = [h.id for h in History(list_refs(store, fk.AREA)).heads]
    assert [pushed[h] for h in heads] == ["B", "A", "C"], s.log  # B sorts first, lands last
    got = sorted(p for p, e in ws["R"].tree().items() if e.kind == "file")
    assert got == ["base.txt", "from-A.txt", "from-B.txt", "from-C.txt"]


@pytest.mark.timeout(300)
def test_two_processes_on_one_root(tmp_path, moto):
    bucket = moto.make_bucket()
    with FaultProxy(moto.endpoint, seed=23, max_seconds=250) as proxy:
        ws = fk.workspace(tmp_path, f"s3://{bucket}/cache",
                          {**moto.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint})
        fk.make_tree(ws.area(), 23, files=30)
        want = ws.tree()
        # a slow push holds the lock for a while: one PUT at a time, 1 s each, so that two
        # more CLI starts (seconds each on a loaded machine) still find it running
        proxy.add("delay", method="PUT", seconds=1.0)
        first = subprocess.Popen(ws.argv("push"), env={**ws.env, "CACHE_SYNC_TRANSFERS": "1"},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until_count(lambda: proxy.request_count, 1, 30)
            impatient = {**ws.env, "CACHE_SYNC_LOCK_TIMEOUT": "0"}  # a wait would end in 0
            second = ws.run("pull", ok=False, env=impatient)
            third = ws.run("push", ok=False, env=impatient)
            for r in (second, third):
                assert r.returncode == 75, (r.returncode, r.stderr)
                assert f"pid {first.pid}" in r.stderr and str(ws.root) in r.stderr
                assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
            # Told to wait, a second process waits for the lock and then does its work.
            waiter = ws.run("push", ok=False, env={**ws.env, "CACHE_SYNC_LOCK_TIMEOUT": "120"})
            assert waiter.returncode == 0, waiter.stderr
        finally:
            _out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        # "up to date": the waiter ran only after the first push had committed everything
        assert "up to date" in waiter.stdout, waiter.stdout
    assert crash.diff_trees(want, ws.tree(), mtime=True) == []
    fresh = fk.workspace(tmp_path, ws.remote, moto.env(), name="fresh")
    fresh.run("pull")
    assert crash.diff_trees(want, fresh.tree(), mtime=True) == []


@pytest.mark.skipif(not fk.long_mode(), reason="long mode: FAULTS_LONG=1 (8 real installs)")
@pytest.mark.timeout(600)
def test_eight_workers_install_packages_through_faults(tmp_path, moto):
    """The issue's scenario with the real installer: eight workers pull, each runs
    ``cache-sync install`` of a different local wheel (which pushes packages/ afterwards),
    through the fault proxy with conditional writes unavailable; a final pull has every
    package importable from packages/."""
    from tests.support.pkgindex import hermetic_env, make_wheel

    bucket = moto.make_bucket()
    wheels = [make_wheel(tmp_path / "wheels", f"fzpkg{i}", "1.0",
                         {f"fzpkg{i}/__init__.py": f"VALUE = {i}\n"}) for i in range(WORKERS)]
    seed = fk.workspace(tmp_path, f"s3://{bucket}/cache", moto.env(), name="seed")
    fk.make_tree(seed.area(), 24, files=10, big=0)
    seed.run("push")
    errors: list[str] = []
    with FaultProxy(moto.endpoint, seed=24, max_seconds=550) as proxy:
        proxy.add("reject_conditional")
        proxy.add("status", prob=0.05, status=500)
        proxy.add("reset", method="GET", prob=0.04)

        def work(i: int) -> None:
            env = {**hermetic_env(tmp_path / f"h{i}"), **seed.env,
                   "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint, "CACHE_SYNC_RETRIES": "12"}
            ws = fk.Workspace(tmp_path / f"worker{i}", seed.remote, env)
            try:
                ws.run("pull", timeout=300)
                ws.run("install", "--attempts", "2", str(wheels[i]), timeout=300)
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                errors.append(f"worker {i}: {exc}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [], "\n".join(errors)
    assert proxy.conditional_requests() == []
    final = seed.sibling("final")
    final.run("pull")
    for i in range(WORKERS):
        init = final.area() / f"fzpkg{i}" / "__init__.py"
        assert init.read_text() == f"VALUE = {i}\n", f"worker {i}'s package is missing"
    fk.record("eight_workers_install", workers=WORKERS, requests=proxy.request_count,
              **{f"fault_{k}": v for k, v in proxy.injected.items()})
