"""Bytecode for ``packages/``, compiled once by the installer instead of at every start.

A worker imports torch, transformers and f5-tts from ``packages/``; without ``.pyc`` files
every cold worker compiles each imported module in memory (the image sets
PYTHONDONTWRITEBYTECODE, and a fresh container has no ``__pycache__``). Measured on the f5
stack (17,862 ``.py`` files, 2 cores): the worker's imports took 29 s without bytecode against
11 s with it. pip compiles what it installs; uv does not unless told. So after every install
``cache-sync install`` runs ``compileall`` over ``packages/`` with the worker's interpreter:
the ``.pyc`` files are pushed with the packages and every later worker reads them.

They stay valid after a pull: a ``.pyc`` records its source's mtime and size (the default
timestamp invalidation), and a pull restores every file's mtime exactly. compileall skips a
file whose ``.pyc`` is current, so a later install compiles only what changed. A file that
does not compile (a test written for another Python) is left to compile at import, as before.

Each new ``.pyc`` is added to the ``RECORD`` of the distribution that owns its source, as pip
does when it compiles: the bytecode is then part of its distribution (an uninstall or upgrade
removes it, a merge of ``packages/`` moves it with its unit, ``docs/design.md`` 5.1), never a
file that belongs to nobody.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_sync.fsutil import write_atomic


@dataclass(frozen=True)
class Compiled:
    seconds: float
    complete: bool  # False: some files did not compile (they compile at import instead)
    note: str = ""


def compile_tree(target: Path, env: Mapping[str, str], timeout: float) -> Compiled:
    """Compile every ``.py`` under ``target`` whose ``.pyc`` is missing or stale, with this
    interpreter, on every core. Best effort: never raises for the files themselves."""
    t0 = time.monotonic()
    if not target.is_dir():
        return Compiled(0.0, True)
    child = {k: v for k, v in env.items() if k not in ("PYTHONDONTWRITEBYTECODE",
                                                       "PYTHONPYCACHEPREFIX")}
    # -qq: no listing, no per-file errors; -j 0: a process per core; timestamp pycs (the
    # default unless SOURCE_DATE_EPOCH asks for checked hashes, which stay valid too).
    cmd = [sys.executable, "-m", "compileall", "-qq", "-j", "0", str(target)]
    try:
        proc = subprocess.run(cmd, env=child, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False, cwd=os.fspath(target))
    except subprocess.TimeoutExpired:
        record_bytecode(target)
        return Compiled(time.monotonic() - t0, False,
                        f"bytecode: compiling {target} took over {timeout:.0f}s; the rest "
                        "compiles at import")
    record_bytecode(target)
    took = time.monotonic() - t0
    if proc.returncode:
        return Compiled(took, False, "bytecode: some files did not compile (written for "
                        "another Python?); they compile at import")
    return Compiled(took, True)


def record_bytecode(target: Path) -> int:
    """List in each top-level ``*.dist-info/RECORD`` the ``.pyc`` of every source file it
    lists that exists and is not listed yet (no hash, as pip writes them). Returns how many
    rows were added."""
    added = 0
    for info in sorted(target.glob("*.dist-info")):
        record = info / "RECORD"
        try:
            text = record.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        listed = {row[0] for row in csv.reader(io.StringIO(text)) if row}
        new: list[str] = []
        for path in sorted(listed):
            if not path.endswith(".py") or path.startswith(("..", "/")):
                continue
            pyc = importlib.util.cache_from_source(path)
            if pyc not in listed and (target / pyc).is_file():
                new.append(pyc)
        if new:
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([p, "", ""] for p in new)
            sep = "" if not text or text.endswith("\n") else "\n"
            write_atomic(record, (text + sep + out.getvalue()).encode("utf-8"),
                         mode=record.stat().st_mode & 0o7777)
            added += len(new)
    return added
