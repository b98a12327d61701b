"""``cache-sync install``: install specs into ``packages/``, one installer run per spec, with
retries (tenacity: exponential backoff and jitter), a wall-clock budget per spec, required vs
optional specs, a fast skip of what ``packages/`` already satisfies, an import check in a fresh
interpreter, and a push of what changed.

One run per spec (not one resolver run for the lot) because that is what gives each package
its own budget and lets an optional package fail alone; the price is a resolve per spec on a
cold install, which the download cache in ``pip/`` keeps cheap. Specs run in the given order,
so a curated file decides what wins (e.g. flash-attn last).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cache_sync import bytecode, diskguard, installer, pipconf, target_merge
from cache_sync.config import Settings
from cache_sync.envs import cache_env, ensure_layout
from cache_sync.errors import CacheSyncError, DiskSpaceError
from cache_sync.imports_check import ImportResult, check_imports
from cache_sync.reqs import Installed, Spec, SpecSet, top_level_modules
from cache_sync.roles import install_cache_area
from cache_sync.workers import scratch_dirs


class InstallError(CacheSyncError):
    """A required package failed to install or to import."""

    exit_code = 1


class _Transient(Exception):
    def __init__(self, outcome: installer.Outcome) -> None:
        super().__init__("transient")
        self.outcome = outcome


@dataclass
class UnitResult:
    spec: str
    name: str
    optional: bool
    status: str  # installed | satisfied | not-applicable | failed
    attempts: int = 0
    seconds: float = 0.0
    error: list[str] = field(default_factory=list)
    new: dict[str, str] = field(default_factory=dict)  # distributions added or changed
    superseded: list[str] = field(default_factory=list)  # old .dist-info dirs replaced

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstallReport:
    installer: str
    units: list[UnitResult] = field(default_factory=list)
    imports: list[ImportResult] = field(default_factory=list)
    pushed: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    push_error: CacheSyncError | None = None  # installed fine, but not saved to the store

    @property
    def failed_required(self) -> list[str]:
        bad = [u.spec for u in self.units if u.status == "failed" and not u.optional]
        bad += [f"import {r.module}" for r in self.imports if not r.ok and r.required]
        return bad

    def to_dict(self) -> dict[str, Any]:
        return {"installer": self.installer, "seconds": round(self.seconds, 3),
                "units": [u.to_dict() for u in self.units],
                "imports": [r.to_dict() for r in self.imports],
                "pushed": self.pushed, "notes": self.notes,
                "push_error": str(self.push_error) if self.push_error else None,
                "failed_required": self.failed_required}


@dataclass
class InstallOptions:
    installer: str = "auto"
    attempts: int | None = None  # None: settings.install_attempts
    default_timeout: float | None = None  # None: settings.install_timeout
    timeouts: Mapping[str, float] = field(default_factory=dict)  # per package name
    check_imports: Sequence[str] = ()
    import_check: bool = True
    push: bool = True


def install(settings: Settings, specset: SpecSet, opts: InstallOptions,
            base_env: Mapping[str, str], log: Callable[[str], None] = lambda s: None,
            extra: Callable[[Installed], list[Spec]] | None = None) -> InstallReport:
    """Install ``specset``; ``extra`` may add specs once the first ones are in (flash-attn
    needs to see the torch that was just installed)."""
    start = time.monotonic()
    ensure_layout(settings)
    floors = diskguard.floors(settings)
    diskguard.check(floors)
    target = settings.root / "packages"
    installed = Installed(target)
    kind, uv_path = installer.choose(opts.installer or settings.installer)
    report = InstallReport(installer=kind)
    env = installer.child_env(settings, base_env)
    invocation: installer.Invocation | None = None  # built lazily: a warm start needs none

    def unit(spec: Spec) -> UnitResult:
        nonlocal invocation
        res = UnitResult(spec.text, spec.name, spec.optional, "satisfied")
        if not installed.applies(spec):
            res.status = "not-applicable"
            return res
        if installed.satisfied(spec):
            return res
        if invocation is None:  # the first spec that needs the installer
            if opts.push:
                _warm_installer_cache(settings, log)
            options = list(specset.options)
            if kind == "uv":  # pip's configuration and the files' options, pip's precedence
                options = pipconf.uv_flags(pipconf.sources(env, options))
            invocation = installer.Invocation(kind, uv_path, settings, env, options)
        before = installed.versions()
        _run_with_retries(spec, res, invocation, opts, settings, floors, log)
        if invocation.stage is not None:  # pip: merge the staged install (target_merge.py)
            if res.status == "installed":
                merged = target_merge.merge(invocation.stage, target)
                res.superseded = merged.superseded
                log(f"{spec.text}: merged {merged.moved} files in {merged.seconds:.2f}s"
                    + (f", superseded {', '.join(merged.superseded)}"
                       if merged.superseded else ""))
            shutil.rmtree(invocation.stage, ignore_errors=True)
        installed.refresh()
        after = installed.versions()
        res.new = {n: v for n, v in after.items() if before.get(n) != v}
        return res

    for spec in specset.specs:
        report.units.append(unit(spec))
    for spec in (extra(installed) if extra else []):
        report.units.append(unit(spec))

    if settings.bytecode and any(u.status == "installed" for u in report.units):
        done = bytecode.compile_tree(target, env, settings.install_big_timeout)
        log(f"bytecode: packages/ compiled in {done.seconds:.1f}s" if done.complete
            else done.note)
    if opts.import_check:
        report.imports = _import_check(settings, report.units, opts.check_imports, installed,
                                       base_env)
    report.seconds = time.monotonic() - start
    if report.failed_required:
        return report
    if opts.push and any(u.status == "installed" for u in report.units):
        from cache_sync.push import push  # the engine; imported late so install works without it

        cache_area = install_cache_area(settings)
        areas = ["packages", *([cache_area] if cache_area and settings.push_pip else [])]
        # `run --push-interval` may be pushing the same cache right now: wait for its lock.
        patient = settings.with_overrides(lock_timeout=max(settings.lock_timeout, 120.0))
        try:
            report.pushed = [r.to_dict() for r in push(patient, areas)]
        except CacheSyncError as exc:  # keep the report: the packages are installed
            report.push_error = exc
    return report


def _warm_installer_cache(settings: Settings, log: Callable[[str], None]) -> None:
    """Pull ``pip/`` (the download cache) before the first installer run: a fleet's earlier
    installs then cost a copy, not a download. Best effort: a cold cache only costs time."""
    area = install_cache_area(settings)
    if area is None:
        return
    from cache_sync.pull import pull

    try:
        pull(settings, [area])
    except CacheSyncError as exc:
        log(f"installing with a cold download cache: the pull of {area}/ failed: {exc}")


def _run_with_retries(spec: Spec, res: UnitResult, inv: installer.Invocation,
                      opts: InstallOptions, settings: Settings, floors: list[diskguard.Floor],
                      log: Callable[[str], None]) -> None:
    budget = opts.timeouts.get(spec.name) or spec.timeout or (
        spec.budget(opts.default_timeout or settings.install_timeout,
                    settings.install_big_timeout))
    attempts = opts.attempts or settings.install_attempts
    backoff = settings.install_backoff
    cmd = inv.command(spec.text, no_deps=spec.no_deps, budget=budget)
    last: installer.Outcome | None = None
    started = time.monotonic()

    def attempt() -> installer.Outcome:
        nonlocal last
        res.attempts += 1
        log(f"installing {spec.text} ({inv.kind}, attempt {res.attempts}/{attempts}, "
            f"budget {budget:.0f}s)")
        Path(inv.log_path).unlink(missing_ok=True)
        if inv.stage is not None:  # each attempt starts from an empty stage
            shutil.rmtree(inv.stage, ignore_errors=True)
        out = installer.run_once(cmd, inv.env, budget, floors)
        last = out
        detail = out.output + _read(inv.log_path) if inv.kind == "pip" else out.output
        if out.disk_breach:
            raise DiskSpaceError(out.disk_breach)
        if out.returncode == 0 and not out.timed_out:
            return out
        if out.timed_out or installer.is_transient(detail):
            raise _Transient(out)
        return out  # permanent: not retried

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(initial=backoff, max=60, jitter=backoff),
        retry=retry_if_exception_type(_Transient),
        reraise=False,
    )
    try:
        retrying(attempt)
    except RetryError:
        pass
    res.seconds = round(time.monotonic() - started, 3)
    assert last is not None
    if last.returncode == 0 and not last.timed_out:
        res.status = "installed"
        return
    res.status = "failed"
    if last.timed_out:
        res.error = [f"timed out after {budget:.0f}s (attempt {res.attempts} of {attempts})"]
    else:
        res.error = installer.key_lines(last.output)
    log(f"{'optional' if spec.optional else 'required'} {spec.text} failed: {res.error[-1]}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _import_check(settings: Settings, units: list[UnitResult], explicit: Sequence[str],
                  installed: Installed, base_env: Mapping[str, str]) -> list[ImportResult]:
    wanted: dict[str, bool] = {}
    for u in units:
        for dist_name in u.new:
            dist = installed.dists.get(dist_name)
            for mod in top_level_modules(dist) if dist else []:
                wanted[mod] = wanted.get(mod, False) or not u.optional
    for mod in explicit:
        wanted[mod] = True
    env = cache_env(settings, base_env)
    env = {**base_env, **env, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PIP_TARGET", None)
    return check_imports(list(wanted.items()), env, tmpdir=scratch_dirs(settings)[0])


def describe_failure(report: InstallReport) -> str:
    lines = []
    for u in report.units:
        if u.status == "failed" and not u.optional:
            lines.append(f"{u.spec}: {u.error[-1] if u.error else 'failed'}")
    for r in report.imports:
        if not r.ok and r.required:
            lines.append(f"import {r.module}: {r.error}")
    return "; ".join(lines)

