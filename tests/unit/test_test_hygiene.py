"""The suite does not depend on the machine's speed (issue 19.5).

Two patterns make a test pass or fail by how fast the machine is, and neither may appear in a
test outside ``tests/support/`` (where the polling helper and the fakes live) unless listed
below with the reason it is the property itself:

- a fixed ``sleep`` used to let something happen: a test waits for the event instead (a file,
  a request the server saw, a log line) with ``tests.support.waits.wait_until``; a sleep
  inside a loop is a poll and is fine;
- an upper bound on elapsed wall-clock time (``took < 3``): a test counts what matters
  (requests, retries, waits asked of the sleep strategy, lines executed) or relies on a hang
  guard (a subprocess timeout). A lower bound (``took >= 2`` for a Retry-After) holds on any
  machine and is fine, as is a deadline in a polling loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

TESTS = REPO / "tests"
CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns", "time_ns"}

# (file under tests/, function) -> why its wall-clock bound is the property under test.
BOUNDS_THAT_ARE_THE_PROPERTY = {
    ("functional/test_run.py", "test_shutdown_budget_runs_from_sigterm_when_the_child_ignores_it"):
        "design 9.5: the worker's exit within its shutdown budget is the property; the "
        "margin is one request's grace (1.5 s) over a 6 s budget",
    ("functional/test_bootstrap.py", "test_holder_killed_mid_install_another_takes_over"):
        "design 8.3: a dead holder is passed over within expiry + a quarter; 3 s margin",
    ("handler/test_runpod_loop.py", "_drive_sigterm"):
        "an order of two events (the result was posted after SIGTERM), not a duration",
}
# Sleeps inside fakes: the slow work they stand for, not a wait for something to happen.
SLEEPS_THAT_ARE_THE_PROPERTY = {
    ("unit/test_asr.py", "__call__"): "a fake ASR backend whose transcription takes time",
    ("unit/test_memory.py", "open_range"): "a fake store whose ranged GETs are slow",
}


def _files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py")
                  if "support" not in p.relative_to(TESTS).parts)


def _is_clock_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCKS and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "time")


def _is_sleep(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return ((isinstance(f, ast.Attribute) and f.attr == "sleep"
             and isinstance(f.value, ast.Name) and f.value.id in ("time", "asyncio"))
            or (isinstance(f, ast.Name) and f.id == "sleep"))


class _Scan(ast.NodeVisitor):
    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.func = "<module>"
        self.loops = 0
        self.clocked: set[str] = set()  # names assigned from a clock reading
        self.sleeps: list[tuple[str, int]] = []
        self.bounds: list[tuple[str, int]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        saved = (self.func, self.loops, self.clocked)
        self.func, self.loops = node.name if saved[0] == "<module>" else saved[0], 0
        self.clocked = set(saved[2])
        self.generic_visit(node)
        self.func, self.loops, self.clocked = saved

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def _loop(self, node: ast.AST) -> None:
        self.loops += 1
        self.generic_visit(node)
        self.loops -= 1

    visit_While = visit_For = visit_AsyncFor = _loop  # noqa: N815

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(_is_clock_call(n) for n in ast.walk(node.value)):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.clocked.add(t.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if _is_sleep(node) and not self.loops:
            self.sleeps.append((self.func, node.lineno))
        self.generic_visit(node)

    def visit_Assert(self, node: ast.Assert) -> None:
        if not self.loops:
            for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
                if self._upper_bound(cmp):
                    self.bounds.append((self.func, node.lineno))
        self.generic_visit(node)

    def _timed(self, node: ast.AST) -> bool:
        return any((isinstance(n, ast.Name) and n.id in self.clocked) or _is_clock_call(n)
                   for n in ast.walk(node))

    def _upper_bound(self, cmp: ast.Compare) -> bool:
        """``timed < x`` or ``x > timed`` anywhere in a (chained) comparison."""
        operands = [cmp.left, *cmp.comparators]
        for i, op in enumerate(cmp.ops):
            left, right = operands[i], operands[i + 1]
            if isinstance(op, ast.Lt | ast.LtE) and self._timed(left):
                return True
            if isinstance(op, ast.Gt | ast.GtE) and self._timed(right):
                return True
        return False


def _scan() -> list[_Scan]:
    out = []
    for path in _files():
        s = _Scan(str(path.relative_to(TESTS)))
        s.visit(ast.parse(path.read_text(), str(path)))
        out.append(s)
    return out


def test_no_fixed_sleep_waits_for_something_to_happen():
    found = [f"{s.rel}:{line} in {func}" for s in _scan() for func, line in s.sleeps
             if (s.rel, func) not in SLEEPS_THAT_ARE_THE_PROPERTY]
    assert not found, ("a fixed sleep; wait for the event with tests.support.waits.wait_until "
                       f"instead: {found}")


def test_no_upper_bound_on_wall_clock_time():
    found = [f"{s.rel}:{line} in {func}" for s in _scan() for func, line in s.bounds
             if (s.rel, func) not in BOUNDS_THAT_ARE_THE_PROPERTY]
    assert not found, ("an upper bound on elapsed time depends on the machine; count what "
                       f"matters or rely on a hang guard: {found}")


def test_the_scanner_finds_both_patterns():
    """The guard can fail: a sleep outside a loop and a `took < 3` are both found, a poll and a
    lower bound are not."""
    code = ("import time\n"
            "def test_x():\n"
            "    t0 = time.monotonic()\n"
            "    time.sleep(0.5)\n"
            "    while not done():\n"
            "        time.sleep(0.05)\n"
            "    took = time.monotonic() - t0\n"
            "    assert took < 3\n"
            "    assert 2 <= took\n"
            "    assert 0.4 <= took < 5\n")
    s = _Scan("x.py")
    s.visit(ast.parse(code))
    assert s.sleeps == [("test_x", 4)]
    assert s.bounds == [("test_x", 8), ("test_x", 10)]


def test_the_listed_exceptions_still_exist():
    scans = {s.rel: s for s in _scan()}
    for rel, func in (*BOUNDS_THAT_ARE_THE_PROPERTY, *SLEEPS_THAT_ARE_THE_PROPERTY):
        s = scans[rel]
        assert func in {f for f, _ in s.bounds + s.sleeps}, (rel, func)
