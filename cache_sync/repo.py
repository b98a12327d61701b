"""The store as a repository of snapshots: its format marker, the snapshot refs of an area,
manifests (with their disk cache under ``.cache-sync/manifests/``) and an area's current state
(the merge of its heads). Used by pull, push and the maintenance commands alike.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cache_sync import __version__
from cache_sync.config import Settings, validate_area_name
from cache_sync.errors import CacheSyncError, FormatError, ObjectNotFound
from cache_sync.fsutil import write_atomic
from cache_sync.history import History
from cache_sync.layout import (
    FORMAT_VERSION,
    STORE_KEY,
    SnapshotRef,
    area_prefix,
    parse_snapshot_key,
)
from cache_sync.local_cache import AreaState, CacheState
from cache_sync.snapshot import Entry, Snapshot, decode
from cache_sync.storage import Store, open_store


def resolve_areas(settings: Settings, areas: Sequence[str] | None) -> list[str]:
    """The areas a command works on: those named, else every configured one."""
    chosen = list(areas) if areas else list(settings.areas)
    for a in chosen:
        validate_area_name(a)
    return chosen


# --- the store marker ----------------------------------------------------------------------
def check_store_format(store: Store) -> dict[str, Any] | None:
    """The store's marker, or None for a store nobody has pushed to yet; refuses a store of
    another format version or a marker that is not ours."""
    try:
        raw = store.get(STORE_KEY)
    except ObjectNotFound:
        return None
    try:
        doc = json.loads(raw)
        version = doc["version"]
    except (ValueError, KeyError, TypeError):
        raise FormatError(f"{STORE_KEY} in {store.url} is not a cache-sync store marker") from None
    if version != FORMAT_VERSION:
        raise FormatError(
            f"store {store.url} has format version {version}; this cache-sync reads "
            f"version {FORMAT_VERSION}",
            hint="upgrade cache-sync" if isinstance(version, int) and version > 1 else None,
        )
    return doc if isinstance(doc, dict) else None


def ensure_store(store: Store) -> None:
    """Write the marker if the store has none (a first push)."""
    if check_store_format(store) is None:
        doc = {"format": "cache-sync", "version": FORMAT_VERSION, "hash": "sha256",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "tool": f"cache-sync {__version__}"}
        store.put(STORE_KEY, json.dumps(doc, indent=1).encode())


def open_checked(settings: Settings) -> Store:
    """The configured store, its format checked (readers: a store without a marker is
    simply empty)."""
    store = open_store(settings)
    check_store_format(store)
    return store


def open_listed(settings: Settings, areas: Sequence[str]
                ) -> tuple[Store, dict[str, list[SnapshotRef]]]:
    """``open_checked`` and each area's LIST (``list_refs``), the requests sent at once: on a
    warm start these few small requests are most of a pull's wall time, one round trip in
    all instead of one per area plus one. The listings are as of the start of the command,
    as if each area were pulled at that moment."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(settings)
    with ThreadPoolExecutor(len(areas) + 1, thread_name_prefix="list") as pool:
        marker = pool.submit(check_store_format, store)
        listed = {a: pool.submit(list_refs, store, a) for a in areas}
        marker.result()  # a foreign or newer store is refused before anything else
        return store, {a: f.result() for a, f in listed.items()}


# --- refs and manifests --------------------------------------------------------------------
def list_refs(store: Store, area: str) -> list[SnapshotRef]:
    """Every snapshot of ``area``, from one LIST (parents are in the keys)."""
    refs = []
    for info in store.list(area_prefix(area)):
        ref = parse_snapshot_key(info.key, info.mtime)
        if ref is not None and ref.area == area:
            refs.append(ref)
    return refs


class Manifests:
    """Loads snapshots, keeping the raw bytes under .cache-sync/manifests/ so a manifest is
    fetched from the store at most once per cache root. Decoded, only the ``KEEP`` last
    used stay in memory (a merge needs its base and two heads; gc and log walk every
    snapshot of the store, one at a time). An entry equal to one of ``reuse`` (the state
    the caller holds) is shared, not decoded twice."""

    KEEP = 3

    def __init__(self, store: Store, cache: CacheState) -> None:
        self.store = store
        self.dir = cache.dir / "manifests"
        self.mem: OrderedDict[str, Snapshot] = OrderedDict()
        self.reuse: dict[str, Entry] | None = None

    def load(self, ref: SnapshotRef) -> Snapshot:
        snap = self.mem.get(ref.id)
        if snap is None:
            snap = self._load(ref)
            self.mem[ref.id] = snap
            while len(self.mem) > self.KEEP:
                self.mem.popitem(last=False)
        self.mem.move_to_end(ref.id)
        return snap

    def _load(self, ref: SnapshotRef) -> Snapshot:
        path = self.dir / ref.area / f"{ref.id}.json.zst"
        snap = None
        with contextlib.suppress(OSError, FormatError):  # a damaged local copy: fetch again
            snap = self._check(ref, path.read_bytes())
        if snap is None:
            data = self.store.get(ref.key)
            snap = self._check(ref, data)
            # Kept only once valid: bytes damaged in transit must not be cached for good.
            self.save(ref.area, ref.id, data)
        return snap

    def _check(self, ref: SnapshotRef, data: bytes) -> Snapshot:
        snap = decode(data, what=f"snapshot {ref.key}", reuse=self.reuse)
        if snap.id != ref.id or snap.area != ref.area:
            raise FormatError(f"snapshot {ref.key} holds id {snap.id} of area {snap.area}")
        return snap

    def save(self, area: str, snap_id: str, data: bytes) -> None:
        """Keep a manifest's bytes (best effort: the cache only saves a GET)."""
        with contextlib.suppress(CacheSyncError):
            write_atomic(self.dir / area / f"{snap_id}.json.zst", data, mkdir=True)


def current_state(store: Store, manifests: Manifests, area: str, state: AreaState,
                  area_dir: Path | None = None, refs: list[SnapshotRef] | None = None
                  ) -> tuple[list[str], dict[str, Entry]]:
    """(head ids, merged entries) of ``area``; no manifest is read when the heads are the
    ones this cache last synced to. ``refs``: the area's LIST, when the caller has it."""
    hist = History(list_refs(store, area) if refs is None else refs)
    head_ids = [h.id for h in hist.heads]
    if head_ids and state.entries is not None and list(state.based_on) == head_ids:
        return head_ids, state.entries  # up to date: no manifest GET
    # Units (docs/design.md 5.1) read RECORDs: from the area when the bytes match, else the store.
    from cache_sync.contents import SmallFiles  # the merge's imports: not when up to date
    from cache_sync.units import merger

    manifests.reuse = state.entries  # unchanged paths share the state's entries
    try:
        return hist.current(manifests.load, merger(area, SmallFiles(store, area_dir)))
    finally:
        manifests.reuse = None
