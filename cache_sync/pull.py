"""pull: restore areas to the current state of the store.

Read order: list snapshots, merge the heads, validate, check free space, then write each file
under a temporary name and rename it into place after its hash is checked; paths the target
no longer has are removed only after every new file is in place; the local state is saved
last. A pull that fails or runs out of time leaves every final path complete (old or new) and
the previous state recorded, so the next pull simply carries on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from cache_sync.config import Settings
from cache_sync.contents import SmallFiles
from cache_sync.errors import DeadlineExceeded, DiskSpaceError
from cache_sync.fsutil import copy_atomic, free_bytes, hash_file, symlink_atomic, write_atomic
from cache_sync.local_cache import AreaState, CacheState, cache_lock, scan
from cache_sync.plan import (
    Index,
    LocalItem,
    PullPlan,
    index_record,
    local_entries,
    local_head,
    plan_pull,
)
from cache_sync.progress import Progress
from cache_sync.progress import enabled as progress_enabled
from cache_sync.repo import Manifests, current_state, open_checked, resolve_areas
from cache_sync.results import AreaReport
from cache_sync.snapshot import Entry
from cache_sync.storage import Store
from cache_sync.transfer import Fetcher
from cache_sync.units import merger

RESERVE = 64 << 20  # never fill the disk to the last byte


def check_deadline(deadline: float | None, area: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"pull of {area} cut off by its time budget; every file in place is complete "
            "and the next pull fetches the rest"
        )


def pull(settings: Settings, areas: Sequence[str] | None = None, *, dry_run: bool = False,
         deadline: float | None = None, discard_local: bool = False) -> list[AreaReport]:
    """Pull each area; ``deadline`` (``time.monotonic()``) bounds the whole call: it is
    checked before each area, before any file is written, and before each request. Local
    changes not yet pushed are merged in as the newest head unless ``discard_local``."""
    chosen = resolve_areas(settings, areas)
    settings.root.mkdir(parents=True, exist_ok=True)
    with cache_lock(settings.root, settings.lock_timeout):
        store = open_checked(settings)
        cache = CacheState(settings.root)
        manifests = Manifests(store, cache)
        return [_pull_area(settings, store, cache, manifests, a, dry_run, deadline,
                           discard_local) for a in chosen]


def _pull_area(settings: Settings, store: Store, cache: CacheState, manifests: Manifests,
               area: str, dry_run: bool, deadline: float | None,
               discard_local: bool = False) -> AreaReport:
    t0 = time.monotonic()
    check_deadline(deadline, area)
    rep = AreaReport(area, "pull", dry_run=dry_run)
    state = cache.load_state(area, store.url)
    heads, target = current_state(store, manifests, area, state, settings.area_path(area))
    rep.heads = heads
    if not heads:
        rep.up_to_date = True
        rep.note = "the store has no snapshot of this area"
        return rep
    rep.snapshot = heads[-1]
    area_dir = settings.area_path(area)
    local = scan(area_dir, clean_tmp=not dry_run)
    index = cache.load_index(area)
    remote = target  # what the state records: the store's merge, never local changes
    tracked = state.entries or {}  # paths the pull may remove when the target lacks them
    if state.entries is not None and discard_local:
        tracked = {**state.entries, **local_entries(local, index).entries}
    elif state.entries is not None:
        # Local changes not yet pushed take part in the merge as the newest head (5.2).
        head, rep.local_changes = local_head(state.entries, hashed_tree(area_dir, local, index))
        if rep.local_changes:
            target = merger(area, SmallFiles(store, area_dir))(state.entries, remote, head)
            tracked = {**state.entries, **head}
            rep.note = (f"kept {rep.local_changes} local change(s) not yet pushed; "
                        "push publishes them")
    plan = plan_pull(target, local, index, tracked)
    if dry_run:
        summary = plan.summary()
        rep.files, rep.bytes, rep.removed = (summary.fetch_files, summary.fetch_bytes,
                                             summary.remove)
        rep.up_to_date = plan.changes == 0
        return rep
    check_space(area, area_dir, plan.write_bytes)
    check_deadline(deadline, area)
    fresh = dict(plan.keep)
    fresh.update(apply(settings, store, plan, area, area_dir, rep, deadline))
    cache.save_index(area, {p: r for p, r in fresh.items() if p in target})
    cache.save_state(area, AreaState(store.url, tuple(heads), remote))
    rep.up_to_date = plan.changes == 0
    rep.seconds = time.monotonic() - t0
    return rep


def hashed_tree(area_dir: Path, local: dict[str, LocalItem], index: Index) -> dict[str, Entry]:
    """The local tree as entries, hashing the files the stat index cannot vouch for (those a
    push would read too) and recording them in ``index`` so that push does not read them
    again. A file that vanishes meanwhile is left out."""
    tree = local_entries(local, index)
    for item in tree.to_hash:
        path = str(area_dir / item.path)
        try:
            st = os.lstat(path)
            digest = hash_file(path)
        except FileNotFoundError:
            del tree.entries[item.path]
            continue
        index[item.path] = index_record(st, digest)
        e = tree.entries[item.path]
        tree.entries[item.path] = Entry(e.path, "f", e.mode, st.st_mtime_ns, st.st_size, digest)
    return tree.entries


def check_space(area: str, area_dir: Path, need: int) -> None:
    free = free_bytes(area_dir)
    if need and need + RESERVE > free:
        raise DiskSpaceError(
            f"pull of {area} needs {need:,} bytes plus a {RESERVE >> 20} MiB reserve "
            f"({need + RESERVE:,} in all) but {area_dir} has {free:,} free",
            hint="free space or point CACHE_SYNC_ROOT at a bigger disk",
        )


def apply(settings: Settings, store: Store, plan: PullPlan, area: str, area_dir: Path,
          rep: AreaReport, deadline: float | None = None) -> Index:
    """Carry out a pull plan; returns index records of every file it put in place."""
    root = str(area_dir)
    area_dir.mkdir(parents=True, exist_ok=True)
    index: Index = {}
    _remove(root, plan.remove, rep)
    for d in plan.mkdirs:
        os.makedirs(os.path.join(root, d.path), exist_ok=True)
    # Files of the right size whose hash the index does not know: hash before downloading.
    for e in plan.check:
        p = os.path.join(root, e.path)
        if hash_file(p) == e.digest:
            plan.meta.append(e)
        else:
            plan.fetch.append(e)
    total = len(plan.fetch) + len(plan.copies)
    progress = Progress(f"pull {area}", total, plan.fetch_bytes,
                        enabled=progress_enabled(settings.progress, settings.json))

    def done(e: Entry, final: str, st: os.stat_result) -> None:
        index[e.path] = index_record(os.lstat(final), e.digest)  # after the rename (ctime)
        progress.add(files=1)

    fetcher = Fetcher(store, root, settings.transfers, done,
                      on_bytes=lambda n: progress.add(nbytes=n), dups=plan.dups,
                      before_request=lambda: check_deadline(deadline, area))
    try:
        fetcher.fetch(plan.fetch)
    finally:
        progress.close()
        rep.requests = fetcher.requests
    # Duplicates of chunked files (the fetcher writes duplicates of packed files itself).
    for digest, extra in plan.dups.items():
        placed = fetcher.placed_path(digest)
        for e in extra:
            if not os.path.exists(os.path.join(root, e.path)) or e.path not in index:
                plan.copies.append((e, placed))
    for e, src in plan.copies:
        final = os.path.join(root, e.path)
        if src:
            copy_atomic(os.path.join(root, src), final, mode=e.mode, mtime_ns=e.mtime_ns,
                        digest=e.digest)
            index[e.path] = index_record(os.lstat(final), e.digest)
        else:
            write_atomic(final, b"", mode=e.mode, mtime_ns=e.mtime_ns)
            index[e.path] = index_record(os.lstat(final), e.digest)
    for e in plan.meta:
        p = os.path.join(root, e.path)
        os.chmod(p, e.mode)
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns))
        index[e.path] = index_record(os.lstat(p), e.digest)
    for e in plan.links:
        symlink_atomic(e.target, os.path.join(root, e.path), e.mtime_ns)
    _remove(root, plan.remove_late, rep)  # only now that every new file is in place
    # Directory modes and times last, deepest first: writing into a directory changes them.
    for d in sorted(plan.dirs, key=lambda d: -d.path.count("/")):
        p = os.path.join(root, d.path)
        os.chmod(p, d.mode)
        os.utime(p, ns=(d.mtime_ns, d.mtime_ns))
    rep.files = fetcher.fetched + len(plan.copies)
    rep.bytes = plan.fetch_bytes
    return index


def _remove(root: str, paths: list[str], rep: AreaReport) -> None:
    for rel in paths:
        p = os.path.join(root, rel)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        rep.removed += 1
