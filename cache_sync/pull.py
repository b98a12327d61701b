"""pull: restore areas to the current state of the store.

Read order: list snapshots, merge the heads, validate, check free space, then stage every file
the pull writes (fetched and verified outside the area), then the short final phase from a
journal (``staging.py``). A pull that fails or runs out of time before the journal leaves the
area exactly as it was and the previous state recorded; one killed after it is finished by
the next command that takes the root's lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cache_sync.config import Settings
from cache_sync.errors import DeadlineExceeded, DiskSpaceError
from cache_sync.fsutil import free_bytes, hash_file, use_direct_io
from cache_sync.history import History
from cache_sync.layout import SnapshotRef
from cache_sync.local_cache import AreaState, CacheState, scan
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
from cache_sync.repo import Manifests, current_state, open_listed, resolve_areas
from cache_sync.results import AreaReport
from cache_sync.snapshot import Entry
from cache_sync.staging import open_root
from cache_sync.storage import Store

if TYPE_CHECKING:
    from cache_sync.transfer import Fetcher
    from cache_sync.unitplace import EarlyStart

RESERVE = 64 << 20  # never fill the disk to the last byte
EARLY_AREA = "packages"  # the one area placed per distribution (design 5.4)


def check_deadline(deadline: float | None, area: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"pull of {area} cut off by its time budget before its final phase; the area is "
            "unchanged and the next pull starts it again"
        )


def pull(settings: Settings, areas: Sequence[str] | None = None, *, dry_run: bool = False,
         deadline: float | None = None, discard_local: bool = False,
         early: EarlyStart | None = None) -> list[AreaReport]:
    """Pull each area; ``deadline`` (``time.monotonic()``) bounds the whole call: it is
    checked before each area, before any file is written, and before each request. Local
    changes not yet pushed are merged in as the newest head unless ``discard_local``.
    ``early``: a cold pull of packages/ places its distributions one by one (design 5.4)."""
    chosen = resolve_areas(settings, areas)
    settings.root.mkdir(parents=True, exist_ok=True)
    with open_root(settings.root, settings.lock_timeout):
        store, listed = open_listed(settings, chosen)
        cache = CacheState(settings.root)
        manifests = Manifests(store, cache)
        return [_pull_area(settings, store, cache, manifests, a, listed[a], dry_run, deadline,
                           discard_local, early) for a in chosen]


def _pull_area(settings: Settings, store: Store, cache: CacheState, manifests: Manifests,
               area: str, refs: list[SnapshotRef], dry_run: bool, deadline: float | None,
               discard_local: bool = False, early: EarlyStart | None = None) -> AreaReport:
    t0 = time.monotonic()
    check_deadline(deadline, area)
    rep = AreaReport(area, "pull", dry_run=dry_run)
    heads_now = [h.id for h in History(refs).heads]
    if heads_now and not discard_local and cache.synced_heads(area, store.url) == tuple(
            heads_now):
        # Up to date (the common warm start on a network volume): one LIST, one small read,
        # no state decoded, no file stat'ed. Local changes not yet pushed stay as they are,
        # exactly as the full path's merge would leave them (the remote side did not move).
        rep.heads, rep.snapshot, rep.up_to_date = heads_now, heads_now[-1], True
        rep.seconds = time.monotonic() - t0
        return rep
    if not heads_now:  # nothing to merge: no state to read (an area nobody pushed yet)
        rep.up_to_date = True
        rep.note = "the store has no snapshot of this area"
        return rep
    state = cache.load_state(area, store.url)
    heads, target = current_state(store, manifests, area, state, settings.area_path(area),
                                  refs)
    rep.heads = heads
    if not heads:
        rep.up_to_date = True
        rep.note = "the store has no snapshot of this area"
        return rep
    rep.snapshot = heads[-1]
    area_dir = settings.area_path(area)
    local = scan(area_dir, clean_tmp=not dry_run, share=state.entries)
    index = cache.load_index(area, share=state.entries)
    remote = target  # what the state records: the store's merge, never local changes
    tracked = state.entries or {}  # paths the pull may remove when the target lacks them
    if state.entries is not None and discard_local:
        tracked = {**state.entries, **local_entries(local, index).entries}
    elif state.entries is not None:
        # Local changes not yet pushed take part in the merge as the newest head (5.2).
        head, rep.local_changes = local_head(state.entries,
                                             hashed_tree(area_dir, local, index, state.entries))
        if rep.local_changes:
            from cache_sync.contents import SmallFiles
            from cache_sync.units import merger

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
    apply(settings, store, cache, plan, area, area_dir, local, rep, target,
          AreaState(store.url, tuple(heads), remote), deadline, early)
    rep.up_to_date = plan.changes == 0
    rep.seconds = time.monotonic() - t0
    return rep


def hashed_tree(area_dir: Path, local: dict[str, LocalItem], index: Index,
                share: dict[str, Entry] | None = None) -> dict[str, Entry]:
    """The local tree as entries, hashing the files the stat index cannot vouch for (those a
    push would read too) and recording them in ``index`` so that push does not read them
    again. A file that vanishes meanwhile is left out."""
    tree = local_entries(local, index, share)
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


def apply(settings: Settings, store: Store, cache: CacheState, plan: PullPlan, area: str,
          area_dir: Path, local: dict[str, LocalItem], rep: AreaReport,
          target: dict[str, Entry], next_state: AreaState,
          deadline: float | None = None, early: EarlyStart | None = None) -> None:
    """Stage every file, then write ``next_state`` and run the final phase from a journal
    (``staging.py``, design 5.3): a failure before the journal leaves the area exactly as it
    was. The area becomes ``target``; the state records ``next_state.entries``, the store's
    merge (they differ by the local changes kept)."""
    from cache_sync import staging
    from cache_sync.transfer import Fetcher  # the transfer engine: not needed when up to date

    stage = staging.stage_dir(cache, area, area_dir)
    progress = Progress(f"pull {area}", len(plan.fetch) + len(plan.check) + len(plan.copies),
                        plan.fetch_bytes, enabled=progress_enabled(settings.progress,
                                                                   settings.json))

    direct = use_direct_io(area_dir, settings.direct_io)

    def make_fetcher(root: str, on_file: Callable[[Entry], None]) -> Fetcher:
        def done(e: Entry, final: str, st: os.stat_result) -> None:
            on_file(e)
            progress.add(files=1)

        return Fetcher(store, root, settings.transfers, done,
                       on_bytes=lambda n: progress.add(nbytes=n), dups=plan.dups,
                       before_request=lambda: check_deadline(deadline, area), in_place=True,
                       direct=direct)

    placer = None
    if early is not None and area == EARLY_AREA and staging.into_empty_area(
            plan, local, stage, area_dir):
        from cache_sync.unitplace import UnitPlacer

        placer = UnitPlacer(early, area_dir, stage, target, staging.placing_path(cache, area),
                            store)
    try:
        staged = staging.stage_files(plan, area_dir, stage, make_fetcher, placer)
        check_deadline(deadline, area)  # the last moment a pull may stop with nothing changed
    except BaseException:
        if placer is not None:
            placer.rollback()  # the area was empty: it is again (5.4)
        staging.clear(stage)
        raise
    finally:
        progress.close()
    rep.requests = staged.requests
    rep.files = len(staged.paths)
    rep.bytes = plan.fetch_bytes
    remote = next_state.entries or {}
    # Step 2 of design 5.3: after every file is staged, before the journal (its commit point)
    cache.save_next_state(area, next_state)
    left = placer.unplaced(staged.paths) if placer is not None else staged.paths
    ops = staging.build_ops(plan, area_dir, left, local, stage)
    local_only = [p for p, e in target.items() if e.kind == "f" and remote.get(p) != e]
    rep.removed = staging.final_phase(cache, area, area_dir, stage, ops, target, local_only)
