"""Moving a staged ``pip install --target`` into ``packages/``: one version per distribution.

``pip --target`` resolves without looking at the target, installs into a temporary dir and
then moves each top-level entry into the target, *skipping* any that exists (or, with
``--upgrade``, replacing it whole). Either way an upgrade leaves the old ``.dist-info`` next to
the new one, and without ``--upgrade`` the old module files stay under the new metadata
(measured: ``six==1.16.0`` then a package needing ``six`` left ``six-1.16.0.dist-info``,
``six-1.17.0.dist-info`` and 1.16's ``six.py``). ``--upgrade`` is no cure: it replaces shared
top-level directories (namespace packages such as ``google/``) whole, deleting other
distributions' files.

So cache-sync runs pip with ``--target`` pointing at an empty **stage** dir (under the worker's
``tmp/``, on the same file system) and merges file by file:

1. every staged file that is not metadata is renamed into ``packages/`` (replacing the file
   of the same path; files of other distributions in shared dirs are untouched; a directory
   ``packages/`` lacks is renamed in whole, so a fresh install costs one rename per
   top-level directory);
2. for every distribution the stage brings that ``packages/`` already has (any version): the
   files its RECORD lists that the new version does not ship and no other remaining
   distribution lists are removed, then its ``.dist-info``; empty dirs are pruned;
3. the staged ``.dist-info`` dirs are renamed in last, so a distribution's metadata appears
   only once its files are in place.

A kill in the middle leaves every file of the new version or of the old one in place, and at
worst the old metadata (the next install of that spec sees a version mismatch and redoes it).
uv needs none of this: it installs into the target as an environment and uninstalls the old
version itself (tested with the same sequences).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

DIST_INFO = ".dist-info"


@dataclass
class MergeReport:
    superseded: list[str] = field(default_factory=list)  # dist-info dir names removed
    moved: int = 0
    removed: int = 0
    seconds: float = 0.0


def dist_infos(root: Path) -> dict[str, list[Path]]:
    """Canonical distribution name -> its ``.dist-info`` dirs directly under ``root``."""
    found: dict[str, list[Path]] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if entry.name.endswith(DIST_INFO) and entry.is_dir(follow_symlinks=False):
                name = entry.name[: -len(DIST_INFO)].rsplit("-", 1)[0]
                found.setdefault(canonicalize_name(name), []).append(Path(entry.path))
    return found


def record_files(info_dir: Path) -> set[str]:
    """The paths a RECORD lists, relative to the target. pip --target records scripts
    relative to its temporary lib dir (``../../bin/x``); they live in ``bin/x``."""
    out: set[str] = set()
    try:
        with open(info_dir / "RECORD", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError:
        return out
    for row in rows:
        if not row or not row[0]:
            continue
        rel = os.path.normpath(row[0])
        if rel.startswith(".." + os.sep):
            parts = rel.split(os.sep)
            while parts and parts[0] == "..":
                parts.pop(0)
            if not parts or parts[0] != "bin":
                continue  # outside the target: never ours to touch
            rel = os.sep.join(parts)
        if not os.path.isabs(rel):
            out.add(rel)
    return out


def _staged_files(stage: Path) -> list[str]:
    """Relative paths of every file and symlink in the stage, metadata dirs excluded."""
    files = []
    for dirpath, dirnames, filenames in os.walk(stage):
        rel_dir = os.path.relpath(dirpath, stage)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if not d.endswith(DIST_INFO)]
        for name in filenames + [d for d in dirnames
                                 if os.path.islink(os.path.join(dirpath, d))]:
            files.append(os.path.normpath(os.path.join(rel_dir, name)))
    return files


def _replace(src: str, dest: str) -> None:
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # the stage is on another file system
            raise
        shutil.move(src, dest)


def _move_tree(src_dir: str, dest_dir: str, top: bool) -> int:
    """Rename ``src_dir``'s entries into ``dest_dir``: a directory the target lacks goes in
    whole (one rename for a fresh ``torch/``), an existing one is merged entry by entry, a
    file replaces the file of the same path. Returns the number of renames."""
    renames = 0
    for entry in os.scandir(src_dir):
        if top and entry.name.endswith(DIST_INFO):
            continue  # metadata goes in last
        dest = os.path.join(dest_dir, entry.name)
        dest_is_dir = os.path.isdir(dest) and not os.path.islink(dest)
        if entry.is_dir(follow_symlinks=False) and dest_is_dir:
            renames += _move_tree(entry.path, dest, top=False)
            continue
        if dest_is_dir:
            shutil.rmtree(dest)  # a file replaces a directory of the same name
        elif entry.is_dir(follow_symlinks=False) and os.path.lexists(dest):
            os.unlink(dest)  # a directory replaces a file of the same name
        _replace(entry.path, dest)
        renames += 1
    return renames


def _prune(dirs: set[Path], target: Path) -> None:
    top = target.resolve()
    for directory in sorted(dirs, key=lambda p: -len(p.parts)):
        while directory != top and top in directory.parents:
            try:
                directory.rmdir()  # only empty ones: a shared namespace dir stays
            except OSError:
                break
            directory = directory.parent


def merge(stage: Path, target: Path) -> MergeReport:
    """Move a staged ``--target`` install into ``target``, superseding older versions."""
    t0 = time.monotonic()
    report = MergeReport()
    target.mkdir(parents=True, exist_ok=True)
    staged = dist_infos(stage)
    existing = dist_infos(target)
    superseded = [d for name in staged for d in existing.get(name, [])]
    staying = [d for name, dirs in existing.items() if name not in staged for d in dirs]
    owned_by_others: set[str] = set()
    for info in staying:
        owned_by_others |= record_files(info)
    new_files = set(_staged_files(stage))
    for info in (d for dirs in staged.values() for d in dirs):
        new_files |= {p for p in record_files(info) if not p.split(os.sep)[0].endswith(
            DIST_INFO)}

    report.moved = _move_tree(str(stage), str(target), top=True)  # 1. the new files

    emptied: set[Path] = set()  # 2. what only the old versions had
    for info in superseded:
        for rel in record_files(info) - new_files - owned_by_others:
            path = target / rel
            if rel.split(os.sep)[0] == info.name:
                continue  # its own metadata: removed with the dir below
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
                report.removed += 1
                emptied.add(path.parent)
        shutil.rmtree(info, ignore_errors=True)
        report.superseded.append(info.name)
    _prune(emptied, target)

    for dirs in staged.values():  # 3. the new metadata, last
        for info in dirs:
            dest = target / info.name
            if dest.exists():
                shutil.rmtree(dest)
            _replace(str(info), str(dest))
    shutil.rmtree(stage, ignore_errors=True)
    report.seconds = time.monotonic() - t0
    return report
