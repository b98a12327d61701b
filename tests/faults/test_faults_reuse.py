"""Pulls that reuse local content (a file whose bytes already exist elsewhere in the cache is
copied, not downloaded) while the same pull removes or rewrites the source. Found by the crash
suite: the copy ran after its source had been removed or overwritten, so the pull failed."""

from __future__ import annotations

from tests.support import crash
from tests.support import faultkit as fk


def _two_roots(tmp_path):
    writer = fk.workspace(tmp_path, name="writer")
    reader = writer.sibling("reader")
    return writer, reader


def test_pull_of_a_moved_file(tmp_path):
    """tree0: a/x = C.  tree1: b/x = C (a/x moved).  The reader must end with tree1."""
    writer, reader = _two_roots(tmp_path)
    crash.write_tree(writer.area(), {"a/x": b"C" * 5000, "keep": b"k"})
    writer.run("push")
    reader.run("pull")
    (writer.area() / "b").mkdir()
    (writer.area() / "a" / "x").rename(writer.area() / "b" / "x")
    writer.run("push")
    r = reader.run("pull", ok=False)
    assert r.returncode == 0, r.stderr
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []


def test_pull_where_the_copy_source_is_rewritten(tmp_path):
    """tree0: a = X.  tree1: a = Y, b = X.  b's bytes exist locally in a, but a is replaced
    by the same pull."""
    writer, reader = _two_roots(tmp_path)
    crash.write_tree(writer.area(), {"a": b"X-content"})
    writer.run("push")
    reader.run("pull")
    (writer.area() / "a").write_bytes(b"Y-content")
    (writer.area() / "b").write_bytes(b"X-content")
    writer.run("push")
    r = reader.run("pull", ok=False)
    assert r.returncode == 0, r.stderr
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []


def test_pull_swapping_two_files(tmp_path):
    writer, reader = _two_roots(tmp_path)
    crash.write_tree(writer.area(), {"a": b"A" * 3000, "b": b"B" * 3000})
    writer.run("push")
    reader.run("pull")
    (writer.area() / "a").write_bytes(b"B" * 3000)
    (writer.area() / "b").write_bytes(b"A" * 3000)
    writer.run("push")
    r = reader.run("pull", ok=False)
    assert r.returncode == 0, r.stderr
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []


def test_copy_within_a_pull_still_avoids_downloads(tmp_path):
    """Duplicates inside one snapshot and unchanged local files are still reused."""
    writer, reader = _two_roots(tmp_path)
    crash.write_tree(writer.area(), {"a": b"same" * 1000, "b": b"same" * 1000, "c": b"c"})
    writer.run("push")
    reader.run("pull")
    (writer.area() / "d").write_bytes(b"c")  # its bytes are in the unchanged local file c
    writer.run("push")
    r = reader.run("--json", "pull")
    import json
    rep = json.loads(r.stdout)["areas"][0]
    assert rep["requests"] == 0, rep
    assert crash.diff_trees(writer.tree(), reader.tree(), mtime=True) == []
