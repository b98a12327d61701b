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
# O_DIRECT writes: offset, length and buffer address a multiple of this (the largest logical
# block size in use; a page, so an mmap'd buffer is aligned)
DIRECT_ALIGN = 4096
# Where ``direct_io=auto`` writes big files with O_DIRECT: block filesystems on this machine.
# Not network or FUSE filesystems (NFS, virtiofs, a network volume's FUSE mount), where an
# uncached write is a synchronous round trip.
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "overlay"})

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
                 read: bool = False, in_place: bool = False, direct: bool = False) -> None:
        self.final = os.fspath(final)
        self.mode = 0o666 & ~UMASK if mode is None else mode  # None: as open() would
        # ``in_place``: a directory no reader looks at until every file in it is complete (a
        # pull's stage, design 5.3): the file is created at its final name, no rename.
        # ``direct``: ``pwrite`` writes the whole aligned blocks of its data with O_DIRECT
        # (design 5, "Transfers": no page-cache copy, no write-back; a pull's big files).
        self.tmp = self.final if in_place else tmp_name(os.path.dirname(self.final) or ".")
        flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self.dfd = -1
        try:
            self.fd = os.open(self.tmp, flags, self.mode & 0o777)
        except FileNotFoundError:
            if not in_place:
                raise
            # a stage's directories are made by the threads that fill them, not all up front
            os.makedirs(os.path.dirname(self.tmp), exist_ok=True)
            self.fd = os.open(self.tmp, flags, self.mode & 0o777)
        if direct:
            # A second descriptor that bypasses the page cache (``pwrite``); a filesystem
            # that refuses O_DIRECT gets buffered writes.
            with contextlib.suppress(OSError, AttributeError):
                self.dfd = os.open(self.tmp, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)

    @property
    def direct(self) -> bool:
        """Whether ``pwrite`` writes whole aligned blocks past the page cache."""
        return self.dfd >= 0

    def _close_direct(self) -> None:
        if self.dfd >= 0:
            os.close(self.dfd)
            self.dfd = -1

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``. When ``direct``, the whole ``DIRECT_ALIGN`` blocks of
        an aligned write (from an aligned buffer: the caller's part) go past the page
        cache and the rest through it; no page is written both ways (a direct span is
        whole blocks that only this write's bytes fill). A direct write the kernel refuses
        (EINVAL: an unaligned buffer, a filesystem that took O_DIRECT at open but not at
        write) is written again buffered, and the file stays buffered."""
        view = memoryview(data)
        n = len(view) - len(view) % DIRECT_ALIGN
        if self.dfd >= 0 and n and offset % DIRECT_ALIGN == 0:
            try:
                _pwrite_all(self.dfd, view[:n], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._close_direct()
            else:
                view, offset = view[n:], offset + n
        _pwrite_all(self.fd, view, offset)

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
        self._close_direct()
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
        self._close_direct()
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


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def fs_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ``fuse.x``...) from
    /proc/self/mountinfo, None where that cannot be read (not Linux)."""
    real = os.path.realpath(nearest_existing(Path(path)))
    best, kind = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if not sep or len(fields) < 5 or not right.split():
                    continue
                mount = _unescape(fields[4])
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):  # later mounts over earlier ones
                    best, kind = mount, right.split()[0]
    except OSError:
        return None
    return kind


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"),
                       ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def use_direct_io(path: str | os.PathLike[str], setting: str) -> bool:
    """``CACHE_SYNC_DIRECT_IO``: ``on``, ``off``, or ``auto`` (on for a block filesystem on
    this machine, ``LOCAL_FS``)."""
    if setting == "off" or not hasattr(os, "O_DIRECT"):
        return False
    return setting == "on" or fs_type(path) in LOCAL_FS


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
