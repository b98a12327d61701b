"""The one place that writes files into place: a temporary name next to the final path,
mode and mtime set through the descriptor, then an atomic rename. Also hashing, free space,
and turning ``OSError`` into one clear line. Every writer in cache-sync (pulled files, the
local store, the state and index files, cached manifests) goes through ``AtomicFile``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from cache_sync.errors import CacheSyncError, DiskSpaceError

TMP_PREFIX = ".cs-tmp-"  # scans skip (and clean) names with this prefix
HASH_READ = 1 << 20

_TMP_RUN = f"{TMP_PREFIX}{os.urandom(4).hex()}-"
_tmp_seq = itertools.count()


def tmp_name(directory: str) -> str:
    """A fresh temporary name in ``directory`` (random per process, then a counter: no
    syscall per name; ``itertools.count`` is atomic under the GIL)."""
    return f"{directory}/{_TMP_RUN}{next(_tmp_seq)}"


def _read_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting
    it, which races with threads creating files)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022  # not Linux: assume the usual one; a wrong guess only costs an fchmod


UMASK = _read_umask()


def disk_error(exc: OSError, path: str | os.PathLike[str]) -> CacheSyncError:
    """One line for a failed local write: disk full (with the fix) or the OS's reason."""
    if exc.errno == errno.ENOSPC:
        return DiskSpaceError(f"no space left on device while writing {path}",
                              hint="free space or point CACHE_SYNC_ROOT at a bigger disk")
    return CacheSyncError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into ``disk_error``'s one line
    (cache-sync's own errors pass through)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, CacheSyncError):
            raise
        raise disk_error(exc, path) from None


class AtomicFile:
    """A new file under a temporary name in the final path's directory. ``commit`` sets the
    mode and mtime through the descriptor and renames it over the final path; leaving
    without ``commit`` (or ``discard``) removes it, so a final path only ever holds a
    complete file. Raw ``OSError`` propagates: callers translate it (``disk_error``, or the
    local store's own error classes)."""

    def __init__(self, final: str | os.PathLike[str], mode: int | None = None, *,
                 read: bool = False, in_place: bool = False) -> None:
        self.final = os.fspath(final)
        self.mode = 0o666 & ~UMASK if mode is None else mode  # None: as open() would
        # ``in_place``: a directory no reader looks at until every file in it is complete (a
        # pull's stage, design 5.3): the file is created at its final name, no rename.
        self.tmp = self.final if in_place else tmp_name(os.path.dirname(self.final) or ".")
        flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self.fd = os.open(self.tmp, flags, self.mode & 0o777)
        except FileNotFoundError:
            if not in_place:
                raise
            # a stage's directories are made by the threads that fill them, not all up front
            os.makedirs(os.path.dirname(self.tmp), exist_ok=True)
            self.fd = os.open(self.tmp, flags, self.mode & 0o777)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def commit(self, mtime_ns: int | None = None, *, fsync: bool = False) -> os.stat_result:
        """Put the file in place; returns its stat (taken before the rename, which keeps
        size, mtime and inode)."""
        try:
            if self.mode & UMASK or self.mode > 0o777:
                os.fchmod(self.fd, self.mode)  # the umask took bits away, or setuid/sticky
            if mtime_ns is not None:
                os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            if fsync:
                os.fsync(self.fd)
            st = os.fstat(self.fd)
        except BaseException:
            self.discard()
            raise
        os.close(self.fd)
        self.fd = -1
        if self.tmp != self.final:
            try:
                os.replace(self.tmp, self.final)
            except BaseException:
                self.discard()
                raise
        self.tmp = ""
        return st

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = ""

    def __enter__(self) -> AtomicFile:  # noqa: PYI034 (py3.10: no typing.Self)
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()  # no-op after commit


def write_atomic(path: str | os.PathLike[str], data: bytes | memoryview, *,
                 mode: int | None = None, mtime_ns: int | None = None, mkdir: bool = False,
                 fsync: bool = False, in_place: bool = False) -> os.stat_result:
    """Write ``data`` to ``path`` atomically (``AtomicFile``); errors as one clear line.
    ``fsync``: the file and then its directory reach the disk before this returns (a journal
    that must survive a power cut). ``in_place``: see ``AtomicFile``."""
    with writing(path):
        if mkdir:
            os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
        with AtomicFile(path, mode, in_place=in_place) as f:
            f.write(data)
            st = f.commit(mtime_ns, fsync=fsync)
        if fsync:
            dfd = os.open(os.path.dirname(os.fspath(path)) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return st


def copy_atomic(src: str, path: str, *, mode: int, mtime_ns: int, digest: str | None) -> None:
    """Copy the local file ``src`` to ``path`` atomically, refusing (before the rename) a copy
    whose SHA-256 is not ``digest`` (the source changed under us). ``digest=None``: the source
    is a file this process wrote and verified where nothing else writes (a pull's stage), so
    the copy is not hashed again."""
    with writing(path), AtomicFile(path, mode, read=True) as f, open(src, "rb") as s:
        _copy_fd(s.fileno(), f.fd)
        if digest is not None and _hash_fd(f.fd) != digest:
            raise CacheSyncError(f"local copy source {src!r} changed during the pull")
        f.commit(mtime_ns)


def _copy_fd(src: int, dst: int) -> None:
    try:
        while os.sendfile(dst, src, None, 1 << 30):
            pass
    except OSError as exc:  # no sendfile between these files: plain copy
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while chunk := os.read(src, HASH_READ):
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst, view):]


def hash_range(fd: int, start: int, end: int | None, hasher: Any) -> Any:
    """Feed bytes [start, end) of ``fd`` (to its end when None) to ``hasher`` and return it.
    Reads of 4 MiB: hashlib releases the GIL for them."""
    pos = start
    while end is None or pos < end:
        chunk = os.pread(fd, 4 * HASH_READ if end is None else min(4 * HASH_READ, end - pos),
                         pos)
        if not chunk:
            break
        hasher.update(chunk)
        pos += len(chunk)
    return hasher


def _hash_fd(fd: int) -> str:
    return str(hash_range(fd, 0, None, hashlib.sha256()).hexdigest())


def symlink_atomic(target: str, path: str, mtime_ns: int) -> None:
    tmp = tmp_name(os.path.dirname(path))
    os.symlink(target, tmp)
    with contextlib.suppress(OSError):  # not every filesystem keeps symlink times
        os.utime(tmp, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    os.replace(tmp, path)


def hash_file(path: str | os.PathLike[str]) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _hash_fd(fd)
    finally:
        os.close(fd)


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (a cache root may not exist yet)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(nearest_existing(path)).free
