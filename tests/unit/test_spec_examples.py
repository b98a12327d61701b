"""docs/design.md's examples, parsed by the real code: the spec cannot drift from what the
code reads and writes. Each example is a fenced block tagged ``key-examples``,
``store-marker-example``, ``manifest-example`` or ``journal-example``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from cache_sync.layout import (
    MAX_PARENTS_IN_KEY,
    STORE_KEY,
    is_snapshot_id,
    new_snapshot_id,
    object_key,
    oid_from_key,
    parse_snapshot_key,
    snapshot_key,
)
from cache_sync.local_cache import CacheState
from cache_sync.repo import check_store_format
from cache_sync.snapshot import CODEC_RAW, decode, encode, from_dict
from cache_sync.storage.memory import MemoryStore
from tests.support import REPO

SPEC = (REPO / "docs" / "design.md").read_text()


def block(tag: str) -> str:
    found = re.findall(rf"^```\w* {re.escape(tag)}\n(.*?)^```$", SPEC, flags=re.S | re.M)
    assert len(found) == 1, f"docs/design.md must hold exactly one {tag!r} block"
    return found[0]


def test_key_examples_parse_and_round_trip():
    lines = block("key-examples").split()
    snaps = [parse_snapshot_key(k) for k in lines if k.startswith("snapshots/")]
    assert len(snaps) >= 2 and all(s is not None for s in snaps)
    for ref in snaps:
        assert snapshot_key(ref.area, ref.id, ref.parents) == ref.key
        assert all(is_snapshot_id(i) for i in (ref.id, *ref.parents))
    child = snaps[1]
    assert snaps[0].id in child.parents  # the example names its parent
    objs = [k for k in lines if k.startswith("objects/")]
    assert objs and all(object_key(oid_from_key(k) or "") == k for k in objs)


def test_snapshot_id_is_the_documented_time_format():
    m = re.search(r"A snapshot id is `YYYYMMDDTHHMMSSffffffZ-<8 hex>`", SPEC)
    assert m, "the id grammar moved: update this test with it"
    sid = new_snapshot_id(1795458600.123456)  # 2026-11-23 18:30:00.123456 UTC
    assert sid.startswith("20261123T183000123456Z-") and is_snapshot_id(sid)
    assert sorted([new_snapshot_id(time.time() + 1), sid])[0] == sid  # ids sort by time


def test_parents_in_the_key_are_capped_as_specified():
    assert f"at most {MAX_PARENTS_IN_KEY} parents" in SPEC
    parents = [new_snapshot_id(1795458600 + i) for i in range(30)]
    ref = parse_snapshot_key(snapshot_key("pkgs", new_snapshot_id(), parents))
    assert ref is not None and list(ref.parents) == sorted(parents)[-MAX_PARENTS_IN_KEY:]


def test_store_marker_example_is_accepted():
    store = MemoryStore()
    store.put(STORE_KEY, block("store-marker-example").encode())
    doc = check_store_format(store)
    assert doc is not None and doc["version"] == 1


def test_manifest_example_is_a_valid_manifest():
    doc = json.loads(block("manifest-example"))
    snap = from_dict(doc, what="design.md example")
    assert doc["summary"] == {"files": snap.files, "bytes": snap.bytes}
    assert snap.to_dict() == doc  # the writer writes exactly this shape
    assert decode(encode(snap)) == snap
    chunked = [e for e in snap.entries.values() if len(e.blobs) > 1]
    assert chunked and all(b.offset == 0 and b.codec == CODEC_RAW for b in chunked[0].blobs)


def test_journal_example_is_read_by_the_journal_reader(tmp_path: Path):
    cache = CacheState(tmp_path)
    cache.dir.mkdir()
    text = block("journal-example")
    cache.journal_path("pkgs").write_text(text + '{"remote": "s3://bucket/cache", "blo')
    blobs = cache.read_journal("pkgs", "s3://bucket/cache")
    pending = cache.read_pending("pkgs", "s3://bucket/cache")
    lines = [json.loads(line) for line in text.splitlines()]
    assert set(blobs) == set(lines[0]["blobs"])
    assert pending == [lines[1]["snapshot"]]
    assert cache.read_journal("pkgs", "file:///elsewhere") == {}  # other remotes ignored


def test_numbers_in_the_spec_match_the_code(tmp_path: Path):
    import os

    from cache_sync import snapshot, transfer
    from cache_sync.plan import index_record

    spec = " ".join(SPEC.split())
    assert "larger than 128 MiB decompressed" in spec
    assert snapshot.MAX_MANIFEST_BYTES == 128 << 20
    assert "at most 2 MiB a request" in spec and transfer.MAX_RANGE == 2 << 20
    assert "`path -> (size, mtime_ns, inode, ctime_ns, sha256)`" in spec
    (tmp_path / "f").write_bytes(b"abc")
    st = os.stat(tmp_path / "f")
    assert list(index_record(st, "d" * 64)) == [3, st.st_mtime_ns, st.st_ino, st.st_ctime_ns,
                                                 "d" * 64]
