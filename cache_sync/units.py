"""Units of a merge (pure: file contents are read through a callback).

A file-by-file merge of two heads can mix two versions of something users think of as one
thing. Two areas have such units:

- ``packages/`` (a ``pip install --target`` tree): an installed *distribution* -- its
  ``*.dist-info`` (or ``*.egg-info``) directory, the files its ``RECORD`` (or
  ``installed-files.txt``) lists, and the top-level directories those files lie in when no
  other distribution claims them (``__pycache__`` files and other strays in them included).
- ``models/`` (a Hugging Face cache): a repo directory ``models--org--name`` (also
  ``datasets--``/``spaces--``) for its ``refs/``, ``snapshots/`` and ``.no_exist/``; its
  ``blobs/`` are content-addressed and merge file by file, except that a blob a winning
  snapshot link names is kept, and a repo the winning side deleted whole goes whole.

When both sides of a three-way merge changed a unit, each in a way the other did not (some
path of it differs from the merge base and from the other side), the result takes the unit
whole from ``theirs`` -- the later head -- and never file by file; otherwise the file-level
merge already gives one side's version whole (the side that changed it, or the one whose
changes include the other's). Every other path keeps the file-level merge of ``snapshot.merge3``.
The rules and their examples are in ``docs/design.md`` section 5.1.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cache_sync.snapshot import Entry, Merge, merge3_paths, normalize_tree, same_entry

# The bytes of a (small) file of a tree, or None when they cannot be had.
Reader = Callable[[Entry], bytes | None]

MAX_META_BYTES = 8 << 20  # a RECORD bigger than this is not read (the name is the fallback)
META_SUFFIXES = (".dist-info", ".egg-info")
_HF_REPO = re.compile(r"^(models|datasets|spaces)--[^/]+$")
_HF_UNIT_DIRS = ("refs", "snapshots", ".no_exist")
_NEVER_WHOLE = frozenset({"bin", "__pycache__"})  # shared by many distributions
_CANON = re.compile(r"[-_.]+")

AREA_RULES = {"packages": "distributions", "models": "hf-repos"}


def merger(area: str, read: Reader | None = None) -> Merge:
    """The three-way merge for an area: unit-aware for packages/ and models/."""
    rule = AREA_RULES.get(area)
    if rule == "distributions":
        memo: dict[tuple[str, str], set[str]] = {}  # (meta dir, RECORD sha256) -> files
        return lambda b, o, t: merge_units(b, o, t, lambda: dist_units(b, o, t, read, memo))
    if rule == "hf-repos":
        return lambda b, o, t: merge_units(b, o, t, lambda: hf_units(b, o, t),
                                           restore_links=True)
    return lambda b, o, t: normalize_tree(merge3_paths(b, o, t))


@dataclass
class Unit:
    """The paths a unit owns: whole subtrees and single files (across all three trees)."""

    key: str
    prefixes: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    # A directory whose removal, when the winning side removed it whole, goes with the unit
    # (a Hugging Face repo deleted on the later side loses its blobs too).
    root: str = ""


def merge_units(base: dict[str, Entry], ours: dict[str, Entry], theirs: dict[str, Entry],
                units: Callable[[], list[Unit]], *, restore_links: bool = False
                ) -> dict[str, Entry]:
    """``merge3`` where a unit both sides changed, each in a way the other did not, comes
    whole from ``theirs``. Where one side's changes to a unit are all made by the other side
    too (a head that did less of the same thing, e.g. a pull cut short), the file-level merge
    already gives the other side's version whole. ``units`` is called only when both sides
    have changes of their own (it may read files)."""
    merged = merge3_paths(base, ours, theirs)
    ours_changed = _own_changes(base, ours, theirs)
    theirs_changed = _own_changes(base, theirs, ours)
    if not ours_changed or not theirs_changed:
        return normalize_tree(merged)  # nothing to choose between
    everything = base.keys() | ours.keys() | theirs.keys()
    found = units()
    owned = owners(everything, found)
    for unit in found:
        unit_paths = owned[unit.key]
        if ours_changed.isdisjoint(unit_paths) or theirs_changed.isdisjoint(unit_paths):
            continue  # the file-level merge took one side's version of it whole
        if unit.root and unit.root not in theirs:
            unit_paths = {p for p in everything if p == unit.root
                          or p.startswith(unit.root + "/")}
        for p in unit_paths:
            if p in theirs:
                merged[p] = theirs[p]
            else:
                merged.pop(p, None)
        if restore_links:
            _restore_link_targets(merged, theirs, unit_paths)
    return normalize_tree(merged)


def _own_changes(base: dict[str, Entry], side: dict[str, Entry], other: dict[str, Entry]
                 ) -> set[str]:
    """Paths ``side`` changed from ``base`` to something ``other`` does not have."""
    return {p for p in base.keys() | side.keys()
            if not same_entry(base.get(p), side.get(p))
            and not same_entry(side.get(p), other.get(p))}


def owners(paths: set[str], units: list[Unit]) -> dict[str, set[str]]:
    """unit key -> the paths (of any of the trees) it owns."""
    by_prefix: dict[str, list[str]] = {}
    by_file: dict[str, list[str]] = {}
    for u in units:
        for q in u.prefixes:
            by_prefix.setdefault(q, []).append(u.key)
        for q in u.files:
            by_file.setdefault(q, []).append(u.key)
    out: dict[str, set[str]] = {u.key: set() for u in units}
    for path in paths:  # every path of a tree (60,000), on a cold start's path before CMD
        keys = set(by_file.get(path, ()))
        q = path
        while True:
            hit = by_prefix.get(q)
            if hit:
                keys.update(hit)
            cut = q.rfind("/")
            if cut < 0:
                break
            q = q[:cut]
        for k in keys:
            out[k].add(path)
    return out


def _restore_link_targets(merged: dict[str, Entry], winner: dict[str, Entry],
                          paths: set[str]) -> None:
    """A snapshot link of the winning side keeps the blob it points to (the other side may
    have deleted that blob while the winner still names it)."""
    for p in paths:
        e = winner.get(p)
        if e is None or e.kind != "l":
            continue
        dest = posixpath.normpath(posixpath.join(posixpath.dirname(p), e.target))
        if dest not in merged and dest in winner:
            merged[dest] = winner[dest]


# --- Hugging Face repos -------------------------------------------------------------------
def hf_units(*trees: dict[str, Entry]) -> list[Unit]:
    repos: set[str] = set()
    for tree in trees:
        for path, e in tree.items():
            if e.kind == "d" and _HF_REPO.match(posixpath.basename(path)):
                repos.add(path)
    return [Unit(r, prefixes={f"{r}/{d}" for d in _HF_UNIT_DIRS}, root=r) for r in sorted(repos)]


# --- installed distributions --------------------------------------------------------------
def canonical_name(meta_dir: str) -> str:
    """``Foo_Bar-1.0.dist-info`` -> ``foo-bar`` (PEP 503 normalisation of the name part)."""
    stem = meta_dir
    for suffix in META_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return _CANON.sub("-", stem.split("-", 1)[0]).lower()


def meta_dirs(tree: dict[str, Entry]) -> dict[str, list[str]]:
    """canonical name -> top-level ``*.dist-info``/``*.egg-info`` entries of a tree."""
    out: dict[str, list[str]] = {}
    for path in tree:
        if "/" not in path and path.endswith(META_SUFFIXES):
            out.setdefault(canonical_name(path), []).append(path)
    return out


def dist_units(base: dict[str, Entry], ours: dict[str, Entry], theirs: dict[str, Entry],
               read: Reader | None, memo: dict[tuple[str, str], set[str]] | None = None
               ) -> list[Unit]:
    """One unit per distribution name found in any of the three trees. Files are claimed
    from each tree's own metadata; a top-level directory is owned whole when exactly one
    distribution claims files in it (namespace packages stay file by file)."""
    claims: dict[str, set[str]] = {}  # name -> files
    metas: dict[str, set[str]] = {}  # name -> meta entries (dirs or egg-info files)
    for tree in (base, ours, theirs):
        for name, dirs in meta_dirs(tree).items():
            for m in dirs:
                metas.setdefault(name, set()).add(m)
                claims.setdefault(name, set()).update(_claimed_files(tree, m, name, read, memo))
    tops: dict[str, set[str]] = {}  # top-level dir -> names claiming something in it
    for name, files in claims.items():
        for p in files:
            if "/" in p:
                tops.setdefault(p.split("/", 1)[0], set()).add(name)
    units = []
    for name in sorted(metas):
        unit = Unit(name, prefixes=set(metas[name]), files=set(claims[name]))
        for top, names in tops.items():
            if names == {name} and top not in _NEVER_WHOLE and not top.endswith(META_SUFFIXES):
                unit.prefixes.add(top)
        units.append(unit)
    return units


def _claimed_files(tree: dict[str, Entry], meta: str, name: str, read: Reader | None,
                   memo: dict[tuple[str, str], set[str]] | None = None) -> set[str]:
    dist_info = meta.endswith(".dist-info")
    listing = tree.get(f"{meta}/RECORD" if dist_info else f"{meta}/installed-files.txt")
    key = (meta, listing.digest) if listing is not None else None
    if memo is not None and key in memo:
        return memo[key]  # the same RECORD in several trees (or heads) is parsed once
    listed = _read_lines(listing, read, csv_first=dist_info)
    rel_to = "" if dist_info else meta
    files = set()
    for raw in listed or []:
        p = _area_path(raw, rel_to)
        if p is not None:
            files.add(p)
    if files:
        if memo is not None and key is not None:
            memo[key] = files
        return files
    # No readable file list: the top-level names (top_level.txt), else the name itself.
    tops = _read_lines(tree.get(f"{meta}/top_level.txt"), read, csv_first=False)
    guesses = [t.strip() for t in (tops or []) if t.strip()] or [name.replace("-", "_")]
    out: set[str] = set()
    for top in guesses:
        if "/" in top or top in ("", ".", ".."):
            continue
        out.update(p for p in tree if p == f"{top}.py" or p.startswith(f"{top}/"))
    return out


def _read_lines(entry: Entry | None, read: Reader | None, *, csv_first: bool
                ) -> list[str] | None:
    if entry is None or entry.kind != "f" or read is None or entry.size > MAX_META_BYTES:
        return None
    data = read(entry)
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    if not csv_first:
        return text.splitlines()
    try:
        return [row[0] for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error:
        return None


def _area_path(raw: str, rel_to: str) -> str | None:
    """A RECORD path as a path of the area, or None. ``pip install --target`` records
    scripts as ``../../../bin/x`` (relative to its temporary site-packages) and moves them to
    ``<target>/bin/x``."""
    raw = raw.strip()
    if not raw or raw[0] == "/" or "\\" in raw or "\x00" in raw:
        return None
    if not rel_to and raw[-1] != "/" and "//" not in raw and "/." not in raw and raw[0] != ".":
        return raw  # already normal, as pip writes it: no part empty, "." or ".."
    p = posixpath.normpath(posixpath.join(rel_to, raw)) if rel_to else posixpath.normpath(raw)
    if p.startswith("../"):
        while p.startswith("../"):
            p = p[3:]
        return p if p.startswith("bin/") else None
    return None if p in (".", "..") else p
