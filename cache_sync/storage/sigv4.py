"""AWS Signature Version 4 for S3 requests (hmac/hashlib only), for the boto3-free client.

The spec: https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html.
S3 differs from other services in two ways that matter here: the canonical URI is the
request path encoded once (never twice), and ``x-amz-content-sha256`` is a signed header on
every request (the SHA-256 of the payload; an empty payload's hash for GET/HEAD/LIST).

The secret never leaves this object: no ``repr`` shows it, and errors never carry it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"


def uri_encode(text: str, *, slash: bool = False) -> str:
    """SigV4's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ percent-encoded (and '/'
    kept in a path)."""
    return quote(text, safe="/~" if slash else "~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The query string, sorted by encoded name: sent as is, so what is signed is what is
    sent."""
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


class Signer:
    """Signs requests for one key, region and service ``s3``; the signing key is derived once
    per UTC day."""

    def __init__(self, key_id: str, secret: str, region: str,
                 session_token: str | None = None) -> None:
        self._key_id = key_id
        self._secret = secret
        self._token = session_token
        self.region = region
        self._cached: tuple[str, bytes] = ("", b"")  # (day, key): one attribute, so a thread
        # never pairs one day with another day's key

    def __repr__(self) -> str:
        return f"Signer(region={self.region!r}, credentials=<set>)"

    def _signing_key(self, day: str) -> bytes:
        cached_day, key = self._cached
        if day != cached_day:
            key = hmac.new(("AWS4" + self._secret).encode(), day.encode(),
                           hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._cached = (day, key)
        return key

    def sign(self, method: str, host: str, path: str, query: str,
             headers: dict[str, str], payload_sha256: str = EMPTY_SHA256,
             now: float | None = None) -> dict[str, str]:
        """``headers`` plus Host, X-Amz-Date, X-Amz-Content-Sha256, the session token when
        there is one, and Authorization. ``path`` is already URI-encoded; ``query`` is
        ``canonical_query``'s output."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        out = {k.lower(): v for k, v in headers.items()}
        out["host"] = host
        out["x-amz-date"] = stamp
        out["x-amz-content-sha256"] = payload_sha256
        if self._token:
            out["x-amz-security-token"] = self._token
        names = sorted(out)
        canonical = "\n".join([
            method, path, query,
            "".join(f"{n}:{' '.join(out[n].split())}\n" for n in names),
            ";".join(names), payload_sha256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join([ALGORITHM, stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        out["authorization"] = (f"{ALGORITHM} Credential={self._key_id}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return out
