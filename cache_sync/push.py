"""push: send each area's local changes to the store as a new immutable snapshot.

Three steps per area: ``collect`` (scan the area; the stat index vouches for unchanged files,
so a push with nothing to send reads no file and opens no store), ``upload`` (hash what
changed, pack and upload the objects not already stored, journaling each one), ``commit``
(PUT the snapshot that names them: the commit point; then the local state).

Write order: every object first, then the snapshot that names them, then the local state. A
push killed anywhere leaves earlier snapshots intact: at worst some unreferenced objects,
which the journal lets the next push reuse and ``gc`` removes after a grace period.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cache_sync import __version__, checkpoints
from cache_sync.config import Settings
from cache_sync.errors import DeadlineExceeded
from cache_sync.fsutil import HASH_READ
from cache_sync.gcmarks import PushClaim
from cache_sync.layout import new_snapshot_id, object_key, snapshot_key
from cache_sync.local_cache import AreaState, CacheState, item_from_stat, scan
from cache_sync.packer import FileChangedError, Packer, Uploader
from cache_sync.plan import Index, LocalItem, LocalTree, index_record, local_entries, same_tree
from cache_sync.progress import Progress
from cache_sync.progress import enabled as progress_enabled
from cache_sync.repo import Manifests, ensure_store, list_refs, resolve_areas
from cache_sync.results import AreaReport
from cache_sync.snapshot import Blob, BlobMap, Entry, Snapshot, encode
from cache_sync.staging import open_root
from cache_sync.storage import Store, open_store, store_url

log = logging.getLogger("cache_sync.push")

Known = BlobMap  # digest -> the stored blobs that hold it


def check_deadline(deadline: float | None, area: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"push of {area} cut off by its time budget; the store is consistent (no partial "
            "snapshot) and the next push resumes from what was uploaded"
        )


class _StoreOnDemand:
    """The store, opened (and its marker written) only once a push has something to send:
    a push with no change costs no connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = store_url(settings.remote)
        self._store: Store | None = None

    def get(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings)
            ensure_store(self._store)
        return self._store


def push(settings: Settings, areas: Sequence[str] | None = None, *, dry_run: bool = False,
         deadline: float | None = None) -> list[AreaReport]:
    chosen = resolve_areas(settings, areas)
    settings.root.mkdir(parents=True, exist_ok=True)
    with open_root(settings.root, settings.lock_timeout):
        cache = CacheState(settings.root)
        stores = _StoreOnDemand(settings)
        return [_push_area(settings, stores, cache, area, dry_run, deadline)
                for area in chosen]


def _push_area(settings: Settings, stores: _StoreOnDemand, cache: CacheState, area: str,
               dry_run: bool, deadline: float | None) -> AreaReport:
    t0 = time.monotonic()
    rep = AreaReport(area, "push", dry_run=dry_run)
    area_dir = settings.area_path(area)
    state = cache.load_state(area, stores.url)
    if not area_dir.is_dir():
        rep.up_to_date = True
        rep.note = f"{area_dir} does not exist"
        return rep
    work = collect(area_dir, cache, area, clean_tmp=not dry_run, share=state.entries)
    rep.skipped = work.tree.skipped
    if work.tree.unchanged(state.entries):
        rep.up_to_date = True
        rep.snapshot = state.based_on[-1] if state.based_on else None
        return rep  # nothing read, nothing written
    if dry_run:
        rep.files = len(work.tree.to_hash)
        rep.bytes = sum(i.size for i in work.tree.to_hash)
        rep.note = "upper bound: files whose contents must be read"
        return rep
    store = stores.get()
    check_deadline(deadline, area)
    checkpoints.reached("push:scanned")  # the tree is listed; no file read yet
    sent = upload(settings, store, cache, area, state, work, deadline)
    try:
        rep.files = sent.files_read
        if state.entries is not None and same_tree(sent.entries, state.entries):
            rep.objects, rep.bytes = sent.uploader.objects, sent.uploader.bytes
            rep.up_to_date = True  # files were touched but their contents are the same
            rep.snapshot = state.based_on[-1] if state.based_on else None
            return rep
        check_deadline(deadline, area)
        snap_id = new_snapshot_id()
        claim = PushClaim(store, f"{area}-{snap_id}")
        claim_objects(claim, sent)
        rep.objects, rep.bytes = sent.uploader.objects, sent.uploader.bytes
        check_deadline(deadline, area)
        commit(store, cache, area, state, sent.entries, snap_id, claim,
               lambda: claim_objects(claim, sent))
    finally:
        sent.close()
    rep.snapshot = snap_id
    rep.heads = [snap_id]
    rep.seconds = time.monotonic() - t0
    return rep


@dataclass
class Collected:
    """An area's local tree as a push sees it."""

    area_dir: Path
    index: Index
    tree: LocalTree

    def item(self, path: str) -> LocalItem | None:
        """The file at ``path`` as a scan sees it now (None if it is gone): the scan itself
        is not kept, only the files it found to read (``tree.to_hash``)."""
        try:
            st = os.lstat(self.area_dir / path)
        except OSError:
            return None
        return item_from_stat(path, st) if stat.S_ISREG(st.st_mode) else None


def collect(area_dir: Path, cache: CacheState, area: str, *, clean_tmp: bool = True,
            share: dict[str, Entry] | None = None) -> Collected:
    """Scan the area. ``share``: the state's entries, whose path strings the scan and the
    index reuse (one string per path, not three)."""
    local = scan(area_dir, clean_tmp=clean_tmp, share=share)
    index = cache.load_index(area, share=share)
    tree = local_entries(local, index, share)
    del local
    for s in tree.skipped:
        log.warning("skipping symlink %s: it leads out of the area", s)
    return Collected(area_dir, index, tree)


@dataclass
class Upload:
    """An upload in progress: the area's entries (every file with its blobs once uploaded)
    and what it takes to upload again files whose objects gc deleted under the push."""

    work: Collected
    entries: dict[str, Entry]
    known: Known
    packer: Packer
    uploader: Uploader
    files_read: int = 0

    def attach_blobs(self) -> None:
        for path, e in self.entries.items():
            if e.kind == "f" and e.size and not e.blobs:
                d = e.digest
                blobs = self.packer.blobs.get(d) or self.known[d]
                self.entries[path] = e.with_blobs(blobs)

    def reupload(self, paths: list[str]) -> None:
        """Read, pack and upload ``paths`` again (their objects are gone or going)."""
        for p in paths:
            self.known.pop(self.entries[p].digest, None)
            self.packer.blobs.pop(self.entries[p].digest, None)
        for p in paths:
            item = self.work.item(p)
            entry = None if item is None else _hash_and_pack(
                self.work.area_dir, item, self.work.index, self.known, self.packer, None)
            if entry is None:
                del self.entries[p]
            else:
                self.entries[p] = entry
        self.packer.flush()
        self.uploader.wait()
        self.attach_blobs()

    def close(self) -> None:
        self.uploader.close()


def upload(settings: Settings, store: Store, cache: CacheState, area: str, state: AreaState,
           work: Collected, deadline: float | None = None) -> Upload:
    """Read the files the index cannot vouch for and upload every object the store lacks;
    nothing here is visible to readers until ``commit``. The caller closes the upload."""
    tree, index = work.tree, work.index
    base = state.entries
    known = BlobMap()
    for e in (base or {}).values():
        if e.kind == "f":
            known.add_entry(e)
    if state.based_on and not set(state.based_on) <= {r.id for r in list_refs(store, area)}:
        # gc's retention removed the snapshot this cache was based on, and with it the
        # objects only it named: reuse the base's blobs only where the object is still there.
        known = still_stored(store, known)
    known.update(still_stored(store, cache.read_journal(area, store.url)))
    # Files the index vouches for are not re-read; one whose blobs are no longer known (their
    # objects were deleted) must be read and uploaded again.
    queued = {i.path for i in tree.to_hash}
    for p, e in sorted(tree.entries.items()):
        if (e.kind == "f" and e.size and e.digest and e.digest not in known
                and p not in queued):
            item = work.item(p)
            if item is not None:
                tree.to_hash.append(item)
    uploader = Uploader(store, settings.transfers, max_inflight=4,
                        on_stored=lambda m: cache.append_journal(area, store.url, m))
    packer = Packer(uploader, settings.pack_size, settings.chunk_size, settings.small_file)
    entries = tree.entries
    progress = Progress(f"push {area}", len(tree.to_hash), sum(i.size for i in tree.to_hash),
                        enabled=progress_enabled(settings.progress, settings.json))
    files_read = len(tree.to_hash)
    todo = tree.to_hash  # drained as it goes: a cold push does not keep its scan
    todo.reverse()
    try:
        while todo:
            item = todo.pop()
            check_deadline(deadline, area)
            entry = _hash_and_pack(work.area_dir, item, index, known, packer, base)
            if entry is None:
                del entries[item.path]
            else:
                entries[item.path] = entry
            progress.add(1, item.size)
        packer.flush()
        uploader.wait()
    except BaseException:
        uploader.abort()
        cache.save_index(area, index)  # hashes survive, so a resumed push re-reads nothing
        raise
    finally:
        progress.close()
    sent = Upload(work, entries, known, packer, uploader, files_read)
    sent.attach_blobs()
    cache.save_index(area, ((p, r) for p, r in index.items() if p in entries))
    return sent


def claim_objects(claim: PushClaim, sent: Upload) -> None:
    """Claim every object the snapshot names (design 6.1): objects gc deleted or is deleting
    are not named; the files that used them are read and uploaded again, then claimed anew."""
    checkpoints.reached("push:uploaded")
    while True:
        missing = claim.claim({b.oid for e in sent.entries.values() for b in e.blobs})
        if not missing:
            return
        sent.reupload(sorted(p for p, e in sent.entries.items()
                             if any(b.oid in missing for b in e.blobs)))


def commit(store: Store, cache: CacheState, area: str, state: AreaState,
           entries: dict[str, Entry], snap_id: str, claim: PushClaim,
           claim_again: Callable[[], None]) -> None:
    """PUT the snapshot ``snap_id`` naming ``entries`` (the commit point), then record it
    locally. ``claim`` protects its objects from gc until the PUT; if it went stale,
    ``claim_again`` renews it (and re-uploads what gc took) first."""
    parents = tuple(state.based_on)
    pending = cache.read_pending(area, store.url)
    if pending:
        # An earlier push from this root was killed after its snapshot reached the store but
        # before the state was saved. Name that snapshot as a parent too: left as a head of
        # its own, a later merge against an older common ancestor would undo this root's
        # later deletions.
        existing = {r.id for r in list_refs(store, area)}
        parents += tuple(p for p in pending if p in existing and p not in parents)
    snap = Snapshot(
        id=snap_id, area=area, parents=parents, entries=entries,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), host=socket.gethostname(),
        tool=f"cache-sync {__version__}",
    )
    data = encode(snap)
    cache.append_pending(area, store.url, snap.id)  # before the commit point: see above
    checkpoints.reached("push:commit")
    if not claim.fresh():  # the claim may have expired for gc: claim (and check) again
        claim_again()
        data = encode(replace(snap, entries=entries))
    store.put(snapshot_key(area, snap.id, snap.parents), data)  # the commit point
    claim.release()  # only after the commit: from now on the snapshot protects its objects
    Manifests(store, cache).save(area, snap.id, data)
    cache.save_state(area, AreaState(store.url, (snap.id,), entries))
    cache.clear_journal(area)


def still_stored(store: Store, journal: Known | dict[str, tuple[Blob, ...]]) -> Known:
    """Entries (digest -> blobs) whose objects all still exist. The objects of a killed push
    are orphans until a snapshot names them, and ``gc`` deletes orphans older than its grace
    period (a network volume keeps the journal for days): reusing one that is gone would
    commit a snapshot naming a missing object."""
    alive: dict[str, bool] = {}
    out = BlobMap()
    for digest, blobs in journal.items():
        for b in blobs:
            if b.oid not in alive:
                alive[b.oid] = store.head(object_key(b.oid)) is not None
        if all(alive[b.oid] for b in blobs):
            out[digest] = blobs
    return out


def _hash_and_pack(area_dir: Path, item: LocalItem, index: Index, known: Known,
                   packer: Packer, base: dict[str, Entry] | None) -> Entry | None:
    """The file's entry, its new content handed to the packer. A file that vanished (a
    download renamed from ``*.incomplete``) gives None; one that keeps changing while it is
    read gives its entry in the base snapshot, or None. Both are warned about; the snapshot
    names only bytes read whole, and the next push takes the rest."""
    path = str(area_dir / item.path)
    try:
        for _ in range(3):
            entry = _read_once(path, item, index, known, packer)
            if entry is not None:
                return entry
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        index.pop(item.path, None)
        log.warning("%s vanished during the push; left out of this snapshot", item.path)
        return None
    index.pop(item.path, None)
    old = (base or {}).get(item.path)
    if old is not None and old.kind == "f" and (old.digest in known or not old.size):
        log.warning("%s kept changing while it was read; left at its previous state",
                    item.path)
        return old
    log.warning("%s kept changing while it was read; left out of this snapshot", item.path)
    return None


def _read_once(path: str, item: LocalItem, index: Index, known: Known,
               packer: Packer) -> Entry | None:
    """One read of the file; None when it changed while being read (size, mtime or ctime
    moved, or the bytes chunked differ from the bytes hashed)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size <= packer.chunk_size and st.st_size <= 64 << 20:
            data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            small = len(data) <= packer.small_file
        else:
            data = b""
            h = hashlib.sha256()
            while chunk := f.read(HASH_READ):
                h.update(chunk)
            digest = h.hexdigest()
            small = False
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns) or (data and len(data) != st.st_size):
        return None
    size = len(data) if data or small else st.st_size
    if digest not in known and size:
        try:
            if small:
                packer.add_small(digest, data)
            else:
                packer.add_large(digest, path, size)
        except FileChangedError:
            return None  # rewritten under us: hash it again
    index[item.path] = index_record(st, digest, size)
    return Entry(item.path, "f", item.mode, st.st_mtime_ns, size, digest)
