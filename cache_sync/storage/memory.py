"""A store in memory (``memory://``): the reference backend of the storage contract, for
tests of everything above the storage layer (plan, packer, transfer, pull, push) that must run
in milliseconds. Thread-safe; lists in key order, ``page_size`` keys per internal page like
S3's ``list_objects_v2``; counts every request by kind so tests can assert on them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence

from cache_sync.errors import ObjectNotFound, StorageError
from cache_sync.storage.base import ObjectInfo, Readable, Store


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        out = bytes(self._data[self._pos:end])
        self._pos = end
        return out

    def close(self) -> None:
        pass


class MemoryStore(Store):
    def __init__(self, name: str = "test", page_size: int = 1000) -> None:
        self.url = f"memory://{name}"
        self.page_size = page_size
        self.objects: dict[str, tuple[bytes, float]] = {}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _check(self, key: str) -> None:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid key {key!r}")

    def _read(self, key: str) -> bytes:
        self._check(key)
        with self._lock:
            item = self.objects.get(key)
        if item is None:
            raise ObjectNotFound(f"{key} not found in {self.url}")
        return item[0]

    def get(self, key: str) -> bytes:
        self.requests["get"] += 1
        return self._read(key)

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        self.requests["open_range"] += 1
        data = self._read(key)
        end = len(data) if length is None else min(len(data), start + length)
        return _Reader(data[start:end])

    def put(self, key: str, data: bytes) -> None:
        self.requests["put"] += 1
        self._check(key)
        with self._lock:
            self.objects[key] = (bytes(data), time.time())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        after = ""
        while True:
            self.requests["list"] += 1
            with self._lock:
                keys = sorted(k for k in self.objects if k.startswith(prefix) and k > after)
                page = [(k, *self.objects[k]) for k in keys[:self.page_size]]
            for key, data, mtime in page:
                yield ObjectInfo(key, len(data), mtime)
            if len(keys) <= self.page_size:
                return
            after = page[-1][0]

    def delete(self, keys: Sequence[str]) -> None:
        self.requests["delete"] += 1
        with self._lock:
            for k in keys:
                self.objects.pop(k, None)

    def head(self, key: str) -> ObjectInfo | None:
        self.requests["head"] += 1
        self._check(key)
        with self._lock:
            item = self.objects.get(key)
        return None if item is None else ObjectInfo(key, len(item[0]), item[1])
