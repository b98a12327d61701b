"""Which areas are complete on disk, for a worker started before its pull finished.

``cache-sync run`` starts the worker as soon as the code areas (``packages/``, ``deps/``) are
pulled and keeps pulling the data areas (``models/``) meanwhile, so the worker's imports
overlap the model download. The worker learns when an area is complete from a small JSON
status file whose path ``run`` puts in the child's environment as ``CACHE_SYNC_READY_FILE``:

    {"pending": ["models"], "ready": ["packages", "deps"], "failed": {}}

``run`` rewrites it atomically (temp file + rename) as each background pull ends; an area
whose pull failed moves to ``failed`` with the error message. A process started without the
variable (a warm network volume, ``--no-pull``, the tests) has nothing to wait for.

The worker's side is :func:`wait`: it blocks until the areas it needs are complete and raises
:class:`AreaNotReady` when one failed or the timeout passed. Polling every 50 ms costs
nothing next to a model load and needs no inotify (network volumes do not deliver it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from cache_sync.fsutil import write_atomic

ENV_VAR = "CACHE_SYNC_READY_FILE"


class AreaNotReady(RuntimeError):
    """An area the worker needs did not arrive: its pull failed, or the wait timed out."""


def write(path: Path, pending: Iterable[str], ready: Iterable[str],
          failed: Mapping[str, str], units: Mapping[str, list[str]] | None = None) -> None:
    """Publish the status atomically: a reader sees the old file or the new one. ``units``:
    with ``run --unit-start``, what of ``packages/`` is still missing (design 5.4); ``pid``
    is the writer's (``run``'s): a reader stops waiting when it is gone."""
    doc: dict[str, object] = {"pending": sorted(pending), "ready": sorted(ready),
                              "failed": dict(failed), "pid": os.getpid()}
    if units is not None:
        doc["units"] = {"area": "packages", **units}
    write_atomic(path, json.dumps(doc).encode(), mkdir=True)


def read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def pending(area: str, environ: Mapping[str, str] | None = None) -> bool:
    """True while ``run`` is still pulling ``area`` for this process."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR)
    if not raw:
        return False
    status = read(Path(raw)).get("pending")
    return isinstance(status, list) and area in status


def wait(areas: Iterable[str], timeout: float | None = None,
         environ: Mapping[str, str] | None = None, poll: float = 0.05) -> float:
    """Block until every area in ``areas`` is complete; returns the seconds waited.

    Areas the status file does not list as pending or failed are complete (they were pulled
    before the worker started, or are not synced at all)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR)
    if not raw:
        return 0.0
    path, wanted, start = Path(raw), set(areas), time.monotonic()
    while True:
        status = read(path)
        failed = status.get("failed") or {}
        if isinstance(failed, dict):
            for area in sorted(wanted & set(failed)):
                raise AreaNotReady(f"the {area} area did not arrive: {failed[area]}")
        raw_pending = status.get("pending")
        pending = {str(a) for a in raw_pending} if isinstance(raw_pending, list) else set()
        if not wanted & pending:
            return time.monotonic() - start
        if timeout is not None and time.monotonic() - start > timeout:
            raise AreaNotReady(f"the {', '.join(sorted(wanted & pending))} area(s) "
                               f"still pulling after {timeout:g}s")
        time.sleep(poll)
