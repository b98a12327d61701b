"""A pull lists every area at once, before pulling the first (docs/design.md section 5, step
1): each area is pulled as of that moment. Interleaved at store requests
(``interleave.py``): another worker's push to the second area lands after the listing and
before that area is pulled; the pull must restore exactly the listed state of it (not a mix,
not the new head half-applied), and the next pull brings the new head."""

from __future__ import annotations

from tests.support import crash
from tests.support import faultkit as fk
from tests.support.interleave import Scheduler, Script, stepped

cli = fk.Workspace.cli


def test_a_push_between_the_listing_and_an_areas_pull(tmp_path, monkeypatch):
    w = fk.workspace(tmp_path, name="w")
    for k, v in {**fk.SMALL_OBJECTS, "CACHE_SYNC_AREAS": "packages,models",
                 "CACHE_SYNC_PROGRESS": "off"}.items():
        monkeypatch.setenv(k, v)
    r = w.sibling("r")
    crash.write_tree(w.area("packages"), {"p.py": b"p = 1\n"})
    crash.write_tree(w.area("models"), {"m.bin": b"v1" * 50_000, "cfg.json": b"{}"})
    cli(w, "push")
    listed = w.tree("models")
    (w.area("models") / "m.bin").write_bytes(b"v2" * 60_000)
    (w.area("models") / "new.txt").write_text("added after the listing")

    s = Scheduler(script=[Script("R", "get snapshots/packages"), Script("W"), Script("R")])
    s.add("R", lambda: cli(r, "pull"))
    s.add("W", lambda: cli(w, "push", "models"))
    with stepped(s):
        errors = s.run()
    assert not any(errors.values()), s.errors()
    assert any(line.startswith("W: put snapshots/models") for line in s.log), s.log
    # R listed models before W's push: it restored exactly that state, nothing of the new one
    assert crash.diff_trees(listed, r.tree("models"), mtime=True) == []
    cli(r, "pull")  # the next pull sees the new head
    assert crash.diff_trees(w.tree("models"), r.tree("models"), mtime=True) == []
