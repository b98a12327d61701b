"""A worker that bootstraps itself (``run --requirements FILE``, ``CACHE_SYNC_HF_MODELS``):
after the pull, if the cache does not satisfy the worker, one worker of the fleet installs and
downloads what is missing under the store lease and pushes it; the others wait and pull it.
The protocol is docs/design.md section 8; the lease itself is ``cache_sync/lease.py``.

Satisfied means: every requirement of FILE satisfied in ``packages/`` (the installer's metadata
check: no resolver, no index request) and every configured Hub model complete in
``HF_HUB_CACHE``. A satisfied worker makes no request beyond its pull.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cache_sync import flashattn, hfmodels, lease
from cache_sync.config import Settings
from cache_sync.envs import cache_env
from cache_sync.errors import CacheSyncError
from cache_sync.hfmodels import HubModel
from cache_sync.install import InstallError, InstallOptions, describe_failure, install
from cache_sync.reqs import Installed, SpecSet, parse_file

LEASE_NAME = "bootstrap"
AREAS = ("packages", "models")  # what a bootstrap produces, and what waiters pull


@dataclass
class Plan:
    """What the worker needs (None/empty: nothing of that kind)."""

    requirements: str | None = None
    specset: SpecSet = field(default_factory=SpecSet)
    models: list[HubModel] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.specset.specs and not self.models

    @property
    def areas(self) -> tuple[str, ...]:
        """The areas this plan produces (and its waiters pull)."""
        return (("packages",) if self.specset.specs else ()) + (("models",) if self.models
                                                                 else ())

    def split(self) -> tuple[Plan, Plan]:
        """(the packages part, the models part): ``run`` does the first before starting the
        worker and the second after its background pull of models/."""
        return (Plan(self.requirements, self.specset),
                Plan(models=list(self.models)))


@dataclass
class Missing:
    specs: list[str] = field(default_factory=list)
    models: list[HubModel] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.specs or self.models)

    def describe(self) -> str:
        parts = []
        if self.specs:
            parts.append(f"{len(self.specs)} requirement(s) ({', '.join(self.specs[:3])}"
                         f"{', ...' if len(self.specs) > 3 else ''})")
        if self.models:
            parts.append("model(s) " + ", ".join(str(m) for m in self.models))
        return " and ".join(parts)


@dataclass
class Report:
    role: str = "satisfied"  # satisfied | installed | waited | stopped
    seconds: float = 0.0
    waited: float = 0.0
    holders: list[str] = field(default_factory=list)
    missing: str = ""
    installed: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    pushed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_from(settings: Settings, environ: Mapping[str, str]) -> Plan:
    """The plan the settings describe (``requirements``, ``hf_models``, ``hf_models_hook``)."""
    plan = Plan(requirements=settings.requirements)
    if settings.requirements:
        parse_file(settings.requirements, plan.specset)
    plan.models = [hfmodels.parse(m) for m in settings.hf_models]
    if settings.hf_models_hook:
        plan.models += hfmodels.from_hook(settings.hf_models_hook, environ)
    return plan


def hub_cache(settings: Settings) -> Path:
    return Path(cache_env(settings, {})["HF_HUB_CACHE"])


def missing_specs(plan: Plan, packages: Path) -> list[str]:
    """The requirements of ``plan`` the distributions in ``packages`` do not satisfy (their
    metadata is all that is read: ``run --unit-start`` asks it of a pull's stage)."""
    installed = Installed(packages)
    return [spec.text for spec in plan.specset.specs
            if installed.applies(spec) and not installed.satisfied(spec) and not spec.optional]


def missing(settings: Settings, plan: Plan) -> Missing:
    out = Missing(specs=missing_specs(plan, settings.root / "packages"))
    cache = hub_cache(settings)
    out.models = [m for m in plan.models if not hfmodels.present(cache, m)]
    return out


class _Heads:
    """Watches the heads of the bootstrap's areas; pulls them when they move."""

    def __init__(self, settings: Settings, log: Callable[[str], None],
                 areas: tuple[str, ...] = AREAS) -> None:
        self.settings, self.log = settings, log
        self.areas = tuple(a for a in areas if a in settings.areas)
        self.seen: dict[str, list[str]] = {}

    def current(self, store: Any) -> dict[str, list[str]]:
        from cache_sync.history import History
        from cache_sync.repo import list_refs

        return {a: [h.id for h in History(list_refs(store, a)).heads] for a in self.areas}

    def local(self, store: Any) -> dict[str, list[str]]:
        """The heads each area was last pulled or pushed at (``--no-pull``: maybe stale, so
        the first look at the store pulls what moved)."""
        from cache_sync.local_cache import CacheState

        cache = CacheState(self.settings.root)
        return {a: list(cache.load_state(a, store.url).based_on) for a in self.areas}

    def pull_if_moved(self, store: Any) -> bool:
        from cache_sync.pull import pull

        now = self.current(store)
        if now == self.seen:
            return False
        pull(self.settings, list(self.areas))
        self.seen = now
        return True


def run(settings: Settings, plan: Plan, base_env: Mapping[str, str],
        log: Callable[[str], None], *, sleep: Callable[[float], None] = time.sleep,
        stop: Callable[[], bool] = lambda: False) -> Report:
    """Make the cache satisfy ``plan``: do nothing, wait for another worker, or install."""
    t0 = time.monotonic()
    report = Report()
    need = missing(settings, plan)
    if not need:
        return report
    report.missing = need.describe()
    log(f"bootstrap: missing {report.missing}")
    from cache_sync.storage import open_store

    store = open_store(settings)
    timing = lease.Timing.for_expiry(settings.lease_expiry, settings.lease_settle)
    claim = lease.Lease(store, LEASE_NAME, settings.worker, timing)
    heads = _Heads(settings, log, plan.areas)
    heads.seen = heads.local(store)  # what this cache is based on (its pull, or none)

    def others_done() -> bool:
        return heads.pull_if_moved(store) and not missing(settings, plan)

    out = lease.acquire(claim, others_done, wait=settings.lease_wait,
                        poll=min(1.0, timing.expiry / 10), log=lambda m: log(f"bootstrap: {m}"),
                        sleep=sleep, stop=stop)
    if out.stopped:
        report.role = "stopped"
        report.seconds = round(time.monotonic() - t0, 3)
        return report
    report.waited, report.holders = round(out.waited, 3), out.holders
    try:
        if out.held:
            with lease.Renewer(claim, log):
                heads.pull_if_moved(store)  # the previous holder may have pushed meanwhile
                need = missing(settings, plan)
                if need:
                    _work(settings, plan, need, base_env, report, log)
                    report.role = "installed"
    finally:
        claim.release()
    report.seconds = round(time.monotonic() - t0, 3)
    if report.role != "installed":
        report.role = "waited"
        who = f"worker {', '.join(report.holders)}" if report.holders else "the store"
        log(f"bootstrap: {who} had it; pulled after {report.seconds:.1f}s")
    return report


def _work(settings: Settings, plan: Plan, need: Missing, base_env: Mapping[str, str],
          report: Report, log: Callable[[str], None]) -> None:
    """The holder's part: install and download only what is still missing, push each. The
    model download runs beside the install (network vs. CPU and disk; a torch-sized install
    and a GB-sized model each take minutes), and each area is pushed as soon as it is done,
    so waiters can pull one while the other is still coming."""
    with ThreadPoolExecutor(1, thread_name_prefix="bootstrap-models") as pool:
        models = pool.submit(_models, settings, need, base_env, report, log) if (
            need.models) else None
        try:
            if need.specs:
                _install(settings, plan, base_env, report, log)
        finally:
            if models is not None:
                models.result()  # wait for it either way; its error is raised here
    still = missing(settings, plan)
    if still:
        raise CacheSyncError(f"bootstrap finished but {still.describe()} still missing")


def _install(settings: Settings, plan: Plan, base_env: Mapping[str, str], report: Report,
             log: Callable[[str], None]) -> None:
    log(f"bootstrap: this worker installs {plan.requirements}")
    notes: list[str] = []
    last = flashattn.last_spec(settings, settings.flash_attn, None, base_env, notes)
    result = install(settings, plan.specset, InstallOptions(installer=settings.installer),
                     base_env, log=lambda m: log(f"bootstrap: {m}"), extra=last)
    for note in notes:
        log(f"bootstrap: {note}")
    if result.failed_required:
        raise InstallError("bootstrap install failed: " + describe_failure(result),
                           hint="fix the requirements file; optional packages may fail")
    if result.push_error is not None:
        raise result.push_error
    report.installed = [f"{n}=={v}" for u in result.units for n, v in u.new.items()]
    report.pushed += result.pushed


def _models(settings: Settings, need: Missing, base_env: Mapping[str, str], report: Report,
            log: Callable[[str], None]) -> None:
    from cache_sync.push import push

    hfmodels.download(need.models, hub_cache(settings), base_env,
                      lambda m: log(f"bootstrap: {m}"))
    report.downloaded = [str(m) for m in need.models]
    # install's own push may hold the cache lock right now: wait for it
    patient = settings.with_overrides(lock_timeout=max(settings.lock_timeout, 120.0))
    report.pushed += [r.to_dict() for r in push(patient, ["models"])]
