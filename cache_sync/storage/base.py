"""The storage contract: bytes under a key. A backend knows nothing of packs or snapshots;
it translates its own failures into ``cache_sync.errors`` (permanent vs transient) at this edge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cache_sync.versions import VersionInfo

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


class Readable(Protocol):
    """A body being read. A backend's body may also offer ``readinto(buffer) -> int`` (the
    S3 read client's does): the transfer engine then reads into one reusable buffer; and
    ``splice_into(fd, offset, n) -> bool`` (the S3 read client's, over plain HTTP): the next
    ``n`` bytes moved into a file by the kernel, False when it cannot (nothing read)."""

    def read(self, n: int = -1) -> bytes: ...
    def close(self) -> None: ...


class Store(ABC):
    """A flat key space. Keys are '/'-separated relative paths."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object. ObjectNotFound when absent."""

    @abstractmethod
    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        """A stream of ``length`` bytes from ``start`` (to the end when None). Errors while
        reading the stream are raised as TransientStorageError."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the whole object; readers see all of it or none of it."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every key that starts with ``prefix`` (a string prefix, as S3 defines it), each
        once, in no particular order; a backend pages internally."""

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Delete keys; absent keys are not an error."""

    def list_versions(self, prefix: str) -> Iterator[VersionInfo]:
        """Every stored version of every key under ``prefix``, delete markers included, on
        a bucket that keeps versions; nothing on a store that never kept any (a directory,
        a bucket whose versioning was never enabled)."""
        return iter(())

    def delete_versions(self, versions: Sequence[VersionInfo]) -> None:
        """Delete exactly these versions by id (absent ones are not an error)."""
        if versions:
            raise NotImplementedError(f"{type(self).__name__} keeps no versions")

    def head(self, key: str) -> ObjectInfo | None:
        """Size and time of one key, or None."""
        for info in self.list(key):
            if info.key == key:
                return info
        return None

    @property
    def raw(self) -> Store:
        """The backend without retries (``RetryingStore`` unwraps itself)."""
        return self

    def with_retries(self, fn: Callable[[], T],
                     retry_on: tuple[type[BaseException], ...] = ()) -> T:
        """Run ``fn``, which makes its requests on ``raw``, under the store's retry policy:
        each call of ``fn`` is one attempt. A bare backend has no policy: one attempt."""
        return fn()

    def close(self) -> None:
        pass
