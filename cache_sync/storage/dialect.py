"""Which S3 dialect a store speaks, and the botocore hooks that make every request fit it.

Dialects (``CACHE_SYNC_S3_DIALECT``; see docs/design.md "S3 dialects"):

``aws``     botocore's requests as they are, plus a ``Content-MD5`` on DeleteObjects.
``compat``  no flexible-checksum header at all (``x-amz-checksum-*``,
            ``x-amz-sdk-checksum-algorithm``, ``x-amz-checksum-mode``): integrity of the one
            request that must carry a checksum (DeleteObjects) comes from ``Content-MD5``,
            computed here. Safe on every S3-compatible store we know.
``b2``      ``compat`` on the wire; the name also tells ``doctor`` to phrase its fixes in
            Backblaze terms (key capabilities, not IAM policies).

Why a hook and not only ``request_checksum_calculation="when_required"``: DeleteObjects is
modelled as checksum-*required*, so botocore >= 1.36 still attaches
``x-amz-checksum-crc32`` + ``x-amz-sdk-checksum-algorithm`` to it, and no longer computes
``Content-MD5``. B2 answers 400 ``Unsupported header 'x-amz-checksum-crc32' received for this
API call``; older MinIO, OVH, CubeFS and PowerScale answer 400 for the missing ``Content-MD5``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlsplit

DIALECTS = ("aws", "b2", "compat")
CHOICES = ("auto", *DIALECTS)

# B2's "Unsupported Features" list for the S3-compatible API (checksums).
FLEXIBLE_CHECKSUM_PREFIX = "x-amz-checksum-"
FLEXIBLE_CHECKSUM_HEADERS = ("x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm")


def host_of(endpoint_url: str | None) -> str:
    return (urlsplit(endpoint_url).hostname or "").lower() if endpoint_url else ""


def derive(endpoint_url: str | None, b2_variables: bool) -> tuple[str, str]:
    """(dialect, why) for ``auto``: Backblaze when the endpoint or the variables say so, AWS
    when no endpoint is set (or it is amazonaws.com), the compatible dialect for any other
    endpoint (R2, MinIO, SeaweedFS, RunPod): it only drops headers those stores may refuse."""
    host = host_of(endpoint_url)
    if host.endswith("backblazeb2.com"):
        return "b2", "backblazeb2.com endpoint"
    if b2_variables:
        return "b2", "B2_* variables"
    if not host or host.endswith("amazonaws.com"):
        return "aws", "AWS endpoint"
    return "compat", "non-AWS endpoint"


def is_flexible_checksum(header: str) -> bool:
    low = header.lower()
    return low.startswith(FLEXIBLE_CHECKSUM_PREFIX) or low in FLEXIBLE_CHECKSUM_HEADERS


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")


def _body_bytes(body: Any) -> bytes | None:
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return None  # a stream: never the case for DeleteObjects, whose body botocore serialises


def _drop_checksum_context(params: dict[str, Any], **_: Any) -> None:
    """before-call: botocore must not plan a flexible checksum (header or aws-chunked trailer)
    nor ask for one in the response (``x-amz-checksum-mode``)."""
    checksum = params.get("context", {}).get("checksum")
    if checksum:
        for key in ("request_algorithm", "request_algorithm_header", "response_algorithms"):
            checksum.pop(key, None)


def _strip_flexible_headers(request: Any, **_: Any) -> None:
    """before-sign: the last word on headers, whatever a future botocore adds elsewhere."""
    for name in [h for h in request.headers if is_flexible_checksum(h)]:
        del request.headers[name]


def _add_content_md5(request: Any, **_: Any) -> None:
    """before-sign (DeleteObjects): the checksum every S3 implementation accepts."""
    body = _body_bytes(request.body)
    if body is not None and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = content_md5(body)


def install(client: Any, dialect: str) -> None:
    """Register the dialect's hooks on a botocore S3 client (signing happens after them, so
    the signature covers exactly the headers sent)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown S3 dialect {dialect!r}")
    events = client.meta.events
    if dialect != "aws":
        events.register("before-call.s3", _drop_checksum_context)
        events.register("before-sign.s3", _strip_flexible_headers)
    # Every dialect: harmless on AWS (both checksums are verified), required by older stores.
    events.register("before-sign.s3.DeleteObjects", _add_content_md5)
