"""Hostile store content (DESIGN §2.3, §2.4; issue 6 item 5). A cache root holds a good pull
of snapshot S0; someone writes a hostile snapshot (child of S0, so it is the only head) or
damages objects. Every case: the pull fails with one clear line, nothing is written outside
the cache root, and nothing that existed is damaged (the area still equals S0).

Cases are built from a real snapshot with the engine's own encoding (hostile.py). The pull
runs through the real entry point (``cache_sync.cli.main.main``) in-process for speed; a few
cases also run as a subprocess to prove the exit code and the absence of a traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

import pytest

from cache_sync.cli.main import main
from cache_sync.layout import STORE_KEY
from cache_sync.pull import pull
from cache_sync.repo import list_refs
from cache_sync.snapshot import decode
from tests.support import crash, hostile
from tests.support import faultkit as fk

OUTSIDE = "outside"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """store/ with S0, root/ pulled at S0, outside/ with a sentinel: copied per case."""
    base = tmp_path_factory.mktemp("hostile")
    writer = fk.workspace(base, name="writer")
    fk.make_tree(writer.area(), 41, files=20, big=1)
    writer.run("push")
    reader = writer.sibling("root")
    reader.run("pull")
    (base / OUTSIDE).mkdir()
    (base / OUTSIDE / "sentinel").write_text("do not touch")
    shutil.rmtree(writer.root)
    return base


class Case:
    def __init__(self, template: Path, dest: Path) -> None:
        shutil.copytree(template, dest, symlinks=True)
        self.dir = dest
        self.ws = fk.workspace(dest, name="root")
        # The copy moved the store: one good pull re-binds the cache state to its new URL
        # (otherwise every local file would count as untracked and be left alone).
        pull(self.ws.settings())
        self.store = fk.open_raw_store(self.ws)
        refs = list_refs(self.store, fk.AREA)
        assert len(refs) == 1
        self.head = refs[0]
        self.doc = decode(self.store.get(self.head.key)).to_dict()
        self.before = self.outside_view()
        self.area_before = self.good = self.ws.tree()

    def outside_view(self) -> dict[str, crash.Entry]:
        """Everything in the case directory except the store and the cache state."""
        tree = crash.snapshot_tree(self.dir, skip=("store",))
        area = f"root/{fk.AREA}"
        return {p: e for p, e in tree.items()
                if p not in ("root", area) and not p.startswith((area + "/", "root/.cache-sync"))}

    def pull(self, capsys, *extra: str) -> tuple[int, str, str]:
        capsys.readouterr()
        # The in-process CLI reads os.environ: set the case's variables for this call only
        # (left behind, CACHE_SYNC_AREAS=packages broke later tests in the same session).
        with mock.patch.dict(os.environ, {k: v for k, v in self.ws.env.items()
                                          if k.startswith("CACHE_SYNC_")}):
            rc = main(["--root", str(self.ws.root), "--remote", self.ws.remote, *extra, "pull"])
        out = capsys.readouterr()
        return rc, out.out, out.err

    def assert_refused_cleanly(self, rc: int, out: str, err: str) -> str:
        assert rc != 0, f"hostile content was accepted:\n{out}{err}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cache-sync: error:"), err
        assert "Traceback" not in err
        after = self.outside_view()
        assert crash.diff_trees(self.before, after) == [], "something changed outside the area"
        if self.area_before:
            assert crash.diff_trees(self.area_before, self.ws.tree(), mtime=True) == []
        else:  # a fresh root: whatever was placed must be the true content of S0
            crash.assert_no_partial(self.ws.area(), [self.good], is_temp=fk.is_temp)
        self.assert_links_inside()
        return lines[0]

    def assert_links_inside(self) -> None:
        area = os.path.realpath(self.ws.area())
        for rel, e in self.ws.tree().items():
            if e.kind == "link":
                real = os.path.realpath(self.ws.area() / rel)
                assert real == area or real.startswith(area + os.sep), (
                    f"symlink {rel} -> {e.digest} resolves to {real}, outside the area")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("CACHE_SYNC_", "AWS_")):
            monkeypatch.delenv(k)
    yield


CASES = hostile.cases("/OUTSIDE")  # names only; the real outside path is bound per case


# Cases refused by the parser behave the same from both starting states; the default run
# tries the fresh root only where content is fetched (long mode: every case both ways).
FETCHING = ("size_", "raw_", "wrong_hash_", "chunk", "missing_", "offset_", "bad_oid",
            "unknown_codec", "mtime_", "link_chain", "negative_size")


def _params():
    for name in sorted(CASES):
        for start in ("pulled", "fresh"):
            if start == "fresh" and not fk.long_mode() and not name.startswith(FETCHING):
                continue
            yield pytest.param(name, start, id=f"{name}-{start}")


@pytest.mark.parametrize("name,start", list(_params()))
def test_hostile_snapshot_is_refused(template, tmp_path, capsys, name, start):
    """``pulled``: the root already holds S0 (a harmless no-op is acceptable: nothing needed
    the hostile part). ``fresh``: an empty root must fetch everything, so it must refuse."""
    case = Case(template, tmp_path / "case")
    good = case.area_before
    if start == "fresh":
        shutil.rmtree(case.ws.root)
        case.before, case.area_before = case.outside_view(), {}
    mutation = hostile.cases(str(case.dir / OUTSIDE))[name]
    hostile.plant(case.store, fk.AREA, [case.head.id], mutation(case.doc))
    rc, out, err = case.pull(capsys)
    if rc == 0 and start == "pulled":
        case.assert_links_inside()
        assert crash.diff_trees(good, case.ws.tree(), mtime=True) == []
        assert crash.diff_trees(case.before, case.outside_view()) == []
        case.assert_links_inside()
    else:
        line = case.assert_refused_cleanly(rc, out, err)
        assert "snapshot" in line or "object" in line, line
    fk.record(f"hostile_{name}_{start}", hostile_inputs=1)


def test_a_lying_chunk_offset_is_refused_before_any_object_is_read(template, tmp_path, capsys):
    """A chunk must be a whole object (design 3.2). A snapshot saying otherwise is a lie no
    retry can fix: refused as a format error while the snapshot is read, before one object
    request, not fetched again and again as a corrupt object until the budget runs out."""
    from cache_sync.storage.local import LocalStore

    case = Case(template, tmp_path / "case")
    shutil.rmtree(case.ws.root)
    case.before, case.area_before = case.outside_view(), {}
    hostile.plant(case.store, fk.AREA, [case.head.id], hostile.cases("/x")["chunk_offset"](
        case.doc))
    real = LocalStore.open_range
    reads: list[str] = []

    def counting(self, key, *a, **kw):
        reads.append(key)
        return real(self, key, *a, **kw)

    with mock.patch.object(LocalStore, "open_range", counting):
        rc, out, err = case.pull(capsys, "--transfers", "1")
    line = case.assert_refused_cleanly(rc, out, err)
    assert "chunk" in line and "offset" in line, line
    assert [k for k in reads if k.startswith("objects/")] == [], reads


@pytest.mark.parametrize("name", sorted(hostile.bad_store_markers()))
def test_bad_store_marker_is_refused(template, tmp_path, capsys, name):
    case = Case(template, tmp_path / "case")
    case.store.put(STORE_KEY, hostile.bad_store_markers()[name])
    rc, out, err = case.pull(capsys)
    line = case.assert_refused_cleanly(rc, out, err)
    assert STORE_KEY in line or "store" in line
    fk.record(f"hostile_{name}", hostile_inputs=1)


@pytest.mark.parametrize("how", ["flip", "truncate", "empty"])
@pytest.mark.parametrize("chunked", [False, True], ids=["packed", "chunked"])
def test_damaged_object_names_object_and_file(template, tmp_path, capsys, how, chunked):
    """A new snapshot whose object is damaged in the store: the error names the object and
    the file; no file at a final path is partial or wrong; the old files are all still there."""
    case = Case(template, tmp_path / "case")
    writer = case.ws.sibling("writer")
    writer.run("pull")
    fk.make_tree(writer.area() / "new", 42, files=6, big=1 if chunked else 0)
    writer.run("push")
    want = writer.tree()
    new = decode(case.store.get(
        next(r for r in list_refs(case.store, fk.AREA) if r.id != case.head.id).key))
    victim = next(e for e in sorted(new.entries.values(), key=lambda e: e.path)
                  if e.path.startswith("new/") and e.kind == "f" and e.size
                  and (len(e.blobs) > 1) == chunked)
    oid = victim.blobs[-1].oid
    hostile.corrupt_object(case.store, oid, how)
    shutil.rmtree(writer.root)
    case.before = case.outside_view()
    rc, _out, err = case.pull(capsys)
    assert rc != 0
    line = err.strip()
    assert oid in line and (victim.path in line or "new/" in line), line
    crash.assert_no_partial(case.ws.area(), [case.area_before, want], is_temp=fk.is_temp)
    for path in case.area_before:
        got = case.ws.tree().get(path)
        assert got is not None, f"{path} was removed by a pull that failed"
    fk.record(f"damaged_object_{how}_{'chunked' if chunked else 'packed'}", hostile_inputs=1)


def test_failed_pull_removes_nothing(template, tmp_path, capsys):
    """A snapshot that deletes most files and adds one whose object is corrupt: the pull
    fails, and the files it would have deleted are still there (deletions come last)."""
    case = Case(template, tmp_path / "case")
    doc = case.doc
    kept = [r for r in doc["entries"] if r[1] == "d"]
    bad = hostile.file_row(doc, "zz-new-file")
    assert bad[4] > 0
    bad[5] = "1" * 64  # its bytes will not match
    mutated = dict(doc, id="KEEP", entries=sorted(kept + [bad], key=lambda r: r[0]))
    hostile.plant(case.store, fk.AREA, [case.head.id], mutated)
    rc, out, err = case.pull(capsys)
    line = case.assert_refused_cleanly(rc, out, err)
    assert "zz-new-file" in line, line


def test_merge_of_two_valid_heads_cannot_escape(template, tmp_path, capsys):
    """Each head is valid alone: one makes 'x' a symlink to a directory, the other puts a file
    under a directory 'x'. The merge must not write through the symlink."""
    case = Case(template, tmp_path / "case")
    doc = case.doc
    a = hostile.add(doc, hostile.link_row("x", "pkg0"))
    b = hostile.add(doc, hostile.dir_row("x"), hostile.file_row(doc, "x/evil"))
    hostile.plant(case.store, fk.AREA, [case.head.id], a)
    hostile.plant(case.store, fk.AREA, [case.head.id], b)
    rc, _out, err = case.pull(capsys)
    assert "Traceback" not in err
    assert not (case.ws.area() / "pkg0" / "evil").exists(), "a file was written through a link"
    assert crash.diff_trees(case.before, case.outside_view()) == [] or rc == 0
    case.assert_links_inside()


def test_parent_cycle_does_not_hang(template, tmp_path, capsys):
    case = Case(template, tmp_path / "case")
    from cache_sync.layout import new_snapshot_id
    a, b = new_snapshot_id(), new_snapshot_id()
    hostile.plant(case.store, fk.AREA, [b, case.head.id], hostile.edit(case.doc, lambda d: None),
                  snap_id=a)
    hostile.plant(case.store, fk.AREA, [a], hostile.edit(case.doc, lambda d: None), snap_id=b)
    _rc, _out, err = case.pull(capsys)
    assert "Traceback" not in err
    assert crash.diff_trees(case.area_before, case.ws.tree(), mtime=True) == []


@pytest.mark.parametrize("name", ["dotdot", "link_absolute", "malformed_zstd", "mtime_huge"])
def test_hostile_through_the_subprocess(template, tmp_path, name):
    case = Case(template, tmp_path / "case")
    mutation = hostile.cases(str(case.dir / OUTSIDE))[name]
    hostile.plant(case.store, fk.AREA, [case.head.id], mutation(case.doc))
    r = case.ws.run("pull", ok=False)
    assert r.returncode not in (0, 1) or "error" in r.stderr
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == ""
    r = case.ws.run("--json", "pull", ok=False)
    import json
    assert json.loads(r.stdout)["error"], r.stdout
    assert crash.diff_trees(case.area_before, case.ws.tree(), mtime=True) == []


def test_setuid_bits_are_not_planted(template, tmp_path, capsys):
    """A snapshot asking for setuid/setgid executables (cache-sync often runs as root in a
    container): the pull must refuse them or drop those bits."""
    case = Case(template, tmp_path / "case")
    doc = case.doc
    row = hostile.file_row(doc, "suid-tool")
    row[2] = 0o6755
    hostile.plant(case.store, fk.AREA, [case.head.id], hostile.add(doc, row))
    rc, _out, err = case.pull(capsys)
    assert "Traceback" not in err
    p = case.ws.area() / "suid-tool"
    if rc == 0:
        assert p.stat().st_mode & 0o6000 == 0, oct(p.stat().st_mode)
    else:
        assert not p.exists()


def test_push_skips_links_that_escape_through_links(tmp_path):
    """The push side of the link-walk check: a local chain that would escape is skipped with a
    warning, so every snapshot pushed can be pulled."""
    ws = fk.workspace(tmp_path)
    crash.write_tree(ws.area(), {"c1/c2/up": "->../..", "t": "->c1/c2/up/..", "ok": "->c1",
                                 "f": b"x"})
    r = ws.run("push")
    assert "t -> c1/c2/up/.." in r.stderr and "warning" in r.stderr
    fresh = ws.sibling("fresh")
    fresh.run("pull")
    got = fresh.tree()
    assert "t" not in got and got["ok"].digest == "c1" and got["c1/c2/up"].digest == "../.."


@pytest.mark.skipif(not fk.long_mode(), reason="long mode: FAULTS_LONG=1 (allocates ~1 GiB)")
def test_manifest_bomb_memory_is_bounded(template, tmp_path):
    """A 37 KB manifest that decompresses to 1.1 GiB of whitespace: the pull must refuse it
    without holding it in memory (issue 2: peak RSS under 300 MB)."""
    import resource
    import subprocess

    import zstandard

    case = Case(template, tmp_path / "case")
    cobj = zstandard.ZstdCompressor(level=19).compressobj()
    bomb = b"".join([cobj.compress(b" " * (64 << 20)) for _ in range(18)] + [cobj.flush()])
    assert len(bomb) < 100_000
    hostile.plant(case.store, fk.AREA, [case.head.id], bomb)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run(case.ws.argv("pull"), env=case.ws.env, capture_output=True, text=True,
                       timeout=300)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert r.returncode == 5 and "larger than" in r.stderr, r.stderr
    assert max(peak_kb, before) < 300 * 1024, f"peak RSS {peak_kb // 1024} MiB"
