"""Fetching file contents (the pull side): bounded parallel ranged GETs, streaming
decode-and-write, verification before a file is put in place.

- Files held in packs are fetched by coalesced ranged GETs (neighbouring files in one
  request), each decoded, checked against its SHA-256, written to a temporary name in its
  directory and renamed.
- Chunked files are preallocated under a temporary name; their chunks stream in file order,
  ``STREAMS`` at a time (one GET per chunk object, read, or decoded when compressed, in pieces of
  ``PIECE`` bytes into reused buffers), and are written at their offsets (``os.pwrite``). Each
  byte is hashed once: the whole-file SHA-256, folded in file order as pieces land, from the
  buffer a piece was read into (on another core: hashlib releases the GIL) or, when it got too far
  ahead of the hash, read back from the page cache. Only when it does not match are the chunks
  checked one by one against their object ids (the SHA-256 of their stored bytes), the bad ones
  fetched again and checked as they stream, and the file hashed again: a corrupt object costs a
  second pass, an honest one none. The file is renamed into place only once its SHA-256 matches.

No whole object is ever held in memory. Each request and the reading of its stream is one
attempt under the store's retry policy (``Store.with_retries``); a broken or corrupt stream is
retried from the first file not yet in place, as the next attempt of the same budget. A file
that cannot be verified never reaches its final path.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import mmap
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import zstandard

from cache_sync.errors import FormatError, IntegrityError, TransientStorageError
from cache_sync.fsutil import AtomicFile, copy_atomic, hash_range, write_atomic, writing
from cache_sync.layout import object_key
from cache_sync.snapshot import CODEC_ZSTD, Blob, Entry, is_chunked
from cache_sync.storage.base import Store

READ = 1 << 20
MAX_GAP = 256 * 1024  # fetch through a gap this small rather than make another request
MAX_RANGE = 2 << 20
STREAM_OVER = 1 << 20  # a ranged file bigger than this is decoded piece by piece, not in memory
RETRY_ON = (TransientStorageError, IntegrityError)  # a broken or corrupt stream: fetch again
PIECE = 4 << 20  # a raw chunk is fetched as ranges of this size, in file order
HELD = 8  # landed pieces a file keeps in memory for its in-order hash (more: read back)
STREAMS = 4  # chunk GETs at once, in file order: the whole-file hash follows them closely


def cpu_slots() -> int:
    """How many response bodies are read, decoded, hashed and written at once: two per core
    this process may run on. More requests than that wait for their first byte (the latency
    a pool of ``transfers`` hides), but bodies beyond it would only take turns on the GIL
    and the cores (design 5, Transfers: "Requests and CPU slots")."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(2, 2 * cores)


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
class _Chunk:
    """One chunk of a chunked file: one GET of its whole object (the fewest requests, which
    is what a server's CPU pays for), read in pieces of ``PIECE`` bytes that land (are
    written and handed to the file's hash) one by one. ``seq`` is its first piece's place in
    the file. A compressed chunk's pieces are its decoded bytes, ``PIECE`` at a time, decoded
    as it streams. A retry resumes at the first piece not yet landed (a compressed chunk is
    fetched and decoded again from its start, its landed pieces skipped)."""

    cf: _Chunked
    index: int
    blob: Blob
    file_off: int
    seq: int
    pieces: int
    landed: int = 0  # pieces of this chunk landed (a retry starts after them)


@dataclass
class _Chunked:
    """A chunked file being assembled. Its pieces (a raw chunk is fetched as ranges of ``PIECE``
    bytes, a compressed one decoded into pieces of that size) land in any order; the whole-file
    SHA-256 is computed in file order as soon as the next piece is in, from the buffer it was
    read into (up to ``HELD`` landed pieces wait in memory for their turn; beyond that a piece
    is read back from the page cache), by one thread at a time while the others keep fetching.
    hashlib releases the GIL, so the hash runs on another core than the network reads. The
    thread that hashes the last piece checks and commits the file. Chunks are not hashed against
    their ids as they stream (that would hash every byte twice) unless the file is being
    repaired."""

    entry: Entry
    final: str
    file: AtomicFile | None = None
    offsets: list[int] = field(default_factory=list)  # file offset of each chunk, in order
    spans: list[tuple[int, int]] = field(default_factory=list)  # each piece's file span
    ready: dict[int, memoryview | None] = field(default_factory=dict)  # landed, not hashed
    held: int = 0  # buffers in ``ready``
    hashed: int = 0  # pieces folded into the hasher so far
    folding: bool = False  # a thread is folding (hashing) right now
    hasher: Any = field(default_factory=lambda: hashlib.sha256())
    lock: threading.Lock = field(default_factory=threading.Lock)
    wlock: threading.Lock = field(default_factory=threading.Lock)  # one writer at a time

    def span(self, index: int) -> tuple[int, int]:
        """(start, end) of chunk ``index`` in the file."""
        end = (self.offsets[index + 1] if index + 1 < len(self.offsets) else self.entry.size)
        return self.offsets[index], end


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
                 before_request: Callable[[], None] | None = None,
                 in_place: bool = False, direct: bool = False) -> None:
        self.store = store
        # ``direct``: files with compressed chunks are written past the page cache
        # (``AtomicFile``), from the pooled (page-aligned) buffers they are decoded into.
        self.direct = direct
        # ``area_dir`` is a pull's stage (private, cleared before, read only once complete):
        # files are created at their names, not renamed there (one rename per file less).
        self.in_place = in_place
        self.raw = store.raw  # requests go here; retries are ``store.with_retries``'s
        self.area_dir = area_dir
        self.workers = workers
        self.on_done = on_done
        self.on_bytes = on_bytes or (lambda n: None)
        self.dups = dups or {}
        self.before_request = before_request or (lambda: None)  # may raise (a deadline)
        self.abort = threading.Event()
        self._cpu = threading.BoundedSemaphore(min(workers, cpu_slots()))
        self.requests = 0
        self.fetched = 0
        self._lock = threading.Lock()
        self._buffers: list[mmap.mmap] = []  # free piece buffers (at most workers + HELD)

    # --- driver ------------------------------------------------------------------------
    def fetch(self, entries: list[Entry], rank: Callable[[Entry], int] | None = None) -> None:
        """Fetch ``entries``: one job per coalesced range or chunk, biggest first, handed to
        the pool as workers free up (at most ``2 * workers`` queued: memory does not grow
        with the number of jobs); the first failure stops the rest. With ``rank``, the files
        of a lower rank first (a need order), biggest first within a rank, in one pool (the
        next rank's jobs start as the previous rank's last ones run)."""
        groups: dict[int, list[Entry]] = defaultdict(list)
        for e in entries:
            groups[rank(e) if rank is not None else 0].append(e)
        ranges, chunked = [], []
        for r in sorted(groups):  # ranges never mix ranks: each is planned alone
            rs, cs = plan_ranges(groups.pop(r))
            rs.sort(key=lambda x: -x.size)  # big first: the long poles start early
            ranges += rs
            chunked += cs
        chunks: list[_Chunk] = []  # in file order: the whole-file hash follows them closely
        files: list[_Chunked] = []
        for e in chunked:
            cf = _Chunked(e, self._final(e))
            files.append(cf)
            offset = 0
            for i, blob in enumerate(e.blobs):
                cf.offsets.append(offset)
                first = len(cf.spans)
                for start in range(0, max(blob.raw, 1), PIECE):
                    cf.spans.append((offset + start, offset + min(start + PIECE, blob.raw)))
                chunks.append(_Chunk(cf, i, blob, offset, first, len(cf.spans) - first))
                offset += blob.raw
        del chunked
        chunks.reverse()  # popped from the end
        ranges.reverse()
        streams = max(1, min(self.workers, STREAMS))
        try:
            for cf in files:
                self._open_chunked(cf)
            with ThreadPoolExecutor(self.workers, thread_name_prefix="get") as pool:
                pending: set[Future[None]] = set()
                streaming: set[Future[None]] = set()  # chunk jobs among them
                try:
                    while chunks or ranges:
                        while chunks and len(streaming) < streams:
                            fut = pool.submit(self._chunk_job, chunks.pop())
                            streaming.add(fut)
                            pending.add(fut)
                        while ranges and len(pending) - len(streaming) < 2 * self.workers - streams:
                            pending.add(pool.submit(self._retry, self._range, ranges.pop()))
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        streaming -= done
                        _raise_first(done)
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

    @contextlib.contextmanager
    def _body(self, oid: str, start: int, length: int) -> Iterator[Any]:
        """One ranged GET: sent at once (its wait for the first byte overlaps the other
        requests'), its body read only in a CPU slot, closed on the way out."""
        self.before_request()
        body = self.raw.open_range(object_key(oid), start, length)
        with self._lock:
            self.requests += 1
        with self._cpu:
            try:
                yield body
            finally:
                body.close()

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
        with self._body(r.oid, start, r.end - start) as body:
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

    def _decode(self, data: bytes, blob: Blob, oid: str, e: Entry) -> bytes:
        return check_digest(decode_blob(data, blob, e.path), e, oid)

    def _place_small(self, e: Entry, raw: bytes) -> None:
        for target in (e, *self.dups.get(e.digest, ())):
            final = self._final(target)
            st = write_atomic(final, raw, mode=target.mode, mtime_ns=target.mtime_ns,
                              in_place=self.in_place)
            with self._lock:
                self.fetched += 1
            self.on_done(target, final, st)

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
        Its duplicates are copied from it once it is in place (``_copy_dups``)."""
        final = self._final(e)
        h = hashlib.sha256()
        written = 0
        with writing(final), AtomicFile(final, e.mode, in_place=self.in_place) as f:
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
        self._copy_dups(e, final)  # before e is reported: done, it may be moved away
        self.on_done(e, final, st)

    # --- chunked files -----------------------------------------------------------------
    def _open_chunked(self, cf: _Chunked) -> None:
        with writing(cf.final):
            # Past the page cache: a file with compressed chunks (decoded in our buffers, so
            # the page cache's copy and its write-back are only extra CPU). A raw chunk is
            # spliced from the socket into the page cache instead: no copy in this process,
            # its write-back after the pull (design 5, "Transfers": O_DIRECT).
            direct = self.direct and any(b.codec == CODEC_ZSTD for b in cf.entry.blobs)
            cf.file = AtomicFile(cf.final, cf.entry.mode, read=True, in_place=self.in_place,
                                 direct=direct)
            if cf.entry.size:
                try:
                    os.posix_fallocate(cf.file.fd, 0, cf.entry.size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(cf.file.fd, cf.entry.size)

    def _chunk_job(self, c: _Chunk) -> None:
        """One chunk under the retry budget; the job whose piece completes the file's hash
        checks the file (repairing it if need be: outside that budget, so a failed repair is
        final) and puts it in place."""
        complete: list[_Chunked] = []
        self._retry(self._chunk, c, complete)
        for cf in complete:
            if cf.hasher.hexdigest() != cf.entry.digest:
                self._repair(cf)
            if not self.abort.is_set():
                self._finish_chunked(cf)

    def _chunk(self, c: _Chunk, complete: list[_Chunked]) -> None:
        """Fetch the chunk's pieces not yet landed, writing each at its offset and handing
        it to the file's hash; ``complete`` receives the file if this thread hashed its last
        piece."""
        cf, blob = c.cf, c.blob
        if blob.offset != 0:  # refused by snapshot validation: an Entry built by hand
            raise FormatError(
                f"snapshot entry {cf.entry.path!r}: a chunk must be a whole object")
        if blob.codec == CODEC_ZSTD:
            self._zstd_chunk(c, complete)
            return
        start = c.landed * PIECE
        assert cf.file is not None
        with self._body(blob.oid, start, blob.stored - start) as body:
            # splice(2) lands bytes in the page cache: not for a file written past it
            splice = None if cf.file.direct else getattr(body, "splice_into", None)
            while c.landed < c.pieces and not self.abort.is_set():
                seq = c.seq + c.landed
                lo, hi = cf.spans[seq]
                if splice is not None:
                    with writing(cf.final):
                        spliced = splice(cf.file.fd, lo, hi - lo)
                    if spliced:  # socket to page cache in the kernel: hashed from there
                        self.on_bytes(hi - lo)
                        c.landed += 1
                        self._land(cf, seq, None, complete)
                        continue
                    splice = None
                buf = memoryview(self._buffer())[:hi - lo]
                try:
                    fill(body, buf, blob.oid, cf.entry)
                    self.on_bytes(hi - lo)
                    self._write(cf, buf, lo)
                except BaseException:
                    self._give(buf)
                    raise
                c.landed += 1
                self._land(cf, seq, buf, complete)

    def _zstd_chunk(self, c: _Chunk, complete: list[_Chunked]) -> None:
        """A compressed chunk, decoded as it streams straight into pooled ``PIECE``
        buffers (no allocation per decoded piece), each written and landed like a raw
        chunk's piece, so the file's hash reads it from memory. A retry decodes the chunk
        from its start again (a zstd stream cannot resume) and skips the pieces landed."""
        cf, blob = c.cf, c.blob
        with self._body(blob.oid, 0, blob.stored) as body:
            counted = _Counted(body, self.on_bytes)
            # a duck-typed source: the reader only calls its read()
            with _dctx().stream_reader(counted, read_size=READ,  # type: ignore[arg-type]
                                       closefd=False) as reader:
                for k in range(c.pieces):
                    if self.abort.is_set():
                        return
                    lo, hi = cf.spans[c.seq + k]
                    buf = memoryview(self._buffer())[:hi - lo]
                    try:
                        _decode_into(reader, buf, counted, blob, cf.entry)
                        if k < c.landed:  # landed by an earlier attempt
                            self._give(buf)
                            continue
                        self._write(cf, buf, lo)
                    except BaseException:
                        self._give(buf)
                        raise
                    c.landed = k + 1
                    self._land(cf, c.seq + k, buf, complete)
                _decode_end(reader, counted, blob, cf.entry)

    def _write(self, cf: _Chunked, data: bytes | memoryview, offset: int) -> None:
        """One piece at its offset. The kernel writes a file under its inode lock, one
        writer at a time; taking the file's own lock first makes the other writers of that
        file sleep rather than spin on the inode lock (a core's worth of spinning with 4
        streams of one file on 2 cores)."""
        assert cf.file is not None
        with cf.wlock, writing(cf.final):
            cf.file.pwrite(data, offset)

    def _buffer(self) -> mmap.mmap:
        """A free ``PIECE`` buffer: anonymous memory, so page-aligned (O_DIRECT writes
        need an aligned source)."""
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        return mmap.mmap(-1, PIECE)

    def _give(self, buf: memoryview | None) -> None:
        if buf is not None:
            base = buf.obj
            buf.release()
            assert isinstance(base, mmap.mmap)
            with self._lock:
                if len(self._buffers) < self.workers + HELD:
                    self._buffers.append(base)

    def _land(self, cf: _Chunked, seq: int, buf: memoryview | None,
              complete: list[_Chunked]) -> None:
        """Piece ``seq`` is on disk (and in ``buf``, unless None): hash it now if it is next
        in file order and no other thread is hashing this file, else leave it for that
        thread (in memory while fewer than ``HELD`` wait, else to be read back)."""
        with cf.lock:
            if buf is not None and cf.held >= HELD:
                self._give(buf)
                buf = None
            cf.ready[seq] = buf
            cf.held += buf is not None
            if cf.folding:
                return
            cf.folding = True
        self._fold(cf, complete)

    def _fold(self, cf: _Chunked, complete: list[_Chunked]) -> None:
        """Hash every landed piece that is next in file order (this thread holds the
        ``folding`` claim); the thread that hashes the last piece reports the file."""
        assert cf.file is not None
        while True:
            with cf.lock:
                seq = cf.hashed
                if seq not in cf.ready or self.abort.is_set():
                    cf.folding = False
                    return
                buf = cf.ready.pop(seq)
                cf.held -= buf is not None
            if buf is None:
                self._hash_back(cf, *cf.spans[seq])
            else:
                cf.hasher.update(buf)  # releases the GIL: other threads keep fetching
                self._give(buf)
            cf.hashed = seq + 1  # only the folding thread writes it
            if cf.hashed == len(cf.spans):
                complete.append(cf)
                return

    def _refetch_chunk(self, cf: _Chunked, blob: Blob, file_off: int) -> None:
        """Fetch one chunk again (a repair) and write it at its offset, its stored bytes
        checked against the object id as they stream."""
        e = cf.entry
        if blob.offset != 0:  # refused by snapshot validation: an Entry built by hand
            raise FormatError(f"snapshot entry {e.path!r}: a chunk must be a whole object")
        h = hashlib.sha256()
        written = 0
        with self._body(blob.oid, 0, blob.stored) as body:
            for piece, out in self._decoded(body, blob, blob.oid, e):
                if self.abort.is_set():
                    return
                h.update(piece)
                if out:
                    self._write(cf, out, file_off + written)
                    written += len(out)
        if written != blob.raw or h.hexdigest() != blob.oid:
            raise IntegrityError(
                f"object {blob.oid} is corrupt or truncated: chunk of {cf.entry.path!r} does "
                "not match its SHA-256"
            )

    def _repair(self, cf: _Chunked) -> None:
        """The assembled file does not match its SHA-256 (every piece has landed): find the
        chunks that do not match their object ids (stored-raw ones are checked on disk;
        compressed ones, whose stored bytes are gone, are fetched again), fetch those again
        with verification under the retry budget, then hash the file again. If every chunk
        matches and the file still does not, the snapshot itself is wrong: permanent, not
        retried."""
        e = cf.entry
        assert cf.file is not None
        for i, blob in enumerate(e.blobs):
            start, end = cf.span(i)
            if (blob.codec != CODEC_ZSTD and blob.offset == 0 and blob.stored == end - start
                    and hash_range(cf.file.fd, start, end, hashlib.sha256()).hexdigest()
                    == blob.oid):
                continue
            self.store.with_retries(
                functools.partial(self._refetch_chunk, cf, blob, start), RETRY_ON)
            if self.abort.is_set():
                return
        whole = hash_range(cf.file.fd, 0, e.size, hashlib.sha256()).hexdigest()
        if whole != e.digest:
            # Every chunk matched its object id, so this is the manifest lying (chunks
            # swapped, wrong digest): permanent, not retried.
            raise FormatError(
                f"snapshot entry {e.path!r}: its chunks do not add up to its SHA-256 "
                "(chunks swapped, or the entry's hash is wrong); nothing was put in place")

    def _hash_back(self, cf: _Chunked, lo: int, hi: int) -> None:
        """Hash bytes [lo, hi) of the file from the page cache: through a read-only map of
        just that span (no copy; unmapped at once, so the process's RSS does not grow with
        the file), else by ``pread``."""
        assert cf.file is not None
        base = lo - lo % mmap.ALLOCATIONGRANULARITY
        try:
            m = mmap.mmap(cf.file.fd, hi - base, offset=base, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            hash_range(cf.file.fd, lo, hi, cf.hasher)
            return
        try:
            with memoryview(m) as whole, whole[lo - base:] as view:
                cf.hasher.update(view)  # releases the GIL (page faults happen without it)
        finally:
            m.close()

    def _finish_chunked(self, cf: _Chunked) -> None:
        e = cf.entry
        assert cf.file is not None
        with writing(cf.final):
            st = cf.file.commit(e.mtime_ns)
        with self._lock:
            self.fetched += 1
        self._copy_dups(e, cf.final)  # before e is reported: done, it may be moved away
        self.on_done(e, cf.final, st)

    def _copy_dups(self, e: Entry, final: str) -> None:
        """The other paths with ``e``'s content, copied from the file just verified at
        ``final`` (small files write theirs from the decoded bytes instead), each reported
        done: a file is done when it is at its name, whatever the way it got there."""
        for dup in self.dups.get(e.digest, ()):
            if dup.path == e.path or self.abort.is_set():
                continue
            dest = self._final(dup)
            copy_atomic(final, dest, mode=dup.mode, mtime_ns=dup.mtime_ns, digest=None)
            with self._lock:
                self.fetched += 1
            self.on_done(dup, dest, os.lstat(dest))


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


class _Counted:
    """A response body as the zstd stream reader reads it: each read counted (``on_bytes``
    and ``n``: how many stored bytes arrived, which tells a truncated body from a corrupt
    one)."""

    def __init__(self, body: Any, on_bytes: Callable[[int], None]) -> None:
        self.body, self.on_bytes, self.n = body, on_bytes, 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.body.read(size)
        self.n += len(data)
        self.on_bytes(len(data))
        return data


def _decode_into(reader: Any, view: memoryview, counted: _Counted, blob: Blob,
                 e: Entry) -> None:
    """Fill ``view`` with the next decoded bytes of a chunk: a body that ends early is a
    transient fault; bytes that do not decode, or decode to fewer bytes than the snapshot
    says, are a corrupt object."""
    pos, n = 0, len(view)
    while pos < n:
        try:
            got = reader.readinto(view[pos:])
        except zstandard.ZstdError:
            raise IntegrityError(f"object {blob.oid} is corrupt: bytes for {e.path!r} do not "
                                 "decompress") from None
        if not got:
            if counted.n < blob.stored:
                raise TransientStorageError(f"object {blob.oid} ended early (truncated?) "
                                            f"while fetching {e.path!r}")
            raise IntegrityError(f"object {blob.oid} is corrupt: {e.path!r} decodes to fewer "
                                 "bytes than the snapshot says")
        pos += got


def _decode_end(reader: Any, counted: _Counted, blob: Blob, e: Entry) -> None:
    """After a chunk's raw size is decoded: the frame must end there."""
    try:
        more = reader.read(1)
    except zstandard.ZstdError:
        more = b"?"
    if more:
        raise IntegrityError(f"object {blob.oid} is corrupt: {e.path!r} decodes to more "
                             "bytes than the snapshot says")


def fill(body: Any, view: memoryview, oid: str, e: Entry) -> None:
    """Fill ``view`` from ``body`` (straight into it when the body has ``readinto``); a body
    that ends early is a transient fault."""
    into = getattr(body, "readinto", None)
    pos, n = 0, len(view)
    while pos < n:
        if into is not None:
            got = into(view[pos:])
        else:
            piece = body.read(min(n - pos, 4 * READ))
            got = len(piece)
            view[pos:pos + got] = piece
        if not got:
            raise TransientStorageError(
                f"object {oid} ended early (truncated?) while fetching {e.path!r}")
        pos += got


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
