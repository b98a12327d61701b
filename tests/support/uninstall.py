"""Uninstall a distribution from a ``pip install --target`` directory the way pip does: every
file its dist-info's RECORD lists, the ``__pycache__`` entries of its modules, the directories
that leaves empty, and the dist-info itself.

Why not ``pip uninstall``: inside a virtualenv pip refuses to touch a distribution outside the
environment's prefix ("Not uninstalling ... outside environment"), and exits 0 all the same, so
a test that shells out to it passes or fails by whether the suite runs in a venv. This removes
the same files on every machine and checks the outcome instead of trusting an exit code.

Also a command for the workers' shell lines: ``python -m tests.support.uninstall TARGET NAME``.
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_info(target: Path, name: str) -> Path:
    """The one dist-info of ``name`` in ``target`` (by its METADATA's Name, as pip finds it)."""
    want = _canonical(name)
    found = []
    for info in target.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^Name:\s*(\S+)", meta, re.MULTILINE)
        if m and _canonical(m.group(1)) == want:
            found.append(info)
    if len(found) != 1:
        raise AssertionError(f"expected one installed {name!r} in {target}, found {found}")
    return found[0]


def uninstall(target: Path, name: str) -> list[Path]:
    """Remove distribution ``name`` from ``target``; returns the files removed. Fails if it is
    not installed there, or if anything its RECORD lists is still there afterwards."""
    target = target.resolve()
    info = _dist_info(target, name)
    with (info / "RECORD").open(newline="", encoding="utf-8") as f:
        listed = [(target / row[0]).resolve() for row in csv.reader(f) if row]
    outside = [p for p in listed if not p.is_relative_to(target)]
    if outside:  # a wheel's scripts land in bin/ beside a real site-packages: not here
        raise AssertionError(f"{name}'s RECORD reaches outside {target}: {outside}")
    removed = []
    for path in listed:
        candidates = [path]
        if path.suffix == ".py":  # pip removes the bytecode of each module it removes
            candidates += path.parent.joinpath("__pycache__").glob(f"{path.stem}.*.pyc")
        for p in candidates:
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(p)
    shutil.rmtree(info, ignore_errors=True)
    dirs = {a for p in listed for a in p.parents if a.is_relative_to(target) and a != target}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        for sub in (d / "__pycache__", d):  # deepest first: a package's dirs, once empty
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
    left = [p for p in listed if p.exists()] + ([info] if info.exists() else [])
    if left:
        raise AssertionError(f"uninstalling {name} left {left}")
    return removed


if __name__ == "__main__":
    uninstall(Path(sys.argv[1]), sys.argv[2])
