"""Self-test of the fault proxy with boto3 directly against a real moto server (and once against
SeaweedFS, which verifies SigV4 signatures: the proxy must keep the Host header intact)."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.support.faultproxy import B2Mode, FaultProxy, _capability, fault_proxy
from tests.support.s3servers import S3Server

DATA = bytes(range(256)) * 4096  # 1 MiB, every byte position distinguishable


def client(server: S3Server, endpoint: str, *, attempts: int = 1, read_timeout: float = 10):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name=server.region,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": attempts, "mode": "standard"},
            read_timeout=read_timeout, connect_timeout=2,
        ),
    )


@pytest.fixture
def bucket(moto: S3Server) -> str:
    name = moto.make_bucket()
    moto.client().put_object(Bucket=name, Key="objects/ab/blob", Body=DATA)
    return name


def read_all(c, bucket: str, key: str, **kw) -> bytes:
    return c.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


def test_passthrough_is_transparent(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        c = client(moto, p.endpoint)
        c.put_object(Bucket=bucket, Key="k/empty", Body=b"")
        c.put_object(Bucket=bucket, Key="k/one", Body=DATA[:1000])
        assert read_all(c, bucket, "objects/ab/blob") == DATA
        assert read_all(c, bucket, "objects/ab/blob", Range="bytes=10-19") == DATA[10:20]
        assert c.head_object(Bucket=bucket, Key="k/one")["ContentLength"] == 1000
        keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="k/")["Contents"]]
        assert keys == ["k/empty", "k/one"]
        c.delete_object(Bucket=bucket, Key="k/one")
        assert sum(p.injected.values()) == 0
        assert p.request_count == 7


def test_status_500_is_retried_by_botocore_and_counted(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("status", method="GET", key="objects/", times=2)
        with pytest.raises(ClientError) as e:
            read_all(client(moto, p.endpoint), bucket, "objects/ab/blob")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert read_all(client(moto, p.endpoint, attempts=3), bucket, "objects/ab/blob") == DATA
        assert p.injected["status"] == 2


def test_status_after_forwarding_has_upstream_effect(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("status", method="PUT", forward=True, times=1)
        with pytest.raises(ClientError):
            client(moto, p.endpoint).put_object(Bucket=bucket, Key="fwd", Body=b"x")
    assert moto.client().get_object(Bucket=bucket, Key="fwd")["Body"].read() == b"x"


def test_slowdown_has_retry_after(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("slowdown", seconds=3, times=1)
        with pytest.raises(ClientError) as e:
            read_all(client(moto, p.endpoint), bucket, "objects/ab/blob")
        meta = e.value.response
        assert meta["Error"]["Code"] == "SlowDown"
        assert meta["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert meta["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"


def test_reset_mid_body(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("reset", method="GET", fraction=0.3, times=1)
        with pytest.raises(Exception) as e:
            read_all(client(moto, p.endpoint), bucket, "objects/ab/blob")
        assert "reset" in repr(e.value).lower() or isinstance(e.value, ConnectionClosedError)
        assert p.injected["reset"] == 1


def test_truncated_body_with_lying_length(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("truncate", method="GET", fraction=0.5, times=1)
        resp = client(moto, p.endpoint).get_object(Bucket=bucket, Key="objects/ab/blob")
        assert resp["ContentLength"] == len(DATA)  # the header still claims the full size
        with pytest.raises(Exception) as e:
            resp["Body"].read()
        assert "incomplete" in repr(e.value).lower() or "expected" in repr(e.value).lower()


def test_delay(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("delay", seconds=0.6, times=1)
        t0 = time.monotonic()
        assert read_all(client(moto, p.endpoint), bucket, "objects/ab/blob") == DATA
        assert time.monotonic() - t0 >= 0.6


@pytest.mark.parametrize("after_headers", [False, True])
def test_stall_fires_client_read_timeout(moto, bucket, after_headers):
    with fault_proxy(moto.endpoint, max_seconds=30) as p:
        p.add("stall", method="GET", seconds=20, after_headers=after_headers, times=1)
        # without the client's read timeout the 20 s stall ends and the read succeeds
        with pytest.raises(Exception) as e:
            read_all(client(moto, p.endpoint, read_timeout=1), bucket, "objects/ab/blob")
        assert isinstance(e.value, ReadTimeoutError) or "timeout" in repr(e.value).lower()


def test_corrupt_range_keeps_length_flips_bytes(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("corrupt", times=1)
        c = client(moto, p.endpoint)
        bad = read_all(c, bucket, "objects/ab/blob", Range="bytes=100-4195")
        assert len(bad) == 4096 and bad != DATA[100:4196]
        # unranged GETs are left alone by default; the rule is spent anyway
        assert read_all(c, bucket, "objects/ab/blob") == DATA
        assert read_all(c, bucket, "objects/ab/blob", Range="bytes=100-4195") == DATA[100:4196]


def test_reject_conditional_headers(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("reject_conditional")
        c = client(moto, p.endpoint)
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key="cond", Body=b"x", IfNoneMatch="*")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
        c.put_object(Bucket=bucket, Key="plain", Body=b"y")
        assert [s.path for s in p.conditional_requests()] == [f"/{bucket}/cond"]
        assert p.injected["reject_conditional"] == 1


def _b2_error(exc: pytest.ExceptionInfo) -> tuple[int, str, str]:
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def test_b2_mode_refuses_what_b2_refuses(moto, bucket):
    """Flexible checksums, conditional writes and an MD5-less DeleteObjects get B2's replies;
    plain requests pass untouched."""
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        c = client(moto, p.endpoint)
        c.put_object(Bucket=bucket, Key="k/plain", Body=b"y")
        assert read_all(c, bucket, "k/plain") == b"y"
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key="k/sha", Body=b"x", ChecksumAlgorithm="SHA256")
        status, code, msg = _b2_error(e)
        assert (status, code) == (400, "InvalidArgument")
        assert msg.startswith("Unsupported header 'x-amz-") and "for this API call" in msg
        with pytest.raises(ClientError) as e:  # botocore 1.44 on DeleteObjects: CRC32, no MD5
            c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k/plain"}]})
        assert _b2_error(e)[:2] == (400, "InvalidArgument")
        assert "x-amz-checksum-crc32" in _b2_error(e)[2] or "checksum-algorithm" in _b2_error(e)[2]
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key="k/cond", Body=b"x", IfNoneMatch="*")
        assert _b2_error(e)[:2] == (501, "NotImplemented")
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket=bucket, Key="k/plain", ChecksumMode="ENABLED")
        assert "x-amz-checksum-mode" in _b2_error(e)[2]
        assert {s.fault for s in p.b2_refusals()} == {"b2_unsupported_header", "b2_conditional"}


def test_b2_mode_wants_content_md5_on_delete_objects(moto, bucket):
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        c = client(moto, p.endpoint)
        # no checksum header at all (what a compatible client sends, minus the MD5)
        c.meta.events.register("before-sign.s3.DeleteObjects", _strip_checksums)
        with pytest.raises(ClientError) as e:
            c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "objects/ab/blob"}]})
        assert _b2_error(e)[:2] == (400, "InvalidRequest")
        assert [s.fault for s in p.b2_refusals()] == ["b2_missing_md5"]


def _strip_checksums(request, **_):
    for h in [h for h in request.headers if h.lower().startswith(("x-amz-checksum",
                                                                  "x-amz-sdk-checksum"))]:
        del request.headers[h]


def test_b2_mode_plays_a_key_without_a_capability(moto, bucket):
    with fault_proxy(moto.endpoint, b2=B2Mode(deny=frozenset({"delete", "list"}))) as p:
        c = client(moto, p.endpoint)
        assert read_all(c, bucket, "objects/ab/blob") == DATA
        for call in (lambda: c.delete_object(Bucket=bucket, Key="objects/ab/blob"),
                     lambda: c.list_objects_v2(Bucket=bucket, Prefix="objects/")):
            with pytest.raises(ClientError) as e:
                call()
            assert _b2_error(e) == (403, "AccessDenied", "not entitled")
        assert p.injected["b2_denied"] == 2 and not p.b2_refusals()
    assert [_capability(m, path) for m, path in [
        ("GET", "/b?list-type=2&prefix=x"), ("GET", "/b/k"), ("HEAD", "/b/k"), ("PUT", "/b/k"),
        ("POST", "/b?delete"), ("DELETE", "/b/k"), ("POST", "/b/k?uploads")]] == [
        "list", "read", "read", "write", "delete", "delete", "write"]


def test_b2_mode_answers_bursts_with_503_and_retry_after(moto, bucket):
    import concurrent.futures

    with fault_proxy(moto.endpoint, b2=B2Mode(burst=1, retry_after=2)) as p:
        p.add("delay", seconds=0.3)  # hold each request so they overlap
        c = client(moto, p.endpoint)

        def head(_):
            try:
                c.head_object(Bucket=bucket, Key="objects/ab/blob")
                return None
            except ClientError as exc:
                return exc.response["ResponseMetadata"]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            errors = [m for m in pool.map(head, range(4)) if m]
        assert errors and all(m["HTTPStatusCode"] == 503 for m in errors)
        assert all(m["HTTPHeaders"]["retry-after"] == "2" for m in errors)
        assert p.injected["b2_burst"] == len(errors) < 4


def test_seeded_probability_is_reproducible(moto, bucket):
    patterns = []
    for _ in range(2):
        with fault_proxy(moto.endpoint, seed=42) as p:
            p.add("status", method="HEAD", prob=0.5)
            c = client(moto, p.endpoint)
            for _ in range(20):
                try:
                    c.head_object(Bucket=bucket, Key="objects/ab/blob")
                except ClientError:
                    pass
            patterns.append([s.fault for s in p.requests])
    assert patterns[0] == patterns[1]
    assert 3 < patterns[0].count("status") < 17


def test_skip_and_times(moto, bucket):
    with fault_proxy(moto.endpoint) as p:
        p.add("status", method="HEAD", skip=2, times=2)
        c = client(moto, p.endpoint)
        results = []
        for _ in range(6):
            try:
                c.head_object(Bucket=bucket, Key="objects/ab/blob")
                results.append("ok")
            except ClientError:
                results.append("err")
        assert results == ["ok", "ok", "err", "err", "ok", "ok"]


def test_bounded_by_request_count_and_time(moto, bucket):
    p = FaultProxy(moto.endpoint, max_requests=3).start()
    c = client(moto, p.endpoint)
    for _ in range(3):
        c.head_object(Bucket=bucket, Key="objects/ab/blob")
    assert p.stopped.wait(5)
    with pytest.raises(Exception):
        c.head_object(Bucket=bucket, Key="objects/ab/blob")
    p.stop()
    q = FaultProxy(moto.endpoint, max_seconds=0.5).start()
    assert q.stopped.wait(5)
    q.stop()


def test_on_request_hook_sees_every_request(moto, bucket):
    seen = []
    with fault_proxy(moto.endpoint, on_request=lambda n, m, path: seen.append((n, m))) as p:
        c = client(moto, p.endpoint)
        c.head_object(Bucket=bucket, Key="objects/ab/blob")
        read_all(c, bucket, "objects/ab/blob")
    assert seen == [(1, "HEAD"), (2, "GET")]


def test_seaweedfs_signatures_survive_the_proxy(seaweed):
    bucket = seaweed.make_bucket()
    with fault_proxy(seaweed.endpoint) as p:
        p.add("status", method="PUT", times=1)
        c = client(seaweed, p.endpoint, attempts=3)
        c.put_object(Bucket=bucket, Key="objects/x", Body=DATA)
        assert read_all(c, bucket, "objects/x", Range="bytes=0-9") == DATA[:10]
        assert p.injected["status"] == 1
