"""Test helpers: run the real CLI in a subprocess, describe trees, make test trees."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support import REPO


def cli_env(remote: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CACHE_SYNC_", "AWS_", "B2_"))}
    env.update({
        "PYTHONPATH": str(REPO),
        "CACHE_SYNC_REMOTE": remote,
        "CACHE_SYNC_PROGRESS": "off",
        "CACHE_SYNC_RETRY_BASE": "0.05",
        "CACHE_SYNC_CHUNK_SIZE": "1M",
        "CACHE_SYNC_PACK_SIZE": "256K",
        "CACHE_SYNC_SMALL_FILE": "256K",
    })
    env.update(extra or {})
    return env


def run_cli(args: list[str], env: dict[str, str], *, check: bool = True, timeout: float = 120,
            json_out: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cache_sync"] + (["--json"] if json_out else []) + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}")
    return proc


def run_json(args: list[str], env: dict[str, str], **kw) -> dict:
    proc = run_cli(args, env, json_out=True, **kw)
    return json.loads(proc.stdout)


def describe(root: Path, *, mtimes: bool = True) -> dict[str, tuple]:
    """path -> (kind, mode, mtime_ns, content hash or link target) for a whole tree."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if rel.split(os.sep)[0] == ".cache-sync":
                continue
            st = os.lstat(p)
            mt = st.st_mtime_ns if mtimes else 0
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", 0, mt, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), mt, "")
            else:
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("f", stat.S_IMODE(st.st_mode), mt, h)
    return out


def make_tree(root: Path, seed: int = 0, files: int = 40, big: int = 0) -> None:
    """A small package-like tree: nested dirs, exec bits, empty file and dir, symlinks, and an
    HF-layout model (blobs + snapshot symlinks)."""
    import random

    rnd = random.Random(seed)
    pkg = root / "packages"
    for i in range(files):
        d = pkg / f"pkg{i % 5}" / ("sub" if i % 3 else "")
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.choice([0, 1, 100, 5000, 70000, 300000])
        (d / f"mod{i}.py").write_bytes(rnd.randbytes(size) if i % 2 else
                                      (b"x = %d\n" % i) * (size // 7 + 1))
    (pkg / "pkg0" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(pkg / "pkg0" / "tool.sh", 0o755)
    (pkg / "empty_dir").mkdir(exist_ok=True)
    (pkg / "bin").mkdir(exist_ok=True)
    if not (pkg / "bin" / "tool").is_symlink():
        os.symlink("../pkg0/tool.sh", pkg / "bin" / "tool")
    hf = root / "models" / "hub" / "models--org--tiny"
    (hf / "blobs").mkdir(parents=True, exist_ok=True)
    (hf / "snapshots" / "rev1").mkdir(parents=True, exist_ok=True)
    (hf / "refs").mkdir(exist_ok=True)
    weights = rnd.randbytes(big or 2_500_000)
    wsha = hashlib.sha256(weights).hexdigest()
    (hf / "blobs" / wsha).write_bytes(weights)
    (hf / "blobs" / "cfg").write_text('{"dim": 64}')
    for name, target in (("model.safetensors", wsha), ("config.json", "cfg")):
        link = hf / "snapshots" / "rev1" / name
        if not link.is_symlink():
            os.symlink(f"../../blobs/{target}", link)
    (hf / "refs" / "main").write_text("rev1")


def disk_usage(root: Path) -> int:
    """Bytes of regular files, counting each inode once (so symlinks cost nothing)."""
    seen = set()
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def resident_fraction(path: Path) -> float:
    """The share of ``path``'s pages in the page cache (mincore(2) on a read-only map)."""
    import ctypes
    import mmap as _mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = (size + _mmap.PAGESIZE - 1) // _mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, _mmap.PROT_READ, _mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
            return sum(b & 1 for b in vec.raw) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def direct_io_supported(directory: Path) -> bool:
    """Whether files in ``directory`` can be opened with O_DIRECT (tmpfs: no)."""
    probe = directory / ".direct-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    probe.unlink()
    return True
