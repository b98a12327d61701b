"""S3-compatible store over boto3 (AWS, Backblaze B2, R2, MinIO, SeaweedFS, moto).

botocore's own retries are switched off: retries live in one place, ``storage/retry.py``,
so Retry-After and the attempt budget are honoured the same way for every backend. Checksums
are sent only when required: boto3 >= 1.36 otherwise adds CRC headers that B2 and other
S3-compatible stores reject; ``storage/dialect.py`` removes the ones botocore still sends on
DeleteObjects and adds the Content-MD5 it no longer computes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import botocore.exceptions as bex
from botocore.config import Config

import cache_sync.storage.dialect as s3_dialect
from cache_sync.errors import (
    AccessDenied,
    ConfigError,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)
from cache_sync.storage.base import ObjectInfo, Readable, Store
from cache_sync.storage.options import S3Options
from cache_sync.storage.s3common import error_from_reply, parse_remote
from cache_sync.versions import VersionInfo

_NETWORK = (
    bex.EndpointConnectionError,
    bex.ConnectionClosedError,
    bex.ReadTimeoutError,
    bex.ConnectTimeoutError,
    bex.IncompleteReadError,
    bex.ResponseStreamingError,
    bex.ProxyConnectionError,
    bex.HTTPClientError,
)


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def make_client(settings: S3Options) -> Any:
    """One client per process and connection settings: building a botocore client parses
    the S3 service model (~0.3-0.5 s of CPU, a quarter of a 512 MiB pull's CPU when every
    pull and push built its own); clients are thread-safe, their creation is not."""
    key = (settings.endpoint_url, settings.region, settings.profile, settings.access_key_id,
           settings.secret_access_key, settings.session_token, settings.transfers,
           settings.connect_timeout, settings.read_timeout, settings.dialect)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(settings)
        return client


def _new_client(settings: S3Options) -> Any:
    config = Config(
        max_pool_connections=max(10, settings.transfers * 2),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )
    session = boto3.session.Session(profile_name=settings.profile) if settings.profile else (
        boto3.session.Session())
    client = session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region or ("us-east-1" if settings.endpoint_url else None),
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=config,
    )
    s3_dialect.install(client, settings.dialect)
    return client


def translate(exc: Exception, what: str) -> Exception:
    """Map a botocore failure to our hierarchy (``s3common.error_from_reply``, shared with the
    boto3-free client); ``what`` names the key or operation."""
    if isinstance(exc, bex.ClientError):
        return _translate_client_error(exc, what)
    return _translate_other(exc, what)


def _translate_client_error(exc: bex.ClientError, what: str) -> Exception:
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    return error_from_reply(str(err.get("Code", "")), str(meta.get("HTTPStatusCode", "")),
                            str(err.get("Message", "")), meta.get("HTTPHeaders", {}), what)


def _translate_other(exc: Exception, what: str) -> Exception:
    if isinstance(exc, _NETWORK):
        return TransientStorageError(f"network error on {what}: {type(exc).__name__}")
    if isinstance(exc, bex.NoCredentialsError):
        return ConfigError(
            "no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or B2_APPLICATION_KEY_ID/"
            "B2_APPLICATION_KEY) or AWS_PROFILE",
        )
    if isinstance(exc, bex.ProfileNotFound):
        return ConfigError(str(exc))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TransientStorageError(f"network error on {what}: {type(exc).__name__}")
    if isinstance(exc, bex.BotoCoreError):
        return StorageError(f"{type(exc).__name__} on {what}")
    return exc


class _Body:
    """A streaming body whose read errors become TransientStorageError."""

    def __init__(self, body: Any, what: str, expected: int | None) -> None:
        self._body = body
        self._what = what
        self._left = expected

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._body.read(n if n >= 0 else None)
        except Exception as exc:  # urllib3/botocore stream errors
            raise TransientStorageError(
                f"connection broken while reading {self._what}: {type(exc).__name__}"
            ) from None
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        try:
            self._body.close()
        except Exception:
            pass


class S3Store(Store):
    def __init__(self, settings: S3Options) -> None:
        self.bucket, self.prefix = parse_remote(settings.remote)
        self.url = settings.remote
        self.page_size = 1000  # keys per LIST request (S3's maximum)
        try:
            self.client = make_client(settings)
        except Exception as exc:  # profile missing, bad region ...
            raise translate(exc, "client setup") from None

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _what(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def get(self, key: str) -> bytes:
        body = self.open_range(key)
        try:
            return body.read()
        finally:
            body.close()

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
        if start or length is not None:
            if length == 0:
                return _Body(_Empty(), self._what(key), 0)
            end = "" if length is None else str(start + length - 1)
            kw["Range"] = f"bytes={start}-{end}"
        try:
            resp = self.client.get_object(**kw)
        except Exception as exc:
            raise translate(exc, self._what(key)) from None
        return _Body(resp["Body"], self._what(key), length)

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        except Exception as exc:
            raise translate(exc, self._what(key)) from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._k(prefix),
                                  "MaxKeys": self.page_size}
            if token:
                kw["ContinuationToken"] = token
            try:
                resp = self.client.list_objects_v2(**kw)
            except Exception as exc:
                raise translate(exc, f"listing {self._what(prefix)}") from None
            for item in resp.get("Contents", []):
                key = item["Key"][len(self.prefix):]
                yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def delete(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._k(k)} for k in keys[i : i + 1000]]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise translate(exc, f"deleting {len(batch)} keys") from None
            errors = resp.get("Errors") or []
            if errors:
                raise StorageError(f"could not delete {errors[0].get('Key')}: {errors[0]}")

    def list_versions(self, prefix: str) -> Iterator[VersionInfo]:
        try:
            status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except Exception as exc:
            err = translate(exc, f"reading the versioning of s3://{self.bucket}")
            if not isinstance(err, AccessDenied):
                raise err from None
            status = "unknown"  # a key that may not ask: look at the versions themselves
        if not status:
            return  # versioning never enabled: a delete removes the bytes
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._k(prefix),
                              "MaxKeys": self.page_size}
        while True:
            try:
                resp = self.client.list_object_versions(**kw)
            except Exception as exc:
                raise translate(exc, f"listing versions of {self._what(prefix)}") from None
            for item in resp.get("Versions", []):
                yield VersionInfo(item["Key"][len(self.prefix):], str(item["VersionId"]),
                                  bool(item["IsLatest"]), False, int(item.get("Size", 0)))
            for item in resp.get("DeleteMarkers", []):
                yield VersionInfo(item["Key"][len(self.prefix):], str(item["VersionId"]),
                                  bool(item["IsLatest"]), True)
            if not resp.get("IsTruncated"):
                return
            kw["KeyMarker"] = resp.get("NextKeyMarker")
            kw["VersionIdMarker"] = resp.get("NextVersionIdMarker")

    def delete_versions(self, versions: Sequence[VersionInfo]) -> None:
        for i in range(0, len(versions), 1000):
            batch = [{"Key": self._k(v.key), "VersionId": v.version_id}
                     for v in versions[i : i + 1000]]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise translate(exc, f"deleting {len(batch)} versions") from None
            errors = resp.get("Errors") or []
            if errors:
                e = errors[0]
                what = f"version {e.get('VersionId')} of {e.get('Key')}"
                if e.get("Code") == "AccessDenied":
                    denied = AccessDenied(f"access denied (AccessDenied) on deleting {what}")
                    denied.code = "AccessDenied"
                    raise denied
                raise StorageError(f"could not delete {what}: {e.get('Code')} {e.get('Message')}")

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as exc:
            err = translate(exc, self._what(key))
            if isinstance(err, ObjectNotFound):
                return None
            raise err from None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())


class _Empty:
    def read(self, n: int | None = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass
