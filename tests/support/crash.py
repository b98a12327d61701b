"""Kill-point harness: run the real CLI as a subprocess, SIGKILL it at a seeded instant or at a
seeded request count through the fault proxy, and compare trees before and after.

A tree snapshot maps a relative path to an ``Entry`` (kind, mode, size, sha256 or symlink
target, mtime). ``assert_no_partial`` is the check behind DESIGN §2.3: every regular file at a
final path in an area equals the same path in one of the allowed states (the state before the
pull, or the snapshot being pulled); anything else is a half-written or wrong file.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

STATE_DIRS = (".cache-sync", "tmp", "build")


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a CLI subprocess: this worktree's package first, no inherited
    CACHE_SYNC_* or AWS_* settings (tests say exactly what they mean)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CACHE_SYNC_", "AWS_", "B2_"))}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env["CACHE_SYNC_PROGRESS"] = "off"
    env.update(extra or {})
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cache_sync", *args]


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 120,
            ) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env=dict(env), capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class KillResult:
    killed: bool      # True: SIGKILL landed while it ran; False: it finished first
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _run_and_kill(argv: Sequence[str], env: Mapping[str, str], arm: Callable[[Callable[[], None]],
                  None], timeout: float) -> KillResult:
    t0 = time.monotonic()
    proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = threading.Event()

    def kill() -> None:
        if proc.returncode is None:
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_dead(proc.pid)

    arm(kill)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill()
        out, err = proc.communicate()
        raise AssertionError(f"{argv} did not finish within {timeout}s: {err[-2000:]}")
    # A kill that raced with a normal exit did not land: judge by the exit status.
    landed = killed.is_set() and proc.returncode == -signal.SIGKILL
    return KillResult(landed, proc.returncode, out, err, time.monotonic() - t0)


def _wait_dead(pid: int, limit: float = 5.0) -> None:
    """Block until ``pid`` is a zombie or gone (SIGKILL is asynchronous), without reaping it:
    Popen.communicate in the other thread owns the wait."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.005)


def kill_after(argv: Sequence[str], env: Mapping[str, str], delay: float,
               timeout: float = 120) -> KillResult:
    """Start ``argv`` (usually ``cli(...)``) and SIGKILL it after ``delay`` seconds (if still running)."""
    def arm(kill: Callable[[], None]) -> None:
        t = threading.Timer(delay, kill)
        t.daemon = True
        t.start()
    return _run_and_kill(argv, env, arm, timeout)


def kill_when(argv: Sequence[str], env: Mapping[str, str], predicate: Callable[[], bool],
              poll: float = 0.002, timeout: float = 120) -> KillResult:
    """Start ``argv`` and SIGKILL it as soon as ``predicate()`` holds (polled), e.g. when a
    file:// store has gained its k-th new object."""
    def arm(kill: Callable[[], None]) -> None:
        def watch() -> None:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if predicate():
                    kill()
                    return
                time.sleep(poll)
        threading.Thread(target=watch, daemon=True).start()
    return _run_and_kill(argv, env, arm, timeout)


def count_files(top: str | os.PathLike) -> int:
    n = 0
    for _, _, files in os.walk(top):
        n += len(files)
    return n


def kill_at_request(argv: Sequence[str], env: Mapping[str, str], proxy, n: int,
                    timeout: float = 120, drop: bool = True,
                    match: Callable[[str, str], bool] | None = None) -> KillResult:
    """Start ``argv`` (whose S3 endpoint is ``proxy``) and SIGKILL it when its n-th request
    (1-based, counted from now; only requests ``match(method, path)`` accepts, when given)
    reaches the proxy. With ``drop`` the request is never forwarded; without it the server
    still gets it after the client died."""
    base = proxy.request_count
    seen = [0]

    def arm(kill: Callable[[], None]) -> None:
        def hook(count: int, method: str, path: str) -> bool:
            if match is not None:  # count only the requests ``match(method, path)`` accepts
                seen[0] += bool(match(method, path))
                count = base + seen[0]
            if count - base >= n:
                proxy.on_request = None
                kill()
                return drop
            return False
        proxy.on_request = hook
    try:
        return _run_and_kill(argv, env, arm, timeout)
    finally:
        proxy.on_request = None


def seeded_delays(seed: int, count: int, longest: float) -> list[float]:
    """Kill instants spread over a run that takes ``longest`` seconds (a few past its end, to
    prove a finished command is fine too)."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, longest * 1.1) for _ in range(count)]


# --- trees ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    kind: str           # "file", "dir", "link"
    mode: int           # permission bits
    size: int
    digest: str         # sha256 for files, target for links, "" for dirs
    mtime_ns: int

    def same(self, other: Entry, *, mtime: bool = False) -> bool:
        core = (self.kind, self.mode, self.size, self.digest)
        if core != (other.kind, other.mode, other.size, other.digest):
            return False
        return not mtime or self.kind == "dir" or self.mtime_ns // 10**6 == other.mtime_ns // 10**6


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot_tree(root: str | os.PathLike, skip: Iterable[str] = STATE_DIRS) -> dict[str, Entry]:
    """Every path under ``root`` (not following symlinks), top-level ``skip`` names left out."""
    root = str(root)
    skip = set(skip)
    tree: dict[str, Entry] = {}
    if not os.path.isdir(root):
        return tree
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in list(dirnames) + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = Entry("link", 0, 0, os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = Entry("dir", mode, 0, "", st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                tree[rel] = Entry("file", mode, st.st_size, sha256_file(full), st.st_mtime_ns)
            else:
                tree[rel] = Entry("other", mode, 0, "", st.st_mtime_ns)
        # symlinks to directories are listed in dirnames but os.walk does not descend them
    return tree


def diff_trees(want: Mapping[str, Entry], got: Mapping[str, Entry], *,
               mtime: bool = False) -> list[str]:
    """Human-readable differences (empty when equal)."""
    out = []
    for path in sorted(set(want) | set(got)):
        a, b = want.get(path), got.get(path)
        if a is None:
            out.append(f"unexpected {path}: {b}")
        elif b is None:
            out.append(f"missing {path}: {a}")
        elif not a.same(b, mtime=mtime):
            out.append(f"differs {path}: want {a} got {b}")
    return out


def partial_files(area: str | os.PathLike, allowed: Sequence[Mapping[str, Entry]],
                  is_temp: Callable[[str], bool] = lambda rel: False) -> list[str]:
    """Regular files at final paths in ``area`` that match no allowed state at that path."""
    bad = []
    for rel, entry in snapshot_tree(area, skip=()).items():
        if entry.kind != "file" or is_temp(rel):
            continue
        candidates = [s[rel] for s in allowed if rel in s]
        if not any(c.kind == "file" and c.digest == entry.digest for c in candidates):
            bad.append(f"{rel} ({entry.size} bytes, sha256 {entry.digest[:12]}) "
                       f"matches none of {len(candidates)} allowed version(s)")
    return bad


def assert_no_partial(area: str | os.PathLike, allowed: Sequence[Mapping[str, Entry]],
                      is_temp: Callable[[str], bool] = lambda rel: False) -> None:
    bad = partial_files(area, allowed, is_temp)
    assert not bad, "partial or wrong files at final paths:\n" + "\n".join(bad)


def write_tree(root: str | os.PathLike, spec: Mapping[str, bytes | str | None],
               modes: Mapping[str, int] | None = None) -> None:
    """Create files (bytes), symlinks (``"->target"`` strings) and empty dirs (None)."""
    root = Path(root)
    for rel, content in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir(exist_ok=True)
        elif isinstance(content, str):
            assert content.startswith("->")
            p.symlink_to(content[2:])
        else:
            p.write_bytes(content)
        if modes and rel in modes:
            os.chmod(p, modes[rel])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


