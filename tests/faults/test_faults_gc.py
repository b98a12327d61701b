"""gc racing pushes (issue 13, case 1; docs/design.md section 6).

Worker A pulled an old snapshot and pushes new files, reusing old objects by reference; worker
B deletes a big file, pushes and runs ``gc --keep 1``; other gc runs come and go. The actors
run in-process through the real CLI entry point and are interleaved deterministically at every
store request and protocol checkpoint (``interleave.py``): by seeded random schedules, and by
scripted schedules that each target one safety rule of the protocol. After every interleaving
every snapshot in the store must name only existing objects and a fresh worker must pull.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cache_sync import gcmarks
from tests.support import crash
from tests.support import faultkit as fk
from tests.support.interleave import Scheduler, Script, stepped
from tests.support.waits import wait_until

WINDOW = 2.0  # CACHE_SYNC_GC_WINDOW here: a push that meets a ripe mark waits this long
DAY = 86400.0


cli = fk.Workspace.cli


age = fk.age_store


class World:
    """A (old base, new files, still has big.bin) and B (deleted big.bin, pushed)."""

    def __init__(self, tmp_path: Path, monkeypatch, remote: str | None = None,
                 extra: dict[str, str] | None = None) -> None:
        self.a = fk.workspace(tmp_path, remote, extra, name="a")
        self.local = self.a.remote.startswith("file://")
        for k, v in {**fk.SMALL_OBJECTS, **(extra or {}), "CACHE_SYNC_AREAS": fk.AREA,
                     "CACHE_SYNC_PROGRESS": "off",
                     "CACHE_SYNC_GC_WINDOW": str(WINDOW)}.items():
            monkeypatch.setenv(k, v)
        self.b = self.a.sibling("b")
        self.g = self.a.sibling("g")  # a third worker that only runs gc
        # big.bin is chunked (> the 64 KiB small-file limit): its objects hold nothing else.
        crash.write_tree(self.a.area(), {"big.bin": os.urandom(300_000), "keep.txt": b"k",
                                          "pkg/mod.py": b"x = 1\n"})
        cli(self.a, "push")
        cli(self.b, "pull")
        if self.local:
            age(self.a, "objects")  # the base's objects are older than the default grace
        for i in range(3):
            (self.a.area() / f"a{i}.txt").write_text(f"a's file {i}")
        (self.b.area() / "big.bin").unlink()
        (self.b.area() / "b.txt").write_text("b's file")

    def b_deletes_and_collects(self, *gc_args: str) -> None:
        cli(self.b, "push")
        cli(self.b, "gc", "--keep", "1", *gc_args)

    def ripen(self) -> None:
        """Let marks reach their delay: moved back on a local store; on S3 (whose
        LastModified nobody can move) polled until the store's own clock says so."""
        if self.local:
            age(self.a, "gc/marks")
        else:
            store = fk.open_raw_store(self.a)
            assert wait_until(lambda: all(m.ripe(gcmarks.store_now(store))
                                          for m in gcmarks.list_marks(store)), 60, step=0.2)

    def check(self, tmp_path: Path, label: str) -> None:
        """Every snapshot names existing objects that reassemble; a fresh worker pulls A's and
        B's additions."""
        fk.audit_store(self.a)
        fresh = fk.workspace(tmp_path, self.a.remote, dict(self.a.env), name=f"fresh-{label}")
        cli(fresh, "pull")
        for i in range(3):
            assert (fresh.area() / f"a{i}.txt").read_text() == f"a's file {i}"
        assert (fresh.area() / "b.txt").read_text() == "b's file"

    def flush(self, tmp_path: Path, *gc_args: str) -> None:
        """More gc runs after the race (marks ripened in between): still pullable."""
        for i in range(2):
            self.ripen()
            cli(self.g, "gc", "--keep", "1", *gc_args)
            self.check(tmp_path, f"flush{i}")


def race(w: World, monkeypatch, seed: int, gc_args: tuple[str, ...]) -> Scheduler:
    """The seed decides how far B gets before A starts, at which of its store requests (at
    the latest its snapshot PUT, the commit) A stands while B and another worker's gc runs go
    ahead, in which order those two run, and then everything left runs in seeded random
    order."""
    import random

    rng = random.Random(seed)
    others = [Script("B"), Script("G")]
    rng.shuffle(others)
    script = [Script("B", steps=rng.choice([0, 0, 2, 4])),
              Script("A", "put snapshots/", steps=rng.randint(1, 12)), *others]
    s = Scheduler(seed=seed, script=script)
    s.add("A", lambda: cli(w.a, "push"))
    s.add("B", lambda: w.b_deletes_and_collects(*gc_args))

    def other_gc() -> None:
        for _ in range(2):
            w.ripen()
            cli(w.g, "gc", "--keep", "1", *gc_args)

    s.add("G", other_gc)
    with stepped(s):
        errors = s.run()
    assert not any(errors.values()), s.errors()
    return s


GRACES = {"default": (), "zero": ("--grace", "0")}


@pytest.mark.parametrize("grace", sorted(GRACES))
@pytest.mark.parametrize("seed", range(8))
def test_gc_racing_a_push_local(tmp_path, monkeypatch, seed, grace):
    """The issue's scenario over seeded schedules. On the old gc (delete at once what the
    kept snapshots do not name) most seeds commit A's snapshot naming a deleted object."""
    w = World(tmp_path, monkeypatch)
    race(w, monkeypatch, seed, GRACES[grace])
    w.check(tmp_path, "race")
    w.flush(tmp_path, *GRACES[grace])


@pytest.mark.parametrize("seed", range(6 if fk.long_mode() else 2))
def test_gc_racing_a_push_moto(tmp_path, monkeypatch, moto, seed):
    """The same on a real S3 server; store times cannot be moved back, so ``--grace 0`` and
    the window (2 s) is waited out."""
    w = World(tmp_path, monkeypatch, f"s3://{moto.make_bucket()}/cache", moto.env())
    race(w, monkeypatch, 100 + seed, GRACES["zero"])
    w.check(tmp_path, "race")


# --- one test per safety rule: each fails when that rule is removed -------------------------
def ripe_mark_world(tmp_path, monkeypatch, *gc_args: str) -> World:
    """B has deleted big.bin, pushed and run gc: big.bin's objects are in a mark, ripened."""
    w = World(tmp_path, monkeypatch)
    w.b_deletes_and_collects(*gc_args)
    w.ripen()
    return w


def scripted(w: World, monkeypatch, *script: Script, gc_args: tuple[str, ...] = ()) -> None:
    s = Scheduler(script=script)
    s.add("A", lambda: cli(w.a, "push"))
    s.add("G", lambda: cli(w.g, "gc", "--keep", "1", *gc_args))
    with stepped(s):
        errors = s.run()
    assert not any(errors.values()), s.errors()


def test_gc_spares_objects_a_push_has_claimed(tmp_path, monkeypatch):
    """A has claimed big.bin's objects and checked them; it stops just before its commit while
    a gc deletes the ripe mark's objects. Rule: gc never deletes a live claim's objects."""
    w = ripe_mark_world(tmp_path, monkeypatch)
    scripted(w, monkeypatch, Script("A", "push:commit"), Script("G"), Script("A"))
    w.check(tmp_path, "after")


def test_gc_rereads_snapshots_committed_after_the_mark(tmp_path, monkeypatch):
    """A commits (and releases its claim) after the mark was written, before the deleting
    run. Rule: the deleting run spares what any snapshot existing now names."""
    w = ripe_mark_world(tmp_path, monkeypatch)
    scripted(w, monkeypatch, Script("A"), Script("G"))
    w.check(tmp_path, "after")


def test_push_waits_out_a_delete_phase_that_missed_its_claim(tmp_path, monkeypatch):
    """gc lists claims (none yet) and stops before deleting; A claims, meets the ripe mark and
    commits; gc resumes. Rules: the push waits W for a late mark, and gc sends no delete once
    W/2 has passed since it listed claims (without either, gc deletes what A committed)."""
    w = ripe_mark_world(tmp_path, monkeypatch)
    scripted(w, monkeypatch, Script("G", "gc:delete"), Script("A"), Script("G"))
    w.check(tmp_path, "after")


def test_push_rechecks_after_waiting(tmp_path, monkeypatch):
    """As above, but gc deletes while A waits. Rule: after the wait the push looks again and
    uploads big.bin anew instead of naming the deleted objects."""
    w = ripe_mark_world(tmp_path, monkeypatch)
    scripted(w, monkeypatch, Script("G", "gc:delete"), Script("A", "push:wait"), Script("G"),
             Script("A"))
    w.check(tmp_path, "after")


def test_push_lists_objects_after_claiming(tmp_path, monkeypatch):
    """A found big.bin's objects at its start; gc deletes them (and its mark) before A
    claims. Rule: the push lists objects after its claim and does not name what is gone."""
    w = ripe_mark_world(tmp_path, monkeypatch)
    scripted(w, monkeypatch, Script("A", "push:uploaded"), Script("G"), Script("A"))
    w.check(tmp_path, "after")


def test_young_mark_is_not_deleted(tmp_path, monkeypatch):
    """The mark is younger than its delay (grace 1 h), so a push naming its objects does not
    wait. Rule: gc deletes only marks older than max(grace, window)."""
    w = World(tmp_path, monkeypatch)
    w.b_deletes_and_collects("--grace", "3600")
    scripted(w, monkeypatch, Script("G", "gc:delete"), Script("A"), Script("G"),
             gc_args=("--grace", "3600"))
    w.check(tmp_path, "after")


def test_push_claims_again_when_its_claim_expired(tmp_path, monkeypatch):
    """A's claim (ttl 2 s here) expires while it stands before its commit, and gc deletes.
    Rule: a push commits only within ttl/2 of its claim, else claims and checks again."""
    from cache_sync import gcmarks

    monkeypatch.setattr(gcmarks, "CLAIM_TTL", 2.0)
    w = ripe_mark_world(tmp_path, monkeypatch)
    scripted(w, monkeypatch, Script("A", "push:commit"), Script("G"), Script("A"))
    w.check(tmp_path, "after")


def test_gc_marks_first_and_deletes_in_a_later_run(tmp_path):
    """Through the CLI: a run marks, the next deletes nothing young, a run after the delay
    deletes, and the store still pulls."""
    ws = fk.workspace(tmp_path, extra={"CACHE_SYNC_GC_WINDOW": "600"})  # no run is late
    crash.write_tree(ws.area(), {"big.bin": os.urandom(300_000), "k.txt": b"k"})
    ws.run("push")
    (ws.area() / "big.bin").unlink()
    ws.run("push")
    before = crash.count_files(tmp_path / "store" / "objects")
    first = ws.run("--json", "gc", "--keep", "1", "--grace", "0")
    assert '"objects_marked": 2' in first.stdout and '"objects_deleted": 0' in first.stdout
    second = ws.run("--json", "gc", "--keep", "1", "--grace", "0")
    assert '"objects_deleted": 0' in second.stdout
    assert crash.count_files(tmp_path / "store" / "objects") == before
    age(ws, "gc/marks", 600)
    third = ws.run("--json", "gc", "--keep", "1", "--grace", "0")
    assert '"objects_deleted": 2' in third.stdout, third.stdout
    assert crash.count_files(tmp_path / "store" / "objects") == before - 2
    fresh = ws.sibling("fresh")
    fresh.run("pull")
    assert (fresh.area() / "k.txt").read_bytes() == b"k"
