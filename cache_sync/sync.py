"""pull / push: the ordering rules live here.

Write order (push): every object first, then the snapshot that names them, then the local
state. A push killed anywhere leaves earlier snapshots intact: at worst some unreferenced
objects, which the journal lets the next push reuse and ``gc`` removes after a grace period.

Read order (pull): list snapshots, merge the heads, validate, check free space, then write
each file under a temporary name and rename it into place after its hash is checked; the
local state is saved last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cache_sync import __version__, checkpoints
from cache_sync.config import Settings, validate_area_name
from cache_sync.contents import SmallFiles
from cache_sync.errors import (
    CacheSyncError,
    DeadlineExceeded,
    DiskSpaceError,
    FormatError,
    ObjectNotFound,
)
from cache_sync.gcmarks import PushClaim
from cache_sync.history import History
from cache_sync.layout import (
    FORMAT_VERSION,
    STORE_KEY,
    SnapshotRef,
    area_prefix,
    new_snapshot_id,
    object_key,
    parse_snapshot_key,
    snapshot_key,
)
from cache_sync.local_cache import AreaState, CacheState, LocalItem, cache_lock, scan, tmp_name
from cache_sync.packer import FileChangedError, Packer, Uploader
from cache_sync.plan import Index, PullPlan, local_entries, local_head, plan_pull, same_tree
from cache_sync.progress import Progress
from cache_sync.progress import enabled as progress_enabled
from cache_sync.snapshot import Entry, Snapshot, decode, encode
from cache_sync.storage import Store, open_store
from cache_sync.transfer import Fetcher
from cache_sync.units import merger

log = logging.getLogger("cache_sync.sync")
RESERVE = 64 << 20  # never fill the disk to the last byte
HASH_READ = 1 << 20


@dataclass
class AreaReport:
    area: str
    action: str
    snapshot: str | None = None
    heads: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    objects: int = 0
    requests: int = 0
    removed: int = 0
    up_to_date: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    note: str = ""
    skipped: list[str] = field(default_factory=list)
    local_changes: int = 0  # pull: unpushed local changes merged as the newest head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- shared helpers ----------------------------------------------------------------------
def resolve_areas(settings: Settings, areas: Sequence[str] | None) -> list[str]:
    chosen = list(areas) if areas else list(settings.areas)
    for a in chosen:
        validate_area_name(a)
    return chosen


def check_store_format(store: Store) -> dict[str, Any] | None:
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
    return doc


def ensure_store(store: Store) -> None:
    if check_store_format(store) is None:
        doc = {"format": "cache-sync", "version": FORMAT_VERSION, "hash": "sha256",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "tool": f"cache-sync {__version__}"}
        store.put(STORE_KEY, json.dumps(doc, indent=1).encode())


def list_refs(store: Store, area: str) -> list[SnapshotRef]:
    refs = []
    for info in store.list(area_prefix(area)):
        ref = parse_snapshot_key(info.key, info.mtime)
        if ref is not None and ref.area == area:
            refs.append(ref)
    return refs


class Manifests:
    """Loads snapshots, keeping the raw bytes under .cache-sync/manifests/ so a manifest is
    fetched from the store at most once per cache root."""

    def __init__(self, store: Store, cache: CacheState) -> None:
        self.store = store
        self.dir = cache.dir / "manifests"
        self.mem: dict[str, Snapshot] = {}

    def load(self, ref: SnapshotRef) -> Snapshot:
        if ref.id in self.mem:
            return self.mem[ref.id]
        path = self.dir / ref.area / f"{ref.id}.json.zst"
        snap = None
        with contextlib.suppress(OSError, FormatError):  # a damaged local copy: fetch again
            snap = self._check(ref, path.read_bytes())
        if snap is None:
            data = self.store.get(ref.key)
            snap = self._check(ref, data)
            # Kept only once valid: bytes damaged in transit must not be cached for good.
            self.save(ref.area, ref.id, data)
        self.mem[ref.id] = snap
        return snap

    @staticmethod
    def _check(ref: SnapshotRef, data: bytes) -> Snapshot:
        snap = decode(data, what=f"snapshot {ref.key}")
        if snap.id != ref.id or snap.area != ref.area:
            raise FormatError(f"snapshot {ref.key} holds id {snap.id} of area {snap.area}")
        return snap

    def save(self, area: str, snap_id: str, data: bytes) -> None:
        path = self.dir / area / f"{snap_id}.json.zst"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_name(str(path.parent))
            Path(tmp).write_bytes(data)
            os.replace(tmp, path)


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_READ):
            h.update(chunk)
    return h.hexdigest()


def _stat_rec(path: str, digest: str, st: os.stat_result | None = None) -> list[Any]:
    st = st or os.lstat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest]


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"{what} cut off by its time budget; the store is consistent (no partial "
            "snapshot) and the next push resumes from what was uploaded"
        )


# --- pull ----------------------------------------------------------------------------------
def current_state(store: Store, manifests: Manifests, area: str, state: AreaState,
                  area_dir: Path | None = None) -> tuple[list[str], dict[str, Entry]]:
    hist = History(list_refs(store, area))
    head_ids = [h.id for h in hist.heads]
    if head_ids and state.entries is not None and list(state.based_on) == head_ids:
        return head_ids, state.entries  # up to date: no manifest GET
    # Units (docs/design.md 5.1) read RECORDs: from the area when the bytes match, else the store.
    return hist.current(manifests.load, merger(area, SmallFiles(store, area_dir)))


def pull(settings: Settings, areas: Sequence[str] | None = None, *, dry_run: bool = False,
         deadline: float | None = None, discard_local: bool = False) -> list[AreaReport]:
    chosen = resolve_areas(settings, areas)
    settings.root.mkdir(parents=True, exist_ok=True)
    with cache_lock(settings.root, settings.lock_timeout):
        store = open_store(settings)
        check_store_format(store)
        cache = CacheState(settings.root)
        manifests = Manifests(store, cache)
        return [_pull_area(settings, store, cache, manifests, a, dry_run, deadline,
                           discard_local) for a in chosen]


def _pull_area(settings: Settings, store: Store, cache: CacheState, manifests: Manifests,
               area: str, dry_run: bool, deadline: float | None,
               discard_local: bool = False) -> AreaReport:
    t0 = time.monotonic()
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
        head, rep.local_changes = local_head(state.entries, _hashed_tree(area_dir, local, index))
        if rep.local_changes:
            target = merger(area, SmallFiles(store, area_dir))(state.entries, remote, head)
            tracked = {**state.entries, **head}
            rep.note = (f"kept {rep.local_changes} local change(s) not yet pushed; "
                        "push publishes them")
    plan = plan_pull(target, local, index, tracked)
    if dry_run:
        rep.files, rep.bytes = plan.summary()["fetch_files"], plan.summary()["fetch_bytes"]
        rep.removed = len(plan.remove) + len(plan.remove_late)
        rep.up_to_date = plan.changes == 0
        return rep
    need = plan.write_bytes
    free = free_bytes(area_dir)
    if need and need + RESERVE > free:
        raise DiskSpaceError(
            f"pull of {area} needs {need:,} bytes plus a {RESERVE >> 20} MiB reserve "
            f"({need + RESERVE:,} in all) but {area_dir} has {free:,} free",
            hint="free space or point CACHE_SYNC_ROOT at a bigger disk",
        )
    fresh = dict(plan.keep)
    fresh.update(_apply(settings, store, plan, area, area_dir, rep))
    cache.save_index(area, {p: r for p, r in fresh.items() if p in target})
    cache.save_state(area, AreaState(store.url, tuple(heads), remote))
    rep.up_to_date = plan.changes == 0
    rep.seconds = time.monotonic() - t0
    return rep


def _hashed_tree(area_dir: Path, local: dict[str, LocalItem], index: Index) -> dict[str, Entry]:
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
        index[item.path] = _stat_rec(path, digest, st)
        e = tree.entries[item.path]
        tree.entries[item.path] = Entry(e.path, "f", e.mode, st.st_mtime_ns, st.st_size, digest)
    return tree.entries


def _apply(settings: Settings, store: Store, plan: PullPlan, area: str, area_dir: Path,
           rep: AreaReport) -> Index:
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
        index[e.path] = _stat_rec(final, e.digest)  # after the rename, which changes ctime
        progress.add(files=1)

    fetcher = Fetcher(store, root, settings.transfers, settings.retries, done,
                      on_bytes=lambda n: progress.add(nbytes=n), backoff=settings.retry_base,
                      dups=plan.dups)
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
        _copy_into_place(root, e, src)
        index[e.path] = _stat_rec(os.path.join(root, e.path), e.digest)
    for e in plan.meta:
        p = os.path.join(root, e.path)
        os.chmod(p, e.mode)
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns))
        index[e.path] = _stat_rec(p, e.digest)
    for e in plan.links:
        p = os.path.join(root, e.path)
        tmp = tmp_name(os.path.dirname(p))
        os.symlink(e.target, tmp)
        with contextlib.suppress(OSError):  # not every filesystem keeps symlink times
            os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        os.replace(tmp, p)
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


def _copy_into_place(root: str, e: Entry, src: str) -> None:
    final = os.path.join(root, e.path)
    tmp = tmp_name(os.path.dirname(final))
    try:
        if src:
            shutil.copyfile(os.path.join(root, src), tmp)
            if hash_file(tmp) != e.digest:
                raise CacheSyncError(f"local copy source {src!r} changed during the pull")
        else:
            open(tmp, "wb").close()
        os.chmod(tmp, e.mode)
        os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- push ----------------------------------------------------------------------------------
def push(settings: Settings, areas: Sequence[str] | None = None, *, dry_run: bool = False,
         deadline: float | None = None) -> list[AreaReport]:
    chosen = resolve_areas(settings, areas)
    settings.root.mkdir(parents=True, exist_ok=True)
    with cache_lock(settings.root, settings.lock_timeout):
        cache = CacheState(settings.root)
        store: Store | None = None
        reports = []
        for area in chosen:
            rep, store = _push_area(settings, store, cache, area, dry_run, deadline)
            reports.append(rep)
        return reports


def _push_area(settings: Settings, store: Store | None, cache: CacheState, area: str,
               dry_run: bool, deadline: float | None) -> tuple[AreaReport, Store | None]:
    t0 = time.monotonic()
    rep = AreaReport(area, "push", dry_run=dry_run)
    area_dir = settings.area_path(area)
    remote = store.url if store else _remote_url(settings)
    state = cache.load_state(area, remote)
    if not area_dir.is_dir():
        rep.up_to_date = True
        rep.note = f"{area_dir} does not exist"
        return rep, store
    local = scan(area_dir, clean_tmp=not dry_run)
    index = cache.load_index(area)
    tree = local_entries(local, index)
    rep.skipped = tree.skipped
    for s in tree.skipped:
        log.warning("skipping symlink %s: it leads out of the area", s)
    base = state.entries
    if not tree.to_hash and (
        (base is not None and same_tree(tree.entries, base)) or (base is None and not local)
    ):
        rep.up_to_date = True
        rep.snapshot = state.based_on[-1] if state.based_on else None
        return rep, store  # nothing read, nothing written
    if dry_run:
        rep.files = len(tree.to_hash)
        rep.bytes = sum(i.size for i in tree.to_hash)
        rep.note = "upper bound: files whose contents must be read"
        return rep, store
    if store is None:
        store = open_store(settings)
    ensure_store(store)
    _check_deadline(deadline, f"push of {area}")
    known: dict[str, tuple] = {e.digest: e.blobs for e in (base or {}).values() if e.kind == "f"}
    if state.based_on and not set(state.based_on) <= {r.id for r in list_refs(store, area)}:
        # gc's retention removed the snapshot this cache was based on, and with it the
        # objects only it named: reuse the base's blobs only where the object is still there.
        known = _still_stored(store, known)
    known.update(_still_stored(store, cache.read_journal(area, store.url)))
    # Files the index vouches for are not re-read; one whose blobs are no longer known (their
    # objects were deleted) must be read and uploaded again.
    queued = {i.path for i in tree.to_hash}
    tree.to_hash += [local[p] for p, e in sorted(tree.entries.items()) if e.kind == "f"
                     and e.size and e.digest and e.digest not in known and p not in queued]
    uploader = Uploader(store, settings.transfers, max_inflight=4,
                        on_stored=lambda m: cache.append_journal(area, store.url, m))
    packer = Packer(uploader, settings.pack_size, settings.chunk_size, settings.small_file)
    entries = tree.entries
    progress = Progress(f"push {area}", len(tree.to_hash), sum(i.size for i in tree.to_hash),
                        enabled=progress_enabled(settings.progress, settings.json))
    try:
        for item in tree.to_hash:
            _check_deadline(deadline, f"push of {area}")
            entries[item.path] = _hash_and_pack(area_dir, item, index, known, packer)
            progress.add(1, item.size)
        packer.flush()
        uploader.wait()
    except BaseException:
        uploader.abort()
        cache.save_index(area, index)  # hashes survive, so a resumed push re-reads nothing
        raise
    finally:
        progress.close()
    _attach_blobs(entries, known, packer)
    cache.save_index(area, {p: r for p, r in index.items() if p in entries})
    rep.files = len(tree.to_hash)
    if base is not None and same_tree(entries, base):
        rep.objects, rep.bytes = uploader.objects, uploader.bytes
        rep.up_to_date = True  # files were touched but their contents are the same
        rep.snapshot = state.based_on[-1] if state.based_on else None
        return rep, store
    _check_deadline(deadline, f"push of {area}")
    snap_id = new_snapshot_id()
    claim = PushClaim(store, f"{area}-{snap_id}")
    try:
        _claim_objects(claim, entries, area_dir, local, index, known, packer, uploader)
        rep.objects, rep.bytes = uploader.objects, uploader.bytes
        _check_deadline(deadline, f"push of {area}")
        _commit(store, cache, area, state, entries, snap_id, claim,
                lambda: _claim_objects(claim, entries, area_dir, local, index, known, packer,
                                       uploader))
    finally:
        uploader.close()
    rep.snapshot = snap_id
    rep.heads = [snap_id]
    rep.seconds = time.monotonic() - t0
    return rep, store


def _commit(store: Store, cache: CacheState, area: str, state: AreaState,
            entries: dict[str, Entry], snap_id: str, claim: PushClaim,
            claim_again: Callable[[], None]) -> None:
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


def _attach_blobs(entries: dict[str, Entry], known: dict[str, tuple], packer: Packer) -> None:
    blobs = {**known, **packer.blobs}
    for path, e in entries.items():
        if e.kind == "f":
            entries[path] = _with_blobs(e, blobs[e.digest] if e.size else ())


def _claim_objects(claim: PushClaim, entries: dict[str, Entry], area_dir: Path,
                   local: dict[str, LocalItem], index: Index, known: dict[str, tuple],
                   packer: Packer, uploader: Uploader) -> None:
    """Claim every object the snapshot names (design 6.1): objects gc deleted or is deleting
    are not named; the files that used them are read and uploaded again, then claimed anew."""
    checkpoints.reached("push:uploaded")
    while True:
        oids = {b.oid for e in entries.values() for b in e.blobs}
        missing = claim.claim(oids)
        if not missing:
            return
        stale = sorted(p for p, e in entries.items() if any(b.oid in missing for b in e.blobs))
        for p in stale:
            known.pop(entries[p].digest, None)
            packer.blobs.pop(entries[p].digest, None)
        for p in stale:
            entries[p] = _hash_and_pack(area_dir, local[p], index, known, packer)
        packer.flush()
        uploader.wait()
        _attach_blobs(entries, known, packer)


def _still_stored(store: Store, journal: dict[str, tuple]) -> dict[str, tuple]:
    """Entries (digest -> blobs) whose objects all still exist. The objects of a killed push
    are orphans until a snapshot names them, and ``gc`` deletes orphans older than its grace
    period (a network volume keeps the journal for days): reusing one that is gone would
    commit a snapshot naming a missing object."""
    alive: dict[str, bool] = {}
    out = {}
    for digest, blobs in journal.items():
        for b in blobs:
            if b.oid not in alive:
                alive[b.oid] = store.head(object_key(b.oid)) is not None
        if all(alive[b.oid] for b in blobs):
            out[digest] = blobs
    return out


def _remote_url(settings: Settings) -> str:
    if settings.remote.startswith("file://"):
        return "file://" + os.path.abspath(settings.remote[len("file://"):])
    return settings.remote


def _with_blobs(e: Entry, blobs: tuple) -> Entry:
    return Entry(e.path, e.kind, e.mode, e.mtime_ns, e.size, e.digest, e.target, tuple(blobs))


def _hash_and_pack(area_dir: Path, item: LocalItem, index: Index, known: dict[str, tuple],
                   packer: Packer) -> Entry:
    path = str(area_dir / item.path)
    for _ in range(3):
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
        size = len(data) if data or small else st.st_size
        if digest not in known and size:
            try:
                if small:
                    packer.add_small(digest, data)
                else:
                    packer.add_large(digest, path, size)
            except FileChangedError:
                continue  # rewritten under us: hash it again
        index[item.path] = [size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest]
        return Entry(item.path, "f", item.mode, st.st_mtime_ns, size, digest)
    raise CacheSyncError(f"{path} keeps changing while it is pushed; stop the writer and retry")

