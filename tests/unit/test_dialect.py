"""S3 dialects: how one is chosen, and the headers each makes botocore send (captured at
``before-send``, after signing, so nothing leaves the process)."""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse

from cache_sync.config import Settings
from cache_sync.errors import ConfigError
from cache_sync.storage import s3_options
from cache_sync.storage.dialect import content_md5, derive
from cache_sync.storage.s3 import make_client

OK_DELETE = (b'<?xml version="1.0" encoding="UTF-8"?>'
             b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>')


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *a, **k):
        yield self.body


def sent_headers(dialect: str, call) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": "AKIAUNIT", "AWS_SECRET_ACCESS_KEY": "unit-secret",
           "CACHE_SYNC_REMOTE": "s3://bkt/p", "CACHE_SYNC_ENDPOINT_URL": "http://127.0.0.1:9",
           "CACHE_SYNC_S3_DIALECT": dialect}
    client = make_client(s3_options(Settings.from_env(env)))
    seen: dict[str, str] = {}

    def capture(request, **_):
        seen.update({k.lower(): v.decode() if isinstance(v, bytes) else v
                     for k, v in request.headers.items()})
        seen["_body"] = request.body
        return AWSResponse(request.url, 200, {}, _Raw(OK_DELETE))

    # make_client caches clients per process: the hook must not outlive this call
    client.meta.events.register("before-send.s3", capture, unique_id="test-dialect-capture")
    try:
        call(client)
    finally:
        client.meta.events.unregister("before-send.s3", unique_id="test-dialect-capture")
    assert "authorization" in seen  # this call's request was captured
    return seen


def delete(client) -> None:
    client.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": "p/a"}], "Quiet": True})


@pytest.mark.parametrize("dialect", ["b2", "compat"])
def test_compatible_dialects_send_content_md5_and_no_flexible_checksum(dialect):
    h = sent_headers(dialect, delete)
    assert h["content-md5"] == content_md5(h["_body"])
    assert not [k for k in h if k.startswith("x-amz-checksum") or k == "x-amz-sdk-checksum-algorithm"]
    assert "content-md5" in h["authorization"].lower()  # signed after the hook ran


def test_aws_dialect_keeps_botocore_crc_and_adds_md5():
    h = sent_headers("aws", delete)
    assert h["x-amz-sdk-checksum-algorithm"] == "CRC32" and "x-amz-checksum-crc32" in h
    assert h["content-md5"] == content_md5(h["_body"])


def test_compat_put_carries_no_checksum_even_when_asked():
    """A caller (or a future botocore default) asking for a flexible checksum on PUT still
    sends none of B2's unsupported headers."""
    h = sent_headers("compat", lambda c: c.put_object(Bucket="bkt", Key="p/k", Body=b"x" * 100,
                                                      ChecksumAlgorithm="SHA256"))
    assert not [k for k in h if k.startswith("x-amz-checksum") or k == "x-amz-sdk-checksum-algorithm"]
    assert h.get("content-encoding", "") != "aws-chunked"


@pytest.mark.parametrize("endpoint, b2vars, want", [
    ("https://s3.us-west-004.backblazeb2.com", False, "b2"),
    (None, True, "b2"),
    (None, False, "aws"),
    ("https://s3.eu-west-1.amazonaws.com", False, "aws"),
    ("http://127.0.0.1:9000", False, "compat"),
    ("https://acct.r2.cloudflarestorage.com", False, "compat"),
])
def test_auto_derivation(endpoint, b2vars, want):
    assert derive(endpoint, b2vars)[0] == want


def test_settings_resolve_and_validate_the_dialect():
    b2 = Settings.from_env({"B2_APPLICATION_KEY_ID": "k", "B2_APPLICATION_KEY": "s",
                            "B2_REGION": "us-west-004", "CACHE_SYNC_REMOTE": "s3://b/p"})
    assert b2.s3_dialect == "b2"
    assert {k: src for k, _, src in b2.explain()}["s3_dialect"].startswith("auto:")
    forced = Settings.from_env({"CACHE_SYNC_S3_DIALECT": "AWS", "B2_REGION": "us-west-004",
                                "CACHE_SYNC_REMOTE": "s3://b/p"})
    assert forced.s3_dialect == "aws"
    assert Settings.from_env({"CACHE_SYNC_REMOTE": "s3://b/p"}).s3_dialect == "aws"
    with pytest.raises(ConfigError, match="CACHE_SYNC_S3_DIALECT='minio' is invalid"):
        Settings.from_env({"CACHE_SYNC_S3_DIALECT": "minio"})
