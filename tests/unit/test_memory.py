"""Bounded memory (issue 14: peak RSS under 250 MB at 200,000 files; the proof is
``python -m bench rss``, README "Memory"). These guard the properties that proof rests on,
in seconds, with ``tracemalloc``: a manifest is decoded and encoded row by row (never the
whole JSON document or a list of every row), an entry costs a few hundred bytes, and the
fetcher keeps a bounded number of jobs queued however many it has. Each bound is ~2x what
the code measures today and well under what the code before issue 14 cost."""

from __future__ import annotations

import hashlib
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from cache_sync import transfer
from cache_sync.layout import object_key
from cache_sync.plan import IndexRecord, LocalItem
from cache_sync.snapshot import CODEC_RAW, Blob, Entry, Snapshot, decode, encode
from cache_sync.storage.memory import MemoryStore
from cache_sync.transfer import Fetcher

N = 10_000
PACK = hashlib.sha256(b"pack").hexdigest()


def _entries(n: int = N) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for d in range(n // 50):
        top = f"pkg{d // 10:03d}/sub{d % 10}"
        for p in (top.split("/")[0], top):
            out[p] = Entry(p, "d", 0o755, 1_700_000_000_000_000_000)
        for i in range(49):
            path = f"{top}/module_{i}.py"
            digest = hashlib.sha256(path.encode()).hexdigest()
            out[path] = Entry(path, "f", 0o644, 1_700_000_000_000_000_000 + i, 1000 + i, digest,
                              blobs=(Blob(PACK, 1000 * (d * 50 + i), 1000 + i, 1000 + i,
                                          CODEC_RAW),))
    return out


def _measure(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """(result, bytes still held by the result, peak bytes during the call)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held - before, peak - before


@pytest.fixture(scope="module")
def manifest() -> tuple[bytes, int]:
    entries = _entries()
    snap = Snapshot("20261123T183000123456Z-0a1b2c3d", "packages", (), entries)
    return encode(snap), len(entries)


def test_an_entry_costs_a_few_hundred_bytes():
    entries, held, _ = _measure(_entries)
    per = held / len(entries)
    # Measured ~330 bytes (packed record); the dataclass of strs, ints and Blob tuples took ~740.
    assert per < 450, f"{per:.0f} bytes an entry"
    items, held, _ = _measure(lambda: {
        f"pkg/sub/m{i}.py": LocalItem(f"pkg/sub/m{i}.py", "f", 0o644, 1_700_000_000_000_000_000,
                                      1234 + i, 9_000_000 + i, 1_700_000_000_000_000_000)
        for i in range(N)})
    assert held / len(items) < 350, f"{held / len(items):.0f} bytes a scanned file"
    digest = "ab" * 32
    index, held, _ = _measure(lambda: {
        f"pkg/sub/m{i}.py": IndexRecord(1234 + i, 1_700_000_000_000_000_000, 9_000_000 + i,
                                        1_700_000_000_000_000_001, digest) for i in range(N)})
    assert held / len(index) < 300, f"{held / len(index):.0f} bytes an index record"
    assert index["pkg/sub/m7.py"] == (1241, 1_700_000_000_000_000_000, 9_000_007,
                                      1_700_000_000_000_000_001, digest)


def test_decoding_a_manifest_never_holds_the_whole_document(manifest):
    data, n = manifest
    snap, held, peak = _measure(lambda: decode(data))
    assert len(snap.entries) == n
    # Row by row, the peak is what is kept plus a window of text; json.loads of the whole
    # document held ~800 bytes a row on top of the entries (peak ~3.5x what is kept).
    assert peak - held < 5 << 20, (f"decode of {n} entries peaked {peak >> 20} MiB "
                                   f"holding {held >> 20} MiB")


def test_decoding_against_a_state_shares_its_unchanged_entries(manifest):
    data, n = manifest
    state = decode(data).entries
    snap, held, _ = _measure(lambda: decode(data, reuse=state))
    assert all(snap.entries[p] is state[p] for p in state)
    assert held < 60 * n, f"{held / n:.0f} bytes an unchanged entry"  # one dict slot each


def test_encoding_a_manifest_never_builds_every_row(manifest):
    data, n = manifest
    snap = decode(data)
    out, _, peak = _measure(lambda: encode(snap))
    assert out == encode(snap) and decode(out).entries == snap.entries
    # The rows as lists plus the whole text (the old json.dumps of to_dict()) cost ~20 MiB
    # here; streamed, the peak is the compressed output and one batch of rows.
    assert peak < len(out) + (4 << 20), f"encode peaked {peak >> 20} MiB"


class _SlowStore(MemoryStore):
    """Every ranged GET waits a little, so a fetcher that submitted every job at once would
    have them all queued."""

    def open_range(self, key: str, start: int, length: int) -> Any:
        time.sleep(0.002)
        return super().open_range(key, start, length)


def test_the_fetcher_queues_a_bounded_number_of_jobs(tmp_path: Path, monkeypatch):
    store = _SlowStore()
    entries = []
    for i in range(600):  # 600 objects: 600 jobs (nothing to coalesce)
        data = f"file {i}\n".encode()
        oid = hashlib.sha256(data).hexdigest()
        store.put(object_key(oid), data)
        entries.append(Entry(f"f{i:04d}", "f", 0o644, 1, len(data), oid,
                             blobs=(Blob(oid, 0, len(data), len(data), CODEC_RAW),)))
    pending = 0
    most = 0
    lock = threading.Lock()
    real = transfer.ThreadPoolExecutor

    class Counting(real):  # type: ignore[misc, valid-type]
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            nonlocal pending, most
            with lock:
                pending += 1
                most = max(most, pending)
            fut = super().submit(fn, *args, **kwargs)

            def done(_f: Future[Any]) -> None:
                nonlocal pending
                with lock:
                    pending -= 1

            fut.add_done_callback(done)
            return fut

    monkeypatch.setattr(transfer, "ThreadPoolExecutor", Counting)
    workers = 4
    placed: list[str] = []
    Fetcher(store, str(tmp_path), workers, lambda e, final, st: placed.append(e.path)
            ).fetch(entries)
    assert sorted(placed) == [e.path for e in entries]
    assert most <= 2 * workers, f"{most} jobs queued at once for {workers} workers"


def test_the_format_is_unchanged_both_ways(manifest):
    """Streaming changed no byte of the JSON: the previous writer's manifests (one
    ``json.dumps``, one zstd frame with its content size) decode as before, and what is
    written now is, decompressed, exactly the previous writer's text, which the previous
    reader (``stream_reader(...).read()`` then ``json.loads``) parses."""
    import json

    import zstandard

    from cache_sync.snapshot import from_dict

    data, _ = manifest
    snap = decode(data)
    old_text = json.dumps(snap.to_dict(), separators=(",", ":")).encode()
    old_bytes = zstandard.ZstdCompressor(level=3).compress(old_text)
    assert decode(old_bytes).entries == snap.entries
    new_text = zstandard.ZstdDecompressor().stream_reader(encode(snap)).read()
    assert new_text == old_text
    assert from_dict(json.loads(new_text)).entries == snap.entries
