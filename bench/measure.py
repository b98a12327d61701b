"""Run one tool invocation and measure it: wall time, peak RSS of its process tree, peak extra
disk, and bytes it read through read() (a proxy for "read file contents").

Sampling is a thread polling psutil every ``interval`` seconds; each process's last seen counters
are kept so children that exit between samples still count. Disk is the allocated size of the
directories the tool may write to (its destination, its TMPDIR, its state dir), walked at a rate
that keeps the walk under ~10% of one core; ``peak extra`` is the peak minus the size at the end,
i.e. bytes that existed only during the run (temp files, staging). Filesystem-wide counters
(statvfs) were tried first and are useless here: other processes on the same disk swamp them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psutil


@dataclass
class Measurement:
    seconds: float
    peak_rss: int
    peak_extra_disk: int
    read_bytes: int
    returncode: int
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)


DROP_CACHES = "/proc/sys/vm/drop_caches"
_VOLUME = re.compile(r"^(.+)_\d+\.\w+$")  # SeaweedFS: <collection (= bucket)>_<volume id>.dat


def settle(warm: Sequence[str | os.PathLike[str]] = ()) -> bool:
    """The same machine state before every timed run: dirty pages written back, the page cache
    dropped, then the ``warm`` trees (the server's stored bytes, a way's own inputs) read back
    in. Without it a run pays for the one before: the last tree's pages crowd memory (each
    new page reclaimed first: 16 s more kernel time seen in one pull), and ext4 scans past its
    recently deleted inodes while their table blocks are cached (``recently_deleted``: 11% of
    a pull's samples). True if the cache was dropped (root only; else only synced)."""
    subprocess.run(["sync"], check=False)
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        dropped = True
    except OSError:
        dropped = False
    for top in warm:
        paths = ([os.fspath(top)] if os.path.isfile(top) else
                 [os.path.join(d, n) for d, _, names in os.walk(top) for n in names])
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as f:
                    while f.read(1 << 24):
                        pass
            except OSError:
                continue
    return dropped


def server_files(data_dir: str | None, bucket: str) -> list[str]:
    """The files of a SeaweedFS data dir that serve ``bucket``: its volumes (named after the
    bucket's collection) and the shared ones (filer, master), not the other buckets'."""
    if not data_dir:
        return []
    out = []
    for name in os.listdir(data_dir):
        volume = _VOLUME.match(name)
        if volume is None or volume.group(1) == bucket:
            out.append(os.path.join(data_dir, name))
    return out


def _du(path: str) -> int:
    """Allocated bytes under ``path`` (lstat only: symlinks are not followed)."""
    total = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # raced with a rename/delete: the tool is working
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    total += _du(entry.path)
    except OSError:
        pass
    return total


def used_bytes(paths: Sequence[str]) -> int:
    return sum(_du(p) for p in paths)


class _Sampler(threading.Thread):
    def __init__(self, pid: int, disk_paths: Sequence[str], interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.disk_paths, self.interval = pid, disk_paths, interval
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_used = used_bytes(disk_paths)
        self.next_walk = 0.0
        self.reads: dict[int, int] = {}
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        try:
            root = self._procs.get(self.pid) or psutil.Process(self.pid)
            self._procs[self.pid] = root
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        # Reuse Process objects so psutil's per-process caches stay warm (cheaper sampling).
        return [self._procs.setdefault(p.pid, p) for p in procs]

    def sample(self) -> None:
        rss = 0
        for p in self._tree():
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    self.reads[p.pid] = p.io_counters().read_chars
            except (psutil.Error, AttributeError):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        now = time.monotonic()
        if now >= self.next_walk:
            self.peak_used = max(self.peak_used, used_bytes(self.disk_paths))
            cost = time.monotonic() - now
            self.next_walk = time.monotonic() + max(self.interval, 10 * cost)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)


def run_measured(
    cmd: Sequence[str],
    env: Mapping[str, str],
    *,
    disk_paths: Sequence[str],
    timeout: float = 3600,
    interval: float = 0.05,
    cwd: str | None = None,
) -> Measurement:
    """Run ``cmd`` to completion in its own session (so a timeout kills the whole tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    sampler = _Sampler(proc.pid, disk_paths, interval)
    sampler.start()
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate()
        err = (err or b"") + f"\n[bench] killed after {timeout}s timeout".encode()
    seconds = time.perf_counter() - start
    sampler.stop_event.set()
    sampler.join()
    end_used = used_bytes(disk_paths)  # the peak is judged against the end state
    return Measurement(
        seconds=seconds,
        peak_rss=sampler.peak_rss,
        peak_extra_disk=max(0, sampler.peak_used - end_used),
        read_bytes=sum(sampler.reads.values()),
        returncode=proc.returncode,
        stderr_tail=(err or b"").decode(errors="replace")[-2000:],
    )
