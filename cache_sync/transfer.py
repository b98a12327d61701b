"""Fetching file contents (the pull side): bounded parallel ranged GETs, streaming
decode-and-write, verification before a file is put in place.

- Files held in packs are fetched by coalesced ranged GETs (neighbouring files in one
  request), each decoded, checked against its SHA-256, written to a temporary name in its
  directory and renamed.
- Chunked files are preallocated under a temporary name; their chunks stream in parallel and
  are written at their offsets (``os.pwrite``). Each byte is hashed once: the whole-file
  SHA-256, folded in file order as chunks land. Only when it does not match are the chunks
  checked one by one against their object ids (the SHA-256 of their stored bytes), the bad ones
  fetched again and checked as they stream, and the file hashed again: a corrupt object costs
  a second pass, an honest one none. The file is renamed into place only once its SHA-256
  matches.

No whole object is ever held in memory. Each request and the reading of its stream is one
attempt under the store's retry policy (``Store.with_retries``); a broken or corrupt stream is
retried from the first file not yet in place, as the next attempt of the same budget. A file
that cannot be verified never reaches its final path.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import zstandard

from cache_sync.errors import FormatError, IntegrityError, TransientStorageError
from cache_sync.fsutil import AtomicFile, hash_range, write_atomic, writing
from cache_sync.layout import object_key
from cache_sync.snapshot import CODEC_ZSTD, Blob, Entry, is_chunked
from cache_sync.storage.base import Store

READ = 1 << 20
MAX_GAP = 256 * 1024  # fetch through a gap this small rather than make another request
MAX_RANGE = 2 << 20
STREAM_OVER = 1 << 20  # a ranged file bigger than this is decoded piece by piece, not in memory
RETRY_ON = (TransientStorageError, IntegrityError)  # a broken or corrupt stream: fetch again

_local = threading.local()


def _read_buffer() -> memoryview:
    """This thread's reusable buffer for streamed reads (one per transfer thread)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(READ))
    return buf


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


# (entry, final path, its stat) after a file is in place
Done = Callable[[Entry, str, os.stat_result], None]


@dataclass
class _Range:
    oid: str
    start: int
    end: int
    members: list[Entry]  # single-blob files of object ``oid``, by offset
    placed: int = 0  # members already in place (a retry starts after them)

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class _Chunked:
    """A chunked file being assembled. Its chunks land in any order; the whole-file SHA-256
    is computed in file order as soon as the next chunk is in (reading it back from the page
    cache while later chunks still download), and checked before the rename. Chunks are not
    hashed as they stream (that would hash every byte twice) unless the file is being
    repaired (``strict``)."""

    entry: Entry
    final: str
    file: AtomicFile | None = None
    left: int = 0
    offsets: list[int] = field(default_factory=list)  # file offset of each chunk, in order
    landed: set[int] = field(default_factory=set)
    hashed: int = 0  # chunks folded into the hasher so far
    hasher: Any = field(default_factory=lambda: hashlib.sha256())
    lock: threading.Lock = field(default_factory=threading.Lock)

    strict: bool = False
    finishing: bool = False  # claimed by the job that checks and commits the file

    def span(self, index: int) -> tuple[int, int]:
        """(start, end) of chunk ``index`` in the file."""
        end = (self.offsets[index + 1] if index + 1 < len(self.offsets) else self.entry.size)
        return self.offsets[index], end

    def fold(self) -> None:
        """Hash every chunk that is next in file order and already on disk (lock held)."""
        assert self.file is not None
        while self.hashed in self.landed:
            hash_range(self.file.fd, *self.span(self.hashed), self.hasher)
            self.hashed += 1


def plan_ranges(entries: list[Entry]) -> tuple[list[_Range], list[Entry]]:
    """Split files into coalesced pack ranges and chunked files. A range holds its entries
    only (their blob is read off the entry when fetched): no per-file ``Blob`` is kept."""
    by_oid: dict[str, list[tuple[int, int, Entry]]] = defaultdict(list)
    chunked: list[Entry] = []
    for e in entries:
        blobs = e.blobs
        if not is_chunked(blobs):
            by_oid[blobs[0].oid].append((blobs[0].offset, blobs[0].stored, e))
        else:
            chunked.append(e)
    ranges: list[_Range] = []
    while by_oid:
        oid, members = by_oid.popitem()
        members.sort(key=lambda m: m[0])
        cur: _Range | None = None
        for offset, stored, e in members:
            end = offset + stored
            if (
                cur is not None
                and offset >= cur.end
                and offset - cur.end <= MAX_GAP
                and end - cur.start <= MAX_RANGE
            ):
                cur.end = end
                cur.members.append(e)
            else:
                cur = _Range(oid, offset, end, [e])
                ranges.append(cur)
    return ranges, chunked


class Fetcher:
    def __init__(self, store: Store, area_dir: str, workers: int, on_done: Done,
                 on_bytes: Callable[[int], None] | None = None,
                 dups: dict[str, list[Entry]] | None = None,
                 before_request: Callable[[], None] | None = None) -> None:
        self.store = store
        self.raw = store.raw  # requests go here; retries are ``store.with_retries``'s
        self.area_dir = area_dir
        self.workers = workers
        self.on_done = on_done
        self.on_bytes = on_bytes or (lambda n: None)
        self.dups = dups or {}
        self.before_request = before_request or (lambda: None)  # may raise (a deadline)
        self.primary: dict[str, str] = {}  # digest of a duplicated file -> the fetched copy
        self.abort = threading.Event()
        self.requests = 0
        self.fetched = 0
        self._lock = threading.Lock()

    # --- driver ------------------------------------------------------------------------
    def fetch(self, entries: list[Entry]) -> None:
        """Fetch ``entries``: one job per coalesced range or chunk, biggest first, handed to
        the pool as workers free up (at most ``2 * workers`` queued: memory does not grow
        with the number of jobs); the first failure stops the rest."""
        ranges, chunked = plan_ranges(entries)
        jobs: list[tuple[int, _Range | tuple[_Chunked, Blob, int, int]]] = [
            (r.size, r) for r in ranges]
        files: list[_Chunked] = []
        for e in chunked:
            cf = _Chunked(e, self._final(e))
            files.append(cf)
            offset = 0
            blobs = e.blobs
            for i, blob in enumerate(blobs):
                cf.offsets.append(offset)
                jobs.append((blob.stored, (cf, blob, offset, i)))
                offset += blob.raw
            cf.left = len(blobs)
        del ranges, chunked
        jobs.sort(key=lambda j: -j[0])  # big first: the long poles start early
        try:
            for cf in files:
                self._open_chunked(cf)
            with ThreadPoolExecutor(self.workers, thread_name_prefix="get") as pool:
                pending: set[Future[None]] = set()
                try:
                    for _size, job in jobs:
                        if len(pending) >= 2 * self.workers:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            _raise_first(done)
                        if isinstance(job, _Range):
                            pending.add(pool.submit(self._retry, self._range, job))
                        else:
                            pending.add(pool.submit(self._chunk_job, *job))
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        _raise_first(done)
                except BaseException:
                    self.abort.set()
                    for g in pending:
                        g.cancel()
                    raise
        finally:
            for cf in files:
                if cf.file is not None:
                    cf.file.discard()

    def _final(self, e: Entry) -> str:
        return os.path.join(self.area_dir, e.path)

    def _retry(self, fn: Callable[..., None], *args: object) -> None:
        """One job (a request and its stream) under the store's one retry budget; a stream
        that breaks or arrives corrupt is resumed as the next attempt."""

        def attempt() -> None:
            if not self.abort.is_set():
                fn(*args)

        self.store.with_retries(attempt, RETRY_ON)

    # --- packed files ------------------------------------------------------------------
    def _range(self, r: _Range) -> None:
        # On a retry, start from the first file not yet in place.
        pending = r.members[r.placed:]
        if not pending:
            return
        start = pending[0].blobs[0].offset
        self.before_request()
        body = self.raw.open_range(object_key(r.oid), start, r.end - start)
        with self._lock:
            self.requests += 1
        try:
            pos = start
            for e in pending:
                if self.abort.is_set():
                    return
                blob = e.blobs[0]
                if blob.offset > pos:
                    read_exact(body, blob.offset - pos, r.oid, e)
                pos = blob.offset + blob.stored
                if blob.raw > STREAM_OVER:
                    self._place_streamed(body, blob, r.oid, e)
                else:
                    data = read_exact(body, blob.stored, r.oid, e)
                    self.on_bytes(len(data))
                    self._place_small(e, self._decode(data, blob, r.oid, e))
                r.placed += 1
        finally:
            body.close()

    def _decode(self, data: bytes, blob: Blob, oid: str, e: Entry) -> bytes:
        return check_digest(decode_blob(data, blob, e.path), e, oid)

    def _place_small(self, e: Entry, raw: bytes) -> None:
        for target in (e, *self.dups.get(e.digest, ())):
            final = self._final(target)
            st = write_atomic(final, raw, mode=target.mode, mtime_ns=target.mtime_ns)
            with self._lock:
                self.fetched += 1
            self.on_done(target, final, st)
        self._primary(e)

    def _primary(self, e: Entry) -> None:
        if self.dups:
            digest = e.digest
            if digest in self.dups:
                self.primary[digest] = e.path

    def _decoded(self, body: Any, blob: Blob, oid: str, e: Entry
                 ) -> Iterator[tuple[bytes | memoryview, bytes | memoryview]]:
        """(stored piece, decoded piece) pairs for one blob read from ``body``, one read at
        a time; refuses a body that ends early, does not decompress, or decodes to more
        bytes than the snapshot says. A body with ``readinto`` (the S3 read client) fills
        this thread's buffer: no 1 MiB allocation per read, so a piece is valid only until
        the next one is asked for (every consumer uses it at once)."""
        dobj = _dctx().decompressobj() if blob.codec == CODEC_ZSTD else None
        fill = getattr(body, "readinto", None)
        buf = _read_buffer() if fill is not None else None
        left = blob.stored
        decoded = 0
        while left:
            piece: bytes | memoryview
            if buf is not None and fill is not None:
                piece = buf[:fill(buf[:min(READ, left)])]
            else:
                piece = body.read(min(READ, left))
            if not piece:
                raise TransientStorageError(
                    f"object {oid} ended early (truncated?) while fetching {e.path!r}")
            left -= len(piece)
            self.on_bytes(len(piece))
            out = piece
            if dobj is not None:
                try:
                    out = dobj.decompress(piece)
                except zstandard.ZstdError:
                    raise IntegrityError(
                        f"object {oid} is corrupt: bytes for {e.path!r} do not decompress"
                    ) from None
            decoded += len(out)
            if decoded > blob.raw:
                raise IntegrityError(f"object {oid} is corrupt: {e.path!r} decodes to more "
                                     "bytes than the snapshot says")
            yield piece, out

    def _place_streamed(self, body: Any, blob: Blob, oid: str, e: Entry) -> None:
        """A bigger single-blob file: decode and write it piece by piece (memory stays at one
        read), hashing as it goes; renamed into place only once its SHA-256 matches.
        Duplicates of it are copied by the caller afterwards."""
        final = self._final(e)
        h = hashlib.sha256()
        written = 0
        with writing(final), AtomicFile(final, e.mode) as f:
            for _piece, out in self._decoded(body, blob, oid, e):
                written += len(out)
                h.update(out)
                f.write(out)
            if written != blob.raw or h.hexdigest() != e.digest:
                raise IntegrityError(f"object {oid} is corrupt: {e.path!r} does not match "
                                     "its SHA-256 in the snapshot")
            st = f.commit(e.mtime_ns)
        with self._lock:
            self.fetched += 1
        self._primary(e)
        self.on_done(e, final, st)

    def placed_path(self, digest: str) -> str:
        """Relative path where the content ``digest`` was fetched (for duplicates)."""
        return self.primary[digest]

    # --- chunked files -----------------------------------------------------------------
    def _open_chunked(self, cf: _Chunked) -> None:
        with writing(cf.final):
            cf.file = AtomicFile(cf.final, cf.entry.mode, read=True)
            if cf.entry.size:
                try:
                    os.posix_fallocate(cf.file.fd, 0, cf.entry.size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(cf.file.fd, cf.entry.size)

    def _chunk_job(self, cf: _Chunked, blob: Blob, file_off: int, index: int) -> None:
        """One chunk under the retry budget; the job that lands the last chunk checks the
        file (repairing it if need be: outside that budget, so a failed repair is final)
        and puts it in place."""
        self._retry(self._chunk, cf, blob, file_off, index)
        with cf.lock:
            last = cf.left == 0 and not cf.finishing and not self.abort.is_set()
            cf.finishing = cf.finishing or last
        if last:
            if cf.hasher.hexdigest() != cf.entry.digest:
                self._repair(cf)
            if not self.abort.is_set():
                self._finish_chunked(cf)

    def _chunk(self, cf: _Chunked, blob: Blob, file_off: int, index: int) -> None:
        if not self._stream_chunk(cf, blob, file_off, verify=cf.strict):
            return
        with cf.lock:
            if index in cf.landed:  # a retried chunk that had landed already
                return
            cf.landed.add(index)
            cf.fold()
            cf.left -= 1

    def _stream_chunk(self, cf: _Chunked, blob: Blob, file_off: int, verify: bool) -> bool:
        """Fetch one chunk and write it at its offset; True once all of it is written. With
        ``verify``, its stored bytes are checked against the object id as they stream."""
        e = cf.entry
        if blob.offset != 0:  # refused by snapshot validation: an Entry built by hand
            raise FormatError(f"snapshot entry {e.path!r}: a chunk must be a whole object")
        self.before_request()
        body = self.raw.open_range(object_key(blob.oid), 0, blob.stored)
        with self._lock:
            self.requests += 1
        h = hashlib.sha256() if verify else None
        written = 0
        try:
            for piece, out in self._decoded(body, blob, blob.oid, e):
                if self.abort.is_set():
                    return False
                if h is not None:
                    h.update(piece)
                if out:
                    assert cf.file is not None
                    with writing(cf.final):
                        cf.file.pwrite(out, file_off + written)
                    written += len(out)
        finally:
            body.close()
        if written != blob.raw or (h is not None and h.hexdigest() != blob.oid):
            raise IntegrityError(
                f"object {blob.oid} is corrupt or truncated: chunk of {cf.entry.path!r} does "
                "not match its SHA-256"
            )
        return True

    def _repair(self, cf: _Chunked) -> None:
        """The assembled file does not match its SHA-256: find the chunks that do not match
        their object ids (stored-raw ones are checked on disk; compressed ones, whose stored
        bytes are gone, are fetched again), fetch those again with verification under the
        retry budget, then hash the file again. If every chunk matches and the file still
        does not, the snapshot itself is wrong: permanent, not retried."""
        e = cf.entry
        assert cf.file is not None
        cf.strict = True  # a retried chunk job verifies from now on
        for i, blob in enumerate(e.blobs):
            start, end = cf.span(i)
            if (blob.codec != CODEC_ZSTD and blob.offset == 0 and blob.stored == end - start
                    and hash_range(cf.file.fd, start, end, hashlib.sha256()).hexdigest()
                    == blob.oid):
                continue
            self.store.with_retries(
                functools.partial(self._stream_chunk, cf, blob, start, True), RETRY_ON)
            if self.abort.is_set():
                return
        whole = hash_range(cf.file.fd, 0, e.size, hashlib.sha256()).hexdigest()
        if whole != e.digest:
            # Every chunk matched its object id, so this is the manifest lying (chunks
            # swapped, wrong digest): permanent, not retried.
            raise FormatError(
                f"snapshot entry {e.path!r}: its chunks do not add up to its SHA-256 "
                "(chunks swapped, or the entry's hash is wrong); nothing was put in place")

    def _finish_chunked(self, cf: _Chunked) -> None:
        e = cf.entry
        assert cf.file is not None
        with writing(cf.final):
            st = cf.file.commit(e.mtime_ns)
        with self._lock:
            self.fetched += 1
        self._primary(e)
        self.on_done(e, cf.final, st)


def _raise_first(done: set[Future[None]]) -> None:
    for f in done:
        exc = f.exception()
        if exc is not None:
            raise exc


def decode_blob(data: bytes, blob: Blob, path: str) -> bytes:
    """A blob's raw bytes from its stored bytes; IntegrityError when they do not decode."""
    if blob.codec != CODEC_ZSTD:
        return data
    try:
        return _dctx().decompress(data, max_output_size=blob.raw)
    except zstandard.ZstdError:
        raise IntegrityError(
            f"object {blob.oid} is corrupt: bytes for {path!r} do not decompress") from None


def check_digest(raw: bytes, e: Entry, oid: str) -> bytes:
    """``raw`` if it is exactly the file ``e`` (size and SHA-256), else IntegrityError."""
    if len(raw) != e.size or hashlib.sha256(raw).hexdigest() != e.digest:
        raise IntegrityError(
            f"object {oid} is corrupt: {e.path!r} does not match its SHA-256 in the snapshot")
    return raw


def read_exact(body: Any, n: int, oid: str, e: Entry) -> bytes:
    """Exactly ``n`` bytes of ``body``; a body that ends early is a transient fault."""
    parts = []
    left = n
    while left:
        piece = body.read(min(left, READ))
        if not piece:
            raise TransientStorageError(
                f"object {oid} ended early (truncated?) while fetching {e.path!r}"
            )
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts) if len(parts) != 1 else parts[0]
