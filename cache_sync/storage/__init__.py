"""Storage backends: bytes under a key. ``open_store`` stacks the wrappers in one place."""

from __future__ import annotations

import os

from cache_sync.config import Settings
from cache_sync.storage.base import ObjectInfo, Readable, Store
from cache_sync.storage.retry import RetryingStore, RetryPolicy

__all__ = ["ObjectInfo", "Readable", "Store", "open_store", "store_url"]

FILE = "file://"


def store_url(remote: str) -> str:
    """The store's URL as ``Store.url`` spells it (a ``file://`` path made absolute), known
    without opening the store: the local state of each area is recorded against it."""
    if remote.startswith(FILE):
        return FILE + os.path.abspath(remote[len(FILE):])
    return remote


def open_store(settings: Settings) -> Store:
    """The store named by ``settings.remote``, wrapped with retries."""
    if settings.remote.startswith(FILE):
        from cache_sync.storage.local import LocalStore

        inner: Store = LocalStore(store_url(settings.remote)[len(FILE):])
    elif settings.s3_client == "lite":  # no boto3 import on the read path (docs/design.md)
        from cache_sync.storage.s3lite import S3LiteStore

        inner = S3LiteStore(settings)
    else:
        from cache_sync.storage.s3 import S3Store

        inner = S3Store(settings)
    return RetryingStore(inner, RetryPolicy(settings.retries, settings.retry_base,
                                            settings.retry_max))
