"""Deliver a WAV: inline as base64, or uploaded to the bucket with a presigned URL.

Uploads use the cache's own endpoint and credentials (cache-sync's Settings), so a worker
needs no second set of secrets. boto3 >= 1.36 sends checksum headers that B2 and others
reject: the client is configured with ``when_required`` like cache-sync's own.
"""

from __future__ import annotations

import re
import time
from typing import Any

from handler.audio import b64encode
from handler.config import HandlerConfig

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def split_s3_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def make_s3_client() -> Any:
    from cache_sync.config import Settings

    settings = Settings.from_env()
    try:  # the engine's factory, once it has landed: one place configures boto3
        from cache_sync.storage.s3 import make_client
    except ImportError:
        make_client = None
    if make_client is not None:
        return make_client(settings)
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=settings.profile) if settings.profile else boto3
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"max_attempts": settings.retries, "mode": "standard"},
            s3={"addressing_style": "path"} if settings.endpoint_url else {},
        ),
    )


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
        client.put_object(Bucket=bucket, Key=key, Body=wav, ContentType="audio/wav")
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self.config.output_url_expires,
        )
        return {"audio_url": url, "s3_uri": f"s3://{bucket}/{key}",
                "url_expires_in": self.config.output_url_expires}
