"""How a pull changes an area: stage everything, then a short journaled final phase
(``docs/design.md`` section 5.3).

1. *Stage.* Every file the pull writes is fetched (or copied from an unchanged local file)
   into ``<root>/.cache-sync/stage/<area>/<path>``, verified, and given its mode and mtime.
   The area is not touched: a failure here (a corrupt or missing object, a full disk, a kill)
   leaves it exactly as it was, and the stage is removed.
2. *Final phase.* The new state is written as ``<area>.state.next.zst``, then the journal of
   operations ``<area>.apply.json``; then the operations run in order: removals of what is in
   the way, new directories, renames out of the stage, symlinks, mode/mtime fixes, removals
   of paths the snapshot deleted, directory modes. Then the next state becomes the state, the
   stat index is rebuilt from ``lstat`` and the journal is deleted.

Every operation is idempotent and a removal names the kind of what it removes, so a kill
anywhere in phase 2 is rolled forward by the next command that opens the root
(``open_root``: the root's lock, then ``roll_forward``): the area ends exactly at the new
snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache_sync import checkpoints
from cache_sync.fsutil import TMP_PREFIX, copy_atomic, hash_file, symlink_atomic, write_atomic
from cache_sync.local_cache import CacheState, cache_lock
from cache_sync.plan import IndexRecord, LocalItem, PullPlan, index_record
from cache_sync.snapshot import Entry
from cache_sync.unitplace import undo_placing

if TYPE_CHECKING:  # the transfer engine is imported by the pull that fetches, not by a lock
    from cache_sync.transfer import Fetcher
    from cache_sync.unitplace import UnitPlacer

log = logging.getLogger("cache_sync.staging")
JOURNAL = ".apply.json"
PLACING = ".placing.json"  # a cold pull placing units before its journal (design 5.4)
OP_KINDS = ("rm", "mkdir", "tree", "mv", "ln", "meta", "dir")


@dataclass(frozen=True)
class Op:
    """One operation of the final phase (design 5.3). In the journal it is a JSON list, as
    ``to_row`` writes it: ``["rm", path, kind-removed]``, ``["mkdir", path]``, ``["tree", ""]``,
    ``["mv", path]``, ``["ln", path, target, mtime_ns]``, ``["meta"|"dir", path, mode,
    mtime_ns]``."""

    kind: str
    path: str
    removes: str | None = None  # rm: the kind ("f", "d", "l") of what it removes, or None
    target: str = ""  # ln
    mode: int = 0  # meta, dir
    mtime_ns: int = 0  # ln, meta, dir

    def to_row(self) -> list[Any]:
        if self.kind == "rm":
            return ["rm", self.path, self.removes]
        if self.kind == "ln":
            return ["ln", self.path, self.target, self.mtime_ns]
        if self.kind in ("meta", "dir"):
            return [self.kind, self.path, self.mode, self.mtime_ns]
        return [self.kind, self.path]

    @classmethod
    def from_row(cls, row: Any) -> Op:
        """An operation read back from a journal; ValueError for anything else."""
        if not (isinstance(row, list) and len(row) >= 2 and row[0] in OP_KINDS
                and isinstance(row[1], str)):
            raise ValueError(f"not a final-phase operation: {str(row)[:100]!r}")
        kind, path = row[0], row[1]
        try:
            if kind == "rm":
                return cls("rm", path, removes=row[2])
            if kind == "ln":
                return cls("ln", path, target=str(row[2]), mtime_ns=int(row[3]))
            if kind in ("meta", "dir"):
                return cls(kind, path, mode=int(row[2]), mtime_ns=int(row[3]))
        except (IndexError, TypeError) as exc:
            raise ValueError(f"malformed final-phase operation {str(row)[:100]!r}") from exc
        return cls(kind, path)


def stage_dir(cache: CacheState, area: str, area_dir: Path) -> Path:
    """Inside the cache root, on the area's filesystem (renames out of it are atomic). An area
    that is a mount point of its own stages inside itself, under a temporary name."""
    d = cache.dir / "stage" / area
    probe = area_dir if area_dir.exists() else area_dir.parent
    d.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(d.parent).st_dev != os.stat(probe).st_dev:
        d = area_dir / f"{TMP_PREFIX}stage"
    return d


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Staged:
    paths: list[str] = field(default_factory=list)  # rel paths waiting in the stage
    fetched: int = 0
    requests: int = 0


def into_empty_area(plan: PullPlan, local: dict[str, LocalItem], stage: Path,
                    area_dir: Path) -> bool:
    """A cold pull: no file in the area (``run`` makes ``packages/bin/`` for PATH), and a
    stage outside it (design 5.4 places units early only then: undoing it is emptying the
    area)."""
    return (all(item.kind == "d" for item in local.values()) and not plan.remove
            and not plan.check and not _inside(stage, area_dir))


def stage_files(plan: PullPlan, area_dir: Path, stage: Path,
                make_fetcher: Callable[[str, Callable[[Entry], None]], Fetcher],
                placer: UnitPlacer | None = None) -> Staged:
    """Phase 1: every file the plan writes, verified, into ``stage``. Reads the area, never
    writes it -- but for a ``placer`` (a cold pull of packages/, design 5.4): then the
    metadata is fetched first, the units planned, and each placed as soon as its files are
    staged. ``make_fetcher(stage root, on_file)`` builds the fetcher."""
    root = str(area_dir)
    clear(stage)
    stage.mkdir(parents=True)
    # Local files of the right size whose hash the index does not know: hash, then decide.
    for e in plan.check:
        if hash_file(os.path.join(root, e.path)) == e.digest:
            plan.meta.append(e)
        else:
            plan.fetch.append(e)
    plan.check = []
    # The directories of fetched files are made by the fetcher's threads as they create the
    # first file in each (AtomicFile in_place): thousands of mkdirs (0.1-0.7 ms each on a
    # journaled disk) no longer run one by one before the first request. Copies are made
    # here: their directories first.
    dirs = {os.path.dirname(e.path) for e in (*(e for es in plan.dups.values() for e in es),
                                              *(e for e, _ in plan.copies))}
    if placer is not None:  # the empty directories too: a unit's empty ones move with it
        filled = {""}
        for e in plan.fetch:
            d = os.path.dirname(e.path)
            while d not in filled:
                filled.add(d)
                d = os.path.dirname(d)
        dirs.update(d.path for d in plan.mkdirs if d.path not in filled)
    for d in sorted(dirs):
        os.makedirs(os.path.join(str(stage), d), exist_ok=True)
    out = Staged()
    active = [placer] if placer is not None else []

    def on_file(e: Entry) -> None:
        out.paths.append(e.path)
        for p in active:
            p.file_done(e)

    fetcher = make_fetcher(str(stage), on_file)
    sroot = str(stage)
    copies = plan.copies
    try:
        if placer is None:
            fetcher.fetch(plan.fetch)
        else:
            from cache_sync.unitplan import metadata_first

            for e, src in copies:  # local and cheap: first, so no unit waits for them
                _copy(os.path.join(root, src) if src else "", os.path.join(sroot, e.path), e)
                on_file(e)
            copies = []
            first, rest = metadata_first(plan.fetch, plan.dups)
            fetcher.fetch(first)
            if not placer.prepare():
                active.clear()
            fetcher.fetch(rest, placer.rank if active and placer.need else None)
    finally:
        out.requests = fetcher.requests
    for e, src in copies:
        _copy(os.path.join(root, src) if src else "", os.path.join(sroot, e.path), e)
        out.paths.append(e.path)
    out.fetched = fetcher.fetched
    checkpoints.reached("pull:staged")
    return out


def _copy(src: str, final: str, e: Entry) -> None:
    """A verified copy of the local file ``src`` (or an empty file) at ``final``, with mode
    and mtime."""
    if src:
        copy_atomic(src, final, mode=e.mode, mtime_ns=e.mtime_ns, digest=e.digest)
    else:
        write_atomic(final, b"", mode=e.mode, mtime_ns=e.mtime_ns)


def _kind(path: str) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f"


def build_ops(plan: PullPlan, area_dir: Path, staged: list[str],
              local: dict[str, LocalItem], stage: Path | None = None) -> list[Op]:
    """The final phase as data. ``staged``: paths whose new file waits in the stage;
    ``local``: the scan the plan was made from. Into an empty area (a cold pull) whose
    ``stage`` lies outside it, the whole stage is moved as one directory ("tree") instead of
    one rename per file: on a network volume, where each rename is a round trip, that is most
    of a cold pull's final phase."""
    root = str(area_dir)
    ops: list[Op] = []
    for rel in plan.remove:  # in the way of a new entry of another kind
        ops.append(Op("rm", rel, removes=_kind(os.path.join(root, rel))))
    mkdirs = [Op("mkdir", d.path) for d in sorted(plan.mkdirs, key=lambda d: d.path)]
    if (not local and not plan.remove and staged and stage is not None
            and not _inside(stage, area_dir)):
        ops += [Op("tree", ""), *mkdirs]  # the area must still be empty when the tree moves
    else:
        ops += [*mkdirs, *(Op("mv", rel) for rel in sorted(staged))]
    ops += [Op("ln", e.path, target=e.target or "", mtime_ns=e.mtime_ns) for e in plan.links]
    ops += [Op("meta", e.path, mode=e.mode, mtime_ns=e.mtime_ns) for e in plan.meta]
    for rel in plan.remove_late:  # deleted in the snapshot: only now that all is in place
        ops.append(Op("rm", rel, removes=_kind(os.path.join(root, rel))))
    # Directory modes and times last, deepest first (writing into a directory changes them);
    # when nothing else changes, only those that differ.
    for d in sorted(plan.dirs, key=lambda d: -d.path.count("/")):
        cur = local.get(d.path)
        if ops or cur is None or (cur.mode, cur.mtime_ns) != (d.mode, d.mtime_ns):
            ops.append(Op("dir", d.path, mode=d.mode, mtime_ns=d.mtime_ns))
    return ops


def run_ops(area_dir: Path, stage: Path, ops: list[Op]) -> int:
    """Carry out (or finish) a final phase; returns the number of paths removed."""
    root = str(area_dir)
    removed = 0
    area_dir.mkdir(parents=True, exist_ok=True)
    for op in ops:
        checkpoints.reached("pull:final-op")
        kind, rel = op.kind, op.path
        p = os.path.join(root, rel)
        if kind == "rm":
            # Only what was there when the journal was written: on a second run the path may
            # already hold the new entry (a directory where a file was), which must stay.
            if op.removes is not None and _kind(p) == op.removes:
                if op.removes == "d":
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
                removed += 1
        elif kind == "mkdir":
            os.makedirs(p, exist_ok=True)
        elif kind == "tree":
            move_tree(stage, area_dir)
        elif kind == "mv":
            src = os.path.join(str(stage), rel)
            if os.path.lexists(src):  # else moved by the run that was killed
                os.replace(src, p)
        elif kind == "ln":
            symlink_atomic(op.target, p, op.mtime_ns)
        elif kind in ("meta", "dir"):
            os.chmod(p, op.mode)
            os.utime(p, ns=(op.mtime_ns, op.mtime_ns))
        else:
            raise ValueError(f"unknown operation {kind!r} in the pull journal")
    return removed


def _inside(path: Path, parent: Path) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(parent)]) == \
        os.path.abspath(parent)


def move_tree(stage: Path, area_dir: Path) -> None:
    """Everything in ``stage`` into ``area_dir``: one rename of the stage over the area when
    the area is an empty directory (rename(2) replaces an empty directory atomically), else
    (something appeared in the area, or a killed run moved part of it) file by file, keeping
    what is already in the area. Idempotent: a run cut off anywhere is finished by the next."""
    if not stage.exists():
        return  # moved by the run that was killed
    try:
        os.rename(stage, area_dir)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EXDEV, errno.EBUSY):
            raise
    sroot = str(stage)
    for dirpath, _dirs, files in os.walk(sroot):
        rel_dir = os.path.relpath(dirpath, sroot)
        dest_dir = os.path.join(str(area_dir), rel_dir) if rel_dir != "." else str(area_dir)
        os.makedirs(dest_dir, exist_ok=True)
        for name in files:
            os.replace(os.path.join(dirpath, name), os.path.join(dest_dir, name))


def clean_link_tmps(area_dir: Path, ops: list[Op]) -> None:
    """Remove the temporary names a killed final phase can leave in the area: ``ln`` makes
    each symlink under a temporary name in the link's directory and renames it into place, so
    a kill between the two leaves one behind. (An up-to-date pull does not scan the area, so
    nothing else would ever remove it.) Only non-directories are removed: an area that is a
    mount point of its own stages in a temporary-named directory inside itself."""
    for d in {os.path.dirname(op.path) for op in ops if op.kind == "ln"}:
        where = os.path.join(str(area_dir), d)
        try:
            names = [n for n in os.listdir(where) if n.startswith(TMP_PREFIX)]
        except OSError:
            continue
        for name in names:
            p = os.path.join(where, name)
            if _kind(p) != "d":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)


def journal_path(cache: CacheState, area: str) -> Path:
    return cache.dir / f"{area}{JOURNAL}"


def final_phase(cache: CacheState, area: str, area_dir: Path, stage: Path, ops: list[Op],
                target: dict[str, Entry], local_only: list[str]) -> int:
    """Write the journal (the state to reach is already saved as next), run it, finish.
    ``target``: what the area becomes; ``local_only``: its files whose content the state does
    not record (local changes kept by the merge), left out of the index a roll-forward
    rebuilds from the state."""
    removed = 0
    if ops:
        doc = {"area": area, "area_dir": str(area_dir), "stage": str(stage),
               "ops": [op.to_row() for op in ops], "local_only": local_only}
        write_atomic(journal_path(cache, area), json.dumps(doc).encode(), fsync=True)
        # The journal is the commit point: from here on a kill is rolled forward, never
        # undone, so units placed early (5.4) stay.
        placing_path(cache, area).unlink(missing_ok=True)
        removed = run_ops(area_dir, stage, ops)
        checkpoints.reached("pull:final-done")
    else:
        placing_path(cache, area).unlink(missing_ok=True)
    finish(cache, area, area_dir, stage, target)
    return removed


def placing_path(cache: CacheState, area: str) -> Path:
    return cache.dir / f"{area}{PLACING}"


def finish(cache: CacheState, area: str, area_dir: Path, stage: Path,
           target: dict[str, Entry] | None = None, local_only: Sequence[str] = ()) -> None:
    """The area now holds the next state: make it the state, with an index of its files
    (of ``target``, or of the state's entries but ``local_only``)."""
    state = cache.promote_next_state(area)
    if target is None and state is not None:
        target = cache.load_state(area, state.remote).entries
    if target is not None:
        cache.save_index(area, index_of(area_dir, target, frozenset(local_only)))
    clear(stage)
    with contextlib.suppress(FileNotFoundError):
        journal_path(cache, area).unlink()


def index_of(area_dir: Path, entries: dict[str, Entry], skip: frozenset[str] = frozenset()
             ) -> Iterator[tuple[str, IndexRecord]]:
    """Stat records of the files of ``entries`` (but ``skip``) as they are on disk now
    (taken after the renames, which change ctime), one at a time."""
    root = str(area_dir)
    for e in entries.values():
        if e.kind != "f" or e.path in skip:
            continue
        try:
            st = os.lstat(os.path.join(root, e.path))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == e.size:
            yield e.path, index_record(st, e.digest)


@contextlib.contextmanager
def open_root(root: Path, timeout: float = 0.0) -> Iterator[list[str]]:
    """The root, ready for a pull, push or verify: its lock taken (``local_cache.cache_lock``)
    and every final phase a killed pull left finished before anything else reads the areas.
    Yields the areas rolled forward."""
    with cache_lock(root, timeout):
        yield roll_forward(root)


def roll_forward(root: Path) -> list[str]:
    """Finish every final phase a killed pull left in ``root``; the areas it finished."""
    cache = CacheState(root)
    done = []
    for path in sorted(cache.dir.glob(f"*{JOURNAL}")):
        try:
            doc = json.loads(path.read_bytes())
            area, area_dir, stage = doc["area"], doc["area_dir"], doc["stage"]
            ops = [Op.from_row(row) for row in doc["ops"]]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable pull journal %s", path)
            continue
        log.warning("finishing the pull of %s that was cut off in its final phase", area)
        run_ops(Path(area_dir), Path(stage), ops)
        clean_link_tmps(Path(area_dir), ops)
        finish(cache, area, Path(area_dir), Path(stage), None, doc.get("local_only") or ())
        placing_path(cache, area).unlink(missing_ok=True)  # killed before it went
        done.append(area)
    for marker in sorted(cache.dir.glob(f"*{PLACING}")):
        try:
            area_dir = Path(json.loads(marker.read_bytes())["area_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable placement marker %s", marker)
            continue
        log.warning("undoing the cold pull into %s that was cut off while placing units",
                    area_dir)
        undo_placing(marker, area_dir)
    return done
