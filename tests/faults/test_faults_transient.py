"""Transient and permanent S3 faults through the fault proxy in front of a real moto server
(DESIGN §2.3, issue 2 property 7): every transient kind is retried and the result is exact;
permanent ones fail fast with a message naming the object; corrupt bytes never reach a final
path; Retry-After is honoured; a stalled connection is cut by the read timeout."""

from __future__ import annotations

import time

import pytest

from tests.support import crash
from tests.support import faultkit as fk
from tests.support.faultproxy import FaultProxy

TRANSIENT = {
    "status500": {"kind": "status", "status": 500},
    "slowdown": {"kind": "slowdown", "seconds": 0},
    "reset": {"kind": "reset", "fraction": 0.3},
    "truncate": {"kind": "truncate", "fraction": 0.6},
    "stall": {"kind": "stall", "seconds": 30, "after_headers": True},
    "corrupt": {"kind": "corrupt", "range": None},
    "delay": {"kind": "delay", "seconds": 0.5},
}


@pytest.fixture
def env(tmp_path, moto):
    bucket = moto.make_bucket()
    writer = fk.workspace(tmp_path, f"s3://{bucket}/cache", moto.env(), name="writer")
    fk.make_tree(writer.area(), 51, files=40, big=2)
    writer.run("push")
    proxy = FaultProxy(moto.endpoint, seed=51, max_seconds=240).start()
    reader = writer.sibling("reader")
    reader.env.update({"CACHE_SYNC_ENDPOINT_URL": proxy.endpoint,
                       "CACHE_SYNC_READ_TIMEOUT": "2", "CACHE_SYNC_RETRIES": "6",
                       "CACHE_SYNC_RETRY_MAX": "20"})  # Retry-After is capped by it
    yield writer, reader, proxy
    proxy.stop()


def _long_only(names: list[str], long: set[str]) -> list:
    """All names in long mode (FAULTS_LONG=1); the default run skips those in ``long``."""
    return [pytest.param(n, marks=[] if fk.long_mode() or n not in long else
                         [pytest.mark.skip(reason="long mode: FAULTS_LONG=1")]) for n in names]


@pytest.mark.parametrize("name", _long_only(sorted(TRANSIENT), {"delay"}))
def test_pull_survives_transient_faults(env, name):
    writer, reader, proxy = env
    rule = dict(TRANSIENT[name])
    proxy.add(rule.pop("kind"), method="GET", key="/objects/", times=3, **rule)
    r = reader.run("pull", timeout=200)
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []
    assert proxy.injected[TRANSIENT[name]["kind"]] >= 1, (proxy.injected, r.stderr)
    fk.record(f"transient_pull_{name}", **{f"fault_{k}": v for k, v in proxy.injected.items()})


@pytest.mark.parametrize("name", _long_only(["status500", "slowdown", "reset",
                                             "status500_after_forward"],
                                            {"status500", "slowdown"}))
def test_push_survives_transient_faults(env, name):
    writer, reader, proxy = env
    reader.run("pull")
    fk.mutate(reader.area(), 52)
    fk.make_tree(reader.area() / "extra", 53, files=10, big=1)
    want = reader.tree()
    if name == "status500_after_forward":  # stored upstream, the client is told it failed
        proxy.add("status", method="PUT", forward=True, times=3)
    elif name == "reset":
        proxy.add("reset", method="PUT", times=3)
    else:
        rule = dict(TRANSIENT[name])
        proxy.add(rule.pop("kind"), method="PUT", times=3, **rule)
    reader.run("push", timeout=200)
    assert sum(proxy.injected.values()) >= 1
    fresh = writer.sibling("fresh")
    fresh.run("pull")
    assert crash.diff_trees(want, fresh.tree(), mtime=True) == []
    fk.audit_store(fresh)
    fk.record(f"transient_push_{name}", **{f"fault_{k}": v for k, v in proxy.injected.items()})


def test_retry_after_is_honoured(env):
    _writer, reader, proxy = env
    proxy.add("slowdown", method="GET", key="/objects/", seconds=2, times=1)
    t0 = time.monotonic()
    reader.run("pull")
    assert time.monotonic() - t0 >= 2.0
    assert proxy.injected["slowdown"] == 1


@pytest.mark.parametrize("status,word", [(403, "denied"), (404, "not found")])
def test_permanent_fault_fails_fast_naming_the_object(env, status, word):
    _writer, reader, proxy = env
    proxy.add("status", method="GET", key="/objects/", status=status)
    r = reader.run("pull", ok=False, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "objects/" in line, line
    assert word in line.lower(), line
    get_objects = [s for s in proxy.requests if "/objects/" in s.path]
    assert len(get_objects) <= 8, f"{len(get_objects)} GETs for a permanent fault"
    assert not [p for p in reader.tree() if fk.is_temp(p)]


def test_corrupt_every_time_is_an_integrity_error(env):
    writer, reader, proxy = env
    proxy.add("corrupt", method="GET", key="/objects/", range=None)
    r = reader.run("pull", ok=False, timeout=200)
    assert r.returncode == 5, r.stderr
    line = r.stderr.strip()
    assert "corrupt" in line and "object" in line, line
    crash.assert_no_partial(reader.area(), [writer.tree()], is_temp=fk.is_temp)
    assert not [p for p in reader.tree() if fk.is_temp(p)]
    proxy.clear()
    reader.run("pull")
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []


def test_corrupt_manifest_in_transit_does_not_poison_the_cache(env):
    """A manifest damaged on the wire once: the pull may fail, but the damage must not be
    cached locally so that every later pull fails too."""
    writer, reader, proxy = env
    proxy.add("corrupt", method="GET", key="/snapshots/", range=False, times=1)
    first = reader.run("pull", ok=False)
    assert "Traceback" not in first.stderr
    second = reader.run("pull", ok=False)
    assert second.returncode == 0, f"one corrupt transfer broke the cache: {second.stderr}"
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []
