"""The on-disk cache: scanning an area, the stat index, per-area state, the journal and
the lock. Layout under the cache root::

    <area>/...                          the synced trees
    .cache-sync/lock                    flock'd by the running cache-sync process
    .cache-sync/<area>.state.zst        what the area was last synced to (ids + entries)
    .cache-sync/<area>.index.zst        path -> (size, mtime_ns, ino, ctime_ns, sha256)
    .cache-sync/<area>.journal          objects uploaded by an unfinished push (resume)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from cache_sync import jsonstream
from cache_sync.errors import LockedError
from cache_sync.fsutil import TMP_PREFIX, write_atomic
from cache_sync.plan import Index, IndexRecord, LocalItem
from cache_sync.snapshot import Blob, Entry

log = logging.getLogger(__name__)


def item_from_stat(rel: str, st: os.stat_result, target: str = "") -> LocalItem:
    if stat.S_ISDIR(st.st_mode):
        kind = "d"
    elif stat.S_ISLNK(st.st_mode):
        kind = "l"
    else:
        kind = "f"
    return LocalItem(rel, kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                     st.st_size if kind == "f" else 0, st.st_ino, st.st_ctime_ns, target)


def scan(area_dir: Path, *, clean_tmp: bool = True,
         share: Mapping[str, Entry] | None = None) -> dict[str, LocalItem]:
    """Every directory, regular file and symlink below ``area_dir`` (lstat only: no file is
    opened, symlinks are never followed). Leftover temporary files of a killed pull are
    removed when ``clean_tmp``. A path of ``share`` (the state's entries) is that entry's
    string, not a second copy."""
    share = share or {}
    items: dict[str, LocalItem] = {}
    if not area_dir.is_dir():
        return items
    special: list[str] = []
    stack = [("", str(area_dir))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            it = os.scandir(abs_dir)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for de in it:
                name = de.name
                rel = f"{rel_dir}/{name}" if rel_dir else name
                same = share.get(rel)
                if same is not None:
                    rel = same.path
                if name.startswith(TMP_PREFIX):
                    if clean_tmp:
                        with contextlib.suppress(OSError):
                            os.unlink(de.path)
                    continue
                try:  # a file renamed away since readdir (a finished download) is not here
                    st = de.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        items[rel] = item_from_stat(rel, st)
                        stack.append((rel, de.path))
                    elif stat.S_ISREG(mode):
                        items[rel] = item_from_stat(rel, st)
                    elif stat.S_ISLNK(mode):
                        items[rel] = item_from_stat(rel, st, os.readlink(de.path))
                    else:  # FIFOs, sockets, device nodes: not part of a cache
                        special.append(rel)
                except FileNotFoundError:
                    continue
    if special:
        special.sort()
        shown = ", ".join(special[:3]) + (f" and {len(special) - 3} more" if len(special) > 3
                                          else "")
        log.warning("%s: skipped %d FIFO, socket or device node%s (not synced): %s",
                    area_dir, len(special), "" if len(special) == 1 else "s", shown)
    return items


class _Foreign(Exception):
    """A state file of another remote: stop reading it."""


def _read(path: Path, **how: Any) -> dict[str, Any] | None:
    """A state or index file parsed piece by piece (``jsonstream.read_object``); None when
    it is missing or damaged (a damaged file only costs a re-hash, never wrong data)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        return jsonstream.read_object(jsonstream.decompressed(raw), limit=1 << 40, **how)
    except (ValueError, TypeError, IndexError, RecursionError, zstandard.ZstdError):
        return None


def _dump(pieces: Iterable[str]) -> bytes:
    return jsonstream.compress(pieces, level=1)


def trusted_row(r: list[Any]) -> Entry:
    """An entry from our own state file: written by us from validated snapshots, so parsed
    without re-validating every path (that costs seconds on a 20,000-file tree)."""
    if r[1] == "f":
        return Entry(r[0], "f", r[2], r[3], r[4], r[5], blobs=tuple(Blob(*b) for b in r[6]))
    if r[1] == "l":
        return Entry(r[0], "l", r[2], r[3], target=r[4])
    if r[1] == "d":
        return Entry(r[0], "d", r[2], r[3])
    raise ValueError(r[1])


# --- per-area state ----------------------------------------------------------------------
@dataclass
class AreaState:
    remote: str = ""
    based_on: tuple[str, ...] = ()
    entries: dict[str, Entry] | None = None  # None: never synced with this remote


class CacheState:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / ".cache-sync"

    def load_state(self, area: str, remote: str) -> AreaState:
        return self._load_state(self.dir / f"{area}.state.zst", remote)

    def _load_state(self, path: Path, remote: str | None, entries: bool = True) -> AreaState:
        """The state in ``path`` (rows read one at a time); of any remote when ``remote`` is
        None; only its remote and heads when not ``entries``."""
        out: dict[str, Entry] = {}
        head: dict[str, Any] = {}

        def row(r: Any) -> None:
            if not out and (head.get("remote") != remote if remote is not None else False):
                raise _Foreign
            if not entries:
                raise _Foreign
            e = trusted_row(r)
            out[e.path] = e

        try:
            doc = _read(path, arrays={"entries": row}, into=head)
        except _Foreign:
            doc = head if not entries else None
        if not isinstance(doc, dict) or (remote is not None and doc.get("remote") != remote):
            return AreaState(remote=remote or "")
        based_on = tuple(str(h) for h in doc.get("based_on", ()))
        return AreaState(str(doc.get("remote", "")), based_on, out if entries else None)

    def save_state(self, area: str, st: AreaState, *, name: str = "state") -> None:
        entries = st.entries or {}
        text = jsonstream.object_text({"remote": st.remote, "based_on": list(st.based_on)},
                                      "entries", (entries[p].to_row() for p in sorted(entries)))
        write_atomic(self.dir / f"{area}.{name}.zst", _dump(text), mkdir=True,
                     fsync=name != "state")
        if name == "state":
            self._record_heads(area, st.remote, st.based_on)

    def save_next_state(self, area: str, st: AreaState) -> None:
        """The state a pull's final phase leads to (see ``staging.py``)."""
        self.save_state(area, st, name="state.next")

    def promote_next_state(self, area: str) -> AreaState | None:
        """Make the next state the state; returns its remote and heads (None if there was
        none; its entries are not read: ``load_state`` does that)."""
        nxt = self.dir / f"{area}.state.next.zst"
        st = self._load_state(nxt, None, entries=False)
        if not st.remote:
            return None
        os.replace(nxt, self.dir / f"{area}.state.zst")
        self._record_heads(area, st.remote, st.based_on)
        return st

    def _record_heads(self, area: str, remote: str, based_on: tuple[str, ...]) -> None:
        """The heads alone, beside the state, for the up-to-date check (synced_heads);
        written after the state and naming the state file's size and mtime, so it never
        vouches for a state file other than the one it was written with."""
        stamp = os.stat(self.dir / f"{area}.state.zst")
        write_atomic(self.dir / f"{area}.heads.json", json.dumps({
            "remote": remote, "based_on": list(based_on),
            "state": [stamp.st_size, stamp.st_mtime_ns]}).encode(), mkdir=True)

    def synced_heads(self, area: str, remote: str) -> tuple[str, ...] | None:
        """The heads the area was last synced to, without decoding the state (one small read
        and one stat); None when unknown or when the state file changed since."""
        try:
            doc = json.loads((self.dir / f"{area}.heads.json").read_bytes())
            stamp = os.stat(self.dir / f"{area}.state.zst")
        except (OSError, ValueError):
            return None
        if (not isinstance(doc, dict) or doc.get("remote") != remote
                or doc.get("state") != [stamp.st_size, stamp.st_mtime_ns]):
            return None
        based_on = doc.get("based_on")
        return tuple(str(h) for h in based_on) if isinstance(based_on, list) else None

    def load_index(self, area: str, share: Mapping[str, Entry] | None = None) -> Index:
        """The stat index; a path of ``share`` (the state's entries) is that entry's string."""
        index: Index = {}
        share = share or {}

        def member(path: str, r: Any) -> None:
            if isinstance(r, list) and len(r) == 5:  # another shape (an older cache-sync)
                same = share.get(path)  # costs only a re-hash
                index[path if same is None else same.path] = IndexRecord(*r)

        return index if _read(self.dir / f"{area}.index.zst", each=member) is not None else {}

    def save_index(self, area: str, index: Index | Iterable[tuple[str, IndexRecord]]) -> None:
        """Write the stat index; ``index`` may be a dict or (path, record) pairs as they come
        (a pull's index is written as its files are stat'ed, never held whole)."""
        pairs = index.items() if isinstance(index, dict) else index
        write_atomic(self.dir / f"{area}.index.zst",
                     _dump(jsonstream.members_text((p, list(r)) for p, r in pairs)), mkdir=True)

    # The journal: one JSON line per uploaded object, naming the digests it holds.
    def journal_path(self, area: str) -> Path:
        return self.dir / f"{area}.journal"

    def _records(self, area: str, remote: str) -> Iterator[dict[str, Any]]:
        """The journal's records for ``remote``, up to a torn last line of a killed push."""
        try:
            with open(self.journal_path(area)) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        return
                    if isinstance(rec, dict) and rec.get("remote") == remote:
                        yield rec
        except FileNotFoundError:
            return

    def _append(self, area: str, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.journal_path(area), "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_journal(self, area: str, remote: str) -> dict[str, tuple[Blob, ...]]:
        known: dict[str, tuple[Blob, ...]] = {}
        for rec in self._records(area, remote):
            for digest, blobs in rec.get("blobs", {}).items():
                known[digest] = tuple(Blob(*b) for b in blobs)
        return known

    def append_journal(self, area: str, remote: str, blobs: dict[str, list[Blob]]) -> None:
        self._append(area, {"remote": remote,
                            "blobs": {d: [list(b) for b in bl] for d, bl in blobs.items()}})

    # Snapshot ids this root is about to commit ({"remote", "snapshot"} lines in the journal):
    # if the push dies after the PUT, the next push names the snapshot as a parent.
    def append_pending(self, area: str, remote: str, snap_id: str) -> None:
        self._append(area, {"remote": remote, "snapshot": snap_id})

    def read_pending(self, area: str, remote: str) -> list[str]:
        return [r["snapshot"] for r in self._records(area, remote)
                if isinstance(r.get("snapshot"), str)]

    def clear_journal(self, area: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path(area))


# --- the lock ----------------------------------------------------------------------------
LOCK_NOTICE_AFTER = 2.0  # seconds of waiting before saying so


@contextlib.contextmanager
def cache_lock(root: Path, timeout: float = 0.0) -> Iterator[None]:
    """One pull, push or gc at a time per cache root (workers sharing a network volume share
    the root). A second one waits up to ``timeout`` seconds, says so once after a couple of
    seconds, and then refuses with the holder's pid and host; the lock dies with its process
    (flock). Only pull, push and verify take it, through ``staging.open_root`` (which then
    finishes a killed pull's final phase): a serving worker holds it for none of its life."""
    state_dir = root / ".cache-sync"
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        noticed = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                if waited >= timeout:
                    raise LockedError(
                        f"another cache-sync process (pid {holder}) is using {root}",
                        hint="wait for it to finish, or raise CACHE_SYNC_LOCK_TIMEOUT "
                        f"(now {timeout:g}s)",
                    ) from None
                if not noticed and waited >= min(LOCK_NOTICE_AFTER, timeout / 2):
                    noticed = True
                    log.warning("waiting for another cache-sync process (pid %s) using %s, "
                                "up to %gs (CACHE_SYNC_LOCK_TIMEOUT)", holder, root, timeout)
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
