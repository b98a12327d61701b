"""Which paths of a cold ``packages/`` pull go in place one distribution at a time (pure; the
protocol is docs/design.md section 5.4, the I/O is ``unitplace.py``).

A distribution (a unit of ``units.dist_units``: its metadata directory, the files its RECORD
lists, the top-level directories nobody else claims) is *placed early* when every path it owns
is owned by it alone and is a file or a directory (a symlink is made by the final phase). Its
*roots* are the highest paths whose whole subtree is its own: ``torch/``,
``torch-2.9.1.dist-info/``, ``nvidia/cublas/`` inside a namespace directory that several
distributions share, ``bin/torchrun`` among other distributions' scripts. Renaming its roots
out of the stage, code first and metadata last, puts the distribution in place; everything
else waits for the pull's final phase.

A top-level module (``import torch``) is ready once every unit with a path under its top-level
entries is placed, with every distribution those require (``Requires-Dist``, extras left out,
transitively: torch loads the CUDA libraries of nvidia-* by path, not by import), and only at
the end of the pull if any path of these is not placed early.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from cache_sync.snapshot import Entry
from cache_sync.units import META_SUFFIXES, Reader, Unit, dist_units, owners

DIST = "dist:"  # a need entry naming a distribution (canonical) whose metadata CMD looks up
WHOLE_AREA = ""  # the blocker of a module some of whose paths only the final phase places
_MIXED = "\0mixed"  # aggregate of a subtree with paths of several owners (or of none)
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")
_CANON = re.compile(r"[-_.]+")
_REQUIRES = re.compile(
    r"^Requires-Dist:[ \t]*([A-Za-z0-9][A-Za-z0-9._-]*)([^;\n]*)(;[^\n]*)?$", re.M)
_EXTRA = re.compile(r"\bextra\s*==")


@dataclass(frozen=True)
class PlaceUnit:
    key: str  # the distribution's canonical name
    roots: tuple[str, ...]  # renamed into the area in this order: code first, metadata last
    files: frozenset[str]  # the file paths under the roots: the unit is placed once all are staged


@dataclass
class UnitPlan:
    units: list[PlaceUnit] = field(default_factory=list)
    # top-level module name -> the keys of the units it waits for (WHOLE_AREA: the pull's end)
    modules: dict[str, set[str]] = field(default_factory=dict)
    dists: set[str] = field(default_factory=set)  # every distribution's canonical name

    def pending(self, placed: Iterable[str]) -> tuple[list[str], list[str]]:
        """(modules, distributions) not yet importable once the units ``placed`` are."""
        done = set(placed)
        return (sorted(m for m, keys in self.modules.items() if keys - done),
                sorted(self.dists - done))


def need_rank(plan: UnitPlan, names: Iterable[str]) -> dict[str, int]:
    """Unit key -> the position of the first of ``names`` that waits for it: the need order
    of a cold pull (design 5.4). A name is a top-level module, in the order CMD imports
    them, or ``dist:<name>``, a metadata lookup, which waits for that distribution alone
    (5.5)."""
    rank: dict[str, int] = {}
    for i, name in enumerate(names):
        if name.startswith(DIST):
            keys = {name[len(DIST):]} & plan.dists
        else:
            keys = plan.modules.get(name, set())
        for key in sorted(keys):
            if key != WHOLE_AREA:
                rank.setdefault(key, i)
    return rank


def canonical(name: str) -> str:
    return _CANON.sub("-", name).lower()


def is_meta(path: str) -> bool:
    return path.split("/", 1)[0].endswith(META_SUFFIXES)


def metadata_first(fetch: list[Entry], dups: dict[str, list[Entry]]
                   ) -> tuple[list[Entry], list[Entry]]:
    """(what to fetch first, the rest): every file of a top-level metadata directory (RECORD,
    top_level.txt, ... are read to find the units), also when it is the duplicate of a file
    elsewhere (the fetcher writes it with the first copy of that content)."""
    first, rest = [], []
    for e in fetch:
        if is_meta(e.path) or any(is_meta(d.path) for d in dups.get(e.digest, ())):
            first.append(e)
        else:
            rest.append(e)
    return first, rest


def module_name(top: str, kind: str) -> str | None:
    """The module an import statement names for a top-level entry of ``packages/``, or None
    (metadata, scripts, caches, data files)."""
    if top.endswith(META_SUFFIXES) or top in ("bin", "__pycache__"):
        return None
    if kind == "d":
        return top if top.isidentifier() else None
    stem = top.split(".", 1)[0]
    return stem if top.endswith(_CODE_SUFFIXES) and stem.isidentifier() else None


def plan_units(target: dict[str, Entry], read: Reader) -> UnitPlan:
    """The units of ``target`` (a whole packages/ tree) and what each module waits for;
    ``read`` gives the bytes of its metadata files (they are fetched first)."""
    found = dist_units(target, target, target, read)
    owned = owners(set(target), found)
    by_path: dict[str, set[str]] = {}
    for key, paths in owned.items():
        for p in paths:
            by_path.setdefault(p, set()).add(key)
    early = _early(target, found, owned, by_path)
    agg, children = _aggregate(target, by_path, early)
    roots: dict[str, list[str]] = {}
    root_of: dict[str, frozenset[str]] = {}  # root -> the units it belongs to
    stack = sorted(children[""], reverse=True)
    while stack:
        p = stack.pop()
        a = agg[p]
        if a in early:
            roots.setdefault(a, []).append(p)
            root_of[p] = frozenset((a,))
        elif a == _MIXED:
            stack.extend(sorted(children.get(p, ()), reverse=True))
    # A file several early units list (each nvidia-* wheel ships nvidia/__init__.py): a root
    # of each of them, put in place by whichever is placed first.
    for p, keys in by_path.items():
        if len(keys) > 1 and keys <= early and root_of_path(p, root_of) is None:
            root_of[p] = frozenset(keys)
            for k in keys:
                roots.setdefault(k, []).append(p)
    files: dict[str, set[str]] = {k: set() for k in roots}
    blockers: dict[str, set[str]] = {}
    for p, e in target.items():
        if e.kind == "d":
            continue
        r = root_of_path(p, root_of)
        waits = root_of[r] if r is not None else frozenset((WHOLE_AREA,))
        if r is not None and e.kind == "f":
            for k in waits:
                files[k].add(p)
        top = p.split("/", 1)[0]
        name = module_name(top, target[top].kind if top in target else "d")
        if name is not None:
            blockers.setdefault(name, set()).update(waits)
    requires = {u.key: _requires(target, u.prefixes, read) for u in found}
    late = {u.key for u in found} - set(roots)
    for name, keys in blockers.items():
        closure = _closure(keys - {WHOLE_AREA}, requires)
        blockers[name] = keys | {k if k not in late else WHOLE_AREA for k in closure}
    plan = UnitPlan(modules=blockers, dists={u.key for u in found})
    for key in sorted(roots):
        rs = sorted(roots[key], key=lambda r: (is_meta(r), r))  # code first, metadata last
        plan.units.append(PlaceUnit(key, tuple(rs), frozenset(files[key])))
    return plan


def _early(target: dict[str, Entry], found: list[Unit], owned: dict[str, set[str]],
           by_path: dict[str, set[str]]) -> set[str]:
    """The units placed early: every path they own is a file or a directory, and a path
    owned by several is a file all of whose owners are placed early too."""
    early = {u.key for u in found
             if owned[u.key] and all(target[p].kind in ("f", "d") for p in owned[u.key])}
    shared = [(p, keys) for p, keys in by_path.items() if len(keys) > 1]
    changed = True
    while changed:
        changed = False
        for p, keys in shared:
            if (target[p].kind != "f" or not keys <= early) and keys & early:
                early -= keys
                changed = True
    return early


def _requires(target: dict[str, Entry], prefixes: set[str], read: Reader) -> set[str]:
    """The distributions a unit's METADATA requires (not for an extra), canonical names."""
    out: set[str] = set()
    for meta in prefixes:
        e = target.get(f"{meta}/METADATA")
        if "/" in meta or not meta.endswith(".dist-info") or e is None or e.kind != "f":
            continue
        data = read(e)
        if data is None:
            continue
        head = data.decode("utf-8", "replace").split("\n\n", 1)[0]  # the headers, not the body
        for m in _REQUIRES.finditer(head):
            if not (m.group(3) and _EXTRA.search(m.group(3))):
                out.add(canonical(m.group(1)))
    return out


def _closure(keys: set[str], requires: dict[str, set[str]]) -> set[str]:
    """``keys`` and every distribution of the area they require, transitively."""
    seen: set[str] = set()
    todo = [k for k in keys if k in requires]
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        todo.extend(r for r in requires[k] if r in requires and r not in seen)
    return seen


def _aggregate(target: dict[str, Entry], by_path: dict[str, set[str]], early: set[str]
               ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(path -> the one early unit its whole subtree belongs to, _MIXED, or "" for a
    directory with nothing of anyone below it; directory -> its children, "" the area's).
    Directories nobody owns take the owner of what is in them; a file nobody owns, or of a
    unit not placed early, makes its ancestors _MIXED. Directories the tree does not list
    are directories nobody owns."""
    allp = set(target)
    for p in target:
        cut = p.rfind("/")
        while cut >= 0:
            p = p[:cut]
            if p in allp:
                break
            allp.add(p)
            cut = p.rfind("/")
    children: dict[str, list[str]] = {"": []}
    agg: dict[str, str] = {}
    for p in sorted(allp, key=lambda q: -q.count("/")):  # deepest first
        keys = by_path.get(p, set())
        e = target.get(p)
        kind = e.kind if e is not None else "d"
        own = next(iter(keys)) if len(keys) == 1 and keys <= early else (
            "" if not keys and kind == "d" else _MIXED)
        agg[p] = _join(agg.get(p, ""), own)
        cut = p.rfind("/")
        parent = p[:cut] if cut >= 0 else ""
        children.setdefault(parent, []).append(p)
        if parent:
            agg[parent] = _join(agg.get(parent, ""), agg[p])
    return agg, children


def _join(a: str, b: str) -> str:
    if not a:
        return b
    if not b or a == b:
        return a
    return _MIXED


def root_of_path(path: str, roots: Container[str]) -> str | None:
    """The root (one of ``roots``) ``path`` is or lies under, or None."""
    q = path
    while True:
        if q in roots:
            return q
        cut = q.rfind("/")
        if cut < 0:
            return None
        q = q[:cut]
