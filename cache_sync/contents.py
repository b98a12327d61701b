"""The bytes of a few small files of a snapshot, for the merge's units (``units.Reader``).

A unit-aware merge reads the ``RECORD`` of an installed distribution to know which files
belong to it. Those files are small and usually already on disk: the local copy is used when
its SHA-256 matches the snapshot's, else the file's blobs are fetched by ranged GETs. Every
result is checked against the snapshot's SHA-256; a mismatch is an IntegrityError (the same
rule as any pulled file: unverified bytes never decide anything).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import zstandard

from cache_sync.errors import IntegrityError
from cache_sync.layout import object_key
from cache_sync.snapshot import CODEC_ZSTD, Entry
from cache_sync.storage import Store

MAX_SMALL = 8 << 20


class SmallFiles:
    def __init__(self, store: Store, area_dir: Path | None) -> None:
        self.store = store
        self.area_dir = area_dir
        self.mem: dict[str, bytes] = {}
        self.fetched = 0  # files read from the store (tests count them)

    def __call__(self, e: Entry) -> bytes | None:
        if e.kind != "f" or e.size > MAX_SMALL:
            return None
        if e.digest in self.mem:
            return self.mem[e.digest]
        data = self._local(e)
        if data is None:
            data = self._fetch(e)
            self.fetched += 1
        self.mem[e.digest] = data
        return data

    def _local(self, e: Entry) -> bytes | None:
        if self.area_dir is None:
            return None
        path = os.path.join(self.area_dir, e.path)
        try:
            if os.path.islink(path) or os.path.getsize(path) != e.size:
                return None
            with open(path, "rb") as f:
                data = f.read(e.size + 1)
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == e.digest else None

    def _fetch(self, e: Entry) -> bytes:
        parts = []
        for b in e.blobs:
            body = self.store.open_range(object_key(b.oid), b.offset, b.stored)
            try:
                stored = body.read(b.stored)
            finally:
                body.close()
            if b.codec == CODEC_ZSTD:
                try:
                    raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=b.raw)
                except zstandard.ZstdError:
                    raw = b""
            else:
                raw = stored
            parts.append(raw)
        data = b"".join(parts)
        if len(data) != e.size or hashlib.sha256(data).hexdigest() != e.digest:
            oids = ", ".join(sorted({b.oid for b in e.blobs})) or "(none)"
            raise IntegrityError(
                f"object {oids} is corrupt: {e.path!r} does not match its SHA-256 in the snapshot")
        return data
