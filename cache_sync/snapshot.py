"""Snapshots: the manifest of one area at one push (pure, no I/O).

A manifest is zstd-compressed JSON:
``{"format": 1, "kind": "cache-sync-snapshot", "id", "area", "parents", "time", "host",
"tool", "summary": {"files", "bytes"}, "entries": [...]}`` with entries as compact arrays,
sorted by path:

- directory: ``[path, "d", mode, mtime_ns]``
- symlink:   ``[path, "l", mode, mtime_ns, target]``
- file:      ``[path, "f", mode, mtime_ns, size, sha256, [[oid, offset, stored, raw, codec], ...]]``

``decode`` is the trust boundary: anything read from a store passes ``validate`` before a
single byte is written locally (unsafe paths, escaping symlinks, duplicates, a file that is
also a directory, sizes that do not add up, unknown format versions are all refused).
"""

from __future__ import annotations

import posixpath
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import zstandard

from cache_sync import jsonstream
from cache_sync.errors import FormatError
from cache_sync.layout import FORMAT_VERSION, is_oid, is_snapshot_id

KIND = "cache-sync-snapshot"
CODEC_RAW = 0
CODEC_ZSTD = 1
# Decompressed manifest cap: ~150 bytes an entry, so ~800,000 files. A bigger one (or a
# zstd bomb) is refused after reading at most this much, never held whole.
MAX_MANIFEST_BYTES = 128 << 20
MAX_PATH = 4096
SPECIAL_BITS = 0o6000  # setuid, setgid
MAX_DEPTH = 256


class Blob(NamedTuple):
    """Where a piece of a file's bytes lives: ``stored`` bytes at ``offset`` of object ``oid``,
    ``raw`` bytes once decoded with ``codec``."""

    oid: str
    offset: int
    stored: int
    raw: int
    codec: int


_HEAD = struct.Struct("<HqQ")  # mode, mtime_ns, size
_DIGEST = slice(_HEAD.size, _HEAD.size + 32)
_BLOB = struct.Struct("<32sQQQB")  # oid, offset, stored, raw, codec
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Entry:
    """One node of a tree: a directory (``d``), a regular file (``f``) or a symlink (``l``).

    Compact, because a tree holds one per path (200,000 and more): besides the path, the
    numbers, the SHA-256 and the blobs are packed in one ``bytes`` record (the digest and
    the oids as 32 raw bytes, not 64 hex characters), about 300 bytes an entry where a
    dataclass of strings, ints and ``Blob`` tuples took 700 (docs/design.md, "Memory").
    The fields read as before (``e.digest`` is hex, ``e.blobs`` a tuple of ``Blob``), built
    on access. Values that do not pack (a test's fake digest) are kept as a plain tuple."""

    __slots__ = ("path", "kind", "_rec", "target")

    path: str
    kind: str  # "f" file, "d" directory, "l" symlink
    target: str
    _rec: bytes | tuple[int, int, int, str, tuple[Blob, ...]]

    def __init__(self, path: str, kind: str, mode: int, mtime_ns: int, size: int = 0,
                 digest: str = "", target: str = "", blobs: tuple[Blob, ...] = ()) -> None:
        self.path = path
        self.kind = kind
        self.target = target
        rec: bytes | tuple[int, int, int, str, tuple[Blob, ...]]
        try:
            if digest and not _HEX64.fullmatch(digest):
                raise ValueError(digest)
            rec = _HEAD.pack(mode, mtime_ns, size)
            if digest:
                rec += bytes.fromhex(digest) + b"".join(
                    _BLOB.pack(bytes.fromhex(b.oid), b.offset, b.stored, b.raw, b.codec)
                    for b in blobs)
            elif blobs:
                raise ValueError("blobs without a digest")
        except (struct.error, ValueError, TypeError, AttributeError):
            rec = (mode, mtime_ns, size, digest, tuple(blobs))
        self._rec = rec

    @property
    def mode(self) -> int:
        rec = self._rec
        return _HEAD.unpack_from(rec)[0] if isinstance(rec, bytes) else rec[0]

    @property
    def mtime_ns(self) -> int:
        rec = self._rec
        return _HEAD.unpack_from(rec)[1] if isinstance(rec, bytes) else rec[1]

    @property
    def size(self) -> int:
        rec = self._rec
        return _HEAD.unpack_from(rec)[2] if isinstance(rec, bytes) else rec[2]

    @property
    def digest(self) -> str:
        rec = self._rec
        if isinstance(rec, bytes):
            return rec[_DIGEST].hex() if len(rec) > _HEAD.size else ""
        return rec[3]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        rec = self._rec
        if not isinstance(rec, bytes):
            return rec[4]
        return tuple(Blob(oid.hex(), off, stored, raw, codec) for oid, off, stored, raw, codec
                     in _BLOB.iter_unpack(rec[_DIGEST.stop:]))

    def _fields(self) -> tuple[str, str, int, int, int, str, str, tuple[Blob, ...]]:
        return (self.path, self.kind, self.mode, self.mtime_ns, self.size, self.digest,
                self.target, self.blobs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        if isinstance(self._rec, bytes) and isinstance(other._rec, bytes):
            return (self.path == other.path and self.kind == other.kind
                    and self._rec == other._rec and self.target == other.target)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.path, self.kind, self.mtime_ns, self.size))

    def __repr__(self) -> str:
        names = ("path", "kind", "mode", "mtime_ns", "size", "digest", "target", "blobs")
        return "Entry(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, self._fields())) + ")"

    def __reduce__(self) -> tuple[type[Entry], tuple[object, ...]]:
        return Entry, self._fields()

    def same_content(self, other: Entry | None) -> bool:
        """Equal as a tree node (where the bytes live does not matter)."""
        if other is None or self.kind != other.kind or self.target != other.target:
            return False
        a, b = self._rec, other._rec
        if isinstance(a, bytes) and isinstance(b, bytes):
            return a[:_DIGEST.stop] == b[:_DIGEST.stop]
        return self._fields()[2:7] == other._fields()[2:7]

    def with_blobs(self, blobs: tuple[Blob, ...]) -> Entry:
        return Entry(self.path, self.kind, self.mode, self.mtime_ns, self.size, self.digest,
                     self.target, tuple(blobs))

    def to_row(self) -> list[Any]:
        if self.kind == "d":
            return [self.path, "d", self.mode, self.mtime_ns]
        if self.kind == "l":
            return [self.path, "l", self.mode, self.mtime_ns, self.target]
        return [
            self.path, "f", self.mode, self.mtime_ns, self.size, self.digest,
            [list(b) for b in self.blobs],
        ]


def _digest_key(digest: str) -> bytes | str:
    return bytes.fromhex(digest) if _HEX64.fullmatch(digest) else digest


class BlobMap:
    """digest -> the stored blobs that hold those bytes (what a push can reference instead of
    uploading), compact: the digest as 32 bytes, the blobs packed, or the entry they come
    from shared. Reads like a ``dict[str, tuple[Blob, ...]]``."""

    __slots__ = ("_m",)

    def __init__(self, items: Iterable[tuple[str, Iterable[Blob]]] = ()) -> None:
        self._m: dict[bytes | str, bytes | Entry | tuple[Blob, ...]] = {}
        for digest, blobs in items:
            self[digest] = blobs

    def add_entry(self, e: Entry) -> None:
        """The blobs of file entry ``e`` (shared with it, not copied)."""
        rec = e._rec
        self._m[rec[_DIGEST] if isinstance(rec, bytes) else _digest_key(rec[3])] = e

    def __setitem__(self, digest: str, blobs: Iterable[Blob]) -> None:
        blobs = tuple(blobs)
        try:
            value: bytes | tuple[Blob, ...] = b"".join(
                _BLOB.pack(bytes.fromhex(b.oid), b.offset, b.stored, b.raw, b.codec)
                for b in blobs)
        except (struct.error, ValueError):
            value = blobs
        self._m[_digest_key(digest)] = value

    @staticmethod
    def _blobs(v: bytes | Entry | tuple[Blob, ...]) -> tuple[Blob, ...]:
        if isinstance(v, Entry):
            return v.blobs
        if isinstance(v, bytes):
            return tuple(Blob(oid.hex(), off, stored, raw, codec)
                         for oid, off, stored, raw, codec in _BLOB.iter_unpack(v))
        return v

    def __getitem__(self, digest: str) -> tuple[Blob, ...]:
        return self._blobs(self._m[_digest_key(digest)])

    def get(self, digest: str, default: tuple[Blob, ...] = ()) -> tuple[Blob, ...]:
        v = self._m.get(_digest_key(digest))
        return default if v is None else self._blobs(v)

    def pop(self, digest: str, default: tuple[Blob, ...] | None = None
            ) -> tuple[Blob, ...] | None:
        v = self._m.pop(_digest_key(digest), None)
        return default if v is None else self._blobs(v)

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and _digest_key(digest) in self._m

    def __len__(self) -> int:
        return len(self._m)

    def items(self) -> Iterator[tuple[str, tuple[Blob, ...]]]:
        for k, v in self._m.items():
            yield (k.hex() if isinstance(k, bytes) else k), self._blobs(v)

    def update(self, other: BlobMap) -> None:
        self._m.update(other._m)


@dataclass
class Snapshot:
    id: str
    area: str
    parents: tuple[str, ...]
    entries: dict[str, Entry]
    time: str = ""
    host: str = ""
    tool: str = ""

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries.values() if e.kind == "f")

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries.values() if e.kind == "f")

    def head(self) -> dict[str, Any]:
        """Every member of the manifest but its entries."""
        return {
            "format": FORMAT_VERSION,
            "kind": KIND,
            "id": self.id,
            "area": self.area,
            "parents": list(self.parents),
            "time": self.time,
            "host": self.host,
            "tool": self.tool,
            "summary": {"files": self.files, "bytes": self.bytes},
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.head(), "entries": encode_entries(self.entries.values())}


# --- encoding ----------------------------------------------------------------------------
def encode(snap: Snapshot) -> bytes:
    """The manifest's bytes: the same compact JSON text as ``json.dumps(snap.to_dict())``,
    produced and compressed row by row (never the whole text or a list of every row)."""
    return jsonstream.compress(jsonstream.object_text(
        snap.head(), "entries", (snap.entries[p].to_row() for p in sorted(snap.entries))))


def encode_entries(entries: Iterable[Entry]) -> list[list[Any]]:
    return [e.to_row() for e in sorted(entries, key=lambda e: e.path)]


def decode(data: bytes, *, what: str = "snapshot",
           reuse: Mapping[str, Entry] | None = None) -> Snapshot:
    """Parse and validate a manifest. Raises FormatError naming ``what`` on anything wrong.
    Rows are parsed and validated one at a time as the text is decompressed (design
    "Memory"). An entry equal to one in ``reuse`` (the state the cache already holds) is
    that object, so unchanged paths cost no second copy."""
    too_big = FormatError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes; refusing to parse")
    doc: dict[str, Any] = {}
    rows = _Rows(what, reuse, doc)
    try:
        if zstandard.frame_content_size(data) > MAX_MANIFEST_BYTES:
            raise too_big
        jsonstream.read_object(jsonstream.decompressed(data), limit=MAX_MANIFEST_BYTES,
                               arrays={"entries": rows.add}, into=doc)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what} is not valid zstd data ({exc})") from None
    except jsonstream.TooBig:
        raise too_big from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON ({str(exc)[:80]})") from None
    return _snapshot(doc, rows, what)


def from_dict(doc: Any, *, what: str = "snapshot") -> Snapshot:
    """A snapshot from a manifest already parsed as a whole (tests, the spec's examples)."""
    if not isinstance(doc, dict):
        raise FormatError(f"{what} is not a cache-sync snapshot")
    head = {k: v for k, v in doc.items() if k != "entries"}
    rows = _Rows(what, None, head)
    listed = doc.get("entries")
    if isinstance(listed, list):
        for row in listed:
            rows.add(row)
        head["entries"] = jsonstream.STREAMED
    elif "entries" in doc:
        head["entries"] = listed
    return _snapshot(head, rows, what)


def _check_head(doc: dict[str, Any], what: str) -> None:
    if doc.get("kind") != KIND:
        raise FormatError(f"{what} is not a cache-sync snapshot")
    version = doc.get("format")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{what} has format version {version!r}; this cache-sync reads version "
            f"{FORMAT_VERSION}",
            hint="upgrade cache-sync" if isinstance(version, int) and version > 1 else None,
        )


def _snapshot(doc: dict[str, Any], rows: _Rows, what: str) -> Snapshot:
    _check_head(doc, what)
    snap_id, area, parents = doc.get("id"), doc.get("area"), doc.get("parents", [])
    if not isinstance(snap_id, str) or not is_snapshot_id(snap_id):
        raise FormatError(f"{what} has an invalid id {str(snap_id)[:40]!r}")
    if not isinstance(area, str) or not area or "/" in area:
        raise FormatError(f"{what} has an invalid area name")
    if not isinstance(parents, list) or not all(
        isinstance(p, str) and is_snapshot_id(p) for p in parents
    ):
        raise FormatError(f"{what} has invalid parents")
    if doc.get("entries") is not jsonstream.STREAMED:
        raise FormatError(f"{what} has no entry list")
    check_tree(rows.entries, what)
    meta = {k: str(doc.get(k, ""))[:200] for k in ("time", "host", "tool")}
    return Snapshot(
        id=snap_id,
        area=area,
        parents=tuple(parents),
        entries=rows.entries,
        time=meta["time"], host=meta["host"], tool=meta["tool"],
    )


class _Rows:
    """Entries built from manifest rows as they are parsed: each row is validated, then
    kept as an ``Entry`` (or as the equal entry of ``reuse``). The manifest's head, parsed
    before its entries by our own writer, is checked at the first row, so a manifest of
    another format version is refused as such before its rows are looked at."""

    def __init__(self, what: str, reuse: Mapping[str, Entry] | None,
                 head: dict[str, Any]) -> None:
        self.what = what
        self.reuse = reuse or {}
        self.head = head
        self.entries: dict[str, Entry] = {}

    def add(self, row: Any) -> None:
        if not self.entries and "kind" in self.head:
            _check_head(self.head, self.what)
        entry = _parse_row(row, self.what)
        path = entry.path
        if path in self.entries:
            raise FormatError(f"{self.what}: duplicate path {path!r}")
        old = self.reuse.get(path)
        if old is not None and old == entry:
            self.entries[old.path] = old
        else:
            self.entries[path] = entry


MAX_INT = (1 << 62) - 1  # sizes, offsets, mtimes: beyond this os.utime/seek overflow
# A file with more than one blob, or one blob stored in more than this, is *chunked*: each blob
# is a whole object (offset 0) fetched on its own (design 3.2); smaller single blobs are
# ranges of packs.
SMALL_BLOB = 8 << 20


def is_chunked(blobs: tuple[Blob, ...]) -> bool:
    return len(blobs) > 1 or (len(blobs) == 1 and blobs[0].stored > SMALL_BLOB)


def _int(v: Any) -> bool:
    """A JSON integer the OS calls can take (a hostile 10**30 would raise OverflowError)."""
    return type(v) is int and -MAX_INT <= v <= MAX_INT  # not a bool (a subclass of int)


def _count(v: Any) -> bool:
    """``_int`` and not negative: a size, an offset."""
    return type(v) is int and 0 <= v <= MAX_INT


def _malformed(row: Any, what: str) -> FormatError:
    return FormatError(f"{what}: malformed entry {str(row)[:120]!r}")


_CODECS = (CODEC_RAW, CODEC_ZSTD)


def _parse_row(row: Any, what: str) -> Entry:
    # One call per path of a tree (60,000 for a CUDA torch stack) on a cold start's path
    # before CMD runs: the checks are inline, and the error is built only when one fails.
    if type(row) is not list or len(row) < 4:
        raise _malformed(row, what)
    path, kind, mode, mtime = row[0], row[1], row[2], row[3]
    if (type(path) is not str or type(mode) is not int or not 0 <= mode <= 0o7777
            or not _int(mtime)):
        raise _malformed(row, what)
    # setuid/setgid bits are never planted (cache-sync often runs as root in a container);
    # dropping them here keeps the local tree equal to the state, so no push churns on it.
    mode &= ~SPECIAL_BITS
    check_path(path, what)
    n = len(row)
    if kind == "f" and n == 7:
        size, digest, blob_rows = row[4], row[5], row[6]
        if (not _count(size) or type(digest) is not str or not is_oid(digest)
                or type(blob_rows) is not list):
            raise _malformed(row, what)
        blobs = []
        total = 0
        for b in blob_rows:
            if (
                type(b) is not list
                or len(b) != 5
                or type(b[0]) is not str
                or not is_oid(b[0])
                or not (_count(b[1]) and _count(b[2]) and _count(b[3]))
                or b[4] not in _CODECS or type(b[4]) is not int
                or (b[4] == CODEC_RAW and b[2] != b[3])
            ):
                raise _malformed(row, what)
            blobs.append(Blob(*b))
            total += b[3]
        if total != size:
            raise FormatError(f"{what}: {path!r} says {size} bytes but its blobs hold {total}")
        chunks = tuple(blobs)
        if is_chunked(chunks) and any(b.offset for b in chunks):
            # A lie no retry can fix: refused here, before a byte is fetched (not a corrupt
            # object the transfer would fetch again until its budget runs out).
            raise FormatError(f"{what}: {path!r} is chunked but a chunk has an offset: each "
                              "chunk must be a whole object (offset 0)")
        return Entry(path, "f", mode, mtime, size, digest, blobs=chunks)
    if kind == "d" and n == 4:
        return Entry(path, "d", mode, mtime)
    if kind == "l" and n == 5 and type(row[4]) is str:
        check_link(path, row[4], what)
        return Entry(path, "l", mode, mtime, target=row[4])
    raise _malformed(row, what)


def check_path(path: str, what: str = "snapshot") -> None:
    """A relative, normalised POSIX path inside the area, or FormatError."""
    # (Normalised: no part empty, "." or "..", which for a relative path is exactly
    # ``path == posixpath.normpath(path)``, without building the normalised copy.)
    parts = path.split("/")
    if (
        not path
        or len(path) > MAX_PATH
        or "\x00" in path
        or path[0] == "/"
        or "\\" in path
        or "" in parts or "." in parts or ".." in parts
        or len(parts) > MAX_DEPTH
    ):
        raise FormatError(f"{what}: unsafe path {path[:200]!r} (absolute, '..' or not normalised)")


def check_link(path: str, target: str, what: str = "snapshot") -> None:
    """A symlink must be relative and resolve, lexically, to a place inside the area."""
    if not target or "\x00" in target or len(target) > MAX_PATH or target.startswith("/"):
        raise FormatError(f"{what}: symlink {path!r} -> {target[:200]!r} is absolute or empty")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise FormatError(f"{what}: symlink {path!r} -> {target!r} leads out of the area")


def validate_rows(rows: Iterable[Any], what: str = "snapshot") -> dict[str, Entry]:
    built = _Rows(what, None, {})
    for row in rows:
        built.add(row)
    check_tree(built.entries, what)
    return built.entries


def check_tree(entries: dict[str, Entry], what: str = "snapshot") -> None:
    """Every entry's parent is a directory entry (so no file is also a directory, and no path
    runs through a symlink), and no symlink escapes through another symlink."""
    for path, e in entries.items():
        if e.kind == "l":
            check_link_walk(path, e.target, entries, what)
        parent = posixpath.dirname(path)
        if not parent:
            continue
        p = entries.get(parent)
        if p is None:
            raise FormatError(f"{what}: {path!r} has no parent directory entry")
        if p.kind != "d":
            kind = "symlink" if p.kind == "l" else "file"
            raise FormatError(f"{what}: {path!r} lies under {parent!r}, which is a {kind}")


def check_link_walk(path: str, target: str, entries: dict[str, Entry],
                    what: str = "snapshot") -> None:
    """``check_link`` is lexical: ``t -> d/up/..`` looks like ``d`` but, with ``d/up -> ../..``,
    the kernel resolves ``up`` first and ``..`` then climbs out of the area. Walk the target
    through the snapshot's own entries and refuse a ``..`` once a symlink has been passed."""
    cur = posixpath.dirname(path).split("/") if posixpath.dirname(path) else []
    through: str | None = None
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if through is not None:
                raise FormatError(
                    f"{what}: symlink {path!r} -> {target!r} climbs '..' out of symlink "
                    f"{through!r}, which can lead out of the area")
            if not cur:
                raise FormatError(f"{what}: symlink {path!r} -> {target!r} leads out of the area")
            cur.pop()
            continue
        cur.append(part)
        node = entries.get("/".join(cur))
        if node is not None and node.kind == "l" and through is None:
            through = "/".join(cur)


# --- merging heads -----------------------------------------------------------------------
Merge = Callable[[dict[str, Entry], dict[str, Entry], dict[str, Entry]], dict[str, Entry]]


def merge3(base: dict[str, Entry], ours: dict[str, Entry], theirs: dict[str, Entry]
           ) -> dict[str, Entry]:
    """Three-way merge of trees, file by file; ``theirs`` is the later writer and wins a
    conflict. (Areas with units merge through ``units.merger``.)"""
    return normalize_tree(merge3_paths(base, ours, theirs))


def merge3_paths(base: dict[str, Entry], ours: dict[str, Entry], theirs: dict[str, Entry]
                 ) -> dict[str, Entry]:
    """The path-by-path three-way merge, before the tree is repaired."""
    out: dict[str, Entry] = {}
    for path in base.keys() | ours.keys() | theirs.keys():
        b, o, t = base.get(path), ours.get(path), theirs.get(path)
        if same_entry(o, t):
            pick = t
        elif same_entry(o, b):
            pick = t  # only theirs changed it (or deleted it)
        elif same_entry(t, b):
            pick = o  # only ours changed it
        else:
            pick = t  # both changed it: last writer wins
        if pick is not None:
            out[path] = pick
    return out


def same_entry(a: Entry | None, b: Entry | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.same_content(b)


def normalize_tree(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Repair a merged tree: drop entries under a non-directory, add missing parents."""
    out: dict[str, Entry] = {}
    for path in sorted(entries, key=lambda p: (p.count("/"), p)):
        parent = posixpath.dirname(path)
        if parent:
            p = out.get(parent)
            if p is None:
                if _non_dirs(out, parent):
                    continue  # it lies under a file or symlink that won the merge
                _add_parents(out, parent, entries[path].mtime_ns)
            elif p.kind != "d":
                continue
        out[path] = entries[path]
    return out


def _non_dirs(out: dict[str, Entry], path: str) -> list[str]:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return [q for q in prefixes if q in out and out[q].kind != "d"]


def _add_parents(out: dict[str, Entry], path: str, mtime_ns: int) -> None:
    parts = path.split("/")
    for i in range(len(parts)):
        q = "/".join(parts[: i + 1])
        if q not in out:
            out[q] = Entry(q, "d", 0o755, mtime_ns)
