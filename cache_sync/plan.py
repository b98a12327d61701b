"""Diffing a local tree against a target state (pure, no I/O).

``plan_pull`` decides, from the target entries, a scan of the local area and the stat index,
what a pull must do; ``local_entries`` turns a scan into entries for a push, naming the files
whose contents must be read because the index cannot vouch for them.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from cache_sync.errors import FormatError
from cache_sync.layout import is_oid
from cache_sync.snapshot import Entry, check_link, check_link_walk

_INDEX = struct.Struct("<QqQq32s")  # size, mtime_ns, ino, ctime_ns, sha256
_STAT = struct.Struct("<HqQQq")  # mode, mtime_ns, size, ino, ctime_ns


class IndexRecord:
    """The stat index's record of one file: its stat when its contents hashed to ``digest``.
    Stored as a JSON array ``[size, mtime_ns, ino, ctime_ns, digest]``; held packed in one
    ``bytes`` (an index has a record per file: ~140 bytes each, not ~340)."""

    __slots__ = ("_r",)
    _r: bytes | tuple[int, int, int, int, str]

    def __init__(self, size: int, mtime_ns: int, ino: int, ctime_ns: int, digest: str
                 ) -> None:
        try:
            if not is_oid(digest):
                raise ValueError(digest)
            self._r = _INDEX.pack(size, mtime_ns, ino, ctime_ns, bytes.fromhex(digest))
        except (struct.error, ValueError, TypeError):
            self._r = (size, mtime_ns, ino, ctime_ns, digest)

    def _fields(self) -> tuple[int, int, int, int, str]:
        r = self._r
        if isinstance(r, bytes):
            size, mtime, ino, ctime, digest = _INDEX.unpack(r)
            return size, mtime, ino, ctime, digest.hex()
        return r

    @property
    def size(self) -> int:
        return self._fields()[0]

    @property
    def mtime_ns(self) -> int:
        return self._fields()[1]

    @property
    def ino(self) -> int:
        return self._fields()[2]

    @property
    def ctime_ns(self) -> int:
        return self._fields()[3]

    @property
    def digest(self) -> str:
        return self._fields()[4]

    def stat_key(self) -> tuple[int, int, int, int]:
        size, mtime, ino, ctime, _ = self._fields()
        return size, mtime, ino, ctime

    def __iter__(self) -> Iterator[int | str]:
        return iter(self._fields())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexRecord):
            return self._fields() == other._fields()
        if isinstance(other, tuple):
            return self._fields() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "IndexRecord(%r, %r, %r, %r, %r)" % self._fields()


Index = dict[str, IndexRecord]  # path -> record


class LocalItem:
    """One directory, regular file or symlink found by a scan of a local area; its stat
    numbers packed in one ``bytes`` (a scan holds one per path)."""

    __slots__ = ("path", "kind", "target", "_st")

    def __init__(self, path: str, kind: str, mode: int, mtime_ns: int, size: int, ino: int,
                 ctime_ns: int, target: str = "") -> None:
        self.path = path
        self.kind = kind  # f d l
        self.target = target
        self._st = _STAT.pack(mode, mtime_ns, size, ino, ctime_ns)

    @property
    def mode(self) -> int:
        return int(_STAT.unpack_from(self._st)[0])

    @property
    def mtime_ns(self) -> int:
        return int(_STAT.unpack_from(self._st)[1])

    @property
    def size(self) -> int:
        return int(_STAT.unpack_from(self._st)[2])

    @property
    def ino(self) -> int:
        return int(_STAT.unpack_from(self._st)[3])

    @property
    def ctime_ns(self) -> int:
        return int(_STAT.unpack_from(self._st)[4])

    def __repr__(self) -> str:
        mode, mtime, size, ino, ctime = _STAT.unpack(self._st)
        return (f"LocalItem({self.path!r}, {self.kind!r}, {mode:o}, {mtime}, {size}, {ino}, "
                f"{ctime}, {self.target!r})")

    def vouched(self, rec: IndexRecord | None) -> bool:
        """Whether the index record still describes this file. Like git: size, mtime, inode
        and ctime. mtime alone misses an in-place edit whose writer restores the mtime (tar,
        rsync -t, cp -p, a test fixture); ctime cannot be set from user space. A pull
        therefore records each file's stat after its last rename."""
        if rec is None:
            return False
        _mode, mtime, size, ino, ctime = _STAT.unpack(self._st)
        return rec.stat_key() == (size, mtime, ino, ctime)


def index_record(st: os.stat_result, digest: str, size: int | None = None) -> IndexRecord:
    """The stat index's record of a file whose contents (``size`` bytes, as read) hash to
    ``digest``; ``st`` must be taken after the file's last rename (a rename changes ctime)."""
    return IndexRecord(st.st_size if size is None else size, st.st_mtime_ns, st.st_ino,
                       st.st_ctime_ns, digest)


def known_digest(item: LocalItem | None, index: Index) -> str | None:
    """The file's SHA-256 if the index vouches for it (its stat is unchanged)."""
    if item is None or item.kind != "f":
        return None
    rec = index.get(item.path)
    return rec.digest if rec is not None and item.vouched(rec) else None


@dataclass
class PullSummary:
    """What a pull would do (``pull --dry-run``, ``status``)."""

    fetch_files: int = 0
    fetch_bytes: int = 0
    copy_files: int = 0
    remove: int = 0
    changes: int = 0


@dataclass
class PullPlan:
    remove: list[str] = field(default_factory=list)  # in the way of a new entry: go first
    remove_late: list[str] = field(default_factory=list)  # deleted remotely: go last
    mkdirs: list[Entry] = field(default_factory=list)
    fetch: list[Entry] = field(default_factory=list)  # one per distinct digest
    copies: list[tuple[Entry, str]] = field(default_factory=list)  # (entry, source rel path)
    dups: dict[str, list[Entry]] = field(default_factory=dict)  # more paths of a fetched digest
    check: list[Entry] = field(default_factory=list)  # local file of the right size, unknown hash
    meta: list[Entry] = field(default_factory=list)  # right content, mode/mtime to fix
    links: list[Entry] = field(default_factory=list)
    dirs: list[Entry] = field(default_factory=list)  # every target dir, for mode/mtime at the end
    keep: Index = field(default_factory=dict)  # index records still valid

    @property
    def fetch_bytes(self) -> int:
        return sum(e.size for e in self.fetch)

    @property
    def write_bytes(self) -> int:
        return (self.fetch_bytes + sum(e.size for e, _ in self.copies)
                + sum(e.size for e in self.check)
                + sum(e.size for es in self.dups.values() for e in es))

    @property
    def changes(self) -> int:
        return (len(self.remove) + len(self.remove_late) + len(self.mkdirs) + len(self.fetch)
                + len(self.copies)
                + len(self.check) + len(self.meta) + len(self.links)
                + sum(len(es) for es in self.dups.values()))

    def summary(self) -> PullSummary:
        return PullSummary(
            fetch_files=len(self.fetch) + len(self.check),
            fetch_bytes=self.fetch_bytes + sum(e.size for e in self.check),
            copy_files=len(self.copies) + sum(len(es) for es in self.dups.values()),
            remove=len(self.remove) + len(self.remove_late),
            changes=self.changes,
        )


def plan_pull(target: dict[str, Entry], local: dict[str, LocalItem], index: Index,
              base: dict[str, Entry]) -> PullPlan:
    plan = PullPlan()
    removing: set[str] = set()
    for path, item in local.items():
        t = target.get(path)
        if t is None:
            if path in base:  # deleted remotely since our last sync; untracked files stay
                removing.add(path)
        elif t.kind != item.kind:
            removing.add(path)
    # Removing a directory removes what is below it: list only the top-most paths.
    top = sorted((p for p in removing if not any(a in removing for a in _ancestors(p))),
                 key=lambda p: -p.count("/"))
    # Paths the target no longer has are removed only after every new file is in place, so a
    # pull that fails (corrupt object, disk full) deletes nothing. A path absent from the
    # target has no target entry below it, so it is never in the way of one.
    plan.remove = [p for p in top if p in target]
    plan.remove_late = [p for p in top if p not in target]
    # Local files the index vouches for and this pull leaves untouched: content we can copy
    # instead of download (a file that is removed or rewritten by the pull is no source).
    have: dict[str, str] = {}
    for path, item in local.items():
        d = known_digest(item, index)
        if d is None or path in removing or any(a in removing for a in _ancestors(path)):
            continue
        plan.keep[path] = index[path]
        t = target.get(path)
        if t is not None and t.kind == "f" and t.digest == d:
            have.setdefault(d, path)

    fetching: dict[str, Entry] = {}
    for path in sorted(target):
        t = target[path]
        cur: LocalItem | None = local.get(path)
        gone = path in removing or any(a in removing for a in _ancestors(path))
        if gone:
            cur = None
        if t.kind == "d":
            plan.dirs.append(t)
            if cur is None:
                plan.mkdirs.append(t)
        elif t.kind == "l":
            if cur is None or cur.target != t.target or cur.mtime_ns != t.mtime_ns:
                plan.links.append(t)
        else:
            digest = known_digest(cur, index)
            if digest == t.digest:
                if cur is not None and (cur.mode != t.mode or cur.mtime_ns != t.mtime_ns):
                    plan.meta.append(t)
                continue
            plan.keep.pop(path, None)
            if t.size == 0:
                plan.copies.append((t, ""))  # nothing to download: an empty file
            elif t.digest in fetching:
                plan.dups.setdefault(t.digest, []).append(t)
            elif t.digest in have and have[t.digest] != path:
                plan.copies.append((t, have[t.digest]))
            elif cur is not None and cur.kind == "f" and cur.size == t.size and digest is None:
                plan.check.append(t)  # probably ours already: hash it before downloading
            else:
                fetching[t.digest] = t
                plan.fetch.append(t)
    return plan


def _ancestors(path: str) -> list[str]:
    out = []
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        out.append(path)
    return out


@dataclass
class LocalTree:
    entries: dict[str, Entry]  # files still to hash have digest ""
    to_hash: list[LocalItem]
    skipped: list[str]  # symlinks that leave the area

    def unchanged(self, base: dict[str, Entry] | None) -> bool:
        """True when a push would send nothing: no file to read, and the tree equals the
        state last synced (or, never synced, there is nothing local at all)."""
        if self.to_hash:
            return False
        if base is None:
            return not self.entries and not self.skipped
        return same_tree(self.entries, base)


def local_entries(local: dict[str, LocalItem], index: Index,
                  share: Mapping[str, Entry] | None = None) -> LocalTree:
    """The scan as entries (files the index cannot vouch for get digest "" and are listed
    to hash). An entry equal as a tree node to one of ``share`` (the state's entries) is
    that entry, blobs and all: an unchanged tree costs no second copy."""
    share = share or {}
    entries: dict[str, Entry] = {}
    to_hash: list[LocalItem] = []
    skipped: list[str] = []
    for path in sorted(local):
        item = local[path]
        parent = posixpath.dirname(path)
        if parent and parent not in entries:
            continue  # under a skipped entry
        if item.kind == "d":
            entries[path] = Entry(path, "d", item.mode, item.mtime_ns)
        elif item.kind == "l":
            try:
                check_link(path, item.target, "local tree")
            except FormatError:
                skipped.append(f"{path} -> {item.target}")
                continue
            entries[path] = Entry(path, "l", item.mode, item.mtime_ns, target=item.target)
        else:
            digest = known_digest(item, index)
            if digest is None:
                to_hash.append(item)
                digest = ""
            entries[path] = Entry(path, "f", item.mode, item.mtime_ns, item.size, digest)
        same = share.get(path)
        if same is not None and same.same_content(entries[path]):
            entries[path] = same
    # A link that climbs '..' out of another link passes check_link but would be refused on
    # pull (snapshot.check_link_walk): never push what no one can pull.
    for path, e in list(entries.items()):
        if e.kind == "l":
            try:
                check_link_walk(path, e.target, entries, "local tree")
            except FormatError:
                skipped.append(f"{path} -> {e.target}")
                del entries[path]
    return LocalTree(entries, to_hash, skipped)


def same_tree(a: dict[str, Entry], b: dict[str, Entry]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[p].same_content(b[p]) for p in a)


def local_head(state: dict[str, Entry], tree: dict[str, Entry]) -> tuple[dict[str, Entry], int]:
    """The local tree as a merge head based on ``state`` (docs/design.md 5.2), and how many
    paths it changed. An entry that differs from the state only in its mtime keeps the
    state's entry: a touched file or a directory whose listing changed is no change worth
    winning a merge over (and coarse network-volume timestamps would make every file one)."""
    head: dict[str, Entry] = {}
    changed = 0
    for path, e in tree.items():
        s = state.get(path)
        if s is not None and (s.kind, s.mode, s.size, s.digest, s.target) == (
                e.kind, e.mode, e.size, e.digest, e.target):
            head[path] = s
        else:
            head[path] = e
            changed += 1
    changed += sum(1 for p in state if p not in tree)
    return head, changed
