"""What both S3 clients (boto3's ``s3.py`` and the boto3-free ``s3lite.py``) share, with no
I/O and no boto3 import: the remote URL's bucket and prefix, the dialect, and the one mapping
of an S3 error reply (code, HTTP status, message, headers) to ``cache_sync.errors``. Both
clients translate through ``error_from_reply`` so a refusal reads the same on either path.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from cache_sync.errors import (
    AccessDenied,
    ConfigError,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)

DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden",
          "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
MISSING = {"NoSuchKey", "404", "NotFound"}
TRANSIENT = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "502",
             "503", "504", "Throttling", "ThrottlingException", "RequestTimeTooSkewed",
             "OperationAborted"}
DENIED_HINT = "check the key id/secret and that the key may use this bucket"


def parse_remote(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, 'prefix/')."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"remote {url!r} names no bucket", hint="use s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a reply's Retry-After asks for (a number or an HTTP date), or None."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime  # rare: kept off the import path

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_from_reply(code: str, status: str, message: str, headers: Mapping[str, str],
                     what: str) -> Exception:
    """The error for an S3 error reply; ``what`` names the key or operation. A store's error
    keeps its code (``StorageError.code``) for ``doctor``'s diagnosis."""
    err = _classify(code, status, message, headers, what)
    if isinstance(err, StorageError):
        err.code = code or status
    return err


def _classify(code: str, status: str, message: str, headers: Mapping[str, str],
              what: str) -> Exception:
    if code == "NoSuchBucket":
        return StorageError(f"bucket does not exist ({what})", hint="create it first")
    if code in MISSING or (status == "404" and not code):
        return ObjectNotFound(f"{what} not found")
    if code in DENIED or status == "403":
        return AccessDenied(f"access denied ({code or status}) on {what}", hint=DENIED_HINT)
    if code in TRANSIENT or status.startswith("5"):
        return TransientStorageError(f"{code or status} on {what}",
                                     retry_after=retry_after(headers))
    if "nsupported header" in message or code == "NotImplemented":
        return StorageError(
            f"the store refused a request header: {message} ({what})",
            hint="set CACHE_SYNC_S3_DIALECT=compat (or b2 for Backblaze) and run "
            "`cache-sync doctor`",
        )
    return StorageError(f"{code or status}: {message} ({what})".strip())


# --- which client serves reads (CACHE_SYNC_S3_CLIENT, docs/design.md "The read path") -------
CLIENTS = ("auto", "lite", "boto3")
_AWS_REGION = re.compile(r"^[a-z]{2}-[a-z]+-\d+$")
_VIRTUAL_HOST_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_BOTO_ENV = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")
# keys of the config file's default profile that do not change how an S3 request is made
_CONFIG_KEYS_LITE_KEEPS = {"region", "output", "cli_pager", "cli_history", "cli_timestamp_format",
                           "cli_binary_format", "aws_access_key_id", "aws_secret_access_key",
                           "aws_session_token"}


def choose_client(chosen: str, env: Mapping[str, str], *, endpoint: str | None,
                  region: str | None, profile: str | None, bucket: str,
                  static_keys: bool) -> tuple[str, str]:
    """(``lite`` or ``boto3``, why) for an S3 remote. ``auto`` takes the boto3-free client
    only where it makes exactly the requests boto3 would: static keys (boto3 resolves every
    other credential source), a custom endpoint (path-style) or a standard AWS region and a
    bucket name valid in a host name (virtual-hosted), and nothing in the environment or the
    AWS config file that changes boto3's requests (a proxy for the endpoint, FIPS,
    dual-stack, S3 settings). A CA bundle is honoured by both (``Settings.ca_bundle``). ``lite``
    forces it (ConfigError where it cannot work at all); ``boto3`` forces boto3."""
    if chosen == "boto3":
        return "boto3", "CACHE_SYNC_S3_CLIENT=boto3"
    hard = _hard_reason(env, endpoint, region, bucket, static_keys)
    if chosen == "lite":
        if hard:
            raise ConfigError(f"CACHE_SYNC_S3_CLIENT=lite cannot serve this store: {hard}",
                              hint="unset CACHE_SYNC_S3_CLIENT (auto uses boto3 here)")
        return "lite", "CACHE_SYNC_S3_CLIENT=lite"
    soft = hard or _soft_reason(env, endpoint or "https://s3.amazonaws.com", profile)
    if soft:
        return "boto3", f"auto: {soft}"
    return "lite", "auto: static keys, " + ("custom endpoint" if endpoint else "AWS region")


def _hard_reason(env: Mapping[str, str], endpoint: str | None, region: str | None,
                 bucket: str, static_keys: bool) -> str:
    if not static_keys:
        return ("no key in the environment (boto3 resolves profiles, SSO, container and "
                "instance roles)")
    if endpoint:
        path = urlsplit(endpoint).path
        if path not in ("", "/"):
            return f"the endpoint has a path ({path!r})"
        return ""
    if not region:
        return "AWS without a region (boto3 reads it from the AWS config file)"
    if not _AWS_REGION.match(region) or region.startswith(("cn-", "us-gov-", "us-iso")):
        return f"region {region!r} is outside the standard AWS partition"
    if not _VIRTUAL_HOST_BUCKET.match(bucket):
        return f"bucket {bucket!r} cannot be a host name (boto3 picks path-style)"
    return ""


def _soft_reason(env: Mapping[str, str], endpoint: str, profile: str | None) -> str:
    if profile:
        return f"profile {profile!r} (boto3 resolves it)"
    proxy = _proxy_for(env, endpoint)
    if proxy:
        return f"{proxy} is set (boto3 sends through the proxy)"
    for var in _BOTO_ENV:
        if env.get(var):
            return f"{var} is set"
    extra = _config_file_settings(env)
    if extra:
        return f"the AWS config file sets {', '.join(extra)} for the default profile"
    return ""


def _proxy_for(env: Mapping[str, str], endpoint: str) -> str:
    """The proxy variable that applies to ``endpoint`` (as urllib, which botocore uses,
    reads them), or ''."""
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    no_proxy = (env.get("no_proxy") or env.get("NO_PROXY") or "").replace(" ", "")
    for entry in filter(None, no_proxy.lower().split(",")):
        if entry == "*" or host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")):
            return ""
    for var in (f"{parts.scheme}_proxy", "all_proxy"):
        for name in (var, var.upper()):
            if env.get(name):
                return name
    return ""


def _config_file_settings(env: Mapping[str, str]) -> list[str]:
    """Settings of the AWS config file's default profile that could change boto3's
    requests (``s3``, ``endpoint_url``, ``ca_bundle``, ...)."""
    path = env.get("AWS_CONFIG_FILE") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".aws", "config")
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    import configparser

    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error:
        return ["an unreadable file"]
    if not parser.has_section("default"):
        return []
    return sorted(k for k in parser.options("default") if k not in _CONFIG_KEYS_LITE_KEEPS)
