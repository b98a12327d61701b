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
