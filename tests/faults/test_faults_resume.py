"""A push killed after uploading some objects leaves them unreferenced; its journal lets the
next push reuse them. If ``gc`` deletes them in between (the grace period has passed: a
RunPod network volume keeps the cache root, and the journal, for days), the resumed push
must not name objects that no longer exist."""

from __future__ import annotations

import os
import time

from tests.support import crash
from tests.support import faultkit as fk


def test_resumed_push_after_gc_of_its_orphans(tmp_path):
    ws = fk.workspace(tmp_path)
    fk.make_tree(ws.area(), 71, files=20, big=0)
    ws.run("push")
    fk.make_tree(ws.area() / "new", 72, files=40, big=3)  # several chunk objects to upload
    want = ws.tree()
    store = tmp_path / "store"
    journal = ws.root / ".cache-sync" / f"{fk.AREA}.journal"

    def journaled() -> bool:
        try:
            return journal.stat().st_size > 0
        except FileNotFoundError:
            return False

    r = crash.kill_when(ws.argv("push"), ws.env, journaled)
    assert r.killed and journaled()
    before = crash.count_files(store)
    ws.run("gc", "--grace", "0")  # the orphans are older than the grace period: marked
    fk.age_store(ws, "gc/marks")  # ... and a later run, past the marks' delay, deletes them
    gc = ws.run("gc", "--grace", "0")
    assert crash.count_files(store) < before, f"gc removed nothing: {gc.stdout}"
    ws.run("push")
    fk.audit_store(ws)  # every object the new snapshot names must exist
    fresh = ws.sibling("fresh")
    fresh.run("pull")
    assert crash.diff_trees(want, fresh.tree(), mtime=True) == []


def test_push_from_a_state_whose_snapshot_gc_removed(tmp_path):
    """Worker A pulled S1 long ago. Others moved on (deleting file x) and gc's retention
    dropped S1 and x's object. A, still holding x, pushes: its snapshot must not name the
    deleted object (it must upload x again), so the area stays pullable."""
    a = fk.workspace(tmp_path, name="a")
    # x.bin is chunked (> 64 KiB small-file limit): its objects hold nothing else
    crash.write_tree(a.area(), {"x.bin": os.urandom(300_000), "keep.txt": b"k"})
    a.run("push")  # S1
    b = a.sibling("b")
    b.run("pull")
    (b.area() / "x.bin").unlink()
    (b.area() / "b1.txt").write_text("b1")
    b.run("push")  # S2
    (b.area() / "b2.txt").write_text("b2")
    b.run("push")  # S3
    b.run("gc", "--keep", "1", "--grace", "0")
    fk.age_store(b, "gc/marks")
    gc = b.run("gc", "--keep", "1", "--grace", "0")  # x.bin's objects are deleted now
    assert "x.bin" not in gc.stdout
    (a.area() / "a.txt").write_text("a's addition")
    a.run("push")  # S4, parent S1 (gone)
    fk.audit_store(a)
    fresh = a.sibling("fresh")
    fresh.run("pull")
    got = fresh.tree()
    assert "a.txt" in got and "b2.txt" in got


def test_deleted_file_stays_deleted_after_a_push_killed_past_its_commit(tmp_path, moto):
    """Found by the long crash run. A push is killed after its snapshot PUT reached the store
    but before the local state was saved: that snapshot S1 is a head nobody names. The next
    push from the same root makes S1' (same content, parent S0). Later the file is deleted
    and pushed (S2, parent S1'). Merging the heads S1 and S2 against their common ancestor S0
    must not bring the deleted file back."""
    from tests.support.faultproxy import FaultProxy

    bucket = moto.make_bucket()
    with FaultProxy(moto.endpoint, seed=73, max_seconds=200) as proxy:
        ws = fk.workspace(tmp_path, f"s3://{bucket}/cache",
                          {**moto.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint})
        crash.write_tree(ws.area(), {"keep.txt": b"k"})
        ws.run("push")  # S0
        (ws.area() / "f.txt").write_text("added, then deleted")
        r = crash.kill_at_request(ws.argv("push"), ws.env, proxy, 1, drop=False,
                                  match=lambda m, p: m == "PUT" and "/snapshots/" in p)
        assert r.killed
        # The proxy forwards the held PUT after the client died: wait until it has landed
        # (listing at once raced it once the store opened without importing boto3).
        deadline = time.monotonic() + 20
        while len(fk.snapshot_ids(ws)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(fk.snapshot_ids(ws)) == 2, "the snapshot PUT should have landed"
        ws.run("push")  # S1'
        (ws.area() / "f.txt").unlink()
        ws.run("push")  # S2
        fresh = ws.sibling("fresh")
        fresh.run("pull")
        assert "f.txt" not in fresh.tree(), "a deleted file came back"
