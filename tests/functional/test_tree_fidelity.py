"""What a pull leaves is the tree the store's history says: directory mtimes restored
(docs/design.md 5.3, the final phase's `dir` operations) and heads merged against their
newest common ancestor (§5). CLI-driven, several workers on one `file://` store."""

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


def test_the_merge_base_is_the_newest_common_ancestor(tmp_path):
    """docs/design.md §5 (merge of heads): S0 has f=v0, S1 changes it to v1; B and C both
    pull S1; B deletes f, C (later) adds y. The heads S2 and S3 share S0 and S1 as ancestors:
    merged against S1 (the newest), f stays deleted; merged against S0 (the oldest), both
    sides "changed" f and the later writer's v1 comes back. A fresh worker must not see f."""
    a = fk.workspace(tmp_path, name="a")
    (a.area() / "pkg").mkdir(parents=True)
    (a.area() / "pkg" / "f.txt").write_text("v0")
    (a.area() / "pkg" / "keep.txt").write_text("keep")
    a.run("push")  # S0
    (a.area() / "pkg" / "f.txt").write_text("v1")
    a.run("push")  # S1
    b, c = a.sibling("b"), a.sibling("c")
    b.run("pull")
    c.run("pull")
    (b.area() / "pkg" / "f.txt").unlink()
    b.run("push")  # S2: f deleted
    (c.area() / "pkg" / "y.txt").write_text("y")
    c.run("push")  # S3: y added, the later head
    d = a.sibling("d")
    d.run("pull")
    names = sorted(p.name for p in (d.area() / "pkg").iterdir())
    assert names == ["keep.txt", "y.txt"], names


def test_a_push_after_a_merge_names_every_head_it_merged(tmp_path):
    """docs/design.md §4 step 4 and §4.2: B and C push at once from S1 (two heads). D pulls
    (the merge of both), deletes B's new file and pushes. Its snapshot must name both heads
    as parents: named only the newest, B's head stays a head, is merged again against S1 and
    brings the deleted file back for every later worker."""
    from cache_sync.history import History
    from cache_sync.repo import list_refs

    a = fk.workspace(tmp_path, name="a")
    (a.area() / "base.txt").parent.mkdir(parents=True)
    (a.area() / "base.txt").write_text("base")
    a.run("push")
    b, c, d = a.sibling("b"), a.sibling("c"), a.sibling("d")
    b.run("pull")
    c.run("pull")
    (b.area() / "from-b.txt").write_text("b")
    b.run("push")
    (c.area() / "from-c.txt").write_text("c")
    c.run("push")
    d.run("pull")
    assert (d.area() / "from-b.txt").exists() and (d.area() / "from-c.txt").exists()
    (d.area() / "from-b.txt").unlink()
    d.run("push")
    store = fk.open_raw_store(a)
    assert len(History(list_refs(store, fk.AREA)).heads) == 1
    e = a.sibling("e")
    e.run("pull")
    assert sorted(p.name for p in e.area().iterdir()) == ["base.txt", "from-c.txt"]


def test_files_with_one_content_arrive_at_every_path_whatever_their_size(tmp_path):
    """The fetcher writes each content once and every other path with it from the verified
    copy: packed (small), streamed (over 1 MiB) and chunked (over the chunk size) files, each
    at three paths in different directories, cold and into an area that has one of them."""
    a = fk.workspace(tmp_path, name="a", extra={"CACHE_SYNC_CHUNK_SIZE": "2MiB"})
    area = a.area()
    sizes = {"small": 3000, "streamed": (1 << 20) + 12345, "chunked": (5 << 20) + 7}
    for kind, size in sizes.items():
        body = os.urandom(size)
        for d in ("x", "y/z", "w"):
            os.makedirs(area / d, exist_ok=True)
            (area / d / f"{kind}.bin").write_bytes(body)
    want = {p: (area / p).read_bytes() for p in (f"{d}/{k}.bin" for d in ("x", "y/z", "w")
                                                 for k in sizes)}
    a.run("push")
    b = a.sibling("b")
    b.run("pull")
    assert {p: (b.area() / p).read_bytes() for p in want} == want
    c = a.sibling("c")
    (c.area() / "x").mkdir(parents=True)
    (c.area() / "x" / "chunked.bin").write_bytes(want["x/chunked.bin"])
    c.run("pull")
    assert {p: (c.area() / p).read_bytes() for p in want} == want
