"""Turning new file contents into immutable objects (the push side).

Small files are compressed one by one and appended to a pack (~pack_size), so a tree of
15,000 files becomes a few dozen objects, yet each file can still be fetched alone by range.
Large files are cut into chunks of ``chunk_size``, each its own object, stored raw unless a
sample shows compression pays. Every object is named by the SHA-256 of its stored bytes.

Memory is bounded: at most ``max_inflight`` objects are held while their upload runs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from cache_sync.layout import object_key
from cache_sync.snapshot import CODEC_RAW, CODEC_ZSTD, Blob, BlobMap
from cache_sync.storage.base import Store

SAMPLE = 256 * 1024
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=3)
    return c


def compress_if_smaller(data: bytes) -> tuple[bytes, int]:
    """(stored bytes, codec): zstd when it saves at least 5%, raw otherwise."""
    if len(data) < 64:
        return data, CODEC_RAW
    if len(data) > SAMPLE:
        sample = data[:SAMPLE]
        if len(_cctx().compress(sample)) > 0.9 * len(sample):
            return data, CODEC_RAW  # weights, archives: not worth the CPU
    packed = _cctx().compress(data)
    if len(packed) <= 0.95 * len(data):
        return packed, CODEC_ZSTD
    return data, CODEC_RAW


OnStored = Callable[[dict[str, list[Blob]]], None]


class Uploader:
    """Bounded parallel PUTs. ``on_stored`` runs (in the caller's order of completion) with the
    digest -> blobs map an object made durable."""

    def __init__(self, store: Store, workers: int, max_inflight: int, on_stored: OnStored):
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="put")
        self.slots = threading.BoundedSemaphore(max_inflight)
        self.on_stored = on_stored
        self.lock = threading.Lock()
        self.futures: list[Future[None]] = []
        self.objects = 0
        self.bytes = 0

    def submit(self, data: bytes, members: dict[str, list[Blob]] | None = None,
               oid: str | None = None, group: _Group | None = None) -> str:
        oid = oid or hashlib.sha256(data).hexdigest()
        self.slots.acquire()
        self._raise_failed()
        if group:
            group.add()

        def run() -> None:
            try:
                self.store.put(object_key(oid), data)
                with self.lock:
                    self.objects += 1
                    self.bytes += len(data)
                    if members:
                        self.on_stored(members)
                    if group:
                        group.done()
            finally:
                self.slots.release()

        self.futures.append(self.pool.submit(run))
        return oid

    def _raise_failed(self) -> None:
        for f in self.futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def wait(self) -> None:
        """Until every submitted object is stored (raises the first failure); the pool stays
        open for more (a push uploads again what gc deleted under it)."""
        try:
            for f in self.futures:
                f.result()
        except BaseException:
            self.abort()
            raise
        self.futures = []

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    close = abort


class _Group:
    """Journals a chunked file once all of its chunks are stored (they upload in parallel and
    finish in any order; a resumed push must never trust a file with a missing chunk)."""

    def __init__(self, on_stored: OnStored) -> None:
        self.pending = 1  # the producer's own token, dropped by close()
        self.on_stored = on_stored
        self.members: dict[str, list[Blob]] = {}

    def add(self) -> None:
        self.pending += 1

    def done(self) -> None:  # called with the uploader's lock held
        self.pending -= 1
        if self.pending == 0 and self.members:
            self.on_stored(self.members)


class Packer:
    """Collects new contents; ``blobs`` maps digest -> where its bytes went."""

    def __init__(self, uploader: Uploader, pack_size: int, chunk_size: int,
                 small_file: int) -> None:
        self.up = uploader
        self.pack_size = pack_size
        self.chunk_size = chunk_size
        self.small_file = small_file
        self.buf = bytearray()
        self.members: list[tuple[str, int, int, int, int]] = []  # digest, off, stored, raw, codec
        self.in_pack: set[str] = set()
        self.blobs = BlobMap()

    def has(self, digest: str) -> bool:
        return digest in self.blobs or digest in self.in_pack

    def add_small(self, digest: str, data: bytes) -> None:
        if self.has(digest):
            return
        stored, codec = compress_if_smaller(data)
        self.in_pack.add(digest)
        self.members.append((digest, len(self.buf), len(stored), len(data), codec))
        self.buf += stored
        if len(self.buf) >= self.pack_size:
            self.seal()

    def seal(self) -> None:
        if not self.members:
            return
        data = bytes(self.buf)
        oid = hashlib.sha256(data).hexdigest()
        members: dict[str, list[Blob]] = {}
        for digest, off, stored, raw, codec in self.members:
            blob = Blob(oid, off, stored, raw, codec)
            members[digest] = [blob]
            self.blobs[digest] = (blob,)
        self.buf = bytearray()
        self.members = []
        self.in_pack = set()
        self.up.submit(data, members, oid)

    def add_large(self, digest: str, path: str, size: int) -> None:
        """Chunk a file already hashed as ``digest``; the file is re-read chunk by chunk."""
        if self.has(digest):
            return
        blobs: list[Blob] = []
        group = _Group(self.up.on_stored)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                raw = f.read(self.chunk_size)
                if not raw:
                    break
                h.update(raw)
                stored, codec = compress_if_smaller(raw)
                oid = hashlib.sha256(stored).hexdigest()
                blobs.append(Blob(oid, 0, len(stored), len(raw), codec))
                self.up.submit(stored, None, oid, group)
        if h.hexdigest() != digest or sum(b.raw for b in blobs) != size:
            raise FileChangedError(path)
        self.blobs[digest] = tuple(blobs)
        with self.up.lock:
            group.members = {digest: blobs}
            group.done()  # drop the producer's token

    def flush(self) -> None:
        self.seal()


class FileChangedError(Exception):
    """The file changed between hashing and chunking; the caller re-hashes it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} changed while it was being pushed")
        self.path = path
