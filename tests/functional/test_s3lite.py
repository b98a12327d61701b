"""The boto3-free read path (``storage/s3lite.py``) over real HTTP: a pull imports no boto3,
errors read exactly as boto3's do, faults cost the same retry budget, and configurations it
cannot serve faithfully go to boto3 and still work."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from cache_sync.config import Settings
from cache_sync.errors import StorageError, TransientStorageError
from cache_sync.storage import S3Options, open_store, s3_options
from cache_sync.storage.s3 import S3Store
from cache_sync.storage.s3lite import S3LiteStore
from tests.support.faultproxy import B2Mode, fault_proxy
from tests.support.helpers import cli_env, describe, make_tree, run_cli

DATA = os.urandom(300_000)


def _settings(server, tmp_path, bucket: str, client: str = "auto", **over: str) -> Settings:
    env = {**server.env(), "HOME": str(tmp_path), "CACHE_SYNC_S3_CLIENT": client, **over}
    return Settings.from_env(env, root=str(tmp_path / "root"), remote=f"s3://{bucket}/cs")


def _opts(server, tmp_path, bucket: str, client: str = "auto", **over: str) -> S3Options:
    return s3_options(_settings(server, tmp_path, bucket, client, **over))


def _imported(stderr: str) -> set[str]:
    """Top-level modules named by ``python -X importtime``."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("remote", ["seaweedfs-b2"], indirect=True)
def test_a_pull_imports_no_boto3(remote, tmp_path):
    url, extra = remote
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src / "packages", files=40)
    env = cli_env(url, extra)
    run_cli(["--root", str(src), "push", "packages"], env)
    for attempt in ("cold", "up to date"):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "cache_sync", "--root", str(dst),
             "pull", "packages"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        mods = _imported(proc.stderr)
        assert "cache_sync" in mods, attempt  # the check sees our own imports
        assert not mods & {"boto3", "botocore", "s3transfer", "urllib3"}, attempt
    # The up-to-date pull (the warm start) also skips what only other work needs: the other
    # commands' modules and the retry engine (no request failed).
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not names & {"tenacity", "cache_sync.install", "cache_sync.cli.cmd_run",
                        "cache_sync.doctor", "cache_sync.units"}, names
    assert describe(dst / "packages") == describe(src / "packages")


def test_errors_read_the_same_on_both_clients(seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    seaweed.client().put_object(Bucket=bucket, Key="cs/objects/aa/x", Body=b"x")
    cases = [(bucket, {}, "objects/00/missing"), ("no-such-bucket-here", {}, "objects/aa/x"),
             (bucket, {"AWS_SECRET_ACCESS_KEY": "wrong" * 8}, "objects/aa/x")]
    for name, over, key in cases:
        errors = []
        for store in (S3Store(_opts(seaweed, tmp_path, name, "boto3", **over)),
                      S3LiteStore(_opts(seaweed, tmp_path, name, "lite", **over))):
            with pytest.raises(StorageError) as e:
                store.get(key)
            errors.append((type(e.value), str(e.value), e.value.code))
            assert "wrong" * 8 not in str(e.value)
        assert errors[0] == errors[1], errors


def test_a_region_redirect_hands_reads_to_boto3(moto, tmp_path):
    bucket = moto.make_bucket()
    moto.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    with fault_proxy(moto.endpoint) as p:
        p.add("status", status=301, method="GET", times=1)
        store = S3LiteStore(_opts(moto, tmp_path, bucket, "lite",
                                  CACHE_SYNC_ENDPOINT_URL=p.endpoint))
        assert store.get("objects/aa/blob") == DATA
        assert store.reads_with_boto3 and p.injected["status"] == 1
        assert [i.key for i in store.list("objects/")] == ["objects/aa/blob"]  # boto3 now


@pytest.mark.parametrize("fault", ["slowdown", "truncate", "reset"])
def test_a_fault_on_every_attempt_costs_exactly_the_budget(moto, tmp_path, fault):
    """One request per attempt on the lite path (no hidden retry below the policy): a ranged
    read that always fails, as the pull reads (request and stream as one attempt), is sent
    exactly CACHE_SYNC_RETRIES times."""
    bucket = moto.make_bucket()
    moto.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    with fault_proxy(moto.endpoint) as p:
        kw = {"seconds": 0} if fault == "slowdown" else {"fraction": 0.5}
        p.add(fault, method="GET", key="/objects/", **kw)
        store = open_store(_settings(moto, tmp_path, bucket, CACHE_SYNC_RETRIES="3",
                                     CACHE_SYNC_RETRY_BASE="0.01",
                                     CACHE_SYNC_ENDPOINT_URL=p.endpoint))
        assert isinstance(store.raw, S3LiteStore)

        def attempt() -> bytes:
            body = store.raw.open_range("objects/aa/blob", 1000, 200_000)
            try:
                return body.read()
            finally:
                body.close()

        with pytest.raises(TransientStorageError):
            store.with_retries(attempt)
        assert len([s for s in p.requests if "/objects/" in s.path]) == 3
        p.clear()
        assert store.with_retries(attempt) == DATA[1000:201_000]


def test_retry_after_is_waited_for_on_the_lite_path(moto, tmp_path):
    bucket = moto.make_bucket()
    moto.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        p.add("slowdown", method="GET", seconds=1, times=1)
        store = open_store(_settings(moto, tmp_path, bucket, CACHE_SYNC_RETRY_BASE="0.01",
                                     CACHE_SYNC_ENDPOINT_URL=p.endpoint))
        t0 = time.monotonic()
        assert store.get("objects/aa/blob") == DATA
        assert time.monotonic() - t0 >= 1.0 and p.injected["slowdown"] == 1
        assert not p.b2_refusals()


def test_connections_are_kept_alive_and_a_closed_one_is_replaced(seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    seaweed.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    store = S3LiteStore(_opts(seaweed, tmp_path, bucket, "lite"))
    pool = store.client.pool
    assert store.get("objects/aa/blob") == DATA
    (conn,) = pool._idle
    for _ in range(4):
        assert store.get("objects/aa/blob") == DATA
        assert pool._idle == [conn]  # one connection, kept alive
    half = store.open_range("objects/aa/blob", 0, len(DATA))
    assert pool._idle == [] and len(half.read(1000)) == 1000
    half.close()  # closed before its end: its unread bytes must never meet another request
    assert pool._idle == []
    body = store.open_range("objects/aa/blob", 5, 10)
    assert body.read() == DATA[5:15]
    body.close()
    (conn,) = pool._idle
    conn.sock.shutdown(2)  # as a server closing an idle connection
    assert store.head("objects/aa/blob").size == len(DATA)
    assert pool._idle and pool._idle[0] is not conn


def test_profile_only_credentials_take_boto3_and_work(moto, tmp_path):
    """Credentials only a profile holds: boto3 resolves them, the lite client never guesses."""
    bucket = moto.make_bucket()
    (tmp_path / "credentials").write_text(
        f"[ci]\naws_access_key_id = {moto.access_key}\n"
        f"aws_secret_access_key = {moto.secret_key}\n")
    env = {k: v for k, v in moto.env().items() if not k.startswith("AWS_ACCESS")
           and not k.startswith("AWS_SECRET")}
    env.update({"AWS_PROFILE": "ci", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
                "AWS_CONFIG_FILE": str(tmp_path / "none")})
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src / "packages", files=10)
    cli = cli_env(f"s3://{bucket}/cache", env)
    explained = run_cli(["env", "--explain"], cli).stdout
    assert "boto3" in explained and "profile" in explained
    run_cli(["--root", str(src), "push", "packages"], cli)
    run_cli(["--root", str(dst), "pull", "packages"], cli)
    assert describe(dst / "packages") == describe(src / "packages")


@contextlib.contextmanager
def _tls_front(upstream: str, tmp_path):
    """A TLS endpoint on 127.0.0.1 (a self-signed certificate) forwarding to ``upstream``."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    host, port = upstream.split("://")[1].split(":")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pump(src, dst):
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            try:
                client = ctx.wrap_socket(raw, server_side=True)
            except OSError:  # a client that refused our certificate
                raw.close()
                continue
            server = socket.create_connection((host, int(port)))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", str(cert)
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_https_endpoints_are_verified_like_boto3(moto, tmp_path):
    """An https endpoint: verified against AWS_CA_BUNDLE (as boto3 does); a certificate no
    bundle vouches for is a permanent error that reads as boto3's."""
    bucket = moto.make_bucket()
    moto.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    with _tls_front(moto.endpoint, tmp_path) as (endpoint, cert):
        good = S3LiteStore(_opts(moto, tmp_path, bucket, "lite", AWS_CA_BUNDLE=cert,
                                 CACHE_SYNC_ENDPOINT_URL=endpoint))
        assert good.get("objects/aa/blob") == DATA
        assert [i.key for i in good.list("objects/")] == ["objects/aa/blob"]
        errors = []
        for client, cls in (("boto3", S3Store), ("lite", S3LiteStore)):
            store = cls(_opts(moto, tmp_path, bucket, client,
                              CACHE_SYNC_ENDPOINT_URL=endpoint))
            with pytest.raises(StorageError) as e:
                store.get("objects/aa/blob")
            assert not isinstance(e.value, TransientStorageError)
            errors.append(str(e.value))
        assert errors[0] == errors[1] and "SSLError" in errors[0], errors


def test_splice_moves_a_body_into_a_file_and_keeps_the_connection(seaweed, tmp_path):
    """The chunk path's zero-copy read: the bytes http.client already buffered, then the
    rest by splice(2), at the file offset asked; read to the end, the connection is reused."""
    bucket = seaweed.make_bucket()
    seaweed.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    store = S3LiteStore(_settings(seaweed, tmp_path, bucket, "lite"))
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        body = store.open_range("objects/aa/blob", 1000, 250_000)
        assert body.splice_into(fd, 7, 100_000) and body.splice_into(fd, 100_007, 150_000)
        body.close()
        assert store.client.pool._idle  # read to its end: back in the pool
        body = store.open_range("objects/aa/blob", 0, 10)
        assert not body.splice_into(fd, 0, 11)  # more than the body holds: not attempted
        assert body.read() == DATA[:10]
        body.close()
    finally:
        os.close(fd)
    assert out.read_bytes()[7:] == DATA[1000:251_000]


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_a_broken_stream_on_the_splice_path_is_transient(moto, tmp_path, fault):
    bucket = moto.make_bucket()
    moto.client().put_object(Bucket=bucket, Key="cs/objects/aa/blob", Body=DATA)
    with fault_proxy(moto.endpoint) as p:
        p.add(fault, method="GET", key="/objects/", fraction=0.5, times=1)
        store = S3LiteStore(_settings(moto, tmp_path, bucket, "lite",
                                      CACHE_SYNC_ENDPOINT_URL=p.endpoint))
        fd = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            body = store.open_range("objects/aa/blob", 0, len(DATA))
            with pytest.raises(TransientStorageError):
                body.splice_into(fd, 0, len(DATA))
            body.close()
            assert not store.client.pool._idle  # a broken connection is never reused
            body = store.open_range("objects/aa/blob", 0, len(DATA))  # the next attempt
            assert body.splice_into(fd, 0, len(DATA))
            body.close()
        finally:
            os.close(fd)
    assert (tmp_path / "out.bin").read_bytes() == DATA
