"""A push killed after uploading some objects leaves them unreferenced; its journal lets the
next push reuse them. If ``gc`` deletes them in between (the grace period has passed: a
RunPod network volume keeps the cache root, and the journal, for days), the resumed push
must not name objects that no longer exist."""

from __future__ import annotations

import crash
import faultkit as fk


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
    gc = ws.run("gc", "--grace", "0")  # the orphans are older than the grace period
    assert crash.count_files(store) < before, f"gc removed nothing: {gc.stdout}"
    ws.run("push")
    fk.audit_store(ws)  # every object the new snapshot names must exist
    fresh = ws.sibling("fresh")
    fresh.run("pull")
    assert crash.diff_trees(want, fresh.tree(), mtime=True) == []
