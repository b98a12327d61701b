"""A directory as a store (the embedded default, ``file:///path``). Writes go to a temporary
name in the same directory and are renamed, so a reader never sees half an object."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from cache_sync.errors import AccessDenied, DiskSpaceError, ObjectNotFound, StorageError
from cache_sync.fsutil import TMP_PREFIX, AtomicFile
from cache_sync.storage.base import ObjectInfo, Readable, Store

_TMPS = (TMP_PREFIX, ".tmp-")  # writes in progress (".tmp-": written by older cache-sync)


class _RangeReader:
    def __init__(self, f: BinaryIO, length: int | None) -> None:
        self._f = f
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left is not None:
            n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class LocalStore(Store):
    def __init__(self, path: str) -> None:
        self.base = os.path.abspath(path)
        self.url = "file://" + self.base

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid key {key!r}")
        return os.path.join(self.base, key)

    def _translate(self, exc: OSError, key: str) -> Exception:
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFound(f"{key} not found in {self.url}")
        if isinstance(exc, PermissionError):
            return AccessDenied(f"permission denied on {self._path(key)}")
        if exc.errno == errno.ENOSPC:
            return DiskSpaceError(f"store directory {self.base} is full")
        return StorageError(f"{key}: {exc.strerror or exc}")

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._translate(exc, key) from None

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the reader
        except OSError as exc:
            raise self._translate(exc, key) from None
        f.seek(start)
        return _RangeReader(f, length)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with AtomicFile(path) as f:
                f.write(data)
                # Snapshots are the commit points: make them durable.
                f.commit(fsync=key.endswith((".json.zst", ".json")))
        except OSError as exc:
            raise self._translate(exc, key) from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the directory that holds the prefix, not the whole store.
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = os.path.join(self.base, head) if head else self.base
        if not os.path.isdir(top):
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.base)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in filenames:
                key = rel + name
                if name.startswith(_TMPS) or not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._translate(exc, key) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)
