"""The pure core: manifest encoding, the trust boundary (validation), heads and merges."""

from __future__ import annotations

import json

import pytest
import zstandard

from cache_sync.errors import FormatError
from cache_sync.history import History
from cache_sync.layout import (
    new_snapshot_id,
    parse_snapshot_key,
    snapshot_key,
)
from cache_sync.snapshot import MAX_DEPTH, Blob, Entry, Snapshot, decode, encode, merge3

H = "ab" * 32
H2 = "cd" * 32


def f(path, digest=H, size=3, mtime=1):
    return Entry(path, "f", 0o644, mtime, size, digest, blobs=(Blob(H2, 0, size, size, 0),))


def d(path):
    return Entry(path, "d", 0o755, 1)


def snap(entries, parents=()):
    return Snapshot(new_snapshot_id(), "packages", tuple(parents),
                    {e.path: e for e in entries})


def raw(doc) -> bytes:
    return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())


def good_doc(rows):
    s = snap([])
    doc = s.to_dict()
    doc["entries"] = rows
    return doc


def test_round_trip():
    s = snap([d("a"), f("a/x"), Entry("a/l", "l", 0o777, 5, target="x"), d("e")])
    back = decode(encode(s))
    assert back.entries == s.entries and back.id == s.id


@pytest.mark.parametrize("rows, needle", [
    ([["../x", "d", 493, 1]], "unsafe path"),
    ([["/etc", "d", 493, 1]], "unsafe path"),
    ([["a//b", "d", 493, 1]], "unsafe path"),
    ([["a/./b", "d", 493, 1]], "unsafe path"),
    ([["a/", "d", 493, 1]], "unsafe path"),
    ([[".", "d", 493, 1]], "unsafe path"),
    ([["a/..", "d", 493, 1]], "unsafe path"),
    ([["/".join(["a"] * (MAX_DEPTH + 1)), "d", 493, 1]], "unsafe path"),
    ([["a\x00b", "d", 493, 1]], "unsafe path"),
    ([["l", "l", 511, 1, "../../etc/passwd"]], "leads out of the area"),
    ([["l", "l", 511, 1, "/etc/passwd"]], "absolute"),
    ([["a", "d", 493, 1], ["a/l", "l", 511, 1, "../.."]], "leads out"),
    ([["a", "d", 493, 1], ["a", "d", 493, 1]], "duplicate path"),
    ([["a", "f", 420, 1, 3, H, [[H2, 0, 3, 3, 0]]], ["a/b", "d", 493, 1]], "which is a file"),
    ([["l", "l", 511, 1, "x"], ["l/b", "d", 493, 1]], "which is a symlink"),
    ([["a/b", "d", 493, 1]], "no parent directory"),
    ([["a", "f", 420, 1, 99, H, [[H2, 0, 3, 3, 0]]]], "says 99 bytes"),
    ([["a", "f", 420, 1, 3, "nothex", [[H2, 0, 3, 3, 0]]]], "malformed"),
    ([["a", "f", 420, 1, 3, H, [["../../x", 0, 3, 3, 0]]]], "malformed"),
    ([["a", "f", 420, 1, 3, H, [[H2, 0, 2, 3, 0]]]], "malformed"),  # raw codec, sizes differ
    ([["a", "f", 420, 1, 3, H, [[H2, 0, 3, 3, 7]]]], "malformed"),  # unknown codec
    ([["a", "x", 420, 1]], "malformed"),
    ([["a", "d", 99999, 1]], "malformed"),
    ([["a", "d", True, 1]], "malformed"),
    ([["a", "d", 493, 1.5]], "malformed"),  # not an integer mtime
    ([["a", "f", 420, 1, True, H, [[H2, 0, 1, 1, 0]]]], "malformed"),  # a bool is no size
    ([["a", "f", 420, 1, 3, H, [[H2, 0, 3, 3, True]]]], "malformed"),  # nor a codec
    ([["a", "f", 420, 1, 3, H, [[H2, -1, 3, 3, 0]]]], "malformed"),  # a negative offset
    ([["a", "f", 420, 1, 3, H, [[H2, 0, 3, 2 ** 63, 0]]]], "malformed"),  # beyond the OS
    ([["a"]], "malformed"),
    (["a"], "malformed"),
])
def test_hostile_entries_are_refused(rows, needle):
    with pytest.raises(FormatError, match=needle):
        decode(raw(good_doc(rows)))


@pytest.mark.parametrize("mutate, needle", [
    (lambda doc: doc.update(format=2), "format version 2"),
    (lambda doc: doc.update(kind="other"), "not a cache-sync snapshot"),
    (lambda doc: doc.update(id="../../x"), "invalid id"),
    (lambda doc: doc.update(parents=["nope"]), "invalid parents"),
    (lambda doc: doc.update(entries={}), "no entry list"),
])
def test_hostile_headers_are_refused(mutate, needle):
    doc = good_doc([])
    mutate(doc)
    with pytest.raises(FormatError, match=needle):
        decode(raw(doc))


def test_malformed_bytes_are_refused():
    with pytest.raises(FormatError, match="not valid zstd"):
        decode(b"not zstd at all")
    with pytest.raises(FormatError, match="not valid JSON"):
        decode(zstandard.ZstdCompressor().compress(b"{nope"))
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(FormatError):
        decode(zstandard.ZstdCompressor().compress(deep.encode()))


def test_snapshot_keys_carry_parents():
    a, b = new_snapshot_id(), new_snapshot_id()
    c = new_snapshot_id()
    ref = parse_snapshot_key(snapshot_key("models", c, [a, b]))
    assert ref is not None and ref.id == c and set(ref.parents) == {a, b}
    assert parse_snapshot_key("snapshots/models/garbage.json.zst") is None
    assert parse_snapshot_key("snapshots/x/y/" + c + ".json.zst") is None


def test_heads_and_merge_keep_both_additions_and_deletions():
    base = snap([d("p"), f("p/keep"), f("p/del", H2)])
    w1 = snap([d("p"), f("p/keep"), f("p/new1")], [base.id])  # adds new1, deletes del
    w2 = snap([d("p"), f("p/keep"), f("p/del", H2), f("p/new2")], [base.id])
    refs = [parse_snapshot_key(snapshot_key("packages", s.id, s.parents)) for s in (base, w1, w2)]
    by_id = {s.id: s for s in (base, w1, w2)}
    hist = History(refs)
    assert [h.id for h in hist.heads] == sorted([w1.id, w2.id])
    heads, merged = hist.current(lambda r: by_id[r.id])
    assert set(merged) == {"p", "p/keep", "p/new1", "p/new2"}


def test_merge_conflict_later_writer_wins_and_tree_is_repaired():
    base = {"a": d("a"), "a/x": f("a/x")}
    ours = {"a": d("a"), "a/x": f("a/x", H2, mtime=2), "a/y": f("a/y")}
    theirs = {"a": f("a", H2)}  # replaced the directory by a file
    out = merge3(base, ours, theirs)
    assert out["a"].kind == "f" and "a/y" not in out and "a/x" not in out
    out2 = merge3({}, {"q": d("q"), "q/z": f("q/z")}, {})
    assert set(out2) == {"q", "q/z"}
    # a child added under a directory the other side deleted gets its parent back
    out3 = merge3({"m": d("m")}, {"m": d("m"), "m/new": f("m/new")}, {})
    assert set(out3) == {"m", "m/new"} and out3["m"].kind == "d"
