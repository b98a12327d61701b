"""A failed pull leaves the area exactly as it was; a pull killed in its final phase is rolled
forward by the next start (issue 13, case 4; docs/design.md section 5.2).

Worker B has pulled v1; A pushes v2, which changes contents, modes, a symlink's target, turns a
file into a directory and a directory into a file, deletes, adds small (packed) and big
(chunked) files. B then pulls v2 with one of its objects damaged or missing, or is SIGKILLed
at an operation of its final phase (``support/_killpoint``: exactly there, not after a delay).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import crash
from tests.support import faultkit as fk

KILLPOINT = str(Path(__file__).resolve().parent.parent / "support" / "_killpoint")


def v1() -> dict[str, bytes | str | None]:
    spec: dict[str, bytes | str | None] = {
        "keep.txt": b"unchanged", "mod.py": b"x = 1\n", "bin/tool.sh": b"#!/bin/sh\necho\n",
        "gone.txt": b"deleted in v2", "was_file": b"becomes a directory",
        "was_dir/inner.txt": b"its directory becomes a file", "link": "->keep.txt",
        "empty": None, "big.bin": os.urandom(300_000),
    }
    spec.update({f"pk/{i:02d}.txt": f"small {i}".encode() for i in range(30)})
    return spec


def to_v2(area: Path) -> None:
    (area / "mod.py").write_bytes(b"x = 2  # v2\n")
    os.chmod(area / "bin/tool.sh", 0o644)
    (area / "gone.txt").unlink()
    (area / "was_file").unlink()
    crash.write_tree(area, {"was_file/now.txt": b"inside", "big2.bin": os.urandom(400_000),
                            "big.bin": os.urandom(300_000)})
    for p in (area / "was_dir").iterdir():
        p.unlink()
    (area / "was_dir").rmdir()
    (area / "was_dir").write_bytes(b"a file now")
    (area / "link").unlink()
    (area / "link").symlink_to("mod.py")
    for i in range(0, 30, 3):
        (area / f"pk/{i:02d}.txt").write_bytes(f"small {i} v2".encode())
    crash.write_tree(area, {f"new/{i}.txt": f"new {i}".encode() for i in range(10)})


def tree_digest(area: Path) -> tuple:
    """Everything the issue asks to stay byte for byte: every path's kind, mode, size,
    content hash or link target and mtime, and the area directory's own mode and mtime."""
    st = os.lstat(area)
    return (st.st_mode, st.st_mtime_ns, crash.snapshot_tree(area, skip=()))


@pytest.fixture
def world(tmp_path):
    # One transfer at a time: big objects are fetched first, so a damaged small one is met
    # after other files of v2 are complete (on the old pull: already renamed into place).
    a = fk.workspace(tmp_path, extra={"CACHE_SYNC_TRANSFERS": "1"}, name="a")
    crash.write_tree(a.area(), v1(), modes={"bin/tool.sh": 0o755})
    a.run("push")
    first = fk.snapshot_ids(a)
    b = a.sibling("b")
    b.run("pull")
    to_v2(a.area())
    a.run("push")
    audit = fk.audit_store(a)
    (new_id,) = fk.snapshot_ids(a) - first
    (old_id,) = first
    old_objects = {bl.oid for e in audit.snapshots[old_id].entries.values() for bl in e.blobs}
    new = {bl.oid: bl for e in audit.snapshots[new_id].entries.values() for bl in e.blobs
           if bl.oid not in old_objects}
    return a, b, new


def object_path(ws: fk.Workspace, oid: str) -> Path:
    return Path(ws.remote[len("file://"):]) / "objects" / oid[:2] / oid


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_failed_pull_leaves_the_area_exactly_as_it_was(world, damage):
    a, b, new = world
    before = tree_digest(b.area())
    # The smallest new object (a pack of small files): fetched last.
    oid = min(new, key=lambda o: os.path.getsize(object_path(a, o)))
    path = object_path(a, oid)
    good = path.read_bytes()
    if damage == "corrupt":
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    else:
        path.unlink()
    r = b.run("pull", ok=False)
    assert r.returncode == (5 if damage == "corrupt" else 3), r.stderr
    assert oid in r.stderr, r.stderr  # the message names the object
    after = tree_digest(b.area())
    assert after == before, crash.diff_trees(before[2], after[2], mtime=True) or "area dir"
    assert not list((b.root / ".cache-sync").glob("*.apply.json"))
    # design 5.3 step 2 comes after staging: a pull that failed while staging leaves no
    # state.next behind (one would describe a tree the area never became)
    assert not list((b.root / ".cache-sync").glob("*.state.next.zst"))
    # Repaired, the next pull converges to v2 exactly and leaves no stage behind.
    path.write_bytes(good)
    b.run("pull")
    assert crash.diff_trees(a.tree(), b.tree(), mtime=True) == []
    assert not any((b.root / ".cache-sync" / "stage").glob("*/*"))
    b.run("verify")


@pytest.mark.parametrize("at", ["pull:final-op#1", "pull:final-op#3", "pull:final-op#8",
                                "pull:final-op#20", "pull:final-done#1"])
def test_kill_in_the_final_phase_is_rolled_forward(world, at):
    """SIGKILL before the nth operation of the final phase (or after the last one, before the
    state is promoted); the next command that opens the root (``verify``, which never pulls)
    finishes it: the area is v2 exactly."""
    a, b, _ = world
    env = {**b.env, "FAULTS_KILL_AT": at,
           "PYTHONPATH": KILLPOINT + os.pathsep + b.env["PYTHONPATH"]}
    r = b.run("pull", ok=False, env=env)
    assert r.returncode == -9, f"not killed at {at}: {r.returncode} {r.stderr}"
    assert list((b.root / ".cache-sync").glob("*.apply.json")), "no journal left by the kill"
    b.run("verify")  # rolls forward, then checks every file against the new state
    assert crash.diff_trees(a.tree(), b.tree(), mtime=True) == []
    assert not list((b.root / ".cache-sync").glob("*.apply.json"))
    up = b.run("--json", "pull")
    assert '"up_to_date": true' in up.stdout, up.stdout


@pytest.mark.parametrize("at", ["pull:final-op#1", "pull:final-op#2", "pull:final-op#4",
                                "pull:final-done#1"])
def test_cold_pull_moves_its_stage_as_one_tree_and_a_kill_around_it_rolls_forward(world, at):
    """Into an empty area the final phase renames the whole stage once (no rename per file);
    a SIGKILL before that rename, right after it, or later is finished by the next command."""
    a, _, _ = world
    c = a.sibling("c")
    env = {**c.env, "FAULTS_KILL_AT": at,
           "PYTHONPATH": KILLPOINT + os.pathsep + c.env["PYTHONPATH"]}
    r = c.run("pull", ok=False, env=env)
    assert r.returncode == -9, f"not killed at {at}: {r.returncode} {r.stderr}"
    [journal] = (c.root / ".cache-sync").glob("*.apply.json")
    ops = __import__("json").loads(journal.read_bytes())["ops"]
    assert ["tree", ""] in ops and not [op for op in ops if op[0] == "mv"]
    c.run("verify")
    assert crash.diff_trees(a.tree(), c.tree(), mtime=True) == []
    assert not any((c.root / ".cache-sync" / "stage").glob("*/*"))
    up = c.run("--json", "pull")
    assert '"up_to_date": true' in up.stdout, up.stdout
