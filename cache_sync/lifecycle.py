"""``cache-sync run -- CMD``: the worker's supervisor.

preflight (free space, a fresh ``tmp/<worker>/`` and ``build/<worker>/``, dead workers' dirs
swept: ``workers.py``) -> pull the serving areas (``roles.py``): the code areas (``packages/``,
``deps/``) -> env -> start CMD while the data areas (``models/``) keep pulling in the
background (the worker imports meanwhile and waits for them through ``cache_sync.readiness``)
-> wait,
forwarding SIGTERM/SIGINT/SIGHUP (SIGKILL after a grace period) -> push within a budget ->
remove ``tmp/`` and ``build/`` -> exit with CMD's status.

It is written to be PID 1 in a container, like tini: the kernel ignores default-action signals
sent to PID 1, so handlers are installed for every signal we forward; orphans are reparented to
us, so every child is reaped (``waitpid(-1)``). Outside PID 1 we ask to be a child subreaper
(``PR_SET_CHILD_SUBREAPER``) so the same reaping happens and can be tested without a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache_sync import _importhook as importhook
from cache_sync import accessprofile, diskguard, readiness, workers
from cache_sync.config import Settings
from cache_sync.durability import check_worker_store
from cache_sync.envs import cache_env, ensure_layout
from cache_sync.errors import (
    CacheSyncError,
    CommandNotExecutable,
    CommandNotFound,
    ConfigError,
    DeadlineExceeded,
    ObjectNotFound,
)
from cache_sync.results import AreaReport
from cache_sync.roles import serving_areas
from cache_sync.storage import Store, open_store

if TYPE_CHECKING:  # the bootstrap (and its installer) is imported only by a run that uses it
    from cache_sync.bootstrap import Report as BootstrapReport

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
    bootstrap: bool = True  # install/download what settings.requirements/hf_models need
    overlap: bool = False  # start CMD before the data areas are pulled (see readiness)
    unit_start: bool = False  # and before packages/ is whole, per distribution (design 5.4)


@dataclass
class RunResult:
    exit_code: int
    child_status: str = ""
    signals: list[str] = field(default_factory=list)
    killed: bool = False
    reaped_orphans: int = 0
    pulled: list[AreaReport] = field(default_factory=list)
    pushed: list[AreaReport] = field(default_factory=list)
    push_error: str = ""
    periodic_pushes: int = 0
    bootstrap: BootstrapReport | None = None  # packages/ part (all of it without the overlap)
    bootstrap_models: BootstrapReport | None = None  # models/ part, after the background pull

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: reports as dicts; the bootstrap's models part nested
        under ``bootstrap.models``, as it always was."""
        out = {k: v for k, v in self.__dict__.items() if k != "bootstrap_models"}
        out["pulled"] = [r.to_dict() for r in self.pulled]
        out["pushed"] = [r.to_dict() for r in self.pushed]
        boot = self.bootstrap.to_dict() if self.bootstrap is not None else {}
        if self.bootstrap_models is not None:
            boot["models"] = self.bootstrap_models.to_dict()
        out["bootstrap"] = boot
        return out


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init as usual
        pass


def exit_code_of(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N -> 128+N, as shells do


# Areas a worker reads only after its imports: pulled while CMD starts (see readiness).
DATA_AREAS = ("models",)


BACKGROUND_NICE = 10  # added to the pull's threads' nice value while CMD runs beside them


def yield_cpu_to_cmd() -> None:
    """Lower the calling thread's CPU priority by ``BACKGROUND_NICE``. On Linux a thread's
    nice value is its own and the threads it starts inherit it, so the fetch threads of a
    pull started from here run below CMD: while CMD is runnable (importing, loading) it gets
    the cores first; while it waits on the pull, the pull has them all anyway. Elsewhere the
    value is the whole process's (CMD would inherit it), so nothing is changed."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))


class _BackgroundPull(threading.Thread):
    """Pulls the data areas one by one while CMD starts, publishing each outcome in the
    readiness file the worker waits on. Every exception ends as a "failed" entry, so a worker
    never waits for an area that will not come.

    With ``--unit-start`` the first area is packages/, pulled with an ``EarlyStart``: the
    readiness file then also says which of its modules are missing (design 5.4), and
    ``planned`` is set once CMD may start (the units are planned, or the pull ended). The
    next area waits for ``go`` (``run`` has started CMD, or bootstrapped packages/ first)."""

    def __init__(self, settings: Settings, areas: list[str], ready: list[str],
                 status: Any, log: Callable[[str], None],
                 after: Callable[[], BootstrapReport] | None = None,
                 early_area: str | None = None,
                 accept: Callable[[Path], bool] | None = None,
                 need: Sequence[str] = (),
                 learn: Callable[[Store], Callable[[], Sequence[str]]] | None = None
                 ) -> None:
        super().__init__(name="background-pull", daemon=True)
        self.settings, self.areas, self.status, self.log = settings, areas, status, log
        self.after = after  # the models part of a bootstrap, once models/ is pulled
        self.bootstrap: BootstrapReport | None = None
        self.ready = list(ready)
        self.pending = list(areas)
        self.failed: dict[str, str] = {}
        self.errors: dict[str, BaseException] = {}
        self.reports: list[AreaReport] = []
        self.early_area, self.accept, self.need = early_area, accept, need
        self.learn = learn
        self.units: dict[str, list[str]] | None = None  # what of early_area is missing
        self.planned = threading.Event()
        self.go = threading.Event()
        self._write_lock = threading.Lock()
        if early_area is None:
            self.planned.set()
            self.go.set()

    def _write(self) -> None:
        with self._write_lock:
            readiness.write(self.status, self.pending, self.ready, self.failed, self.units)

    def _publish(self, units: dict[str, list[str]]) -> None:
        self.units = units
        self._write()
        self.planned.set()

    def run(self) -> None:
        from cache_sync.pull import pull
        from cache_sync.unitplace import EarlyStart

        yield_cpu_to_cmd()
        for i, area in enumerate(self.areas):
            if area != self.early_area:
                self.go.wait()
            early = None
            if area == self.early_area:
                early = EarlyStart(self._publish, self.accept or (lambda _stage: True),
                                   self.need, self.learn)
            start = time.monotonic()
            try:
                self.reports += pull(self.settings, [area], early=early)
                self.log(f"pulled: {area} (in the background, {time.monotonic() - start:.1f}s)")
                if self.after is not None and i == len(self.areas) - 1:
                    self.bootstrap = self.after()
                self.ready.append(area)
                if area == self.early_area:
                    self.units = None  # whole
            except Exception as exc:  # noqa: BLE001 (reported to the worker, never lost)
                self.failed[area] = str(exc) or type(exc).__name__
                self.errors[area] = exc
                self.log(f"background pull of {area} failed: {self.failed[area]}")
            self.pending.remove(area)
            self._write()
            if area == self.early_area:
                started = self.planned.is_set()
                self.planned.set()
                if area in self.failed and not started:
                    return  # CMD never started: run fails with this error
        self.planned.set()

    @property
    def early_failed(self) -> bool:
        return self.early_area is not None and self.early_area in self.failed

    def complete(self, areas: Sequence[str]) -> list[str]:
        """The areas that may be pushed: those whose pull did not fail or is not running
        (pushing a half-pulled area would publish its missing files as deletions); none when
        packages/ failed under a CMD started before it was whole."""
        if self.early_failed:
            return []
        return [a for a in areas if a not in self.pending and a not in self.failed]


class _PeriodicPush(threading.Thread):
    """Pushes every ``interval`` seconds while the child runs; each push gets the interval as
    its deadline so the final push never waits long for it."""

    def __init__(self, settings: Settings, interval: float, log: Callable[[str], None],
                 background: _BackgroundPull | None = None) -> None:
        super().__init__(name="periodic-push", daemon=True)
        self.settings, self.interval, self.log = settings, interval, log
        self.background = background
        self.stop = threading.Event()
        self.count = 0

    def run(self) -> None:
        from cache_sync.push import push

        # a push by another worker on a shared root: wait for it at most one interval
        settings = self.settings.with_overrides(
            lock_timeout=min(self.settings.lock_timeout, self.interval))
        while not self.stop.wait(self.interval):
            try:
                areas = serving_areas(self.settings)
                if self.background is not None:
                    areas = self.background.complete(areas)
                push(settings, areas, deadline=time.monotonic() + self.interval)
                self.count += 1
            except CacheSyncError as exc:  # keep the worker running; the final push follows
                self.log(f"periodic push failed: {exc}")


def _load_profile(store: Store, key: str) -> list[str] | None:
    """The stored profile's need list, None when there is none; ProfileError when it does
    not decode, storage errors as raised."""
    try:
        data = store.get(key)
    except ObjectNotFound:
        return None
    return accessprofile.decode(data)


PROFILE_WAIT = 10.0  # at most this long a cold pull waits for the stored profile (5.5)


def _learned_order(store: Store, key: str, log: Callable[[str], None]
                   ) -> Callable[[], Sequence[str]]:
    """Read CMD's access profile (design 5.5) from the pull's ``store`` in a thread now (a
    cold placement is beginning); the returned call gives its need order, waiting for it at
    most ``PROFILE_WAIT`` (the pull stages its metadata meanwhile), or nothing: a profile
    that is absent, unreadable or late is only a hint missed."""
    got: list[Sequence[str]] = []

    def load() -> None:
        try:
            need = _load_profile(store, key)
        except accessprofile.ProfileError as exc:
            log(f"access profile {key} ignored: {exc}")
        except CacheSyncError as exc:
            log(f"access profile {key} not read: {exc}")
        else:
            got.append(need or ())

    reader = threading.Thread(target=load, name="access-profile", daemon=True)
    reader.start()

    def learned() -> Sequence[str]:  # asked for by a cold pull only: then it is said
        reader.join(PROFILE_WAIT)
        need = got[0] if got else ()
        if need:
            log(f"need order: a recorded start first ({', '.join(need[:6])}"
                + (", ..." if len(need) > 6 else "") + f"; {len(need)} names)")
        elif reader.is_alive():
            log(f"access profile {key} not read within {PROFILE_WAIT:g}s: the source's "
                "need order")
        return need

    return learned


def _push_profile(settings: Settings, key: str, record: Path,
                  log: Callable[[str], None]) -> None:
    """Push what this worker's CMD recorded as CMD's access profile (design 5.5), unless the
    stored one already says it."""
    try:
        with open(record, "rb") as f:
            recorded = accessprofile.parse_record(f.read(accessprofile.MAX_BYTES))
    except FileNotFoundError:
        return
    if not recorded:
        return
    store = open_store(settings)
    try:
        stored = _load_profile(store, key)
    except accessprofile.ProfileError:
        stored = None  # replaced by a good one
    if accessprofile.worth_pushing(recorded, stored):
        store.put(key, accessprofile.encode(recorded))
        log(f"pushed the access profile: {len(recorded)} first uses ({key})")


def run(settings: Settings, opts: RunOptions, log: Callable[[str], None]) -> RunResult:
    if not opts.cmd:
        raise ConfigError("no command to run", hint="cache-sync run -- python -m handler")
    check_worker_store(settings)
    diskguard.check(diskguard.floors(settings), action="start the worker")
    ensure_layout(settings)
    result = RunResult(exit_code=0)
    from cache_sync import bootstrap
    from cache_sync.pull import EARLY_AREA, pull

    plan = bootstrap.plan_from(settings, os.environ) if opts.bootstrap else bootstrap.Plan()

    # The child inherits the caller's environment (RUNPOD_*, AWS_*, HANDLER_* ...) with the
    # cache's exports on top.
    env = {**os.environ, **cache_env(settings, os.environ)}
    _become_subreaper()
    child: list[subprocess.Popen[Any]] = []
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
    serving = serving_areas(settings)  # never pip/: roles.py
    overlap = (opts.overlap or opts.unit_start) and opts.pull
    data = [a for a in serving if a in DATA_AREAS] if overlap else []
    early_area = EARLY_AREA if opts.unit_start and opts.pull and EARLY_AREA in serving else None
    code = [a for a in serving if a not in data and a != early_area]
    # Named by the worker, not the pid: every container's `run` is PID 1, and workers sharing
    # a root (a network volume) must not read, or remove, each other's readiness.
    status_file = settings.state_dir / f"ready-{settings.worker}.json"
    # With the unit start, what CMD imports is recorded (and pushed at exit) as the need
    # order of the next cold start (design 5.5)
    profile_key = accessprofile.key_for(opts.cmd)
    record_file = settings.state_dir / f"access-{settings.worker}.txt"
    record_file.unlink(missing_ok=True)  # a killed run's
    if opts.unit_start:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(importhook.DIR), *filter(None, [env.get("PYTHONPATH")])])
        if opts.push:
            env[accessprofile.ENV_VAR] = str(record_file)
    background: _BackgroundPull | None = None
    scratch = contextlib.ExitStack()
    try:
        # this worker's own tmp/<worker>/ and build/<worker>/, its liveness marker, heartbeat
        scratch.enter_context(workers.session(settings, owner=True))
        if opts.pull and code:
            result.pulled = pull(settings, code)
            log("pulled: " + ", ".join(
                r.area + (f" ({r.note})" if r.local_changes else "")
                for r in result.pulled)
                + (f" ({', '.join(data)} pulling in the background)"
                   if data and not early_area else ""))
        # With the overlap, the packages part of the bootstrap runs now and the models part
        # after the background pull of models/ (see _BackgroundPull).
        now_plan, later_plan = plan.split() if data else (plan, bootstrap.Plan())
        later = None if later_plan.empty else (
            lambda: bootstrap.run(settings, later_plan, os.environ, log))
        if early_area is not None and not pending:
            # packages/ (then models/) in the background; CMD starts once its units are
            # planned, or after the pull when it was not cold (design 5.4)
            readiness.write(status_file, [early_area, *data], code, {})
            accept = None if not now_plan.specset.specs else (
                lambda stage: not bootstrap.missing_specs(now_plan, stage))
            from cache_sync.entryscan import imported_modules

            need = imported_modules(opts.cmd, Path.cwd())
            if need:
                log(f"need order: what {' '.join(opts.cmd[:3])} imports first ("
                    + ", ".join(need[:6]) + (", ..." if len(need) > 6 else "") + ")")
            background = _BackgroundPull(settings, [early_area, *data], code, status_file,
                                         log, later, early_area, accept, need,
                                         lambda store: _learned_order(store, profile_key,
                                                                      log))
            background.start()
            _wait_planned(background, pending)
            if early_area in background.errors:
                raise background.errors[early_area]
            if early_area in background.pending and not pending:  # per unit: CMD starts
                env[readiness.ENV_VAR] = str(status_file)
                missing = background.units or {}
                log(f"pulled: {', '.join(code) or 'nothing'} before CMD; {early_area} "
                    f"placing per distribution ({len(missing.get('dists', []))} to go), "
                    + (", ".join(data) + " after it, " if data else "")
                    + "in the background")
                if not now_plan.empty:
                    result.bootstrap = bootstrap.Report(role="satisfied")
                now_plan = bootstrap.Plan()
            elif not pending:
                log(f"pulled: {early_area} (not a cold start: whole before CMD)"
                    + (f" ({', '.join(data)} pulling in the background)" if data else ""))
        if not now_plan.empty and not pending:
            result.bootstrap = bootstrap.run(settings, now_plan, os.environ, log,
                                             stop=lambda: bool(pending))
        if pending:
            if background is not None:
                background.go.set()
            result.exit_code = 128 + pending[0]
            result.child_status = f"not started: {signal.Signals(pending[0]).name} arrived first"
            log(result.child_status)
            return result
        if data and background is None:
            readiness.write(status_file, data, code, {})
            background = _BackgroundPull(settings, data, code, status_file, log, later)
            background.start()
        if background is not None:
            env[readiness.ENV_VAR] = str(status_file)
        try:
            child.append(subprocess.Popen(list(opts.cmd), env=env))
        except FileNotFoundError:
            raise CommandNotFound(f"command not found: {opts.cmd[0]}", hint="check PATH in "
                                  "the cache's env (cache-sync env PATH)") from None
        except PermissionError:
            raise CommandNotExecutable(f"command not executable: {opts.cmd[0]}",
                                       hint="chmod +x it, or run it through its interpreter"
                                       ) from None
        finally:
            if background is not None:
                background.go.set()
        for signum in pending:
            _forward(child[0].pid, signum)
        periodic = None
        if opts.push and opts.push_interval:
            periodic = _PeriodicPush(settings, opts.push_interval, log, background)
            periodic.start()
        status = _wait(child[0], opts.kill_timeout, first_signal, result)
        result.exit_code = exit_code_of(status)
        result.child_status = _describe(status)
        log(f"command {result.child_status}")
        # The shutdown budget runs from the first signal (the platform's SIGKILL follows
        # it, not CMD's exit): time CMD spent ignoring SIGTERM is taken from the push.
        # Without a signal (CMD exited on its own) it runs from CMD's exit.
        shutdown_start = first_signal[0] if first_signal else time.monotonic()
        deadline = shutdown_start + opts.push_timeout
        if periodic is not None:
            periodic.stop.set()
            periodic.join(max(0.0, deadline - time.monotonic()))
            result.periodic_pushes = periodic.count
        areas = list(serving)
        if background is not None:
            # A worker that exits early leaves its background pull behind: wait for it within
            # the push budget; what is still pulling then is not pushed (and the thread dies
            # with us: the pull's staging and journal make that harmless).
            background.join(max(0.0, shutdown_start + opts.push_timeout / 2 - time.monotonic()))
            result.pulled += background.reports
            result.bootstrap_models = background.bootstrap
            areas = background.complete(areas)
            if background.early_failed:
                # CMD ran on a packages/ that never became whole: fail, push nothing (5.4)
                result.push_error = (f"nothing pushed: {early_area} did not arrive: "
                                     f"{background.failed[early_area or '']}")
                log(result.push_error)
                result.exit_code = result.exit_code or 1
        if opts.push and areas:
            _final_push(settings, opts, deadline, periodic, result, log, areas,
                        (lambda: _push_profile(settings, profile_key, record_file, log))
                        if opts.unit_start else None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        scratch.close()
        status_file.unlink(missing_ok=True)
        record_file.unlink(missing_ok=True)
    return result


def _wait_planned(background: _BackgroundPull, pending: list[int]) -> None:
    """Until CMD may start (``background.planned``) or a signal arrived."""
    while not background.planned.wait(0.05):
        if pending:
            return


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait(child: subprocess.Popen[Any], grace: float, first_signal: list[float],
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


def _final_push(settings: Settings, opts: RunOptions, deadline: float,
                periodic: _PeriodicPush | None, result: RunResult,
                log: Callable[[str], None], areas: Sequence[str],
                profile: Callable[[], None] | None = None) -> None:
    """Push ``areas`` before ``deadline`` (monotonic: the first signal, or CMD's exit, plus
    ``--push-timeout``); a push cut off there leaves the store consistent (§5.2). Then, in
    what is left of the budget, ``profile`` (the access profile: after the areas, so it
    never delays them)."""
    from cache_sync.push import push

    if time.monotonic() >= deadline:
        result.push_error = (f"push cut short by --push-timeout {opts.push_timeout:g}s: the "
                             f"budget, counted from the first signal, ran out while CMD shut "
                             f"down; nothing pushed, the store is consistent")
        log(result.push_error)
        return
    # Wait a little for the cache lock: a `cache-sync install` or push that CMD left behind
    # may still hold it. The deadline still bounds the whole push.
    settings = settings.with_overrides(
        lock_timeout=min(settings.lock_timeout, opts.push_timeout / 4,
                         deadline - time.monotonic()))
    if periodic is not None and periodic.is_alive():
        result.push_error = (f"push cut short: a periodic push was still running after "
                             f"--push-timeout {opts.push_timeout:g}s; the store is consistent")
        log(result.push_error)
        return
    # The push checks the deadline between its steps; a request in flight at the deadline
    # would outlive it by up to one request. So it runs in a daemon thread that is abandoned
    # at the deadline: what it leaves is what a SIGKILL leaves, a consistent store and a
    # journal the next push resumes from (§4.1, §5.2).
    outcome: list[list[AreaReport] | BaseException] = []

    def body() -> None:
        try:
            outcome.append(push(settings, areas, deadline=deadline))
        except BaseException as exc:  # handed to the main thread below
            outcome.append(exc)
        if profile is not None and time.monotonic() < deadline:
            try:
                profile()
            except CacheSyncError as exc:  # a hint: never the run's failure
                log(f"access profile not pushed: {exc}")

    pusher = threading.Thread(target=body, name="cache-sync-final-push", daemon=True)
    pusher.start()
    pusher.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        result.push_error = (f"push cut short by --push-timeout {opts.push_timeout:g}s: a "
                             f"request was still in flight at the deadline; abandoned, the "
                             f"store is consistent and the next push resumes")
        log(result.push_error)
        return
    got = outcome[0]
    try:
        if isinstance(got, BaseException):
            raise got
        result.pushed = got
        log("pushed: " + ", ".join(
            f"{r.area} ({'up to date' if r.up_to_date else r.snapshot})"
            for r in result.pushed))
    except DeadlineExceeded as exc:
        result.push_error = (f"push cut short by --push-timeout {opts.push_timeout:g}s: {exc}")
        log(result.push_error)
    except CacheSyncError as exc:
        result.push_error = f"push failed: {exc}"
        log(result.push_error)
