"""A fault-injecting wrapper around any ``Store`` (usually ``MemoryStore``), for unit tests
of the retry policy and the transfer engine without a server: counts requests per kind and
fails them on a script."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from cache_sync.errors import TransientStorageError
from cache_sync.storage.base import ObjectInfo, Readable, Store


class _Breaking:
    """A stream that raises a transient error after ``after`` bytes."""

    def __init__(self, inner: Readable, after: int) -> None:
        self.inner, self.left = inner, after

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise TransientStorageError("connection reset while reading (injected)")
        data = self.inner.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.inner.close()


class _Flipping:
    """A stream whose first byte arrives flipped (corruption in transit)."""

    def __init__(self, inner: Readable) -> None:
        self.inner, self.first = inner, True

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        if self.first and data:
            self.first = False
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def close(self) -> None:
        self.inner.close()


class FaultyStore(Store):
    """``fail(kind, times, exc=..., match=...)``: the next ``times`` requests of ``kind``
    ("get", "open_range", "put", "list", "head", "delete") on keys containing ``match`` raise
    ``exc()`` (times=None: forever). ``break_streams(times, after)``: the next ``times``
    streams opened break after ``after`` bytes. ``corrupt_streams(times, match)``: the next
    ``times`` streams of keys containing ``match`` arrive with their first byte flipped.
    ``requests`` counts every request made."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int | None]] = []
        self._rules: list[list] = []
        self._breaks: list[int] = []
        self._flips: list[list] = []
        self._lock = threading.Lock()

    def fail(self, kind: str, times: int | None = None, match: str = "",
             exc: Callable[[], Exception] = lambda: TransientStorageError("503 (injected)")
             ) -> None:
        self._rules.append([kind, times, match, exc])

    def break_streams(self, times: int, after: int) -> None:
        self._breaks += [after] * times

    def corrupt_streams(self, times: int, match: str = "") -> None:
        self._flips.append([times, match])

    def _request(self, kind: str, key: str) -> None:
        with self._lock:
            self.requests[kind] += 1
            for rule in self._rules:
                if rule[0] == kind and rule[2] in key and (rule[1] is None or rule[1] > 0):
                    if rule[1] is not None:
                        rule[1] -= 1
                    raise rule[3]()

    def get(self, key: str) -> bytes:
        self._request("get", key)
        return self.inner.get(key)

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        self._request("open_range", key)
        with self._lock:
            self.ranges.append((key, start, length))
            after = self._breaks.pop(0) if self._breaks else None
            flip = next((f for f in self._flips if f[0] > 0 and f[1] in key), None)
            if flip is not None:
                flip[0] -= 1
        body = self.inner.open_range(key, start, length)
        if flip is not None:
            body = _Flipping(body)
        return body if after is None else _Breaking(body, after)

    def put(self, key: str, data: bytes) -> None:
        self._request("put", key)
        self.inner.put(key, data)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._request("list", prefix)
        return self.inner.list(prefix)

    def delete(self, keys: Sequence[str]) -> None:
        self._request("delete", ",".join(keys))
        self.inner.delete(keys)

    def head(self, key: str) -> ObjectInfo | None:
        self._request("head", key)
        return self.inner.head(key)
