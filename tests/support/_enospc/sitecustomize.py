"""ENOSPC injector, loaded by a subprocess through PYTHONPATH when a real small filesystem
cannot be mounted. Writes to files under FAULTS_ENOSPC_DIR count against FAULTS_ENOSPC_BYTES
(plus what is already there); past it they fail with ENOSPC. statvfs/disk_usage report the
budget, or FAULTS_ENOSPC_REPORT_FREE when set (a filesystem that claims more room than it has,
so a free-space check passes and the write fails). Only the write paths Python code uses are covered: open()/io.open, os.open+os.write,
os.pwrite, os.posix_fallocate."""

from __future__ import annotations

import builtins
import errno
import io
import os
import threading

_DIR = os.environ.get("FAULTS_ENOSPC_DIR")
if _DIR:
    _DIR = os.path.realpath(_DIR)
    _BUDGET = int(os.environ["FAULTS_ENOSPC_BYTES"])
    _lock = threading.Lock()
    _fds: dict[int, str] = {}

    def _existing() -> int:
        total = 0
        for dirpath, _, files in os.walk(_DIR):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def _inside(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return p == _DIR or p.startswith(_DIR + os.sep)

    def _charge(n: int) -> None:
        with _lock:
            if _existing() + n > _BUDGET:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class _FileIO(io.FileIO):
        def write(self, b):  # type: ignore[override]
            _charge(len(memoryview(b)))
            return super().write(b)

    _real_open = io.open
    _real_os_open, _real_write, _real_pwrite = os.open, os.write, os.pwrite
    _real_fallocate = getattr(os, "posix_fallocate", None)
    _real_statvfs = os.statvfs

    def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
              closefd=True, opener=None):
        if isinstance(file, int) or not any(c in mode for c in "wax+") or not _inside(file):
            return _real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw = _FileIO(file, mode.replace("b", "").replace("t", ""), closefd, opener)
        if buffering == 0:
            return raw
        buf = (io.BufferedRandom if "+" in mode else io.BufferedWriter)(raw)
        if "b" in mode:
            return buf
        return io.TextIOWrapper(buf, encoding, errors, newline)

    def _os_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = _real_os_open(path, flags, mode, dir_fd=dir_fd)
        if flags & (os.O_WRONLY | os.O_RDWR) and dir_fd is None and _inside(path):
            _fds[fd] = os.fspath(path)
        return fd

    _real_close = os.close

    def _close(fd):
        _fds.pop(fd, None)
        return _real_close(fd)

    def _write(fd, data):
        if fd in _fds:
            _charge(len(memoryview(data)))
        return _real_write(fd, data)

    def _pwrite(fd, data, offset):
        if fd in _fds:
            _charge(len(memoryview(data)))
        return _real_pwrite(fd, data, offset)

    def _fallocate(fd, offset, length):
        if fd in _fds:
            _charge(length)
        return _real_fallocate(fd, offset, length)

    def _statvfs(path):
        st = _real_statvfs(path)
        if not _inside(path):
            return st
        report = os.environ.get("FAULTS_ENOSPC_REPORT_FREE")
        free = int(report) if report else max(0, _BUDGET - _existing())
        free_blocks = free // st.f_frsize
        total = max(_BUDGET, free) // st.f_frsize
        return os.statvfs_result((st.f_bsize, st.f_frsize, total, free_blocks, free_blocks,
                                  st.f_files, st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))

    builtins.open = io.open = _open
    os.open, os.write, os.pwrite, os.statvfs = _os_open, _write, _pwrite, _statvfs
    os.close = _close
    if _real_fallocate is not None:
        os.posix_fallocate = _fallocate
    # shutil.disk_usage uses os.statvfs by name lookup at call time: covered.
