"""docs/design.md §2 is the layout the code writes: every store key and every file under a
cache root, after pushes, pulls, a merge, gc, a lease, a `run` and pushes and pulls killed at
their commit points, matches a line of §2's two layout blocks, and every line is met."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from cache_sync.lease import Lease, Timing
from cache_sync.storage import open_store
from tests.support import REPO, crash
from tests.support import faultkit as fk

KILLPOINT = str(REPO / "tests" / "support" / "_killpoint")
SNAP_ID = r"\d{8}T\d{12}Z-[0-9a-f]{8}"
AREAS = ("packages", "pip", "models", "deps")
PLACEHOLDERS = {
    "oid[0:2]": "[0-9a-f]{2}", "oid": "[0-9a-f]{64}", "8 hex": "[0-9a-f]{8}",
    "id": SNAP_ID, "parent-id": SNAP_ID, "snapshot-id": SNAP_ID, "snap-id": SNAP_ID,
    "area": "(?:" + "|".join(AREAS) + ")",
}


def _pattern(path: str) -> re.Pattern[str]:
    """``snapshots/<area>/<id>[_<parent-id>...].json.zst`` -> a regex; a path ending in ``/``
    is a directory whose contents are not the layout's business (an area, a stage)."""
    out, i = "", 0
    while i < len(path):
        if path.startswith("[", i):  # [_<parent-id>...]: repeated, optional
            end = path.index("...]", i)
            out += "(?:" + _pattern(path[i + 1:end]).pattern + ")*"
            i = end + 4
        elif path[i] == "<":
            end = path.index(">", i)
            out += PLACEHOLDERS.get(path[i + 1:end], "[^/]+")
            i = end + 1
        else:
            out += re.escape(path[i])
            i += 1
    return re.compile(out + (".*" if path.endswith("/") else ""))


def _allowed(path: str, lines: list[str]) -> bool:
    """``path`` is named by a line, or is a directory on the way to one (``tmp/`` of
    ``tmp/<worker>/``: its literal part before the first placeholder)."""
    return any(_pattern(line).fullmatch(path) or (
        path.endswith("/") and line.split("<")[0].startswith(path)) for line in lines)


def layout_blocks() -> tuple[list[str], list[str]]:
    """(store paths under ``<prefix>/``, root paths under ``<root>/``) from §2's code blocks."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text[text.index("## 2. Layout"):text.index("## 3. Formats")]
    blocks, block = [], None
    for line in section.splitlines():
        if line.startswith("```"):
            if block is None:
                block = [] if line == "```" else ["(tagged)"]
            else:
                if block[:1] != ["(tagged)"]:
                    blocks.append("\n".join(block))
                block = None
        elif block is not None:
            block.append(line)
    store = [re.split(r"\s{2,}", line.strip())[0] for line in blocks[0].splitlines()[1:]
             if line.strip()]
    root = []
    for line in blocks[1].splitlines():
        paths = re.split(r"\s{2,}", line.strip())[0]
        for n, token in enumerate(re.findall(r"(?:<[^>]*>|\S)+", paths)):
            root.append(token.removeprefix("<root>/") if n == 0 else token)
    return store, root


def store_keys(ws: fk.Workspace) -> set[str]:
    base = Path(ws.remote.removeprefix("file://"))
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if not p.is_dir()}


def root_paths(root: Path) -> set[str]:
    """Top-level entries of the root, and every file under its state directory."""
    out = {p.name + "/" for p in root.iterdir() if p.is_dir() and p.name != ".cache-sync"}
    for p in (root / ".cache-sync").rglob("*"):
        if not p.is_dir() or not any(p.iterdir()):
            out.add(p.relative_to(root).as_posix() + ("/" if p.is_dir() else ""))
    return out


def test_the_layout_is_what_the_code_writes(tmp_path):
    store_lines, root_lines = layout_blocks()
    assert "store.json" in store_lines and ".cache-sync/lock" in root_lines, (store_lines,
                                                                                root_lines)
    areas = {"CACHE_SYNC_AREAS": ",".join(AREAS)}
    a = fk.workspace(tmp_path, extra=areas, name="a")
    for area in AREAS:
        crash.write_tree(a.area(area), {f"{area}.txt": area.encode(), "big.bin":
                                        os.urandom(600_000) if area == "models" else b"small"})
    keys, paths = set(), set()

    def seen(*workspaces: fk.Workspace) -> None:
        keys.update(store_keys(a))
        for ws in workspaces:
            paths.update(root_paths(ws.root))

    a.run("push")
    b = a.sibling("b")
    b.run("pull")
    (b.area("packages") / "from-b.txt").write_text("b")
    (a.area("packages") / "from-a.txt").write_text("a")
    (a.area("models") / "big.bin").unlink()  # its chunks become garbage
    b.run("push")
    a.run("push")  # a second head: the next pull merges, its push names both as parents
    a.run("pull")
    a.run("push")
    seen(a, b)
    fk.age_store(a, "objects/")
    a.run("gc", "--keep", "1", "--grace", "0")  # marks the chunks (deleted by a later run)
    seen(a)
    # a push killed at its commit point leaves its claim in the store, its journal here
    (a.area("deps") / "late.txt").write_text("late")
    kill_env = {**a.env, "PYTHONPATH": KILLPOINT + os.pathsep + a.env["PYTHONPATH"]}
    r = a.run("push", ok=False, env={**kill_env, "FAULTS_KILL_AT": "push:commit"})
    assert r.returncode == -9, r.stderr
    seen(a)
    # a pull killed in its final phase leaves its journal, next state and stage
    r = b.run("pull", ok=False, env={**kill_env, "PYTHONPATH": KILLPOINT + os.pathsep
                                     + b.env["PYTHONPATH"], "FAULTS_KILL_AT": "pull:final-op"})
    assert r.returncode == -9, r.stderr
    seen(b)
    b.run("verify")
    # run: a worker's liveness marker, scratch dirs, readiness file and access record (CMD
    # imports a module outside the standard library: the record is pushed as a profile); a
    # lease (the bootstrap's queue)
    child = ("import json, os, cache_sync; r = os.environ['CACHE_SYNC_ROOT']; print(json.dumps("
             "[os.path.relpath(os.environ[v], r) + '/' for v in ('TMPDIR', 'PIP_BUILD_DIR')]"
             " + [os.path.relpath(os.environ[v], r) for v in ('CACHE_SYNC_READY_FILE', "
             "'CACHE_SYNC_PROFILE_FILE') if os.path.exists(os.environ[v])]"
             " + ['.cache-sync/workers/' + w for w in "
             "os.listdir(os.path.join(r, '.cache-sync', 'workers'))]))")
    r = b.run("run", "--unit-start", "--", sys.executable, "-c", child)
    during = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(during) == 5, during  # each exists while CMD runs
    paths.update(during)
    lease = Lease(open_store(b.settings()), "bootstrap", "worker-1", Timing.for_expiry(60))
    lease.claim()
    lease.renew()
    seen(b)
    lease.release()

    unknown_keys = sorted(k for k in keys if not any(_pattern(p).fullmatch(k)
                                                     for p in store_lines))
    unknown_paths = sorted(p for p in paths if not _allowed(p, root_lines))
    assert not unknown_keys and not unknown_paths, (unknown_keys, unknown_paths)
    unmet = [p for p in store_lines if not any(_pattern(p).fullmatch(k) for k in keys)]
    unmet += [p for p in root_lines if not any(_pattern(p).fullmatch(q) for q in paths)]
    assert not unmet, f"§2 names what no step wrote: {unmet}"
    # a snapshot naming parents was met, not only roots
    assert any(re.fullmatch(rf"snapshots/packages/{SNAP_ID}(_{SNAP_ID})+\.json\.zst", k)
               for k in keys)


def test_the_pattern_reader_is_strict():
    assert _pattern("objects/<oid[0:2]>/<oid>").fullmatch("objects/ab/" + "ab" * 32)
    assert not _pattern("objects/<oid[0:2]>/<oid>").fullmatch("objects/ab/xyz")
    snap = _pattern("snapshots/<area>/<id>[_<parent-id>...].json.zst")
    one = "20261123T183000123456Z-0a1b2c3d"
    assert snap.fullmatch(f"snapshots/models/{one}_{one}_{one}.json.zst")
    assert not snap.fullmatch(f"snapshots/weights/{one}.json.zst")
    assert _pattern("tmp/<worker>/").fullmatch("tmp/host-12/")
    assert not _pattern(".cache-sync/<area>.index.zst").fullmatch(".cache-sync/x.index.zst")
