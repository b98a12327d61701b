"""Storage backends: bytes under a key. ``open_store`` stacks the wrappers in one place."""

from __future__ import annotations

import os

from cache_sync.config import Settings
from cache_sync.storage.base import ObjectInfo, Readable, Store
from cache_sync.storage.dialect import DIALECTS, derive
from cache_sync.storage.options import S3Options
from cache_sync.storage.retry import RetryingStore, RetryPolicy

__all__ = ["ObjectInfo", "Readable", "S3Options", "Store", "open_store", "s3_options",
           "store_url"]

FILE = "file://"


def store_url(remote: str) -> str:
    """The store's URL as ``Store.url`` spells it (a ``file://`` path made absolute), known
    without opening the store: the local state of each area is recorded against it."""
    if remote.startswith(FILE):
        return FILE + os.path.abspath(remote[len(FILE):])
    return remote


def s3_options(settings: Settings) -> S3Options:
    """The S3 backends' options from the settings (the dialect resolved: ``Settings.from_env``
    resolves ``auto``; a hand-made Settings may not have)."""
    dialect = settings.s3_dialect if settings.s3_dialect in DIALECTS else derive(
        settings.endpoint_url, False)[0]
    return S3Options(
        remote=settings.remote, dialect=dialect, endpoint_url=settings.endpoint_url,
        region=settings.region, profile=settings.profile, ca_bundle=settings.ca_bundle,
        transfers=settings.transfers, connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout, access_key_id=settings.access_key_id,
        secret_access_key=settings.secret_access_key, session_token=settings.session_token)


def open_store(settings: Settings) -> Store:
    """The store named by ``settings.remote``, wrapped with retries."""
    if settings.remote.startswith(FILE):
        from cache_sync.storage.local import LocalStore

        inner: Store = LocalStore(store_url(settings.remote)[len(FILE):])
    elif settings.s3_client == "lite":  # no boto3 import on the read path (docs/design.md)
        from cache_sync.storage.s3lite import S3LiteStore

        inner = S3LiteStore(s3_options(settings))
    else:
        from cache_sync.storage.s3 import S3Store

        inner = S3Store(s3_options(settings))
    return RetryingStore(inner, RetryPolicy(settings.retries, settings.retry_base,
                                            settings.retry_max))
