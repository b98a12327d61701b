"""Workers sharing one cache root (a network volume): per-worker scratch dirs and liveness.

Every worker has its own ephemeral dirs, ``<root>/tmp/<worker>/`` (TMPDIR) and
``<root>/build/<worker>/`` (PIP_BUILD_DIR); ``worker`` is ``CACHE_SYNC_WORKER``, else
``RUNPOD_POD_ID``, else ``<host>-<pid>`` (see ``config._fleet_settings``). A worker only ever
wipes its own dirs, and a dead worker's dirs once they are provably stale:

- while alive, a worker refreshes its liveness marker ``<root>/.cache-sync/workers/<worker>``
  (mtime) every ``grace/4`` seconds (at most 60 s) from a daemon thread;
- a dir is stale when its worker's marker (or, without one, the dir itself) is older than
  ``CACHE_SYNC_WORKER_GRACE`` (default 900 s). Age is the only test that works across hosts:
  a pid means nothing on another machine, and a marker nobody refreshes for 15 minutes
  belongs to a worker that is gone (killed, or its container stopped);
- on the same host, a ``<host>-<pid>`` worker is alive exactly while its pid exists.

Clock skew between hosts shifts ages by the skew, which the 15-minute default dwarfs; a
worker paused for longer than the grace (a stopped VM) may find its scratch dir gone, which
costs its temporary files, never cache content (areas are never swept).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cache_sync.config import (
    EPHEMERAL_DIRS,
    STATE_DIR,
    Settings,
    process_worker_id,
    sanitize_worker,
)

log = logging.getLogger(__name__)


def scratch_dirs(settings: Settings, worker: str | None = None) -> list[Path]:
    """``tmp/<worker>`` and ``build/<worker>``."""
    return [settings.root / name / (worker or settings.worker) for name in EPHEMERAL_DIRS]


def marker_path(settings: Settings, worker: str | None = None) -> Path:
    return settings.root / STATE_DIR / "workers" / (worker or settings.worker)


def touch_marker(settings: Settings) -> None:
    path = marker_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _same_host_pid(worker: str) -> int | None:
    host, _, pid = worker.rpartition("-")
    if host == sanitize_worker(socket.gethostname()) and pid.isdigit():
        return int(pid)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def is_stale(settings: Settings, worker: str, now: float | None = None) -> bool:
    """Whether ``worker``'s scratch dirs may be removed by someone else."""
    if worker == settings.worker:
        return False
    pid = _same_host_pid(worker)
    if pid is not None:  # this host: the process table knows (a reused pid only delays)
        return not _pid_alive(pid)
    now = time.time() if now is None else now
    ages = []
    for path in [marker_path(settings, worker), *scratch_dirs(settings, worker)]:
        with contextlib.suppress(OSError):
            ages.append(now - path.lstat().st_mtime)
            break  # the marker, when there is one, is the authority
    return bool(ages) and min(ages) > settings.worker_grace


def sweep_stale(settings: Settings, now: float | None = None) -> list[str]:
    """Remove the scratch dirs and markers of dead workers; returns their names."""
    seen: set[str] = set()
    for parent in [settings.root / name for name in EPHEMERAL_DIRS] + [
            settings.root / STATE_DIR / "workers"]:
        with contextlib.suppress(OSError):
            seen.update(entry.name for entry in parent.iterdir())
    swept = []
    for worker in sorted(seen):
        if not is_stale(settings, worker, now):
            continue
        for path in scratch_dirs(settings, worker):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()  # a file left by an old version directly in tmp/
        with contextlib.suppress(OSError):
            marker_path(settings, worker).unlink()
        swept.append(worker)
    if swept:
        log.info("removed the scratch dirs of %d dead worker(s): %s", len(swept),
                 ", ".join(swept))
    return swept


def wipe_own(settings: Settings, recreate: bool) -> None:
    for path in scratch_dirs(settings):
        shutil.rmtree(path, ignore_errors=True)
        if recreate:
            path.mkdir(parents=True, exist_ok=True)


class _Heartbeat(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.every = min(60.0, settings.worker_grace / 4)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(OSError):
                touch_marker(self.settings)


@contextlib.contextmanager
def session(settings: Settings, *, owner: bool) -> Iterator[None]:
    """Be a live worker on ``settings.root`` for the duration: marker kept fresh, dead
    workers' dirs swept. ``owner`` (``run``, or a standalone command whose worker id is its
    own process) starts with empty scratch dirs and removes them and the marker at the end; a
    nested command (a child of ``run`` that inherited ``CACHE_SYNC_WORKER``) leaves them to
    its owner."""
    touch_marker(settings)
    sweep_stale(settings)
    if owner:
        wipe_own(settings, recreate=True)
    else:
        for path in scratch_dirs(settings):
            path.mkdir(parents=True, exist_ok=True)
    beat = _Heartbeat(settings)
    beat.start()
    try:
        yield
    finally:
        beat.stop.set()
        if owner:
            wipe_own(settings, recreate=False)
            with contextlib.suppress(OSError):
                marker_path(settings).unlink()


def owns_its_id(settings: Settings) -> bool:
    """True when the worker id is this very process (not inherited, not the pod's)."""
    return settings.worker == process_worker_id()
