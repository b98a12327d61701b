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

from cache_sync.layout import object_key
from cache_sync.snapshot import Entry
from cache_sync.storage import Store
from cache_sync.transfer import RETRY_ON, check_digest, decode_blob, read_exact

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
        def attempt() -> bytes:  # one request and its stream per attempt, as in transfer
            parts = []
            for b in e.blobs:
                body = self.store.raw.open_range(object_key(b.oid), b.offset, b.stored)
                try:
                    parts.append(decode_blob(read_exact(body, b.stored, b.oid, e), b, e.path))
                finally:
                    body.close()
            oids = ", ".join(sorted({b.oid for b in e.blobs})) or "(none)"
            return check_digest(b"".join(parts), e, oids)

        return self.store.with_retries(attempt, RETRY_ON)
