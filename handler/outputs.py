"""Deliver a WAV: inline as base64, or uploaded to the bucket with a presigned URL.

Uploads use the cache's own endpoint and credentials (cache-sync's Settings), so a worker
needs no second set of secrets. boto3 >= 1.36 sends checksum headers that B2 and others
reject: the client is configured with ``when_required`` like cache-sync's own.
"""

from __future__ import annotations

import re
import time
from typing import Any

import tenacity

from handler.audio import b64encode
from handler.config import HandlerConfig

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def split_s3_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def make_s3_client() -> Any:
    from cache_sync.config import Settings
    from cache_sync.storage import s3_options
    from cache_sync.storage.s3 import make_client  # one place configures boto3

    return make_client(s3_options(Settings.from_env()))


def _transient(err: BaseException) -> bool:
    """Worth another try: connection trouble, throttling, 5xx (cache-sync's client makes a
    single attempt and leaves retries to its caller)."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(err, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(err, ClientError):
        meta = err.response.get("ResponseMetadata", {})
        code = err.response.get("Error", {}).get("Code", "")
        return meta.get("HTTPStatusCode", 0) >= 500 or code in ("SlowDown", "Throttling")
    return False


class OutputWriter:
    def __init__(self, config: HandlerConfig) -> None:
        self.config = config
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:  # built on first use; boto3 clients are thread-safe
            self._client = make_s3_client()
        return self._client

    def deliver(self, wav: bytes, mode: str, job_id: str) -> dict[str, Any]:
        if mode == "base64":
            return {"audio_base64": b64encode(wav)}
        assert self.config.output_url  # validation guarantees it
        bucket, prefix = split_s3_url(self.config.output_url)
        name = f"{time.strftime('%Y-%m-%d', time.gmtime())}/{_SAFE_ID.sub('_', job_id)}.wav"
        key = f"{prefix}/{name}" if prefix else name
        client = self._s3()
        put = tenacity.retry(
            retry=tenacity.retry_if_exception(_transient), reraise=True,
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=8),
        )(client.put_object)
        put(Bucket=bucket, Key=key, Body=wav, ContentType="audio/wav")
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self.config.output_url_expires,
        )
        return {"audio_url": url, "s3_uri": f"s3://{bucket}/{key}",
                "url_expires_in": self.config.output_url_expires}
