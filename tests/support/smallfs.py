"""A tiny filesystem for disk-full tests.

Preferred: a real tmpfs of the requested size (``mount -t tmpfs``, needs root, works here).
Fallback where mounts are not permitted: an ordinary directory plus an ``ENOSPC`` injector that
a CLI subprocess loads through ``sitecustomize`` (see ``_enospc/sitecustomize.py``): writes
under the directory beyond the byte budget fail with ENOSPC, and statvfs/disk_usage report the
budget, so both the "check free space first" path and the "disk filled up while writing" path
can be driven. ``SmallFS.env()`` gives the environment a subprocess needs for either kind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INJECTOR_DIR = Path(__file__).resolve().parent / "_enospc"


@dataclass
class SmallFS:
    path: Path
    size: int
    kind: str  # "tmpfs" or "injected"

    def env(self) -> dict[str, str]:
        """Extra environment for a subprocess writing into ``path``. PYTHONPATH must be
        merged by the caller (``merge_pythonpath``)."""
        if self.kind == "tmpfs":
            return {}
        return {"FAULTS_ENOSPC_DIR": str(self.path), "FAULTS_ENOSPC_BYTES": str(self.size),
                "PYTHONPATH": str(INJECTOR_DIR)}

    def free(self) -> int:
        if self.kind == "tmpfs":
            return shutil.disk_usage(self.path).free
        used = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return max(0, self.size - used)


def merge_pythonpath(env: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """``env`` updated with ``extra``, PYTHONPATH entries prepended rather than replaced."""
    out = dict(env)
    for k, v in extra.items():
        if k == "PYTHONPATH" and out.get(k):
            out[k] = v + os.pathsep + out[k]
        else:
            out[k] = v
    return out


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = tempfile.mkdtemp(prefix="faults-mnt-probe-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], capture_output=True)
        return ok
    finally:
        os.rmdir(probe)


@contextlib.contextmanager
def small_fs(size: int, *, inodes: int | None = None, force_injected: bool = False
             ) -> Iterator[SmallFS]:
    """A ``size``-byte filesystem (and, on tmpfs, at most ``inodes`` files and dirs)."""
    base = Path(tempfile.mkdtemp(prefix="faults-smallfs-"))
    mounted = False
    try:
        if not force_injected and can_mount():
            opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(base)],
                               capture_output=True, text=True)
            mounted = r.returncode == 0
        yield SmallFS(base, size, "tmpfs" if mounted else "injected")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def fill(fs: SmallFS, leave: int) -> Path:
    """Fill the filesystem until about ``leave`` bytes are free."""
    path = fs.path / f"filler-{uuid.uuid4().hex[:8]}"
    need = fs.free() - leave
    with open(path, "wb") as f:
        while need > 0:
            n = min(need, 1 << 20)
            f.write(b"\0" * n)
            need -= n
    return path
