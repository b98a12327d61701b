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
                   "checkpoints"},
    "core": {"layout", "snapshot", "history", "units", "plan", "jsonstream"},
    "engines": {"transfer", "packer", "contents", "local_cache", "fsutil", "progress", "staging",
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
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cache_sync":
                out |= {f"cache_sync.{a.name}" for a in node.names}
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
