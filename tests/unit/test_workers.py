"""Liveness of workers sharing a root: who may sweep whose scratch dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from cache_sync.config import Settings
from cache_sync.workers import is_stale, marker_path, scratch_dirs, session, sweep_stale
from tests.support.waits import wait_until


def settings(tmp_path, worker="me", grace="900"):
    return Settings.from_env({"CACHE_SYNC_ROOT": str(tmp_path), "CACHE_SYNC_WORKER": worker,
                              "CACHE_SYNC_WORKER_GRACE": grace, "HOME": str(tmp_path)})


def test_age_decides_across_hosts_pid_on_this_host(tmp_path):
    s = settings(tmp_path)
    now = time.time()
    for w in ("other-host-1", "fresh-host-2", "nomarker-3"):
        scratch_dirs(s, w)[0].mkdir(parents=True)
    for w in ("other-host-1", "fresh-host-2"):
        marker_path(s, w).parent.mkdir(parents=True, exist_ok=True)
        marker_path(s, w).touch()
    os.utime(marker_path(s, "other-host-1"), (now - 1000, now - 1000))
    os.utime(scratch_dirs(s, "nomarker-3")[0], (now - 1000, now - 1000))
    assert is_stale(s, "other-host-1", now) and is_stale(s, "nomarker-3", now)
    assert not is_stale(s, "fresh-host-2", now) and not is_stale(s, "me", now + 10**6)
    # this host: a dead pid is dead at once, a live one is alive however old its marker
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    assert is_stale(s, f"{host}-{gone.pid}", now)
    mine = f"{host}-{os.getpid()}"
    scratch_dirs(s, mine)[0].mkdir(parents=True)
    os.utime(scratch_dirs(s, mine)[0], (now - 5000, now - 5000))
    assert not is_stale(s, mine, now)
    assert sorted(sweep_stale(s, now)) == ["nomarker-3", "other-host-1"]
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["fresh-host-2", mine]


def test_owner_session_cleans_its_own_a_nested_one_leaves_them(tmp_path):
    s = settings(tmp_path, grace="4")
    with session(s, owner=True):
        (scratch_dirs(s)[0] / "f").write_text("x")
        with session(s, owner=False):  # a `cache-sync install` run by the worker's child
            pass
        assert (scratch_dirs(s)[0] / "f").exists() and marker_path(s).exists()
        before = marker_path(s).stat().st_mtime
        # the heartbeat refreshes the marker every grace/4 = 1 s
        assert wait_until(lambda: marker_path(s).stat().st_mtime > before, 30)
    assert not scratch_dirs(s)[0].exists() and not marker_path(s).exists()
