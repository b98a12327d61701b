"""Free-space floors for the cache root and the OS disk, checked before an install or a run and
watched while an installer runs (seed 002: a 4 GB OS disk filled during pip's download phase).

A floor is the free space that must *remain*: below it we stop before the disk is full rather
than after, when pip's error would be an unhelpful half-written wheel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cache_sync.config import Settings
from cache_sync.errors import DiskSpaceError
from cache_sync.fsutil import free_bytes, nearest_existing
from cache_sync.progress import human_bytes


@dataclass(frozen=True)
class Floor:
    label: str
    path: Path
    min_free: int


def floors(settings: Settings) -> list[Floor]:
    """The cache root's and the OS disk's floors; one floor (the larger) when they share a
    filesystem, so the message names the right path."""
    root = Floor("cache root", nearest_existing(settings.root), settings.min_free)
    osd = Floor("OS disk", nearest_existing(Path(settings.os_disk)), settings.min_free_os)
    if os.stat(root.path).st_dev == os.stat(osd.path).st_dev:
        return [root if root.min_free >= osd.min_free else osd]
    return [root, osd]


def check(floors_: list[Floor], *, action: str = "install") -> None:
    """Raise ``DiskSpaceError`` naming the path and the numbers if any floor is crossed."""
    for f in floors_:
        free = free_bytes(f.path)
        if free < f.min_free:
            raise DiskSpaceError(
                f"{f.label} {f.path} has {human_bytes(free)} free, below the floor of "
                f"{human_bytes(f.min_free)}; refusing to {action}",
                hint="free space, point --root at a larger disk, or lower CACHE_SYNC_MIN_FREE"
                if f.label == "cache root" else "free space or lower CACHE_SYNC_MIN_FREE_OS",
            )


class Watch:
    """Polls the floors in a thread while a child process runs; on a breach it records the
    message and calls ``on_breach`` (which kills the installer)."""

    def __init__(self, floors_: list[Floor], on_breach: Callable[[], None],
                 interval: float = 0.5) -> None:
        self.floors = floors_
        self.on_breach = on_breach
        self.interval = interval
        self.breach: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="diskguard", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                check(self.floors, action="continue")
            except DiskSpaceError as exc:
                self.breach = str(exc)
                self.on_breach()
                return

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
