"""A synthetic ``packages/`` tree of N files for the memory benchmark (``python -m bench rss``).

Shaped like a big ``pip install --target``: packages of nested subpackages, each directory
with an ``__init__.py``, modules and a ``__pycache__/`` of ``.pyc``-like files, a
``*.dist-info`` per package, a few relative symlinks. Sizes are log-normal around 1.5 KB
(mean ~2.5 KB; 2% empty), one file in 4,000 is 1-6 MB, and ``big`` files of ~120 MB are
optional. Text files compress, ``.pyc``-like ones barely. Deterministic for a given N and
seed: every file's bytes are unique (a header names it), so no content is shared.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

MB = 1 << 20
_WORDS = ("def class return import self value items path data tree node file store "
          "state merge pull push index entry blob range chunk pack object sha digest "
          "async await lambda yield None True False raise except finally with").split()


@dataclass
class Tree:
    root: Path  # the cache root; the area is root/packages
    files: int
    links: int
    bytes: int
    paths: list[str]  # regular files, relative to the area (for touching 1% of them)


def _text_block(rng: random.Random, n: int) -> bytes:
    out = []
    size = 0
    while size < n:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choices(_WORDS, k=rng.randint(3, 12)))
        out.append(line)
        size += len(line) + 1
    return ("\n".join(out) + "\n").encode()


def build(root: Path, files: int, *, big: int = 0, seed: int = 1) -> Tree:
    """Write the tree under ``root/packages`` (replacing what is there)."""
    rng = random.Random(seed)
    area = root / "packages"
    shutil.rmtree(root, ignore_errors=True)
    area.mkdir(parents=True)
    text = _text_block(rng, 512 * 1024)
    binary = rng.randbytes(512 * 1024)
    total = made = links = 0
    paths: list[str] = []

    def body(i: int, rel: str, size: int) -> bytes:
        head = f"# {i} {rel}\n".encode()
        src = binary if rel.endswith(".pyc") else text
        if size <= len(head):
            return head[:size]
        want = size - len(head)
        reps = []
        while want > 0:
            off = rng.randrange(0, len(src) - 1)
            piece = src[off: off + want]
            reps.append(piece)
            want -= len(piece)
        return head + b"".join(reps)

    def write(rel: str, size: int) -> None:
        nonlocal total, made
        data = body(made, rel, size)
        with open(area / rel, "wb") as f:
            f.write(data)
        total += len(data)
        made += 1
        paths.append(rel)

    def size_of() -> int:
        if rng.random() < 0.02:
            return 0
        if rng.random() < 1 / 4000:
            return rng.randint(1 * MB, 6 * MB)
        return min(int(rng.lognormvariate(7.3, 1.0)), 256 * 1024)

    pkg = 0
    while made < files:
        name = f"pkg{pkg:04d}"
        pkg += 1
        info = area / f"{name}-1.{pkg % 7}.0.dist-info"
        info.mkdir()
        for meta in ("METADATA", "WHEEL", "top_level.txt"):
            if made < files:
                write(f"{info.name}/{meta}", size_of())
        # A package: 1-4 levels of subpackages, 5-40 modules a directory (and their .pyc).
        stack = [(name, rng.randint(1, 4))]
        budget = rng.randint(50, 1500)
        while stack and made < files and budget > 0:
            rel, depth = stack.pop()
            (area / rel / "__pycache__").mkdir(parents=True)
            write(f"{rel}/__init__.py", size_of())
            for m in range(rng.randint(5, 40)):
                if made >= files - 1:
                    break
                write(f"{rel}/mod{m}.py", size_of())
                write(f"{rel}/__pycache__/mod{m}.cpython-311.pyc", size_of())
                budget -= 2
            if rng.random() < 0.01 and made:
                os.symlink("__init__.py", area / rel / "alias.py")
                links += 1
            if depth > 1:
                stack += [(f"{rel}/sub{k}", depth - 1) for k in range(rng.randint(1, 4))]
    for k in range(big):
        rel = f"pkg0000/weights{k}.bin"
        with open(area / rel, "wb") as f:
            for _ in range(120):
                f.write(rng.randbytes(MB))
        total += 120 * MB
        paths.append(rel)
    return Tree(root, len(paths), links, total, paths)


def touch(tree: Tree, fraction: float = 0.01, seed: int = 2) -> int:
    """Change the contents of ``fraction`` of the files (appending a line); returns how many."""
    rng = random.Random(seed)
    chosen = rng.sample(tree.paths, max(1, int(len(tree.paths) * fraction)))
    area = tree.root / "packages"
    for rel in chosen:
        with open(area / rel, "ab") as f:
            f.write(b"# touched\n")
    return len(chosen)
