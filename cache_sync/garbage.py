"""``gc``: retention of snapshots and deferred deletion of unreferenced objects.

A run deletes only objects that an *earlier* run marked, once the mark is older than its delay,
that no snapshot existing now names and no live push claim names, within a time budget; then it
applies retention and marks what the kept snapshots no longer name. The ordering argument is in
``docs/design.md`` section 6; the push's half is ``gcmarks.PushClaim``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from cache_sync import checkpoints, gcmarks, versions
from cache_sync.config import Settings
from cache_sync.errors import AccessDenied
from cache_sync.history import History
from cache_sync.layout import (
    OBJECTS,
    SNAPSHOTS,
    SnapshotRef,
    object_key,
    oid_from_key,
    parse_snapshot_key,
)
from cache_sync.local_cache import CacheState
from cache_sync.repo import Manifests, check_store_format
from cache_sync.results import GcReport
from cache_sync.storage import Store, open_store
from cache_sync.storage.base import ObjectInfo

log = logging.getLogger("cache_sync.gc")
BATCH = 1000


def gc(settings: Settings, *, dry_run: bool = False, keep: int | None = None,
       grace: float | None = None) -> GcReport:
    keep = keep or settings.keep
    grace = settings.gc_grace if grace is None else grace
    window = settings.gc_window
    store = open_store(settings)
    check_store_format(store)
    manifests = Manifests(store, CacheState(settings.root))
    # The dry run writes nothing, so it cannot read the store's clock: it estimates with ours.
    now = time.time() if dry_run else gcmarks.store_now(store)
    marks = gcmarks.list_marks(store)
    ripe = [m for m in marks if m.ripe(now)]
    out = GcReport(dry_run=dry_run)
    deleted: set[str] = set()
    if ripe:
        deleted = _delete_phase(store, manifests, ripe, now, dry_run, out)
    # Objects of a pending mark are not marked twice; those of a ripe mark that was carried
    # out but spared (named again) are marked afresh if still unreferenced.
    still = [m for m in marks if m not in ripe or out.delete_phase != "done"]
    refs = _all_refs(store)
    kept, dropped = [], []
    for area_refs in _by_area(refs).values():
        k, d = _retain(area_refs, keep)
        kept += k
        dropped += d
    if not dry_run:
        store.delete([r.key for r in dropped])
    checkpoints.reached("gc:mark")
    referenced = _referenced(manifests, kept)
    pending = set().union(*(m.objects for m in still))
    young, marked, marked_bytes = 0, [], 0
    for info in _objects(store).values():
        oid = oid_from_key(info.key)
        if oid is None or oid in referenced or oid in deleted or oid in pending:
            continue
        if now - info.mtime < grace:
            young += 1
            continue
        marked.append(oid)
        marked_bytes += info.size
    if marked and not dry_run:
        gcmarks.write_mark(store, marked, grace, window)
    if not dry_run:
        claims = gcmarks.list_claims(store, now)
        store.delete(claims.expired)
    _purge_versions(store, dry_run, out)
    out.snapshots_kept = len(kept)
    out.snapshots_deleted = len(dropped)
    out.objects_marked = len(marked)
    out.bytes_marked = marked_bytes
    out.objects_in_grace = young
    out.objects_referenced = len(referenced)
    out.marks_pending = len(still) + (1 if marked else 0)
    out.delete_after_seconds = max(grace, window)
    return out


def _delete_phase(store: Store, manifests: Manifests, ripe: list[gcmarks.Mark], now: float,
                  dry_run: bool, out: GcReport) -> set[str]:
    """Delete the objects of ripe marks that nothing names any more (design 6.1, step 2)."""
    budget = min(m.window for m in ripe) / 2
    started = time.monotonic()
    checkpoints.reached("gc:claims")
    claims = gcmarks.list_claims(store, now)
    if claims.unreadable:
        out.delete_phase = f"stopped: unreadable claim {claims.unreadable[0]}"
        return set()
    checkpoints.reached("gc:snapshots")
    named = _referenced(manifests, _all_refs(store)) | claims.objects
    objects = _objects(store)
    candidates = set().union(*(m.objects for m in ripe))
    doomed = sorted(o for o in candidates if object_key(o) in objects and o not in named)
    out.objects_spared = len([o for o in candidates if o in named])
    checkpoints.reached("gc:delete")
    done: list[str] = []
    for i in range(0, len(doomed), BATCH):
        if time.monotonic() - started >= budget:
            out.delete_phase = (f"stopped: past its {budget:g} s budget; the next run "
                                   "starts again")
            break
        batch = doomed[i:i + BATCH]
        if not dry_run:
            store.delete([object_key(o) for o in batch])
        done += batch
    else:
        if not dry_run:
            store.delete([m.key for m in ripe])
        out.delete_phase = "done"
    out.objects_deleted = len(done)
    out.bytes_deleted = sum(objects[object_key(o)].size for o in done)
    return set(done)


def _purge_versions(store: Store, dry_run: bool, out: GcReport) -> None:
    """On a bucket that keeps versions, delete by id what no read sees any more: hidden
    bytes, then the delete markers left hiding nothing (design 6.3)."""
    checkpoints.reached("gc:versions")
    try:
        purge = versions.plan_purge(store.list_versions(""))
        if not dry_run:
            store.delete_versions(purge.first)
            checkpoints.reached("gc:versions-markers")
            store.delete_versions(purge.then)
    except AccessDenied as exc:
        out.versions_note = f"{exc.message}; {versions.LIFECYCLE_FIX}"
        log.warning("gc: %s", out.versions_note)
        return
    out.versions_deleted = len(purge.first) + len(purge.then)
    out.version_bytes_deleted = purge.bytes


def _all_refs(store: Store) -> list[SnapshotRef]:
    refs = []
    for info in store.list(SNAPSHOTS):
        ref = parse_snapshot_key(info.key, info.mtime)
        if ref is not None:
            refs.append(ref)
    return refs


def _by_area(refs: Iterable[SnapshotRef]) -> dict[str, list[SnapshotRef]]:
    out: dict[str, list[SnapshotRef]] = {}
    for ref in refs:
        out.setdefault(ref.area, []).append(ref)
    return out


def _referenced(manifests: Manifests, refs: Iterable[SnapshotRef]) -> set[str]:
    named: set[str] = set()
    for ref in refs:
        for e in manifests.load(ref).entries.values():
            named.update(b.oid for b in e.blobs)
    return named


def _objects(store: Store) -> dict[str, ObjectInfo]:
    return {info.key: info for info in store.list(OBJECTS) if oid_from_key(info.key)}


def _retain(refs: list[SnapshotRef], keep: int) -> tuple[list[SnapshotRef], list[SnapshotRef]]:
    """Newest ``keep`` plus every head; then, so that no kept snapshot turns into a false
    head, also every child of a kept snapshot whose children would all be dropped."""
    hist = History(refs)
    ordered = sorted(refs, key=lambda r: r.id)
    kept = {r.id for r in ordered[-keep:]} | {h.id for h in hist.heads}
    children: dict[str, list[str]] = {}
    for r in refs:
        for p in r.parents:
            children.setdefault(p, []).append(r.id)
    changed = True
    while changed:
        changed = False
        for sid in list(kept):
            kids = children.get(sid, [])
            if kids and not any(k in kept for k in kids):
                kept.add(max(kids))
                changed = True
    return ([r for r in ordered if r.id in kept], [r for r in ordered if r.id not in kept])
