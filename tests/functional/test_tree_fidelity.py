"""Faithful trees (docs/design.md 5.3, the final phase's `dir` operations): after a pull the
directories carry the snapshot's mtimes, also those the final phase wrote into. CLI-driven,
two workers on one `file://` store."""

from __future__ import annotations

import os

from tests.support import faultkit as fk


def _dir_times(area) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, _files in os.walk(area):
        out[os.path.relpath(dirpath, area)] = os.lstat(dirpath).st_mtime_ns
    return out


def test_directory_mtimes_are_restored_after_an_update_that_writes_into_them(tmp_path):
    """B pulled v1. A adds a file to pkg/ and to pkg/sub/, removes one from old/, and puts
    those directories' mtimes back to v1's: the snapshot's directory entries are then equal
    to what B has, yet B's final phase renames into them and unlinks from them, which moves
    their mtimes. After the pull they must be the snapshot's again (fails when a directory
    whose recorded mode and mtime are unchanged gets no `dir` operation although the phase
    has other operations)."""
    a = fk.workspace(tmp_path, name="a")
    area = a.area()
    for rel in ("pkg/sub/x.py", "pkg/y.py", "old/gone.txt", "old/keep.txt"):
        os.makedirs(area / os.path.dirname(rel), exist_ok=True)
        (area / rel).write_text(rel)
    v1_times = {"pkg": 1_600_000_000_000_000_000, "pkg/sub": 1_600_000_001_000_000_000,
                "old": 1_600_000_002_000_000_000}
    for rel, t in v1_times.items():
        os.utime(area / rel, ns=(t, t))
    a.run("push")
    b = a.sibling("b")
    b.run("pull")
    assert {k: v for k, v in _dir_times(b.area()).items() if k in v1_times} == v1_times
    (area / "pkg" / "new.py").write_text("new")
    (area / "pkg" / "sub" / "new2.py").write_text("new2")
    (area / "old" / "gone.txt").unlink()
    for rel, t in v1_times.items():
        os.utime(area / rel, ns=(t, t))
    a.run("push")
    b.run("pull")
    assert (b.area() / "pkg" / "new.py").read_text() == "new"
    assert not (b.area() / "old" / "gone.txt").exists()
    got = _dir_times(b.area())
    assert {k: got[k] for k in v1_times} == v1_times, got
    want = _dir_times(area)
    del got["."], want["."]  # the area itself is not an entry of its snapshot
    assert got == want
