"""The retry policy, the packer and the transfer engine on the in-memory store: real objects
packed by ``Packer``, fetched by ``Fetcher`` into a temporary directory, with faults injected
by ``FaultyStore`` (no server, milliseconds)."""

from __future__ import annotations

import hashlib
import os
import time
import types
from pathlib import Path

import pytest
import tenacity
import zstandard

from cache_sync.errors import FormatError, IntegrityError, ObjectNotFound, TransientStorageError
from cache_sync.layout import object_key
from cache_sync.packer import Packer, Uploader, compress_if_smaller
from cache_sync.snapshot import CODEC_RAW, CODEC_ZSTD, Entry
from cache_sync.storage.memory import MemoryStore
from cache_sync.storage.retry import RetryingStore, RetryPolicy
from cache_sync.transfer import Fetcher, plan_ranges
from tests.support.faultstore import FaultyStore
from tests.support.helpers import direct_io_supported

ATTEMPTS = 5


def _stores() -> tuple[MemoryStore, FaultyStore, RetryingStore]:
    mem = MemoryStore()
    faulty = FaultyStore(mem)
    return mem, faulty, RetryingStore(faulty, RetryPolicy(ATTEMPTS, base=0.0, cap=0.0))


# --- the retry policy: one budget per request ---------------------------------------------
def test_a_get_that_always_fails_is_tried_exactly_retries_times():
    mem, faulty, store = _stores()
    mem.put("objects/aa/x", b"data")
    faulty.fail("get")
    with pytest.raises(TransientStorageError):
        store.get("objects/aa/x")
    assert faulty.requests["get"] == ATTEMPTS


def test_a_get_that_fails_twice_then_succeeds_costs_three_requests():
    mem, faulty, store = _stores()
    mem.put("objects/aa/x", b"data")
    faulty.fail("get", times=2)
    assert store.get("objects/aa/x") == b"data"
    assert faulty.requests["get"] == 3


def test_a_permanent_error_is_not_retried():
    _, faulty, store = _stores()
    with pytest.raises(ObjectNotFound):
        store.get("objects/aa/missing")
    assert faulty.requests["get"] == 1


def test_retry_after_is_waited_but_never_beyond_the_cap(monkeypatch):
    mem, faulty, _ = _stores()
    store = RetryingStore(faulty, RetryPolicy(3, base=0.0, cap=0.2))
    mem.put("k", b"v")
    faulty.fail("get", times=2, exc=lambda: TransientStorageError("SlowDown", retry_after=60))
    waits: list[float] = []  # what tenacity's sleep strategy is asked for, not a clock
    monkeypatch.setattr(tenacity.nap, "time", types.SimpleNamespace(sleep=waits.append))
    assert store.get("k") == b"v"
    assert waits == [0.2, 0.2]  # two waits of min(Retry-After, cap)


# --- packer + fetcher ----------------------------------------------------------------------
def _pack(store, files: dict[str, bytes], pack_size=4096, chunk_size=8192, small=1024,
          tmp: Path | None = None) -> list[Entry]:
    """Pack ``files`` as a push does; returns their snapshot entries (with blobs)."""
    journal: list[dict] = []
    up = Uploader(store, 4, max_inflight=4, on_stored=journal.append)
    packer = Packer(up, pack_size, chunk_size, small)
    digests = {}
    for path, data in files.items():
        d = hashlib.sha256(data).hexdigest()
        digests[path] = d
        if not data:
            continue
        if len(data) <= small:
            packer.add_small(d, data)
        else:
            assert tmp is not None
            src = tmp / f"src-{d[:8]}"
            src.write_bytes(data)
            packer.add_large(d, str(src), len(data))
    packer.flush()
    up.wait()
    journalled = {d for rec in journal for d in rec}
    assert journalled == {d for p, d in digests.items() if files[p]}  # every blob journalled
    return [Entry(p, "f", 0o644, 1_700_000_000_000_000_000 + i, len(files[p]), digests[p],
                  blobs=packer.blobs.get(digests[p], ()))
            for i, p in enumerate(sorted(files))]


def _files(n: int = 12, seed: int = 1) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    out = {}
    for i in range(n):
        size = rnd.choice([0, 10, 300, 900, 3000, 20000])
        text = rnd.random() < 0.5  # compressible
        data = (b"abc" * size)[:size] if text else rnd.randbytes(size)
        out[f"f{i:02d}"] = data
    return out


def _fetch(store, entries: list[Entry], dest: Path) -> Fetcher:
    dest.mkdir(exist_ok=True)
    placed: list[str] = []
    fetcher = Fetcher(store, str(dest), 3, lambda e, final, st: placed.append(e.path))
    fetcher.fetch([e for e in entries if e.size])
    assert sorted(placed) == sorted(e.path for e in entries if e.size)
    return fetcher


def test_packed_and_chunked_files_round_trip(tmp_path):
    mem, faulty, store = _stores()
    files = _files()
    entries = _pack(store, files, tmp=tmp_path)
    codecs = {b.codec for e in entries for b in e.blobs}
    assert codecs == {CODEC_RAW, CODEC_ZSTD}  # compressible members are compressed
    chunked = [e for e in entries if len(e.blobs) > 1]
    assert chunked and all(b.offset == 0 for e in chunked for b in e.blobs)
    for oid in {b.oid for e in entries for b in e.blobs}:  # objects are named by their bytes
        assert hashlib.sha256(mem.get(object_key(oid))).hexdigest() == oid
    _fetch(store, entries, tmp_path / "out")
    for e in entries:
        if e.size:
            p = tmp_path / "out" / e.path
            assert p.read_bytes() == files[e.path]
            assert p.stat().st_mtime_ns == e.mtime_ns and p.stat().st_mode & 0o777 == 0o644
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".cs-tmp-")]


def test_compress_if_smaller_keeps_incompressible_bytes_raw():
    assert compress_if_smaller(os.urandom(5000))[1] == CODEC_RAW
    assert compress_if_smaller(b"a" * 5000)[1] == CODEC_ZSTD


def test_ranges_coalesce_neighbours_and_split_chunked_files(tmp_path):
    _, _, store = _stores()
    entries = _pack(store, _files(30, seed=3), pack_size=1 << 20, tmp=tmp_path)
    ranges, chunked = plan_ranges([e for e in entries if e.size])
    packed = [e for e in entries if len(e.blobs) == 1 and e.size]
    assert sum(len(r.members) for r in ranges) == len(packed)
    assert len(ranges) < len(packed)  # neighbours share a request
    assert {e.path for e in chunked} == {e.path for e in entries if len(e.blobs) > 1}


def test_a_range_that_always_fails_is_requested_exactly_retries_times(tmp_path):
    _, faulty, store = _stores()
    entries = _pack(store, {"a": b"x" * 500, "b": b"y" * 600}, tmp=tmp_path)
    faulty.fail("open_range")
    with pytest.raises(TransientStorageError):
        _fetch(store, entries, tmp_path / "out")
    assert faulty.requests["open_range"] == ATTEMPTS  # one budget, not attempts squared


def test_a_broken_stream_resumes_from_the_first_missing_file_as_the_next_attempt(tmp_path):
    _, faulty, store = _stores()
    files = {f"m{i}": os.urandom(700) for i in range(4)}  # raw members of one pack
    entries = _pack(store, files, pack_size=1 << 20, tmp=tmp_path)
    faulty.break_streams(2, after=1000)  # each attempt places one more file, then breaks
    fetcher = _fetch(store, entries, tmp_path / "out")
    assert faulty.requests["open_range"] == 3 and fetcher.requests == 3
    starts = [start for _, start, _ in faulty.ranges]
    assert starts == [0, 700, 1400]  # each resume starts at the first file not yet in place
    for p, data in files.items():
        assert (tmp_path / "out" / p).read_bytes() == data


def test_a_stream_broken_more_often_than_the_budget_fails(tmp_path):
    _, faulty, store = _stores()
    entries = _pack(store, {"c": os.urandom(30000)}, tmp=tmp_path)  # chunked
    faulty.break_streams(100, after=10)
    with pytest.raises(TransientStorageError):
        _fetch(store, entries, tmp_path / "out")
    n_chunks = len(entries[0].blobs)
    assert faulty.requests["open_range"] <= ATTEMPTS * n_chunks
    assert not (tmp_path / "out" / "c").exists()
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".cs-tmp-")]


def test_corrupt_bytes_are_never_placed(tmp_path):
    mem, faulty, store = _stores()
    entries = _pack(store, {"p": b"hello world " * 50}, tmp=tmp_path)
    oid = entries[0].blobs[0].oid
    good = mem.get(object_key(oid))
    mem.objects[object_key(oid)] = (bytes(b ^ 0xFF for b in good), time.time())
    with pytest.raises(IntegrityError, match=oid):
        _fetch(store, entries, tmp_path / "out")
    assert faulty.requests["open_range"] == ATTEMPTS  # corrupt in transit is retried
    assert not (tmp_path / "out" / "p").exists()


# --- chunked files: each byte hashed once; a corrupt chunk costs a repair pass -------------
def _chunked_file(store, tmp: Path, compressible: bool = False) -> tuple[Entry, bytes]:
    data = (b"0123456789abcdef" * 4096) if compressible else os.urandom(65536)
    entries = _pack(store, {"big": data}, tmp=tmp)
    assert len(entries[0].blobs) == 8  # 8 KiB chunks in these tests
    return entries[0], data


@pytest.mark.parametrize("compressible", [False, True])
def test_an_honest_chunked_file_is_hashed_once(tmp_path, monkeypatch, compressible):
    import cache_sync.transfer as transfer

    monkeypatch.setattr(transfer, "PIECE", 1024)  # a compressed chunk decodes in 8 pieces
    _, faulty, store = _stores()
    entry, data = _chunked_file(store, tmp_path, compressible)
    assert all((b.codec == CODEC_ZSTD) == compressible for b in entry.blobs)
    monkeypatch.setattr(transfer, "HELD", 64)  # every piece may wait in memory for its turn
    read_back = []
    real_back = Fetcher._hash_back
    monkeypatch.setattr(Fetcher, "_hash_back", lambda self, cf, lo, hi: (
        read_back.append(lo), real_back(self, cf, lo, hi)))
    hashed = []
    real = hashlib.sha256

    class Counting:
        def __init__(self) -> None:
            self.h = real()

        def update(self, b: bytes) -> None:
            hashed.append(len(b))
            self.h.update(b)

        def hexdigest(self) -> str:
            return self.h.hexdigest()

    monkeypatch.setattr(transfer.hashlib, "sha256", Counting)
    _fetch(store, [entry], tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data
    assert sum(hashed) == len(data)  # not twice: chunk ids are checked only on a mismatch
    assert read_back == []  # every piece hashed from the buffer it was decoded into
    assert faulty.requests["open_range"] == len(entry.blobs)


@pytest.mark.parametrize("compressible", [False, True])
def test_a_chunk_corrupted_in_transit_is_fetched_again_and_nothing_else(tmp_path, compressible):
    _, faulty, store = _stores()
    entry, data = _chunked_file(store, tmp_path, compressible)
    bad = entry.blobs[3].oid
    faulty.corrupt_streams(1, match=bad)
    _fetch(store, [entry], tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data
    again = [k for k, _, _ in faulty.ranges[len(entry.blobs):]]
    if compressible:  # stored bytes are gone once decoded: compressed chunks are re-checked
        assert object_key(bad) in again
    else:  # raw chunks are checked on disk: only the corrupt one is fetched again
        assert again == [object_key(bad)]


def test_a_chunk_corrupt_in_the_store_fails_after_the_budget_and_nothing_is_placed(tmp_path):
    mem, faulty, store = _stores()
    entry, _ = _chunked_file(store, tmp_path)
    oid = entry.blobs[5].oid
    good = mem.get(object_key(oid))
    mem.objects[object_key(oid)] = (bytes([good[0] ^ 1]) + good[1:], time.time())
    with pytest.raises(IntegrityError, match=oid):
        _fetch(store, [entry], tmp_path / "out")
    assert faulty.requests["open_range"] == len(entry.blobs) + ATTEMPTS
    assert not (tmp_path / "out" / "big").exists()
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".cs-tmp-")]


def test_chunks_in_the_wrong_order_are_a_lying_snapshot_not_a_retry(tmp_path):
    _, faulty, store = _stores()
    entry, _ = _chunked_file(store, tmp_path)
    swapped = Entry(entry.path, "f", entry.mode, entry.mtime_ns, entry.size, entry.digest,
                    blobs=tuple(reversed(entry.blobs)))
    with pytest.raises(FormatError, match="do not add up"):
        _fetch(store, [swapped], tmp_path / "out")
    assert faulty.requests["open_range"] == len(entry.blobs)  # checked on disk, not refetched
    assert not (tmp_path / "out" / "big").exists()


# --- chunks stream in pieces, in file order; the hash follows from memory or the page cache
def test_a_chunk_broken_mid_stream_resumes_at_its_first_piece_not_landed(tmp_path, monkeypatch):
    import cache_sync.transfer as transfer

    monkeypatch.setattr(transfer, "PIECE", 1024)  # 8 pieces per 8 KiB chunk
    _, faulty, store = _stores()
    entry, data = _chunked_file(store, tmp_path)
    faulty.break_streams(1, after=3000)  # the first chunk's stream breaks in its third piece
    _fetch(store, [entry], tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data
    again = [(k, start) for k, start, _ in faulty.ranges if start]
    assert again == [(object_key(entry.blobs[0].oid), 2048)]  # two pieces had landed
    assert faulty.requests["open_range"] == len(entry.blobs) + 1


def test_a_compressed_chunk_broken_mid_stream_is_decoded_again_from_its_start(
        tmp_path, monkeypatch):
    """A zstd stream cannot resume mid-frame: the retry GETs the whole chunk again, decodes
    it from its start and skips the pieces an earlier attempt landed (each written and
    hashed once)."""
    import cache_sync.transfer as transfer

    monkeypatch.setattr(transfer, "PIECE", 1024)
    monkeypatch.setattr(transfer, "READ", 16)  # the stored chunk arrives in small reads
    _, faulty, store = _stores()
    entry, data = _chunked_file(store, tmp_path, compressible=True)
    writes: list[int] = []
    real = Fetcher._write
    monkeypatch.setattr(Fetcher, "_write",
                        lambda self, cf, d, off: (writes.append(off), real(self, cf, d, off)))
    stored = entry.blobs[0].stored
    faulty.break_streams(1, after=stored // 2)
    _fetch(store, [entry], tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data
    assert [start for k, start, _ in faulty.ranges].count(0) == len(entry.blobs) + 1
    assert sorted(writes) == list(range(0, len(data), 1024))  # no piece written twice


@pytest.mark.parametrize("how", ["truncated", "shorter", "longer", "garbage"])
def test_a_compressed_chunk_that_does_not_decode_to_its_size_is_never_placed(tmp_path, how):
    """The store's object for one compressed chunk ends early, decodes to fewer or more
    bytes than the snapshot says, or is not zstd: every attempt fails, nothing is placed."""
    mem, faulty, store = _stores()
    entry, _ = _chunked_file(store, tmp_path, compressible=True)
    oid = entry.blobs[2].oid
    good = mem.get(object_key(oid))
    raw = zstandard.ZstdDecompressor().decompress(good)
    bad = {"truncated": good[:len(good) // 2],
           "shorter": zstandard.ZstdCompressor().compress(raw[:-100]),
           "longer": zstandard.ZstdCompressor().compress(raw + b"x" * 100),
           "garbage": os.urandom(len(good))}[how]
    mem.objects[object_key(oid)] = (bad, time.time())
    with pytest.raises((IntegrityError, TransientStorageError), match=oid):
        _fetch(store, [entry], tmp_path / "out")
    assert not (tmp_path / "out" / "big").exists()
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".cs-tmp-")]


@pytest.mark.parametrize("held", [0, 1, 8])
def test_pieces_far_ahead_of_the_hash_are_read_back_and_each_byte_is_hashed_once(
        tmp_path, monkeypatch, held):
    import cache_sync.transfer as transfer

    monkeypatch.setattr(transfer, "PIECE", 1024)
    monkeypatch.setattr(transfer, "HELD", held)
    _, _faulty, store = _stores()
    entry, data = _chunked_file(store, tmp_path)
    hashed = []
    real = hashlib.sha256

    class Counting:
        def __init__(self) -> None:
            self.h = real()

        def update(self, b: bytes) -> None:
            hashed.append(len(b))
            self.h.update(b)

        def hexdigest(self) -> str:
            return self.h.hexdigest()

    monkeypatch.setattr(transfer.hashlib, "sha256", Counting)
    fetcher = _fetch(store, [entry], tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data
    assert sum(hashed) == len(data)
    assert len(fetcher._buffers) <= fetcher.workers + held  # buffers are reused, bounded


def test_bodies_are_read_in_cpu_slots_while_more_requests_wait_for_their_first_byte(
        tmp_path, monkeypatch):
    """Requests go out up to ``transfers`` at once (their waits for a first byte overlap), but
    only ``cpu_slots()`` bodies are read, decoded and written at a time: more would only take
    turns on the GIL and the cores. Each body's reader holds until 6 requests are out at
    once, so the peaks are those of the schedule, not of timing."""
    import threading

    import cache_sync.transfer as transfer

    mem, _, store = _stores()
    files = {f"f{i:02d}": os.urandom(900) for i in range(40)}
    entries = _pack(store, files, pack_size=1000, tmp=tmp_path)  # one file per pack: 40 GETs
    lock = threading.Lock()
    now = {"out": 0, "reading": 0}
    peak = {"out": 0, "reading": 0}
    crowd = threading.Event()  # 6 requests out at once

    def count(key: str, d: int) -> None:
        with lock:
            now[key] += d
            peak[key] = max(peak[key], now[key])
            if now["out"] >= 6:
                crowd.set()

    class Body:
        def __init__(self, inner):
            self.inner, self.reading = inner, False

        def read(self, n=-1):
            if not self.reading:
                self.reading = True
                count("reading", 1)
                crowd.wait(10)
            return self.inner.read(n)

        def close(self):
            if self.reading:
                count("reading", -1)
            count("out", -1)
            self.inner.close()

    inner_open = store.raw.open_range

    def counted(key, start=0, length=None):
        count("out", 1)
        return Body(inner_open(key, start, length))

    monkeypatch.setattr(store.raw, "open_range", counted)
    monkeypatch.setattr(transfer, "cpu_slots", lambda: 2)
    dest = tmp_path / "out"
    dest.mkdir()
    Fetcher(store, str(dest), 8, lambda e, final, st: None).fetch(entries)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
    assert crowd.is_set() and peak["out"] >= 6  # requests went out beyond the slots
    assert peak["reading"] == 2  # but never more bodies were read at once than the slots


# --- O_DIRECT: chunked files written past the page cache (design 5, "Transfers") ---------
def _record_writes(monkeypatch) -> list[tuple[bool, int, int]]:
    """(went past the page cache, offset, length) of every write of a pulled file."""
    import fcntl

    from cache_sync import fsutil

    writes: list[tuple[bool, int, int]] = []
    real = fsutil._pwrite_all

    def spy(fd: int, view: memoryview, offset: int) -> None:
        writes.append((bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT), offset, len(view)))
        real(fd, view, offset)

    monkeypatch.setattr(fsutil, "_pwrite_all", spy)
    return writes


def _pages(spans) -> set[int]:
    return {p for _, off, n in spans for p in range(off // 4096, (off + n - 1) // 4096 + 1)}


@pytest.mark.parametrize("compressible", [False, True])
@pytest.mark.parametrize("chunk_size", [8192, 8192 + 100])  # chunks on and off block bounds
def test_a_direct_pull_writes_whole_aligned_blocks_past_the_page_cache_the_rest_through_it(
        tmp_path, monkeypatch, compressible, chunk_size):
    import cache_sync.transfer as transfer

    if not direct_io_supported(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(transfer, "PIECE", 8192)
    _, _, store = _stores()
    size = 65536 + 777  # a tail that is not a whole block
    data = (b"0123456789abcdef" * 5000)[:size] if compressible else os.urandom(size)
    (entry,) = _pack(store, {"big": data}, chunk_size=chunk_size, tmp=tmp_path)
    assert all((b.codec == CODEC_ZSTD) == compressible for b in entry.blobs)
    writes = _record_writes(monkeypatch)
    (tmp_path / "out").mkdir()
    placed = []
    Fetcher(store, str(tmp_path / "out"), 3, lambda e, final, st: placed.append(e.path),
            direct=True).fetch([entry])
    assert placed == ["big"]
    assert (tmp_path / "out" / "big").read_bytes() == data
    direct = [w for w in writes if w[0]]
    buffered = [w for w in writes if not w[0]]
    if not compressible:  # raw chunks: through the page cache (spliced where it can)
        assert direct == []
        return
    assert direct, "nothing went past the page cache"
    assert all(off % 4096 == 0 and n % 4096 == 0 for _, off, n in direct)
    # every byte written exactly once, and no block written both ways
    spans = sorted((off, off + n) for _, off, n in writes if n)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert not _pages(direct) & _pages(buffered)
    if chunk_size == 8192:  # every piece starts on a block: all but the tail goes direct
        assert sum(n for _, _, n in direct) == size - size % 4096


def test_a_file_system_refusing_o_direct_at_open_or_at_write_gets_buffered_writes(
        tmp_path, monkeypatch):
    import cache_sync.transfer as transfer
    from cache_sync import fsutil

    monkeypatch.setattr(transfer, "PIECE", 8192)
    _, _, store = _stores()
    data = (b"0123456789abcdef" * 5000)[:65536 + 5]  # compressed chunks: written direct
    (entry,) = _pack(store, {"big": data}, tmp=tmp_path)
    assert any(b.codec == CODEC_ZSTD for b in entry.blobs)  # its 5-byte tail chunk is raw
    real_open, real_write = os.open, fsutil._pwrite_all
    refused = []

    def no_direct_open(path, flags, *a):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *a)

    def no_direct_write(fd, view, offset):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            refused.append(offset)
            raise OSError(22, "Invalid argument")
        real_write(fd, view, offset)

    for case in ("open", "write"):
        out = tmp_path / f"out-{case}"
        out.mkdir()
        with monkeypatch.context() as m:
            if case == "open":
                m.setattr(fsutil.os, "open", no_direct_open)
            m.setattr(fsutil, "_pwrite_all", no_direct_write)
            Fetcher(store, str(out), 3, lambda e, final, st: None, direct=True).fetch([entry])
        assert (out / "big").read_bytes() == data, case
    assert len(refused) == 1  # the first refusal turns the file's direct writes off


def test_a_direct_write_that_fails_for_another_reason_fails_the_pull_and_places_nothing(
        tmp_path, monkeypatch):
    import cache_sync.transfer as transfer
    from cache_sync import fsutil
    from cache_sync.errors import DiskSpaceError

    if not direct_io_supported(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(transfer, "PIECE", 8192)
    _, _, store = _stores()
    (entry,) = _pack(store, {"big": b"0123456789abcdef" * 4096}, tmp=tmp_path)
    real = fsutil._pwrite_all

    def full(fd, view, offset):
        import fcntl

        if offset >= 32768 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(28, "No space left on device")
        real(fd, view, offset)

    monkeypatch.setattr(fsutil, "_pwrite_all", full)
    (tmp_path / "out").mkdir()
    with pytest.raises(DiskSpaceError):
        Fetcher(store, str(tmp_path / "out"), 3, lambda e, final, st: None,
                direct=True).fetch([entry])
    assert os.listdir(tmp_path / "out") == []  # not even the temporary file


def test_direct_io_auto_is_on_for_block_file_systems_only(tmp_path, monkeypatch):
    from cache_sync import fsutil

    assert fsutil.use_direct_io(tmp_path, "off") is False
    assert fsutil.use_direct_io(tmp_path, "on") is True
    assert fsutil.fs_type("/proc/self") == "proc"
    mountinfo = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /runpod-volume rw - fuse.mfs mfs rw\n"
        "31 22 0:41 / /mnt/my\\040disk rw - xfs /dev/sdb rw\n"
        "32 30 0:42 / /runpod-volume/local rw - ext4 /dev/sdc rw\n"
    )
    import io

    monkeypatch.setattr(fsutil, "open", lambda *a, **k: io.StringIO(mountinfo), raising=False)
    monkeypatch.setattr(fsutil.os.path, "realpath", lambda p: os.fspath(p))
    monkeypatch.setattr(fsutil, "nearest_existing", lambda p: p)
    want = {"/tmp/x": "ext4", "/runpod-volume/cache/packages": "fuse.mfs",
            "/runpod-volumex": "ext4", "/mnt/my disk/a": "xfs",
            "/runpod-volume/local/a": "ext4", "/runpod-volume": "fuse.mfs"}
    assert {p: fsutil.fs_type(p) for p in want} == want
    assert fsutil.use_direct_io("/runpod-volume/cache", "auto") is False  # network: buffered
    assert fsutil.use_direct_io("/tmp/runpod-cache", "auto") is True
