"""A lease on the store without conditional writes: one bootstrapping worker per fleet.

Specified in docs/design.md section 8 (read that first: the ordering argument is there). In
short, under ``leases/<name>/``:

    <claim>.claim   written once by a candidate; its store LastModified fixes its place
    <claim>.alive   rewritten by its owner every ``renew`` seconds; its LastModified is liveness

A claim is *live* while ``now - alive`` <= ``expiry``, where ``now`` is the newest
LastModified in the same LIST (store time: no two machines' clocks are ever compared). Live
claims are ordered by ``(claim LastModified, claim name)``. A candidate *holds* the lease when
its claim is first among the live claims in a LIST made at least ``settle`` seconds (its own
monotonic clock) after its claim's PUT returned. A claim whose PUT took longer than
``max_put`` is withdrawn and made again, and ``settle - max_put`` exceeds the store's
LastModified granularity, so a claim that LIST could not see sorts after it.

This module is pure protocol over ``Store``: no threads except the optional renewer, no
knowledge of what the lease protects.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cache_sync.errors import CacheSyncError
from cache_sync.storage.base import ObjectInfo, Store

PREFIX = "leases/"
CLAIM, ALIVE = ".claim", ".alive"


@dataclass(frozen=True)
class Timing:
    """Seconds. ``expiry`` should be several ``renew`` periods. ``settle - max_put`` must
    exceed the store's LastModified granularity (1 s on S3 and B2): a claim whose PUT took
    longer than ``max_put`` is withdrawn and made again (S3 stamps LastModified when the
    upload *starts*, so a slow PUT could otherwise carry an earlier time than it deserves)."""

    expiry: float = 60.0
    renew: float = 15.0
    settle: float = 2.0

    @property
    def max_put(self) -> float:
        return self.settle / 4

    @classmethod
    def for_expiry(cls, expiry: float, settle: float = 2.0) -> Timing:
        return cls(expiry=expiry, renew=max(0.05, expiry / 4), settle=settle)


@dataclass(frozen=True)
class Claim:
    name: str           # <worker>-<random>
    worker: str
    placed: float       # LastModified of <name>.claim (store clock): the claim's place
    alive: float        # LastModified of <name>.alive (or .claim): the last sign of life

    @property
    def order(self) -> tuple[float, str]:
        return (self.placed, self.name)


@dataclass
class View:
    """One LIST of a lease, interpreted."""

    now: float                                   # newest LastModified seen (store clock)
    live: list[Claim] = field(default_factory=list)     # in lease order
    expired: list[Claim] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)      # .alive keys whose claim is gone

    @property
    def first(self) -> Claim | None:
        return self.live[0] if self.live else None


def interpret(infos: list[ObjectInfo], prefix: str, expiry: float) -> View:
    """Pure: turn a LIST of ``prefix`` into live and expired claims (see module docstring)."""
    placed: dict[str, float] = {}
    alive: dict[str, float] = {}
    for info in infos:
        base = info.key[len(prefix):]
        if base.endswith(CLAIM):
            placed[base[: -len(CLAIM)]] = info.mtime
        elif base.endswith(ALIVE):
            alive[base[: -len(ALIVE)]] = info.mtime
    view = View(now=max((i.mtime for i in infos), default=0.0))
    for name, at in placed.items():
        last = max(at, alive.get(name, at))
        claim = Claim(name, name.rsplit("-", 1)[0], at, last)
        (view.live if view.now - last <= expiry else view.expired).append(claim)
    view.live.sort(key=lambda c: c.order)
    view.stray = [n + ALIVE for n in alive if n not in placed]
    return view


def describe(store: Store, name: str, expiry: float) -> dict[str, object] | None:
    """For ``status``: who holds lease ``name``, how long since it renewed (store clock), who
    waits; None when nobody is in it."""
    prefix = f"{PREFIX}{name}/"
    view = interpret(list(store.list(prefix)), prefix, expiry)
    if view.first is None:
        return None
    return {"holder": view.first.worker,
            "renewed_seconds_ago": round(view.now - view.first.alive, 1),
            "waiting": [c.worker for c in view.live[1:]],
            "expired": [c.worker for c in view.expired]}


class Lease:
    """One candidate's side of the protocol. ``clock``/``sleep`` are injectable for tests."""

    def __init__(self, store: Store, name: str, worker: str, timing: Timing, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.timing, self.clock = store, timing, clock
        self.prefix = f"{PREFIX}{name}/"
        self.worker = worker
        self.name = f"{worker}-{secrets.token_hex(4)}"
        self.claimed_at: float | None = None  # local monotonic time the claim PUT returned
        self.renewed_at = 0.0

    def _key(self, suffix: str) -> str:
        return f"{self.prefix}{self.name}{suffix}"

    def _body(self) -> bytes:
        return json.dumps({"worker": self.worker, "pid": os.getpid(),
                           "host": socket.gethostname(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()

    def claim(self, attempts: int = 20) -> None:
        """Take a place in the queue (a fresh name each time, so a re-claim after losing the
        place sorts last, as it must). A claim whose PUT took longer than ``max_put`` is
        withdrawn and made again (docs/design.md 8.2)."""
        for _ in range(attempts):
            self.name = f"{self.worker}-{secrets.token_hex(4)}"
            started = self.clock()
            self.store.put(self._key(CLAIM), self._body())
            self.claimed_at = self.renewed_at = self.clock()
            if self.claimed_at - started <= self.timing.max_put:
                return
            self.release()
        raise CacheSyncError(
            f"the store took longer than {self.timing.max_put:.2f}s for each of {attempts} "
            "lease claims", hint="raise CACHE_SYNC_LEASE_SETTLE for a slow store")

    def renew(self) -> None:
        self.store.put(self._key(ALIVE), self._body())
        self.renewed_at = self.clock()

    def renew_if_due(self) -> None:
        if self.clock() - self.renewed_at >= self.timing.renew:
            self.renew()

    def release(self) -> None:
        """Best effort: a release that fails is an expiry later."""
        try:
            self.store.delete([self._key(CLAIM), self._key(ALIVE)])
        except CacheSyncError:
            pass
        self.claimed_at = None

    def look(self) -> View:
        return interpret(list(self.store.list(self.prefix)), self.prefix, self.timing.expiry)

    def mine(self, view: View) -> Claim | None:
        return next((c for c in view.live if c.name == self.name), None)

    def holds(self, view: View, listed_at: float) -> bool:
        """True when ``view`` (a LIST started at local time ``listed_at``) shows our claim
        first among live claims and that LIST began ``settle`` after our claim existed."""
        first = view.first
        return (first is not None and first.name == self.name and self.claimed_at is not None
                and listed_at - self.claimed_at >= self.timing.settle)

    def sweep(self, view: View) -> None:
        """Delete expired claims and stray liveness objects (best effort, any worker may)."""
        keys = [f"{self.prefix}{c.name}{s}" for c in view.expired for s in (CLAIM, ALIVE)]
        keys += [self.prefix + k for k in view.stray]
        if keys:
            try:
                self.store.delete(keys)
            except CacheSyncError:
                pass


class Renewer(threading.Thread):
    """Keeps a held lease alive while the work runs; renewal errors are retried next tick
    (the store wrapper already retries transient faults) and counted."""

    def __init__(self, lease: Lease, log: Callable[[str], None]) -> None:
        super().__init__(name="lease-renewer", daemon=True)
        self.lease, self.log = lease, log
        self.stop = threading.Event()
        self.failures = 0

    def run(self) -> None:
        while not self.stop.wait(self.lease.timing.renew):
            try:
                self.lease.renew()
            except CacheSyncError as exc:
                self.failures += 1
                self.log(f"lease renewal failed ({exc}); retrying")

    def __enter__(self) -> Renewer:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(5)


class LeaseWaitTimeout(CacheSyncError, TimeoutError):
    """Waited the whole bound for another worker's lease."""

    exit_code = 75  # EX_TEMPFAIL: a restarted worker joins the queue again


@dataclass
class Outcome:
    held: bool                 # True: we hold the lease (the caller works, then releases)
    stopped: bool = False      # ``stop()`` became true while waiting (a SIGTERM, say)
    waited: float = 0.0        # seconds spent waiting for others
    holders: list[str] = field(default_factory=list)  # workers seen holding it meanwhile


def acquire(lease: Lease, done: Callable[[], bool], *, wait: float, poll: float,
            log: Callable[[str], None], log_every: float = 5.0,
            sleep: Callable[[float], None] = time.sleep,
            stop: Callable[[], bool] = lambda: False) -> Outcome:
    """Claim, then loop: hold the lease, or see ``done()`` (the work another worker did is
    now visible to us), or wait ``poll`` and look again; at most ``wait`` seconds. The claim
    stays in place when the lease is held; otherwise it is released before returning."""
    start = lease.clock()
    lease.claim()
    out = Outcome(held=False)
    last_log = start - log_every  # the first wait is logged at once
    try:
        while True:
            listed_at = lease.clock()
            view = lease.look()
            lease.sweep(view)
            if lease.mine(view) is None:  # our claim expired (a stall longer than expiry)
                lease.claim()
                continue
            if lease.holds(view, listed_at):
                out.held = True
                out.waited = lease.clock() - start
                return out
            first = view.first
            if first is not None and first.name != lease.name:
                if first.worker not in out.holders:
                    out.holders.append(first.worker)
                if done():
                    out.waited = lease.clock() - start
                    return out
                now = lease.clock()
                if now - last_log >= log_every:
                    log(f"waiting for worker {first.worker} (lease holder; "
                        f"{now - start:.0f}s of at most {wait:.0f}s)")
                    last_log = now
            if lease.clock() - start > wait:
                raise LeaseWaitTimeout(
                    f"gave up after {wait:.0f}s waiting for worker "
                    f"{first.worker if first else '?'} to finish its install",
                    hint="raise CACHE_SYNC_LEASE_WAIT, or look at that worker's log")
            if stop():
                out.stopped = True
                out.waited = lease.clock() - start
                return out
            lease.renew_if_due()
            sleep(poll)
    finally:
        if not out.held:
            lease.release()
