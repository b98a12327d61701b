"""The modules CMD imports, in the order it imports them, read from its source (design 5.4,
"Need order"): the default order of a cold ``packages/`` pull when no start of this worker
has been recorded.

``python [options] -m mod``, ``python [options] script.py`` and a script whose ``#!`` line runs
Python are read; anything else gives nothing (the pull keeps its size order). The entry file
and every local module it imports (found next to it, or under the working directory for
``-m``) are parsed, never run: each import statement, depth first where a local module is
imported, those inside functions too (a worker imports its engine lazily). What is not local
is a top-level module name the pull should fetch first, in that order. Bounded: at most
``MAX_FILES`` files of at most ``MAX_BYTES`` each; a file that does not parse is skipped.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path

MAX_FILES = 400
MAX_BYTES = 1 << 20
_STDLIB = frozenset(sys.stdlib_module_names)
_ARG_OPTS = {"-W", "-X", "--check-hash-based-pycs"}  # interpreter options taking a value


def entry_of(cmd: Sequence[str], cwd: Path) -> tuple[Path, str, bool] | None:
    """(the directory imports of CMD resolve against, the module ``-m`` names or the script's
    file name in that directory, whether it is a module); None when CMD is not Python."""
    if not cmd:
        return None
    exe = os.path.basename(cmd[0])
    if not exe.startswith("python"):
        script = _resolve(cmd[0], cwd)
        if script is None or not _is_python_script(script):
            return None
        return script.parent, script.name, False
    args = list(cmd[1:])
    while args:
        a = args.pop(0)
        if a == "-m" and args:
            return cwd, args[0], True
        if a.startswith("-m") and len(a) > 2:
            return cwd, a[2:], True
        if a == "-c":
            return None
        if a in _ARG_OPTS:
            if args:
                args.pop(0)
            continue
        if a.startswith("-"):
            continue
        script = (cwd / a) if not os.path.isabs(a) else Path(a)
        return (script.parent, script.name, False) if script.is_file() else None
    return None


def _resolve(name: str, cwd: Path) -> Path | None:
    if os.sep in name:
        p = Path(name) if os.path.isabs(name) else cwd / name
        return p if p.is_file() else None
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d or ".") / name
        if p.is_file():
            return p
    return None


def _is_python_script(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def imported_modules(cmd: Sequence[str], cwd: Path) -> list[str]:
    """The top-level names of the non-local modules CMD's source imports, first use first."""
    entry = entry_of(cmd, cwd)
    if entry is None:
        return []
    root, name, is_module = entry
    out: list[str] = []
    seen_files: set[Path] = set()
    # a module that is not local (an installed tool) has no files here: nothing to read
    for f in _module_files(root, name, main=True) if is_module else [root / name]:
        _scan(f, root, name if is_module else "__main__", seen_files, out)
    return out


def _module_files(root: Path, dotted: str, main: bool = False) -> list[Path]:
    """The local files importing ``dotted`` runs, package ``__init__`` files first; [] when
    the module is not under ``root``."""
    parts = dotted.split(".")
    out: list[Path] = []
    for i in range(1, len(parts)):
        init = root.joinpath(*parts[:i], "__init__.py")
        if init.is_file():
            out.append(init)
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        out.append(base.with_suffix(".py"))
    elif (base / "__init__.py").is_file():
        out.append(base / "__init__.py")
        if main and (base / "__main__.py").is_file():
            out.append(base / "__main__.py")
    elif main and (base / "__main__.py").is_file():
        out.append(base / "__main__.py")
    return out


def _scan(path: Path, root: Path, module: str, seen: set[Path], out: list[str]) -> None:
    if path in seen or len(seen) >= MAX_FILES:
        return
    seen.add(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            return
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return
    package = module if path.name in ("__init__.py", "__main__.py") else module.rpartition(".")[0]
    for node in _in_order(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: always local
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level > 1 else base
                prefix = ".".join(p for p in base if p)
                mod = ".".join(p for p in (prefix, node.module or "") if p)
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                mod = node.module or ""
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if not name or name.startswith("__future__"):
                continue
            files = _module_files(root, name)
            if files:
                for f in files:
                    _scan(f, root, _module_of(f, root), seen, out)
            elif not _local_top(root, name):
                top = name.split(".", 1)[0]
                if top not in out and top not in _STDLIB:
                    out.append(top)


def _local_top(root: Path, name: str) -> bool:
    """``name``'s top-level package is a local directory (its missing member is an attribute
    of a local module, not a module to fetch)."""
    top = name.split(".", 1)[0]
    return (root / top).is_dir() or (root / f"{top}.py").is_file()


def _module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("__init__", "__main__"):
        parts.pop()
    return ".".join(parts)


def _in_order(tree: ast.AST) -> list[ast.AST]:
    """Every node, depth first in source order (``ast.walk`` is breadth first)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out
