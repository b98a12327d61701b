"""Benchmark datasets, built once and cached under the bench data dir.

Three sizes share one shape so every code path is exercised at every size:
- ``full``: the issue's dataset: torch (local CPU wheel) + numpy, sympy, networkx, jinja2, rich,
  pyyaml, requests installed with ``pip install --target`` (~22k files, ~900 MB), and an HF model
  cache with two 1 GiB random weight files;
- ``quick``: a smaller package set and 200 MiB weights, for development on a shared machine;
- ``tiny``: a synthetic tree (no pip) for the smoke test, with every awkward case in it: empty
  files, an empty dir, exec bits, a relative symlink.

A dataset is a cache *root* holding one or both areas (``packages/``, ``models/``), exactly as a
worker's cache root looks. Tools get their own hard-linked copy of it per run (``cp -al``: fast,
no extra bytes), so state a tool writes into its root never leaks into another tool's source.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

PACKAGES = {
    "full": ["torch==2.13.0", "numpy", "sympy", "networkx", "jinja2", "rich", "pyyaml", "requests"],
    "quick": ["numpy", "networkx", "jinja2", "rich", "pyyaml", "requests"],
}
EXTRA_PACKAGE = "attrs"  # the "one more small package" of the incremental push
BLOB_BYTES = {"full": 1024 * MiB, "quick": 200 * MiB, "tiny": 4 * MiB}
SIZES = tuple(BLOB_BYTES)
MODEL_DIR = "hub/models--bench-org--bench-model"
REVISION = "0123456789abcdef0123456789abcdef01234567"

# Which areas each dataset holds (the (a), (b), (c)).
DATASETS = {"a": ("packages",), "b": ("models",), "c": ("packages", "models")}
DATASET_TITLES = {"a": "packages", "b": "HF model", "c": "worker cache"}


@dataclass(frozen=True)
class Pieces:
    """The built areas for one size, plus the extra package for the incremental push."""

    packages: Path
    models: Path
    extra: Path


def _pip_target(target: Path, reqs: list[str]) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
           "--disable-pip-version-check", "--target", str(tmp), *reqs]
    print(f"[bench] building {target.name}: pip install --target ... {' '.join(reqs)}",
          file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.rename(tmp, target)  # only a complete install is ever cached


def _tiny_packages(target: Path) -> None:
    """A synthetic package tree with the same awkward cases a real site-packages has."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = hashlib.sha256(b"tiny")
    for pkg in range(6):
        d = tmp / f"pkg{pkg}" / "sub"
        d.mkdir(parents=True)
        for i in range(40):
            rng.update(b"x")
            size = (i * 137) % 5000
            (d / f"mod{i}.py").write_bytes((rng.hexdigest() * (size // 64 + 1))[:size].encode())
        (tmp / f"pkg{pkg}" / "__init__.py").write_bytes(b"")
    (tmp / "pkg0" / "empty-dir").mkdir()
    tool = tmp / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    os.symlink("../pkg0/sub/mod1.py", tmp / "bin" / "link.py")
    (tmp / "pkg1" / "big.so").write_bytes(os.urandom(3 * MiB))
    os.rename(tmp, target)


def _tiny_extra(target: Path) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "extra_pkg").mkdir(parents=True)
    for i in range(5):
        (tmp / "extra_pkg" / f"m{i}.py").write_bytes(os.urandom(2000 + i))
    (tmp / "extra_pkg-1.0.dist-info").mkdir()
    (tmp / "extra_pkg-1.0.dist-info" / "METADATA").write_text("Name: extra_pkg\n")
    os.rename(tmp, target)


def _write_random(path: Path, size: int) -> str:
    """Random (incompressible, like real weights) bytes; returns their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def _hf_models(target: Path, blob_bytes: int) -> None:
    """An HF hub cache: blobs named by content hash, snapshot symlinks, refs/main."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    repo = tmp / MODEL_DIR
    blobs, snap = repo / "blobs", repo / "snapshots" / REVISION
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    files: dict[str, bytes | int] = {
        "model-00001-of-00002.safetensors": blob_bytes,
        "model-00002-of-00002.safetensors": blob_bytes,
        "config.json": json.dumps({"architectures": ["Bench"], "hidden_size": 1024}).encode(),
        "model.safetensors.index.json": json.dumps({"weight_map": {"w1": "1", "w2": "2"}}).encode(),
        "tokenizer.json": json.dumps({"vocab": {f"t{i}": i for i in range(3000)}}).encode(),
        "README.md": b"# bench model\n\nRandom weights for the cache-sync benchmark.\n",
    }
    for name, content in files.items():
        tmp_blob = blobs / ".incoming"
        if isinstance(content, int):
            digest = _write_random(tmp_blob, content)
        else:
            tmp_blob.write_bytes(content)
            digest = hashlib.sha256(content).hexdigest()
        os.rename(tmp_blob, blobs / digest)
        os.symlink(f"../../blobs/{digest}", snap / name)
    os.rename(tmp, target)


def build_pieces(data_dir: Path, size: str) -> Pieces:
    """Build (or reuse) the areas for ``size``; cached across runs by directory name."""
    pieces = data_dir / "pieces"
    pieces.mkdir(parents=True, exist_ok=True)
    packages = pieces / f"packages-{size}"
    models = pieces / f"models-{size}"
    # tiny stays offline (no pip at all) so the smoke test is hermetic and fast.
    extra = pieces / ("extra-package-tiny" if size == "tiny" else "extra-package")
    if not packages.exists():
        _tiny_packages(packages) if size == "tiny" else _pip_target(packages, PACKAGES[size])
    if not models.exists():
        _hf_models(models, BLOB_BYTES[size])
    if not extra.exists():
        if size == "tiny":
            _tiny_extra(extra)
        else:
            _pip_target(extra, ["--no-deps", EXTRA_PACKAGE])
    return Pieces(packages, models, extra)


def make_root(pieces: Pieces, dataset: str, dest: Path) -> Path:
    """A fresh cache root for ``dataset`` at ``dest``: hard links to the pieces (no bytes)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for area in DATASETS[dataset]:
        subprocess.run(["cp", "-al", str(getattr(pieces, area)), str(dest / area)], check=True)
    return dest


def add_extra_package(pieces: Pieces, root: Path) -> int:
    """Install the extra package into ``root/packages`` (hard links) and return its bytes.
    Datasets without packages get it as a new area file set under models/ instead, so the
    incremental push is measured on every dataset."""
    area = root / ("packages" if (root / "packages").exists() else "models")
    subprocess.run(["cp", "-al", f"{pieces.extra}/.", str(area)], check=True)
    return tree_bytes(pieces.extra)


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total
