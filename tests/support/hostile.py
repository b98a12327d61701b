"""Hostile store content, built with the engine's own encoding: each case takes the decoded
dict of a real snapshot (``Snapshot.to_dict()``) and returns a mutated document, or raw bytes,
or plants objects; ``plant`` writes it into the store as the newest head of the area."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import zstandard

from cache_sync.layout import STORE_KEY, new_snapshot_id, object_key, snapshot_key
from cache_sync.snapshot import encode, from_dict
from cache_sync.storage import Store

Doc = dict[str, Any]
Mutation = Callable[[Doc], "Doc | bytes"]


def zjson(obj: Any) -> bytes:
    return zstandard.ZstdCompressor().compress(json.dumps(obj).encode())


def plant(store: Store, area: str, parents: list[str], doc_or_bytes: Doc | bytes,
          snap_id: str | None = None) -> str:
    sid = snap_id or new_snapshot_id()
    if isinstance(doc_or_bytes, dict):
        doc = dict(doc_or_bytes, id=doc_or_bytes.get("id", sid), parents=parents)
        if doc["id"] == "KEEP":
            doc["id"] = sid
        data = zjson(doc)
    else:
        data = doc_or_bytes
    key = snapshot_key(area, sid, parents)
    store.put(key, data)
    return key


def rows(doc: Doc) -> list[list[Any]]:
    return doc["entries"]


def first(doc: Doc, kind: str, chunked: bool | None = None) -> list[Any]:
    for r in rows(doc):
        if r[1] != kind:
            continue
        if kind != "f":
            return r
        if chunked is None:
            if r[4] > 0:
                return r
            continue
        if (len(r[6]) > 1 or (r[6] and r[6][0][2] > 8 << 20)) == chunked and r[4] > 0:
            return r
    raise LookupError(kind)


def add(doc: Doc, *new_rows: list[Any]) -> Doc:
    d = copy.deepcopy(doc)
    d["entries"] = sorted(d["entries"] + [list(r) for r in new_rows], key=lambda r: r[0])
    d["id"] = "KEEP"
    return d


def edit(doc: Doc, fn: Callable[[Doc], None]) -> Doc:
    d = copy.deepcopy(doc)
    d["id"] = "KEEP"
    fn(d)
    return d


def file_row(doc: Doc, path: str, chunked: bool = False) -> list[Any]:
    """A copy of a real non-empty file row, at ``path``."""
    r = copy.deepcopy(first(doc, "f", chunked))
    r[0] = path
    return r


def dir_row(path: str) -> list[Any]:
    return [path, "d", 0o755, 1_700_000_000_000_000_000]


def link_row(path: str, target: str) -> list[Any]:
    return [path, "l", 0o777, 1_700_000_000_000_000_000, target]


def _set_row(doc: Doc, match: Callable[[list[Any]], bool], fn: Callable[[list[Any]], None]):
    for r in rows(doc):
        if match(r):
            fn(r)
            return
    raise LookupError


def _packed(r: list[Any]) -> bool:
    return r[1] == "f" and len(r[6]) == 1 and r[4] > 0 and r[6][0][2] <= 8 << 20


def _chunked(r: list[Any]) -> bool:
    return r[1] == "f" and len(r[6]) > 1


def cases(outside: str) -> dict[str, Mutation]:
    """name -> mutation. ``outside`` is an absolute directory next to the cache root that a
    hostile snapshot tries to reach."""
    deep = "/".join(["d"] * 300)
    return {
        # --- paths ---------------------------------------------------------------------
        "dotdot": lambda d: add(d, file_row(d, "../escape")),
        "dotdot_nested": lambda d: add(d, file_row(d, "pkg0/../../escape")),
        # With its parent entry, only check_path's '..' rule refuses it (check_tree passes).
        "dotdot_with_parent_entry": lambda d: add(d, dir_row(".."), file_row(d, "../escape")),
        "dotdot_dir_chain": lambda d: add(d, dir_row(".."), dir_row("../.."),
                                          file_row(d, "../../escape")),
        "absolute": lambda d: add(d, file_row(d, f"{outside}/evil")),
        "dot_component": lambda d: add(d, file_row(d, "./evil")),
        "double_slash": lambda d: add(d, file_row(d, "pkg0//evil")),
        "trailing_slash": lambda d: add(d, dir_row("pkg0/evil/")),
        "backslash": lambda d: add(d, file_row(d, "..\\escape")),
        "nul_byte": lambda d: add(d, file_row(d, "pkg0/ev\x00il")),
        "empty_path": lambda d: add(d, file_row(d, "")),
        "long_path": lambda d: add(d, file_row(d, "p" * 5000)),
        "deep_path": lambda d: add(d, *[dir_row("/".join(["d"] * i)) for i in range(1, 300)],
                                   file_row(d, deep)),
        "name_too_long": lambda d: add(d, file_row(d, "n" * 300)),
        # --- symlinks ------------------------------------------------------------------
        "link_absolute": lambda d: add(d, link_row("evil", outside)),
        "link_dotdot": lambda d: add(d, link_row("evil", "../../outside")),
        "link_nested_dotdot": lambda d: add(d, link_row("pkg0/evil", "../../x")),
        "link_chain_escape": lambda d: add(
            d, dir_row("c1"), dir_row("c1/c2"), link_row("c1/c2/up", "../.."),
            link_row("t", "c1/c2/up/..")),
        "link_into_link_escape": lambda d: add(
            d, link_row("root", "."), link_row("u", "root/../../../outside")),
        "file_under_link": lambda d: add(d, link_row("lnk", "pkg0"), file_row(d, "lnk/evil")),
        "dir_under_link": lambda d: add(d, link_row("lnk", "pkg0"), dir_row("lnk/evil")),
        "link_empty_target": lambda d: add(d, link_row("evil", "")),
        # --- structure -----------------------------------------------------------------
        "duplicate_path": lambda d: add(d, first(d, "f")),
        "duplicate_kinds": lambda d: add(d, dir_row(first(d, "f")[0])),
        "file_also_dir": lambda d: add(d, file_row(d, first(d, "f")[0] + "/x")),
        "missing_parent": lambda d: add(d, file_row(d, "nodir/evil")),
        # --- sizes, hashes, objects ----------------------------------------------------
        "size_lies_bigger": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(4, r[4] + 1))),
        "size_lies_huge": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: (r.__setitem__(4, 1 << 50), r[6][0].__setitem__(3, 1 << 50)))),
        "raw_lies_smaller": lambda d: edit(d, lambda x: _set_row(
            x, lambda r: _packed(r) and r[6][0][4] == 1 and r[4] > 100,
            lambda r: (r.__setitem__(4, r[4] - 1), r[6][0].__setitem__(3, r[4])))),
        "wrong_hash_packed": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(5, "0" * 64))),
        "wrong_hash_chunked": lambda d: edit(d, lambda x: _set_row(
            x, _chunked, lambda r: r.__setitem__(5, "0" * 64))),
        "chunks_swapped": lambda d: edit(d, lambda x: _set_row(
            x, _chunked, lambda r: r.__setitem__(6, r[6][::-1]))),
        # a chunk at an offset inside its object: the transfer would read the wrong bytes,
        # see a hash mismatch and retry it until the budget runs out; validation refuses it
        "chunk_offset": lambda d: edit(d, lambda x: _set_row(
            x, _chunked, lambda r: r[6][1].__setitem__(1, 4096))),
        "missing_object": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r[6][0].__setitem__(0, "ab" * 32))),
        "offset_beyond_object": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r[6][0].__setitem__(1, 1 << 40))),
        "bad_oid": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r[6][0].__setitem__(0, "../../etc/passwd"))),
        "unknown_codec": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r[6][0].__setitem__(4, 7))),
        "negative_size": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(4, -1))),
        "bool_mode": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(2, True))),
        "mode_too_big": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(2, 0o177777))),
        "mtime_string": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(3, "yesterday"))),
        "mtime_huge": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r.__setitem__(3, 10 ** 30))),
        "size_overflow": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: (r.__setitem__(4, 10 ** 30), r[6][0].__setitem__(3, 10 ** 30)))),
        "offset_overflow": lambda d: edit(d, lambda x: _set_row(
            x, _packed, lambda r: r[6][0].__setitem__(1, 10 ** 30))),
        "mtime_overflow_dir": lambda d: edit(d, lambda x: _set_row(
            x, lambda r: r[1] == "d", lambda r: r.__setitem__(3, -(10 ** 25)))),
        "unknown_kind": lambda d: add(d, ["evil", "x", 0o644, 0]),
        # --- format ----------------------------------------------------------------------
        "format_version_2": lambda d: edit(d, lambda x: x.__setitem__("format", 2)),
        "format_version_str": lambda d: edit(d, lambda x: x.__setitem__("format", "1")),
        "wrong_kind": lambda d: edit(d, lambda x: x.__setitem__("kind", "restic")),
        "entries_not_list": lambda d: edit(d, lambda x: x.__setitem__("entries", {"a": 1})),
        "entry_not_list": lambda d: edit(d, lambda x: x["entries"].append("evil")),
        "id_mismatch": lambda d: dict(copy.deepcopy(d), id="20200101T000000000000Z-deadbeef"),
        "area_mismatch": lambda d: edit(d, lambda x: x.__setitem__("area", "models")),
        "not_an_object": lambda d: zjson([1, 2, 3]),
        "malformed_json": lambda d: zstandard.ZstdCompressor().compress(b'{"format": 1, "ki'),
        "malformed_zstd": lambda d: b"\x28\xb5\x2f\xfd" + bytes(range(200)),
        "not_zstd": lambda d: json.dumps(d).encode(),
        "empty_object": lambda d: b"",
        "truncated_zstd": lambda d: zjson(d)[: len(zjson(d)) // 2],
        "deep_json": lambda d: zstandard.ZstdCompressor().compress(b"[" * 200_000 + b"]" * 200_000),
        "huge_manifest_bad_tail": lambda d: add(
            d, *[dir_row(f"h{i:06d}") for i in range(200_000)], file_row(d, "zz/../../x")),
    }


def corrupt_object(store: Store, oid: str, how: str) -> None:
    """Damage a stored object in place: flip bytes, truncate, or empty it."""
    key = object_key(oid)
    data = bytearray(store.get(key))
    if how == "flip":
        for i in range(0, len(data), max(1, len(data) // 16)):
            data[i] ^= 0x5A
    elif how == "truncate":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    store.put(key, bytes(data))


def bad_store_markers() -> dict[str, bytes]:
    return {
        "store_version_99": json.dumps({"format": "cache-sync", "version": 99}).encode(),
        "store_malformed": b"{not json",
        "store_not_object": b"[]",
    }


def roundtrip_ok(doc: Doc) -> bool:
    """True when the engine itself accepts ``doc`` (used to check the base is valid)."""
    from_dict(doc)
    encode(from_dict(doc))
    return True


__all__ = ["STORE_KEY", "bad_store_markers", "cases", "corrupt_object", "plant", "rows"]
