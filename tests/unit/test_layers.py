"""The dependency direction of README's architecture table: CLI -> operations -> engines and
storage -> pure core -> foundation. A module may import its own layer or any layer below,
never one above; the pure core imports no module that does I/O."""

from __future__ import annotations

import ast

from tests.support import REPO

PKG = REPO / "cache_sync"
LAYERS = {
    # storage.dialect is pure (names and request hooks); config validates a dialect's name
    "foundation": {"config", "errors", "__init__", "storage.dialect", "storage.s3common",
                   "storage.options", "checkpoints"},
    "core": {"layout", "snapshot", "history", "units", "unitplan", "plan", "jsonstream",
             "versions", "accessprofile"},
    "engines": {"transfer", "packer", "contents", "local_cache", "fsutil", "progress", "staging",
                "unitplace", "entryscan",
                "storage", "storage.base", "storage.local", "storage.s3", "storage.memory",
                "storage.s3lite", "storage.sigv4",
                "storage.retry"},
}
ORDER = ["foundation", "core", "engines", "operations", "cli"]
IO_MODULES = {"subprocess", "socket", "shutil", "fcntl", "tempfile", "boto3", "botocore",
              "threading", "concurrent"}


def layer(mod: str) -> str:
    if mod.startswith("cli") or mod == "__main__":
        return "cli"
    for name, mods in LAYERS.items():
        if mod in mods:
            return name
    return "operations"


def imports(path) -> set[str]:
    """Every cache_sync module ``path`` imports, at the top, inside a function or under
    TYPE_CHECKING alike (``from pkg import mod`` names the module ``pkg.mod``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("cache_sync") and (PKG.parent / node.module.replace(
                    ".", "/")).is_dir():  # a package: its names may be modules
                pkg = node.module
                out |= {f"{pkg}.{a.name}" if (PKG.parent / pkg.replace(".", "/") / (
                    a.name + ".py")).exists() else pkg for a in node.names}
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__") or "__init__", path


def test_imports_never_go_up_a_layer():
    wrong = []
    for mod, path in modules():
        here = ORDER.index(layer(mod))
        for imp in imports(path):
            if not imp.startswith("cache_sync.") or imp == "cache_sync.__main__":
                continue
            target = imp.removeprefix("cache_sync.")
            if ORDER.index(layer(target)) > here:
                wrong.append(f"{mod} ({layer(mod)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_pure_core_does_no_io():
    for mod, path in modules():
        if layer(mod) == "core":
            bad = {i.split(".")[0] for i in imports(path)} & IO_MODULES
            assert not bad, f"{mod} imports {bad}"


def _graph() -> dict[str, set[str]]:
    mods = dict(modules())
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for imp in imports(path):
            target = imp.removeprefix("cache_sync.")
            if imp.startswith("cache_sync.") and target in mods and target != mod:
                deps.add(target)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """No two modules import each other, directly or through others, not even lazily inside
    a function or for types only: a cycle hides which module owns what (config <-> the S3
    backends once; local_cache <-> staging, the roll-forward hidden inside the lock)."""
    assert cycles(_graph()) == []
