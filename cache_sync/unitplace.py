"""Per-distribution placement during a cold pull of ``packages/`` (docs/design.md section 5.4).

``run --unit-start`` starts the worker before ``packages/`` is whole: the pull fetches every
metadata file first, plans the units (``unitplan.py``), then, as the rest arrives, renames each
distribution out of the stage into the area as soon as all of its files are staged and
verified, and publishes which modules and distributions are still missing. The import hook
``run`` gives CMD's interpreter (``cache_sync/_importhook``) blocks an import until its
module's units are placed. Only into an empty area (a cold start): the area held nothing
before, so undoing a pull that fails or is killed before its final phase is emptying it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cache_sync import checkpoints
from cache_sync.fsutil import write_atomic
from cache_sync.snapshot import Entry
from cache_sync.storage import Store

if TYPE_CHECKING:  # the planner is imported by a cold pull only, not by every open_root
    from cache_sync.unitplan import UnitPlan

log = logging.getLogger("cache_sync.unitplace")


@dataclass
class EarlyStart:
    """What ``run`` asks of a pull of packages/: ``publish({"modules": [...], "dists":
    [...]})`` each time the set of what is missing shrinks (first once the units are planned);
    ``accept(stage)``, after the metadata pass, whether to place early at all (``run`` with
    ``--requirements`` checks them against the staged metadata)."""

    publish: Callable[[dict[str, list[str]]], None]
    accept: Callable[[Path], bool] = field(default=lambda _stage: True)
    need: Sequence[str] = ()  # top-level modules CMD imports, first first: fetched first
    # a recorded start's need order (5.5): ``learn(store)`` is called when a cold placement
    # begins and starts reading it; the call it returns gives it once the metadata is staged.
    # It goes before ``need``
    learn: Callable[[Store], Callable[[], Sequence[str]]] | None = None


class UnitPlacer:
    """Places the units of one cold pull; the fetcher's threads call :meth:`file_done`."""

    def __init__(self, early: EarlyStart, area_dir: Path, stage: Path,
                 target: dict[str, Entry], marker: Path, store: Store) -> None:
        self.early, self.area_dir, self.stage, self.target = early, area_dir, stage, target
        self.marker = marker
        self.plan: UnitPlan | None = None
        self.placed: set[str] = set()  # keys of the units in place
        self.roots: list[str] = []  # their roots, in the area now
        self._seen: set[str] = set()  # files staged before the plan was made
        self._left: dict[str, set[str]] = {}  # unit key -> its files not yet staged
        self._units_of: dict[str, list[str]] = {}  # file -> the keys of its units
        self._moved: set[str] = set()  # the roots in self.roots, as a set
        self._rank: dict[str, int] = {}  # file -> its need rank (absent: after every rank)
        self.need: list[str] = list(early.need)  # the need order, the learned one first
        self._learned = early.learn(store) if early.learn is not None else None
        self._lock = threading.Lock()

    def prepare(self) -> bool:
        """Plan the units from the staged metadata; False (and nothing placed, ever) when
        ``accept`` declines or no unit can go early."""
        sroot = str(self.stage)

        def read(e: Entry) -> bytes | None:
            try:
                with open(os.path.join(sroot, e.path), "rb") as f:
                    return f.read()
            except OSError:
                return None

        from cache_sync.unitplan import need_rank, plan_units

        if not self.early.accept(self.stage):
            return False
        plan = plan_units(self.target, read)
        if not plan.units:
            return False
        if self._learned is not None:
            from cache_sync.accessprofile import combine

            self.need = combine(self._learned(), self.early.need)
        ranks = need_rank(plan, self.need)
        with self._lock:
            self.plan = plan
            for u in plan.units:
                r = ranks.get(u.key)
                if r is not None:
                    for f in u.files:
                        self._rank[f] = min(r, self._rank.get(f, r))
                self._left[u.key] = set(u.files) - self._seen
                for f in u.files:
                    self._units_of.setdefault(f, []).append(u.key)
            self._publish()
            for key in [k for k, left in self._left.items() if not left]:
                del self._left[key]
                self._place(key)
        return True

    def rank(self, e: Entry) -> int:
        """Where ``e`` comes in the need order: the rank of the first module CMD imports that
        waits for it, after all of them if none does."""
        return self._rank.get(e.path, len(self.need))

    def file_done(self, e: Entry) -> None:
        """Called once per staged file, by many threads at once: no lock unless a unit is
        complete (set.discard and dict.get are atomic under the GIL; a lock per file made
        the fetcher's threads queue on it and on the GIL in turn, measured twice as slow)."""
        plan = self.plan
        if plan is None:  # the metadata pass (prepare runs after it, no fetch meanwhile)
            self._seen.add(e.path)
            return
        for key in self._units_of.get(e.path, ()):
            left = self._left.get(key)
            if left is None:
                continue  # placed already (a file shared by several units)
            left.discard(e.path)
            if not left:
                with self._lock:
                    if self._left.pop(key, None) is not None:  # one thread places it
                        self._place(key)

    def _place(self, key: str) -> None:
        assert self.plan is not None
        unit = next(u for u in self.plan.units if u.key == key)
        if not self.roots:
            # Before the area holds anything: a kill from here on is undone by the next
            # command that opens the root (staging.roll_forward).
            write_placing(self.marker, self.area_dir)
            self.area_dir.mkdir(parents=True, exist_ok=True)
        sroot, aroot = str(self.stage), str(self.area_dir)
        for r in unit.roots:  # code first, metadata last: a dist-info found means code there
            if r in self._moved:
                continue  # a file several units list, put in place by one of them
            parent = os.path.dirname(r)
            if parent:
                os.makedirs(os.path.join(aroot, parent), exist_ok=True)
            os.rename(os.path.join(sroot, r), os.path.join(aroot, r))
            self.roots.append(r)
            self._moved.add(r)
        self.placed.add(key)
        checkpoints.reached("pull:unit-placed")
        self._publish()

    def _publish(self) -> None:
        assert self.plan is not None
        modules, dists = self.plan.pending(self.placed)
        self.early.publish({"modules": modules, "dists": dists})

    def unplaced(self, staged: list[str]) -> list[str]:
        """The staged paths still in the stage (for the final phase)."""
        if not self.roots:
            return staged
        from cache_sync.unitplan import root_of_path

        roots = set(self.roots)
        return [p for p in staged if root_of_path(p, roots) is None]

    def rollback(self) -> None:
        """The pull failed before its final phase: the area is emptied again (it was empty)."""
        if self.roots:
            log.warning("pull of %s failed after placing %d distribution(s): removing them",
                        self.area_dir, len(self.placed))
            undo_placing(self.marker, self.area_dir)


def write_placing(marker: Path, area_dir: Path) -> None:
    """Written (and synced) before a cold pull puts its first unit in the area."""
    write_atomic(marker, json.dumps({"area_dir": str(area_dir)}).encode(), fsync=True)


def undo_placing(marker: Path, area_dir: Path) -> None:
    """Empty the area a cold pull was placing units in when it failed or was killed before
    its journal (it was empty when the pull began, under the root's lock), then drop the
    marker. Idempotent."""
    if area_dir.is_dir():
        for child in os.scandir(area_dir):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child.path)
    marker.unlink(missing_ok=True)
