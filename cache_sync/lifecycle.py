"""``cache-sync run -- CMD``: the worker's supervisor.

preflight (free space, fresh ``tmp/`` and ``build/``) -> pull -> env -> start CMD -> wait,
forwarding SIGTERM/SIGINT/SIGHUP (SIGKILL after a grace period) -> push within a budget ->
remove ``tmp/`` and ``build/`` -> exit with CMD's status.

It is written to be PID 1 in a container, like tini: the kernel ignores default-action signals
sent to PID 1, so handlers are installed for every signal we forward; orphans are reparented to
us, so every child is reaped (``waitpid(-1)``). Outside PID 1 we ask to be a child subreaper
(``PR_SET_CHILD_SUBREAPER``) so the same reaping happens and can be tested without a namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cache_sync import diskguard
from cache_sync.config import EPHEMERAL_DIRS, Settings
from cache_sync.envs import cache_env, ensure_layout
from cache_sync.errors import CacheSyncError, ConfigError, DeadlineExceeded

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class RunOptions:
    cmd: Sequence[str]
    pull: bool = True
    push: bool = True
    push_timeout: float = 60.0
    push_interval: float | None = None
    kill_timeout: float = 30.0  # grace between the forwarded signal and SIGKILL


@dataclass
class RunResult:
    exit_code: int
    child_status: str = ""
    signals: list[str] = field(default_factory=list)
    killed: bool = False
    reaped_orphans: int = 0
    pulled: list[dict] = field(default_factory=list)
    pushed: list[dict] = field(default_factory=list)
    push_error: str = ""
    periodic_pushes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init as usual
        pass


def wipe_ephemeral(settings: Settings, recreate: bool) -> None:
    for name in EPHEMERAL_DIRS:
        path = settings.root / name
        shutil.rmtree(path, ignore_errors=True)
        if recreate:
            path.mkdir(parents=True, exist_ok=True)


def exit_code_of(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N -> 128+N, as shells do


class _PeriodicPush(threading.Thread):
    """Pushes every ``interval`` seconds while the child runs; each push gets the interval as
    its deadline so the final push never waits long for it."""

    def __init__(self, settings: Settings, interval: float, log: Callable[[str], None]) -> None:
        super().__init__(name="periodic-push", daemon=True)
        self.settings, self.interval, self.log = settings, interval, log
        self.stop = threading.Event()
        self.count = 0

    def run(self) -> None:
        from cache_sync.push import push

        while not self.stop.wait(self.interval):
            try:
                push(self.settings, deadline=time.monotonic() + self.interval)
                self.count += 1
            except CacheSyncError as exc:  # keep the worker running; the final push follows
                self.log(f"periodic push failed: {exc}")


def run(settings: Settings, opts: RunOptions, log: Callable[[str], None]) -> RunResult:
    if not opts.cmd:
        raise ConfigError("no command to run", hint="cache-sync run -- python -m handler")
    diskguard.check(diskguard.floors(settings), action="start the worker")
    ensure_layout(settings)
    result = RunResult(exit_code=0)
    from cache_sync.pull import pull

    # The child inherits the caller's environment (RUNPOD_*, AWS_*, HANDLER_* ...) with the
    # cache's exports on top.
    env = {**os.environ, **cache_env(settings, os.environ)}
    _become_subreaper()
    child: list[subprocess.Popen] = []
    pending: list[int] = []
    first_signal: list[float] = []

    def on_signal(signum: int, _frame: Any) -> None:
        result.signals.append(signal.Signals(signum).name)
        if not first_signal:
            first_signal.append(time.monotonic())
        if child:
            _forward(child[0].pid, signum)
        else:
            pending.append(signum)

    # Handlers go in before the pull: as PID 1 an unhandled SIGTERM would be dropped, and a
    # signal during the pull must stop the worker from starting rather than be lost.
    previous = {s: signal.signal(s, on_signal) for s in FORWARDED}
    try:
        wipe_ephemeral(settings, recreate=True)
        if opts.pull:
            result.pulled = [r.to_dict() for r in pull(settings)]
            log("pulled: " + ", ".join(f"{r['area']}" for r in result.pulled))
        if pending:
            result.exit_code = 128 + pending[0]
            result.child_status = f"not started: {signal.Signals(pending[0]).name} arrived first"
            log(result.child_status)
            return result
        try:
            child.append(subprocess.Popen(list(opts.cmd), env=env))
        except FileNotFoundError:
            raise ConfigError(f"command not found: {opts.cmd[0]}", hint="check PATH in the "
                              "cache's env (cache-sync env PATH)") from None
        except PermissionError:
            raise ConfigError(f"command not executable: {opts.cmd[0]}") from None
        for signum in pending:
            _forward(child[0].pid, signum)
        periodic = None
        if opts.push and opts.push_interval:
            periodic = _PeriodicPush(settings, opts.push_interval, log)
            periodic.start()
        status = _wait(child[0], opts.kill_timeout, first_signal, result)
        result.exit_code = exit_code_of(status)
        result.child_status = _describe(status)
        log(f"command {result.child_status}")
        shutdown_start = time.monotonic()
        if periodic is not None:
            periodic.stop.set()
            periodic.join(opts.push_timeout)
            result.periodic_pushes = periodic.count
        if opts.push:
            _final_push(settings, opts, shutdown_start, periodic, result, log)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        wipe_ephemeral(settings, recreate=False)
    return result


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait(child: subprocess.Popen, grace: float, first_signal: list[float],
          result: RunResult) -> int:
    """Reap every child until ours exits; SIGKILL it ``grace`` seconds after the first
    forwarded signal. Polling (50 ms) keeps signal handling and the deadline simple."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children left at all (should not happen before ours)
            return child.wait()
        if pid == child.pid:
            child.returncode = exit_code_of(status)  # so Popen does not wait for it again
            _reap_rest(result)
            return status
        if pid:
            result.reaped_orphans += 1
            continue
        if first_signal and not result.killed and time.monotonic() - first_signal[0] > grace:
            result.killed = True
            _forward(child.pid, signal.SIGKILL)
        time.sleep(0.05)


def _reap_rest(result: RunResult) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        result.reaped_orphans += 1


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _final_push(settings: Settings, opts: RunOptions, start: float,
                periodic: _PeriodicPush | None, result: RunResult,
                log: Callable[[str], None]) -> None:
    from cache_sync.push import push

    deadline = start + opts.push_timeout
    # Wait a little for the cache lock: a `cache-sync install` or push that CMD left behind
    # may still hold it. The deadline still bounds the whole push.
    settings = settings.with_overrides(
        lock_timeout=max(settings.lock_timeout, opts.push_timeout / 4))
    if periodic is not None and periodic.is_alive():
        result.push_error = (f"push cut short: a periodic push was still running after "
                             f"--push-timeout {opts.push_timeout:g}s; the store is consistent")
        log(result.push_error)
        return
    try:
        result.pushed = [r.to_dict() for r in push(settings, deadline=deadline)]
        log("pushed: " + ", ".join(
            f"{r['area']} ({'up to date' if r.get('up_to_date') else r.get('snapshot')})"
            for r in result.pushed))
    except DeadlineExceeded as exc:
        result.push_error = (f"push cut short by --push-timeout {opts.push_timeout:g}s: {exc}")
        log(result.push_error)
    except CacheSyncError as exc:
        result.push_error = f"push failed: {exc}"
        log(result.push_error)
