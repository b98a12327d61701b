"""Check a pulled tree against its source, byte for byte, and grade its fidelity.

Every regular file's content is hashed (sha256) on both sides; a symlink in the source must be a
symlink with the same target (kept), may come back as a regular file with the target's bytes
(followed: the bytes are duplicated on disk), or be missing. Exec bits, empty directories and
empty files are counted too. ``ok`` means every source byte arrived; ``faithful`` means the tree
is also the same shape (links kept, modes kept, empty dirs kept).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

IGNORED_TOP = {".cache-sync"}  # cache-sync's own state dir is not part of the data


@dataclass
class Entry:
    kind: str  # "file" | "link" | "dir"
    mode: int = 0
    size: int = 0
    digest: str = ""
    target: str = ""


def _hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def scan(root: Path, *, hashes: bool = True) -> dict[str, Entry]:
    """Every entry under ``root`` by relative path (directories included, for empty dirs)."""
    out: dict[str, Entry] = {}
    root_s = str(root)
    for dirpath, dirs, files in os.walk(root_s):
        rel_dir = os.path.relpath(dirpath, root_s)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in IGNORED_TOP]
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Entry("link", target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Entry("dir")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = Entry(
                    "file", mode=st.st_mode & 0o777, size=st.st_size,
                    digest=_hash(full) if hashes else "",
                )
    return out


@dataclass
class Fidelity:
    ok: bool = True  # every source byte present at its path
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    links_kept: int = 0
    links_followed: int = 0
    links_missing: int = 0
    exec_lost: int = 0
    empty_dirs_lost: int = 0
    extra: int = 0  # paths in the pull that the source does not have
    disk_bytes: int = 0  # allocated bytes of the pulled tree (duplicated blobs show here)

    @property
    def faithful(self) -> bool:
        return (self.ok and not self.links_followed and not self.links_missing
                and not self.exec_lost and not self.empty_dirs_lost)

    def summary(self) -> str:
        if not self.ok:
            return f"BROKEN ({len(self.missing)} missing, {len(self.corrupt)} corrupt)"
        notes = []
        if self.links_followed:
            notes.append(f"{self.links_followed} links followed")
        if self.links_missing:
            notes.append(f"{self.links_missing} links dropped")
        if self.exec_lost:
            notes.append(f"{self.exec_lost} exec bits lost")
        if self.empty_dirs_lost:
            notes.append(f"{self.empty_dirs_lost} empty dirs lost")
        return "faithful" if not notes else "bytes ok; " + ", ".join(notes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["missing"], d["corrupt"] = self.missing[:20], self.corrupt[:20]
        d["faithful"], d["summary"] = self.faithful, self.summary()
        return d


def _disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def compare(source: dict[str, Entry], pulled_root: Path) -> Fidelity:
    got = scan(pulled_root)
    fid = Fidelity(disk_bytes=_disk_bytes(pulled_root))
    nonempty = {os.path.dirname(p) for p in source}
    for rel, want in source.items():
        have = got.get(rel)
        if want.kind == "dir":
            if rel not in nonempty and (have is None or have.kind != "dir"):
                fid.empty_dirs_lost += 1
            continue
        if want.kind == "link":
            if have is None:
                fid.links_missing += 1
            elif have.kind == "link" and have.target == want.target:
                fid.links_kept += 1
            elif have.kind == "file":
                # A followed link must carry the bytes of what it points to.
                pointee = source.get(os.path.normpath(os.path.join(os.path.dirname(rel),
                                                                   want.target)))
                if pointee is not None and have.digest != pointee.digest:
                    fid.corrupt.append(rel)
                fid.links_followed += 1
            else:
                fid.corrupt.append(rel)
            continue
        fid.files += 1
        fid.bytes += want.size
        if have is None or have.kind != "file":
            fid.missing.append(rel)
        elif have.digest != want.digest or have.size != want.size:
            fid.corrupt.append(rel)
        elif (want.mode & 0o111) and not (have.mode & 0o111):
            fid.exec_lost += 1
    fid.extra = len(set(got) - set(source))
    fid.ok = not fid.missing and not fid.corrupt
    return fid
