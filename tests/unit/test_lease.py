"""The store lease (docs/design.md section 8), interleaved step by step with other candidates,
a dead holder and clock skew, over an in-memory store whose LastModified has S3's 1-second
granularity (so same-second ties happen, as they do on S3 and B2)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_sync.lease import (
    Lease,
    LeaseWaitTimeout,
    Timing,
    acquire,
    interpret,
)
from cache_sync.storage.base import ObjectInfo
from cache_sync.storage.memory import MemoryStore


class World:
    """The one true time; the store stamps LastModified from it, rounded down to seconds."""

    def __init__(self) -> None:
        self.t = 1000.0


class MemStore(MemoryStore):
    """The in-memory store, with LastModified taken from the world's clock at the start of a
    PUT (as S3 stamps it), S3's granularity, and hooks for slow PUTs."""

    def __init__(self, world: World, granularity: float = 1.0) -> None:
        super().__init__("lease")
        self.world, self.granularity = world, granularity
        self.put_seconds: list[float] = []  # durations of the next PUTs (S3 stamps the start)
        self.during_put: list = []  # callables run inside the next PUTs, after the stamp

    @property
    def lists(self) -> int:
        return self.requests["list"]

    def _stamp(self) -> float:
        g = self.granularity
        return math.floor(self.world.t / g) * g if g else self.world.t

    def put(self, key: str, data: bytes) -> None:
        stamp = self._stamp()
        self.world.t += self.put_seconds.pop(0) if self.put_seconds else 0.0
        hook = self.during_put.pop(0) if self.during_put else None
        if hook is not None:
            hook()
        super().put(key, data)
        self.objects[key] = (bytes(data), stamp)


TIMING = Timing(expiry=10, renew=2, settle=2)


def make(world: World, store: MemStore, worker: str, skew: float = 0.0,
         timing: Timing = TIMING) -> Lease:
    """A candidate whose local clock is off by ``skew`` seconds (it never matters: only
    differences of one machine's own clock are used)."""
    return Lease(store, "bootstrap", worker, timing, clock=lambda: world.t + skew)


def test_alone_holds_only_after_settle():
    w = World()
    s = MemStore(w)
    a = make(w, s, "a")
    a.claim()
    w.t += 0.5
    assert not a.holds(a.look(), a.clock())
    w.t += 1.6
    assert a.holds(a.look(), a.clock())


def test_same_second_tie_a_later_smaller_name_cannot_steal():
    """A claims and sees only itself; B claims in the same LastModified second with a name
    that sorts first. Without the settle rule both would install."""
    w = World()
    s = MemStore(w)
    a, b = make(w, s, "zz-late-name"), make(w, s, "aa-early-name")
    w.t = 1000.1
    a.claim()
    seen_by_a = a.look()
    assert [c.worker for c in seen_by_a.live] == ["zz-late-name"]
    w.t = 1000.6
    b.claim()
    assert b.look().first.worker == "aa-early-name"  # the tie goes to B by name ...
    w.t = 1002.2
    va = a.look()
    assert not a.holds(va, a.clock())  # ... and A's settled LIST sees B first: A yields
    vb = b.look()
    assert not b.holds(vb, b.clock())  # B has not settled yet
    w.t = 1002.7
    assert b.holds(b.look(), b.clock())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 6), st.floats(-50, 50)), min_size=2, max_size=6),
       st.lists(st.floats(0.05, 1.5), min_size=40, max_size=40))
def test_never_two_holders_under_any_interleaving(claims, steps):
    """N candidates claim at arbitrary times (with arbitrarily skewed local clocks) and then
    look at arbitrary moments; once one holds, it keeps renewing. Never two holders."""
    w = World()
    s = MemStore(w)
    cands = [(at, make(w, s, f"w{i}", skew)) for i, (at, skew) in enumerate(claims)]
    holders: set[str] = set()
    t0 = w.t
    step_iter = iter(steps * 3)
    end = t0 + 12
    while w.t < end:
        w.t += next(step_iter, 0.3)
        for at, c in cands:
            if c.claimed_at is None and w.t - t0 >= at:
                c.claim()
            elif c.claimed_at is not None:
                c.renew_if_due()
                if c.name not in holders and c.holds(c.look(), c.clock()):
                    holders.add(c.name)
        assert len(holders) <= 1, holders
    assert len(holders) == 1


def test_dead_holder_expires_and_the_next_takes_over():
    w = World()
    s = MemStore(w)
    a, b = make(w, s, "a"), make(w, s, "b")
    a.claim()
    w.t += 0.5
    b.claim()
    w.t += 2.0
    assert a.holds(a.look(), a.clock())
    # a renews one last time and is SIGKILLed. b keeps its own claim alive while waiting.
    a.renew()
    killed = w.t
    taken = None
    while w.t < killed + 30:
        w.t += 0.5
        b.renew_if_due()
        view = b.look()
        if b.holds(view, b.clock()):
            taken = w.t
            break
        assert view.first.worker == "a"  # not before expiry
    assert taken is not None
    expiry, granularity, renew = 10, 1, 2
    assert killed + expiry - 1 <= taken <= killed + expiry + granularity + renew
    b.sweep(b.look())
    assert not any("/a-" in k for k in s.objects)  # the dead claim is cleaned up


def test_released_lease_passes_at_once_to_the_next_in_order():
    w = World()
    s = MemStore(w)
    a, b, c = make(w, s, "a"), make(w, s, "b"), make(w, s, "c")
    a.claim()
    w.t += 1.1
    c.claim()
    w.t += 1.1
    b.claim()
    w.t += 2.1
    assert a.holds(a.look(), a.clock())
    a.release()
    assert c.holds(c.look(), c.clock()) and not b.holds(b.look(), b.clock())


def test_local_clock_skew_is_irrelevant_store_time_decides_expiry():
    """A waiter whose own clock is a day ahead neither expires a live holder early nor
    keeps a dead one: expiry compares store LastModified values only."""
    w = World()
    s = MemStore(w)
    a, b = make(w, s, "a", skew=0), make(w, s, "b", skew=86400)
    a.claim()
    w.t += 0.2
    b.claim()
    w.t += 2.5
    assert a.holds(a.look(), a.clock())
    for _ in range(20):  # a renews for 20 s of store time: b never takes over
        w.t += 1
        a.renew_if_due()
        b.renew_if_due()
        assert not b.holds(b.look(), b.clock())


def test_interpret_ignores_strays_and_orders_by_place_not_by_liveness():
    infos = [ObjectInfo("leases/x/b-1.claim", 1, 10.0), ObjectInfo("leases/x/b-1.alive", 1, 30.0),
             ObjectInfo("leases/x/a-1.claim", 1, 20.0), ObjectInfo("leases/x/gone-1.alive", 1, 25.0),
             ObjectInfo("leases/x/old-1.claim", 1, 5.0)]
    view = interpret(infos, "leases/x/", expiry=12)
    assert [c.name for c in view.live] == ["b-1", "a-1"]  # b renewed last but was placed first
    assert [c.name for c in view.expired] == ["old-1"]
    assert view.stray == ["gone-1.alive"] and view.now == 30.0


def test_acquire_waits_then_sees_the_work_done_and_releases():
    w = World()
    s = MemStore(w)
    holder = make(w, s, "holder")
    holder.claim()
    w.t += 2.5
    assert holder.holds(holder.look(), holder.clock())
    waiter = make(w, s, "waiter")
    logs: list[str] = []
    checks = []

    def done() -> bool:
        checks.append(w.t)
        return len(checks) >= 8  # the holder's snapshot appears on the 8th look

    def sleep(dt: float) -> None:
        w.t += dt
        holder.renew_if_due()

    out = acquire(waiter, done, wait=60, poll=1.0, log=logs.append, log_every=5, sleep=sleep)
    assert not out.held and out.holders == ["holder"]
    assert 1 <= len(logs) <= 2 and "waiting for worker holder" in logs[0]  # bounded log rate
    assert not any(k.startswith("leases/bootstrap/waiter") for k in s.objects)  # released


def test_acquire_gives_up_after_the_bound():
    w = World()
    s = MemStore(w)
    holder = make(w, s, "holder")
    holder.claim()
    waiter = make(w, s, "waiter")

    def sleep(dt: float) -> None:
        w.t += dt
        holder.renew_if_due()

    with pytest.raises(LeaseWaitTimeout, match="waiting for worker holder"):
        acquire(waiter, lambda: False, wait=5, poll=1.0, log=lambda m: None, sleep=sleep)
    assert not any("waiter" in k for k in s.objects)


def test_a_slow_claim_put_is_withdrawn_and_made_again():
    """S3 stamps LastModified at the start of an upload. B's claim PUT starts first (same
    second, a name that wins ties) but lands only after A has settled and decided: kept, it
    would sort before A and B would hold too. Lease.claim withdraws it and claims again."""
    w = World()
    s = MemStore(w)
    a, b = make(w, s, "zz-a"), make(w, s, "aa-b")
    decided = []

    def a_claims_and_decides() -> None:
        w.t += 0.01
        a.claim()
        w.t += 2.1
        decided.append(a.holds(a.look(), a.clock()))

    w.t = 1000.1
    s.during_put = [a_claims_and_decides]  # runs inside B's first claim PUT
    b.claim()
    assert decided == [True]
    assert a.holds(a.look(), a.clock())
    w.t += 2.1
    assert not b.holds(b.look(), b.clock())  # B's place is behind A's: one holder
    assert b.look().first.worker == "zz-a"


def test_claim_gives_up_on_a_store_slower_than_max_put():
    w = World()
    s = MemStore(w)
    s.put_seconds = [1.0] * 10
    with pytest.raises(Exception, match="CACHE_SYNC_LEASE_SETTLE"):
        make(w, s, "a").claim(attempts=3)
    assert not s.objects
