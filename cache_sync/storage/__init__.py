"""Storage backends: bytes under a key. ``open_store`` stacks the wrappers in one place."""

from __future__ import annotations

from cache_sync.config import Settings
from cache_sync.storage.base import ObjectInfo, Readable, Store
from cache_sync.storage.retry import RetryingStore

__all__ = ["ObjectInfo", "Readable", "Store", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store named by ``settings.remote``, wrapped with retries."""
    if settings.remote.startswith("file://"):
        from cache_sync.storage.local import LocalStore

        inner: Store = LocalStore(settings.remote[len("file://"):])
    else:
        from cache_sync.storage.s3 import S3Store

        inner = S3Store(settings)
    return RetryingStore(inner, settings.retries, settings.retry_base, settings.retry_max)
