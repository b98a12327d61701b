"""status, log and verify: read-only operations over the store and the cache (gc is
``garbage.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cache_sync.config import Settings
from cache_sync.errors import IntegrityError
from cache_sync.fsutil import free_bytes, hash_file
from cache_sync.history import History
from cache_sync.local_cache import CacheState, scan
from cache_sync.plan import PullSummary, local_entries, plan_pull
from cache_sync.repo import Manifests, current_state, list_refs, open_checked, resolve_areas
from cache_sync.results import (
    AreaStatus,
    AreaVerify,
    LogEntry,
    PushEstimate,
    StatusResult,
    VerifyResult,
)
from cache_sync.staging import open_root
from cache_sync.storage import store_url


def status(settings: Settings, areas: Sequence[str] | None = None) -> StatusResult:
    chosen = resolve_areas(settings, areas)
    store = open_checked(settings)
    cache = CacheState(settings.root)
    manifests = Manifests(store, cache)
    rows = []
    for area in chosen:
        state = cache.load_state(area, store.url)
        heads, target = current_state(store, manifests, area, state,
                                      settings.area_path(area))
        local = scan(settings.area_path(area), clean_tmp=False)
        index = cache.load_index(area)
        plan = plan_pull(target, local, index, state.entries or {}) if heads else None
        tree = local_entries(local, index)
        push_clean = tree.unchanged(state.entries)
        rows.append(AreaStatus(
            area=area, local=list(state.based_on), remote=heads,
            in_sync=list(state.based_on) == heads and push_clean,
            pull=plan.summary() if plan else PullSummary(),
            push=PushEstimate(changed=not push_clean, files_to_read=len(tree.to_hash),
                              bytes_to_read=sum(i.size for i in tree.to_hash)),
        ))
    from cache_sync import lease
    from cache_sync.bootstrap import LEASE_NAME

    held = lease.describe(store, LEASE_NAME, settings.lease_expiry)
    return StatusResult(root=str(settings.root), remote=store.url,
                        free_bytes=free_bytes(settings.root), areas=rows,
                        leases={LEASE_NAME: held} if held else {})


def log(settings: Settings, areas: Sequence[str] | None = None) -> list[LogEntry]:
    chosen = resolve_areas(settings, areas)
    store = open_checked(settings)
    manifests = Manifests(store, CacheState(settings.root))
    out = []
    for area in chosen:
        refs = list_refs(store, area)
        heads = {h.id for h in History(refs).heads}
        for ref in sorted(refs, key=lambda r: r.id, reverse=True):
            snap = manifests.load(ref)
            out.append(LogEntry(
                area=area, id=ref.id, head=ref.id in heads, parents=list(ref.parents),
                time=snap.time, host=snap.host, files=snap.files, bytes=snap.bytes,
                tool=snap.tool))
    return out


def verify(settings: Settings, areas: Sequence[str] | None = None) -> VerifyResult:
    """Re-hash every local file against the snapshot the area was last synced to."""
    chosen = resolve_areas(settings, areas)
    cache = CacheState(settings.root)
    remote = store_url(settings.remote)
    result = VerifyResult()
    with open_root(settings.root, settings.lock_timeout):
        for area in chosen:
            state = cache.load_state(area, remote)
            row = AreaVerify(area, list(state.based_on))
            root = settings.area_path(area)
            for e in (state.entries or {}).values():
                p = os.path.join(root, e.path)
                if e.kind == "f":
                    try:
                        ok = hash_file(p) == e.digest
                    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                        row.missing.append(e.path)
                        continue
                    row.checked += 1
                    row.bytes += e.size
                    if not ok:
                        row.mismatched.append(e.path)
                elif e.kind == "l":
                    if not os.path.islink(p) or os.readlink(p) != e.target:
                        row.mismatched.append(e.path)
                elif not os.path.isdir(p):
                    row.missing.append(e.path)
            if state.entries is None:
                row.note = "never synced with this remote"
            result.areas.append(row)
    return result


def verify_or_raise(result: VerifyResult) -> None:
    if not result.ok:
        bad = [(a.area, a.mismatched + a.missing) for a in result.areas]
        first = next((f"{area}/{paths[0]}" for area, paths in bad if paths), "?")
        raise IntegrityError(f"local files differ from their snapshot, first: {first}",
                             hint="run 'cache-sync pull' to restore them")
