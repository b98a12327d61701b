"""Self-test of the fault proxy with boto3 directly against a real moto server (and once against
SeaweedFS, which verifies SigV4 signatures: the proxy must keep the Host header intact)."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.support.faultproxy import FaultProxy, fault_proxy
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
        t0 = time.monotonic()
        with pytest.raises(Exception) as e:
            read_all(client(moto, p.endpoint, read_timeout=1), bucket, "objects/ab/blob")
        assert isinstance(e.value, ReadTimeoutError) or "timeout" in repr(e.value).lower()
        assert time.monotonic() - t0 < 10


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
