"""Deterministic interleaving of in-process actors (pushes, pulls, gc runs) at their store
requests and at the named points of ``cache_sync.checkpoints``.

Each actor runs in its own thread, but only one runs at a time: before every store request
its main thread makes (and at every checkpoint) it stops and the scheduler picks who runs
next, either from a seeded random generator or from a script. Requests made by an actor's
transfer pool threads are not stopping points (they belong to the actor that is running).

The stopping points are store requests, so the same schedules drive code that has no
checkpoints at all (the test then fails on the old code rather than being unable to run).
"""

from __future__ import annotations

import random
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cache_sync.storage.base import ObjectInfo, Readable, Store


@dataclass
class _Actor:
    name: str
    fn: Callable[[], object]
    thread: threading.Thread | None = None
    label: str = "start"
    arrivals: int = 0
    waiting: bool = False
    done: bool = False
    error: BaseException | None = None
    trace: str = ""


@dataclass
class Script:
    """Run ``actor`` until it is about to pass a point whose label starts with ``until``
    or has passed ``steps`` points (until it ends when both are None)."""

    actor: str
    until: str | None = None
    steps: int | None = None  # or stop after this many points, whichever comes first


@dataclass
class Scheduler:
    seed: int = 0
    script: Sequence[Script] = ()
    timeout: float = 120.0
    actors: dict[str, _Actor] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.cond = threading.Condition()
        self.turn: str | None = None
        self._by_thread: dict[int, str] = {}
        self._entry: tuple[int, int] | None = None  # (script position, arrivals when it began)

    def add(self, name: str, fn: Callable[[], object]) -> None:
        self.actors[name] = _Actor(name, fn)

    # --- called from actor threads ----------------------------------------------------------
    def step(self, label: str) -> None:
        name = self._by_thread.get(threading.get_ident())
        if name is None:
            return  # a transfer pool thread of the running actor
        a = self.actors[name]
        with self.cond:
            a.label, a.waiting = label, True
            a.arrivals += 1
            self.turn = None
            self.cond.notify_all()
            while self.turn != name:
                if not self.cond.wait(self.timeout):
                    raise TimeoutError(f"{name} never got its turn back at {label}")
            a.waiting = False

    def _body(self, a: _Actor) -> None:
        self._by_thread[threading.get_ident()] = a.name
        try:
            self.step("start")
            a.fn()
        except BaseException as exc:  # noqa: BLE001 - reported by run()
            a.error = exc
            a.trace = traceback.format_exc()
        finally:
            self._by_thread.pop(threading.get_ident(), None)  # idents are reused
            with self.cond:
                a.done = True
                self.turn = None
                self.cond.notify_all()

    # --- the driver ---------------------------------------------------------------------------
    def run(self) -> dict[str, BaseException | None]:
        for a in self.actors.values():
            a.thread = threading.Thread(target=self._body, args=(a,), name=f"actor-{a.name}",
                                        daemon=True)
            a.thread.start()
        script = list(self.script)
        self._done_entries = 0
        with self.cond:
            while True:
                if not self.cond.wait_for(self._all_stopped, self.timeout):
                    raise TimeoutError(f"an actor did not reach its next point: {self.log[-5:]}")
                waiting = sorted(n for n, x in self.actors.items() if x.waiting)
                if not waiting:
                    break
                pick = self._pick(waiting, script)
                self.log.append(f"{pick}: {self.actors[pick].label}")
                self.turn = pick
                self.cond.notify_all()
        for a in self.actors.values():
            assert a.thread is not None
            a.thread.join(self.timeout)
        return {n: a.error for n, a in self.actors.items()}

    def _all_stopped(self) -> bool:
        return self.turn is None and all(x.done or x.waiting for x in self.actors.values())

    def _pick(self, waiting: list[str], script: list[Script]) -> str:
        while script:
            cur = script[0]
            a = self.actors[cur.actor]
            if self._entry is None or self._entry[0] != self._done_entries:
                self._entry = (self._done_entries, a.arrivals)
            passed = a.arrivals - self._entry[1]
            if a.done or (cur.until is not None and passed and a.label.startswith(cur.until)) \
                    or (cur.steps is not None and passed >= cur.steps):
                script.pop(0)
                self._done_entries += 1
                continue
            return cur.actor
        return self.rng.choice(waiting)

    def errors(self) -> str:
        return "\n".join(f"{a.name}: {a.trace}" for a in self.actors.values() if a.error)


class SteppedStore(Store):
    """A store that stops its caller before each request (see the module docstring)."""

    def __init__(self, inner: Store, sched: Scheduler) -> None:
        self.inner = inner
        self.sched = sched
        self.url = inner.url

    def get(self, key: str) -> bytes:
        self.sched.step(f"get {key}")
        return self.inner.get(key)

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        self.sched.step(f"range {key}")
        return self.inner.open_range(key, start, length)

    def put(self, key: str, data: bytes) -> None:
        self.sched.step(f"put {key}")
        self.inner.put(key, data)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.sched.step(f"list {prefix}")
        return iter(list(self.inner.list(prefix)))

    def delete(self, keys: Sequence[str]) -> None:
        self.sched.step(f"delete {keys[0] if keys else ''} ({len(keys)})")
        self.inner.delete(keys)

    def head(self, key: str) -> ObjectInfo | None:
        self.sched.step(f"head {key}")
        return self.inner.head(key)

    def close(self) -> None:
        self.inner.close()


@contextmanager
def stepped(sched: Scheduler) -> Iterator[None]:
    """While inside: every store cache_sync opens stops at each request; checkpoints stop
    too. Undone on exit, so what a test does afterwards runs free."""
    from cache_sync import storage

    real = storage.open_store

    def open_stepped(settings):
        return SteppedStore(real(settings), sched)

    patched = [mod for mod in list(sys.modules.values())
               if getattr(mod, "__name__", "").startswith("cache_sync")
               and getattr(mod, "open_store", None) is real]
    for mod in patched:
        mod.open_store = open_stepped
    try:
        from cache_sync import checkpoints  # absent on code that predates the gc protocol
    except ImportError:
        checkpoints = None
    if checkpoints is not None:
        checkpoints.install(sched.step)
    try:
        yield
    finally:
        for mod in patched:
            mod.open_store = real
        if checkpoints is not None:
            checkpoints.install(None)
