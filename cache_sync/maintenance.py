"""status, log, verify and gc: read-mostly operations over the store and the cache."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from cache_sync.config import Settings
from cache_sync.errors import IntegrityError
from cache_sync.fsutil import free_bytes, hash_file
from cache_sync.history import History
from cache_sync.layout import OBJECTS, SNAPSHOTS, SnapshotRef, oid_from_key, parse_snapshot_key
from cache_sync.local_cache import CacheState, cache_lock, scan
from cache_sync.plan import local_entries, plan_pull
from cache_sync.repo import Manifests, current_state, list_refs, open_checked, resolve_areas
from cache_sync.storage import store_url


def status(settings: Settings, areas: Sequence[str] | None = None) -> dict[str, Any]:
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
        rows.append({
            "area": area,
            "local": list(state.based_on),
            "remote": heads,
            "in_sync": list(state.based_on) == heads and push_clean,
            "pull": plan.summary() if plan else {"fetch_files": 0, "fetch_bytes": 0},
            "push": {"changed": not push_clean, "files_to_read": len(tree.to_hash),
                     "bytes_to_read": sum(i.size for i in tree.to_hash)},
        })
    return {
        "root": str(settings.root),
        "remote": store.url,
        "free_bytes": free_bytes(settings.root),
        "areas": rows,
    }


def log(settings: Settings, areas: Sequence[str] | None = None) -> list[dict[str, Any]]:
    chosen = resolve_areas(settings, areas)
    store = open_checked(settings)
    manifests = Manifests(store, CacheState(settings.root))
    out = []
    for area in chosen:
        refs = list_refs(store, area)
        heads = {h.id for h in History(refs).heads}
        for ref in sorted(refs, key=lambda r: r.id, reverse=True):
            snap = manifests.load(ref)
            out.append({
                "area": area, "id": ref.id, "head": ref.id in heads,
                "parents": list(ref.parents), "time": snap.time, "host": snap.host,
                "files": snap.files, "bytes": snap.bytes, "tool": snap.tool,
            })
    return out


def verify(settings: Settings, areas: Sequence[str] | None = None) -> dict[str, Any]:
    """Re-hash every local file against the snapshot the area was last synced to."""
    chosen = resolve_areas(settings, areas)
    cache = CacheState(settings.root)
    remote = store_url(settings.remote)
    result: dict[str, Any] = {"areas": [], "ok": True}
    with cache_lock(settings.root, settings.lock_timeout):
        for area in chosen:
            state = cache.load_state(area, remote)
            row: dict[str, Any] = {"area": area, "snapshot": list(state.based_on),
                                   "checked": 0, "bytes": 0, "missing": [], "mismatched": []}
            root = settings.area_path(area)
            for e in (state.entries or {}).values():
                p = os.path.join(root, e.path)
                if e.kind == "f":
                    try:
                        ok = hash_file(p) == e.digest
                    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                        row["missing"].append(e.path)
                        continue
                    row["checked"] += 1
                    row["bytes"] += e.size
                    if not ok:
                        row["mismatched"].append(e.path)
                elif e.kind == "l":
                    if not os.path.islink(p) or os.readlink(p) != e.target:
                        row["mismatched"].append(e.path)
                elif not os.path.isdir(p):
                    row["missing"].append(e.path)
            if state.entries is None:
                row["note"] = "never synced with this remote"
            if row["missing"] or row["mismatched"]:
                result["ok"] = False
            result["areas"].append(row)
    return result


def gc(settings: Settings, *, dry_run: bool = False, keep: int | None = None,
       grace: float | None = None) -> dict[str, Any]:
    """Delete snapshots beyond the newest ``keep`` per area (heads are always kept) and then
    objects no kept snapshot references, but only objects older than ``grace`` seconds, so an
    unfinished push never loses what it uploaded."""
    keep = keep or settings.keep
    grace = settings.gc_grace if grace is None else grace
    store = open_checked(settings)
    manifests = Manifests(store, CacheState(settings.root))
    by_area: dict[str, list[SnapshotRef]] = {}
    for info in store.list(SNAPSHOTS):
        ref = parse_snapshot_key(info.key, info.mtime)
        if ref is not None:
            by_area.setdefault(ref.area, []).append(ref)
    kept: list[SnapshotRef] = []
    dropped: list[SnapshotRef] = []
    for refs in by_area.values():
        k, d = _retain(refs, keep)
        kept += k
        dropped += d
    referenced: set[str] = set()
    for ref in kept:
        for e in manifests.load(ref).entries.values():
            referenced.update(b.oid for b in e.blobs)
    now = time.time()
    doomed, doomed_bytes, young = [], 0, 0
    for info in store.list(OBJECTS):
        oid = oid_from_key(info.key)
        if oid is None or oid in referenced:
            continue
        if now - info.mtime < grace:
            young += 1
            continue
        doomed.append(info.key)
        doomed_bytes += info.size
    if not dry_run:
        store.delete(doomed)
        store.delete([r.key for r in dropped])
    return {
        "dry_run": dry_run,
        "snapshots_kept": len(kept),
        "snapshots_deleted": len(dropped),
        "objects_deleted": len(doomed),
        "bytes_deleted": doomed_bytes,
        "objects_in_grace": young,
        "objects_referenced": len(referenced),
    }


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


def verify_or_raise(result: dict[str, Any]) -> None:
    if not result["ok"]:
        bad = [(a["area"], a["mismatched"] + a["missing"]) for a in result["areas"]]
        first = next((f"{area}/{paths[0]}" for area, paths in bad if paths), "?")
        raise IntegrityError(f"local files differ from their snapshot, first: {first}",
                             hint="run 'cache-sync pull' to restore them")
