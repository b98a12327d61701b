"""``staging.move_tree``: a cold pull's final phase moves the whole stage with one rename;
when the area is not empty (something appeared in it, or a killed run moved part of the
stage) it falls back to a file-by-file move that keeps what is in the area and can be run
again any number of times."""

from __future__ import annotations

import os
from pathlib import Path

from cache_sync.staging import move_tree


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _stage(tmp_path: Path) -> Path:
    stage = tmp_path / "stage"
    for rel, data in {"a/b/c.py": b"c", "a/d.txt": b"d", "top.bin": b"t"}.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    return stage


def test_into_an_empty_area_the_stage_becomes_the_area_in_one_rename(tmp_path):
    stage, area = _stage(tmp_path), tmp_path / "area"
    area.mkdir()
    inode = os.stat(stage / "a").st_ino
    move_tree(stage, area)
    assert _tree(area) == {"a/b/c.py": b"c", "a/d.txt": b"d", "top.bin": b"t"}
    assert os.stat(area / "a").st_ino == inode  # moved, not copied or recreated
    assert not stage.exists()
    move_tree(stage, area)  # a second run (roll-forward) has nothing left to do
    assert _tree(area) == {"a/b/c.py": b"c", "a/d.txt": b"d", "top.bin": b"t"}


def test_into_a_non_empty_area_files_move_one_by_one_and_nothing_there_is_lost(tmp_path):
    stage, area = _stage(tmp_path), tmp_path / "area"
    (area / "a").mkdir(parents=True)
    (area / "a" / "other.txt").write_bytes(b"was here")
    (area / "a" / "d.txt").write_bytes(b"old d")  # moved there by a killed run, say
    move_tree(stage, area)
    assert _tree(area) == {"a/b/c.py": b"c", "a/d.txt": b"d", "top.bin": b"t",
                           "a/other.txt": b"was here"}
    assert _tree(stage) == {}
    move_tree(stage, area)
    assert _tree(area)["a/d.txt"] == b"d"


def test_roll_forward_removes_a_link_tmp_left_by_a_kill_between_symlink_and_rename(tmp_path):
    """``ln`` creates the link under a temporary name, then renames it; a kill in between
    leaves that name in the area, and an up-to-date pull never scans the area to clean it."""
    import json

    from cache_sync.fsutil import TMP_PREFIX
    from cache_sync.local_cache import CacheState
    from cache_sync.staging import journal_path, roll_forward

    root, area = tmp_path / "root", tmp_path / "root" / "packages"
    (area / "pkg").mkdir(parents=True)
    cache = CacheState(root)
    cache.dir.mkdir(parents=True, exist_ok=True)
    os.symlink("target.py", area / "pkg" / f"{TMP_PREFIX}deadbeef")  # the kill's leftover
    (area / "pkg" / f"{TMP_PREFIX}stage-like").mkdir()  # a directory is never removed
    ops = [["ln", "pkg/link.py", "target.py", 1_700_000_000_000_000_000]]
    journal_path(cache, "packages").write_text(json.dumps(
        {"area": "packages", "area_dir": str(area), "stage": str(tmp_path / "stage"),
         "ops": ops, "local_only": []}))
    assert roll_forward(root) == ["packages"]
    assert os.readlink(area / "pkg" / "link.py") == "target.py"
    assert sorted(os.listdir(area / "pkg")) == sorted(["link.py", f"{TMP_PREFIX}stage-like"])


def test_final_phase_operations_are_typed_and_keep_the_journal_format():
    """The journal's rows are the format a roll-forward by another version reads (design 5.3);
    the ops are typed records in the code, and a row that is not one is refused."""
    import pytest

    from cache_sync.staging import Op

    ops = [Op("rm", "a", removes="d"), Op("rm", "b"), Op("mkdir", "c"), Op("tree", ""),
           Op("mv", "c/f"), Op("ln", "l", target="c/f", mtime_ns=5),
           Op("meta", "c/f", mode=0o644, mtime_ns=7), Op("dir", "c", mode=0o755, mtime_ns=9)]
    rows = [op.to_row() for op in ops]
    assert rows[0] == ["rm", "a", "d"] and rows[5] == ["ln", "l", "c/f", 5]
    assert rows[7] == ["dir", "c", 0o755, 9] and rows[3] == ["tree", ""]
    assert [Op.from_row(r) for r in rows] == ops
    for bad in (["chmod", "x", 1], ["meta", "x"], "mv", ["mv", 3], ["ln", "l", "t", "soon"]):
        with pytest.raises(ValueError):
            Op.from_row(bad)
