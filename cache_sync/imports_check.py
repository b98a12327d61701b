"""Import check after an install: each module is imported in a fresh interpreter that sees the
cache's PYTHONPATH (exactly what the worker will see), never in this process, so a module that
crashes, hangs or pollutes global state cannot take cache-sync down with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Runs in the child. Results go to a file named on the command line, not stdout, because
# modules print whatever they like while being imported.
_CHILD = r"""
import importlib, json, sys, traceback
from importlib import metadata
out_path, modules = sys.argv[1], sys.argv[2:]
try:
    owners = metadata.packages_distributions()
except Exception:
    owners = {}
results = []
for name in modules:
    row = {"module": name, "ok": False, "version": "", "error": "", "path": ""}
    try:
        mod = importlib.import_module(name)
        row["ok"] = True
        row["path"] = getattr(mod, "__file__", None) or str(list(getattr(mod, "__path__", [])))
        dists = owners.get(name.split(".")[0], [])
        version = getattr(mod, "__version__", None)
        if not isinstance(version, str):
            version = metadata.version(dists[0]) if dists else ""
        row["version"] = version
    except BaseException as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        row["error"] = last.splitlines()[0][:300]
    results.append(row)
    with open(out_path, "w") as f:  # after each module: a crash keeps what was learnt
        json.dump(results, f)
"""


@dataclass
class ImportResult:
    module: str
    ok: bool
    version: str = ""
    error: str = ""
    path: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_imports(
    modules: list[tuple[str, bool]],
    env: Mapping[str, str],
    *,
    tmpdir: Path,
    timeout: float = 600.0,
) -> list[ImportResult]:
    """Import ``(module, required)`` pairs in one fresh interpreter with ``env``."""
    if not modules:
        return []
    names = [m for m, _ in modules]
    required = dict(modules)
    fd, out_path = tempfile.mkstemp(prefix="imports-", suffix=".json", dir=tmpdir)
    os.close(fd)
    crash = ""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, out_path, *names],
            env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            crash = f"interpreter exited with {proc.returncode}"
    except subprocess.TimeoutExpired:
        crash = f"import check timed out after {timeout:.0f}s"
    try:
        rows = json.loads(Path(out_path).read_text() or "[]")
    except (OSError, ValueError):
        rows = []
    finally:
        Path(out_path).unlink(missing_ok=True)
    results = [ImportResult(**r, required=required.get(r["module"], True)) for r in rows]
    for name in names[len(results):]:  # modules never reached: the one after the last row
        results.append(ImportResult(name, False, error=crash or "not checked",
                                    required=required[name]))
    return results
