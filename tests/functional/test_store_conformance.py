"""The storage contract (``cache_sync/storage/base.py``), one suite for every backend: in
memory, a local directory, S3 on a moto server and S3 on SeaweedFS (real HTTP on 127.0.0.1),
each S3 server once through boto3 (``s3.py``) and once through the boto3-free read client
(``s3lite.py``: its SigV4 must be accepted by both servers).
Each test gets a fresh namespace (bucket or directory) and the raw backend, without the retry
wrapper, so what is checked is the backend's own behaviour at its edges."""

from __future__ import annotations

import os
import time

import pytest

from cache_sync.config import Settings
from cache_sync.errors import (
    AccessDenied,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)
from cache_sync.storage import s3_options
from cache_sync.storage.base import Store
from cache_sync.storage.local import LocalStore
from cache_sync.storage.memory import MemoryStore
from cache_sync.storage.s3 import S3Store
from cache_sync.storage.s3lite import S3LiteStore
from tests.support.s3servers import free_port

BACKENDS = ["memory", "local", "moto", "seaweedfs", "moto-lite", "seaweedfs-lite"]


def _s3(server, tmp_path, bucket: str | None = None, lite: bool = False,
        **env_over: str) -> Store:
    bucket = bucket or server.make_bucket()
    env = {**server.env(), "CACHE_SYNC_S3_CLIENT": "lite" if lite else "boto3", **env_over}
    settings = Settings.from_env(env, root=str(tmp_path / "root"), remote=f"s3://{bucket}/cs")
    options = s3_options(settings)
    return S3LiteStore(options) if lite else S3Store(options)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> tuple[str, Store]:
    kind = request.param
    if kind == "memory":
        return kind, MemoryStore()
    if kind == "local":
        return kind, LocalStore(str(tmp_path / "store"))
    server = request.getfixturevalue("seaweed" if kind.startswith("seaweedfs") else "moto")
    return kind, _s3(server, tmp_path, lite=kind.endswith("-lite"))


def _page(store: Store, n: int) -> None:
    """Make listings page every ``n`` keys where the backend pages (S3 MaxKeys)."""
    if hasattr(store, "page_size"):
        store.page_size = n


def test_put_get_head_roundtrip(backend):
    _, store = backend
    blobs = {"store.json": b'{"v": 1}', "objects/ab/ab01": bytes(range(256)) * 40,
             "objects/ab/empty": b"", "snapshots/pkgs/x_y.json.zst": b"\x28\xb5\x2f\xfd"}
    t0 = time.time()
    for k, v in blobs.items():
        store.put(k, v)
    for k, v in blobs.items():
        assert store.get(k) == v
        info = store.head(k)
        assert info is not None and info.key == k and info.size == len(v)
        assert abs(info.mtime - t0) < 600  # store time, seconds since the epoch
    store.put("store.json", b"second")  # a put replaces the whole object
    assert store.get("store.json") == b"second"


def test_missing_keys(backend):
    _, store = backend
    with pytest.raises(ObjectNotFound):
        store.get("objects/00/nothing")
    with pytest.raises(ObjectNotFound):
        store.open_range("objects/00/nothing", 0, 10).read()
    assert store.head("objects/00/nothing") is None
    store.delete(["objects/00/nothing", "snapshots/x/none"])  # absent keys are not an error
    assert not issubclass(ObjectNotFound, TransientStorageError)  # never retried


def test_listing_is_complete_across_pages_and_prefix_is_a_string_prefix(backend):
    _, store = backend
    keys = [f"objects/{i % 4:02x}/{i:04d}" for i in range(23)] + [
        "snapshots/pkgs/a.json.zst", "snapshots/pkgs/b.json.zst",
        "snapshots/pkgs2/c.json.zst", "snapshots/models/d.json.zst", "store.json"]
    for k in keys:
        store.put(k, k.encode())
    _page(store, 5)
    listed = [i.key for i in store.list("objects/")]
    assert sorted(listed) == sorted(k for k in keys if k.startswith("objects/"))
    assert len(listed) == len(set(listed))  # each key once, whatever the paging
    assert {i.key: i.size for i in store.list("snapshots/pkgs")} == {
        "snapshots/pkgs/a.json.zst": 25, "snapshots/pkgs/b.json.zst": 25,
        "snapshots/pkgs2/c.json.zst": 26}  # a string prefix, as S3 defines it
    assert sorted(i.key for i in store.list("snapshots/pkgs/")) == [
        "snapshots/pkgs/a.json.zst", "snapshots/pkgs/b.json.zst"]  # (no order is promised)
    assert list(store.list("nothing/")) == []
    store.delete(keys[:10])
    assert sorted(i.key for i in store.list("objects/")) == sorted(
        k for k in keys[10:] if k.startswith("objects/"))


def test_ranged_reads_at_the_edges(backend):
    _, store = backend
    data = os.urandom(1000)
    store.put("objects/aa/r", data)

    def rng(start: int, length: int | None) -> bytes:
        body = store.open_range("objects/aa/r", start, length)
        try:
            out = b""
            while piece := body.read(97):
                out += piece
            return out
        finally:
            body.close()

    assert rng(0, None) == data
    assert rng(0, 1) == data[:1]
    assert rng(999, 1) == data[999:]
    assert rng(500, None) == data[500:]
    assert rng(10, 0) == b""
    assert rng(990, 50) == data[990:]  # a range past the end is cut at the end
    assert rng(123, 456) == data[123:579]


def test_large_object_streams_back_in_pieces(backend):
    _, store = backend
    data = os.urandom(9 << 20)  # larger than any single read the engine makes
    store.put("objects/bb/large", data)
    body = store.open_range("objects/bb/large", 0, len(data))
    got, reads = bytearray(), 0
    try:
        while piece := body.read(1 << 20):
            got += piece
            reads += 1
    finally:
        body.close()
    assert bytes(got) == data and reads >= 9
    middle = store.open_range("objects/bb/large", (4 << 20) - 3, 6)
    assert middle.read() == data[(4 << 20) - 3:(4 << 20) + 3]
    middle.close()


def test_errors_are_classified_permanent_or_transient(backend, tmp_path, request):
    """A fault that another attempt can fix is a TransientStorageError; a refusal that
    retrying cannot fix (bad key, no bucket, wrong credentials) is a permanent StorageError
    subclass (never retried)."""
    kind, store = backend
    permanent: list[tuple[Store, str, type[StorageError]]] = []
    transient: list[Store] = []
    if kind in ("memory", "local"):
        with pytest.raises(StorageError) as bad:
            store.get("../outside")
        assert not isinstance(bad.value, TransientStorageError)
        if kind == "local":
            (tmp_path / "afile").write_bytes(b"x")
            permanent.append((LocalStore(str(tmp_path / "afile")), "put", StorageError))
    else:
        server = request.getfixturevalue("seaweed" if kind.startswith("seaweedfs") else "moto")
        lite = kind.endswith("-lite")
        permanent.append((_s3(server, tmp_path, bucket="no-such-bucket-here", lite=lite),
                          "get", StorageError))
        if kind.startswith("seaweedfs"):  # moto accepts any credentials
            permanent.append((_s3(server, tmp_path, lite=lite,
                                  AWS_SECRET_ACCESS_KEY="wrong" * 8), "get", AccessDenied))
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a network error
        transient.append(_s3(server, tmp_path, bucket="b", lite=lite,
                             CACHE_SYNC_ENDPOINT_URL=dead))
    for st, op, expected in permanent:
        with pytest.raises(expected) as err:
            st.put("objects/aa/x", b"x") if op == "put" else st.get("objects/aa/x")
        assert not isinstance(err.value, TransientStorageError), err.value
    for st in transient:
        with pytest.raises(TransientStorageError):
            st.get("objects/aa/x")


def test_keys_with_characters_urls_encode(backend):
    """Keys survive a round trip through put, list (S3: ``encoding-type=url``, decoded as S3
    encodes: '+' is a space) and get, whatever characters they hold."""
    _, store = backend
    keys = ["odd/a b+c", "odd/plus+plus", "odd/pct%20lit", "odd/ünï ★", "odd/q?x=1&y",
            "odd/tilde~semi;colon:"]
    for k in keys:
        store.put(k, k.encode())
    assert sorted(i.key for i in store.list("odd/")) == sorted(keys)
    for k in keys:
        assert store.get(k) == k.encode()
        assert store.head(k) is not None
