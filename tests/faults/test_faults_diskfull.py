"""Disk full (DESIGN §2.5, issue 6 item 4): a pull into a cache root on a small filesystem
(a real tmpfs here; an injected ENOSPC where mounts are not permitted) either refuses up front
with the numbers, or, when the disk fills while writing, fails with one clear line, leaves no
temporary or partial file behind, and leaves the cache usable: once space is freed the next
pull completes exactly."""

from __future__ import annotations

import re

import pytest

from tests.support import crash
from tests.support import faultkit as fk
from tests.support.smallfs import can_mount, fill, merge_pythonpath, small_fs

MiB = 1 << 20
needs_mount = pytest.mark.skipif(not can_mount(), reason="tmpfs mounts not permitted here")


def _store_with(tmp_path, spec_seed: int, big: int) -> tuple[fk.Workspace, dict]:
    writer = fk.workspace(tmp_path, name="writer")
    fk.make_tree(writer.area(), spec_seed, files=60, big=big)
    writer.run("push")
    return writer, writer.tree()


def _one_clear_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cache-sync: error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _need_and_free(line: str) -> tuple[int, int]:
    """(total bytes the pull says it needs, free bytes it says there are)."""
    total = re.search(r"\(([\d,]+) in all\)", line) or re.search(r"needs ([\d,]+)", line)
    free = re.search(r"has ([\d,]+) free", line)
    assert total and free, line
    return int(total.group(1).replace(",", "")), int(free.group(1).replace(",", ""))


@needs_mount
def test_pull_that_cannot_fit_is_refused_with_the_numbers(tmp_path):
    writer, _want = _store_with(tmp_path, 31, big=12)  # ~9 MiB
    with small_fs(8 * MiB) as fs:
        reader = fk.Workspace(fs.path / "cache", writer.remote, writer.env)
        r = reader.run("pull", ok=False)
        assert r.returncode == 4, r.stderr
        line = _one_clear_line(r.stderr)
        need, free = _need_and_free(line)
        assert need > 8 * MiB and free <= 8 * MiB and need > free, line
        assert [p for p in reader.tree() if reader.tree()[p].kind == "file"] == []


@needs_mount
def test_refusal_numbers_explain_themselves(tmp_path):
    """A pull that would fit, but not with the engine's safety reserve, must say so: the
    message must not claim 'needs N but has M free' with N < M."""
    writer, want = _store_with(tmp_path, 32, big=1)  # ~1.5 MiB
    with small_fs(40 * MiB) as fs:
        reader = fk.Workspace(fs.path / "cache", writer.remote, writer.env)
        r = reader.run("pull", ok=False)
        if r.returncode == 0:
            assert crash.diff_trees(want, reader.tree(), mtime=True) == []
            return
        line = _one_clear_line(r.stderr)
        need, free = _need_and_free(line)
        assert need > free, line


@needs_mount
def test_disk_fills_while_pulling_tmpfs_inodes(tmp_path):
    """A real ENOSPC mid-pull: the free-space check passes (bytes) but the filesystem runs out
    of inodes after a few files."""
    writer, want = _store_with(tmp_path, 33, big=1)
    with small_fs(200 * MiB, inodes=140) as fs:
        reader = fk.Workspace(fs.path / "cache", writer.remote, writer.env)
        (fs.path / "filler").mkdir()
        fillers = []
        try:
            for k in range(1000):
                f = fs.path / "filler" / str(k)
                f.touch()
                fillers.append(f)
        except OSError:
            pass  # the filesystem is out of inodes
        for f in fillers[:40]:  # leave room for ~40 files: the pull needs ~75
            f.unlink()
        r = reader.run("pull", ok=False)
        assert r.returncode == 4, (r.returncode, r.stderr)
        line = _one_clear_line(r.stderr)
        assert "space" in line.lower()
        got = reader.tree()
        assert not [p for p in got if fk.is_temp(p)], "temporary files left behind"
        crash.assert_no_partial(reader.area(), [want])
        for f in fillers[40:]:
            f.unlink()
        reader.run("pull")
        assert crash.diff_trees(want, reader.tree(), mtime=True) == []
        reader.run("verify")


@pytest.mark.parametrize("kind", ["injected"])
def test_disk_fills_while_pulling_injected(tmp_path, kind):
    """The fallback where mounts are not permitted: the filesystem claims 1 GiB free (so the
    check passes), then writes fail with ENOSPC after 1 MiB."""
    writer, want = _store_with(tmp_path, 34, big=3)
    with small_fs(1 * MiB, force_injected=True) as fs:
        reader = fk.Workspace(fs.path / "cache", writer.remote, writer.env)
        env = merge_pythonpath(reader.env, {**fs.env(), "FAULTS_ENOSPC_REPORT_FREE": str(1 << 30)})
        r = reader.run("pull", ok=False, env=env)
        assert r.returncode == 4, (r.returncode, r.stderr)
        line = _one_clear_line(r.stderr)
        assert "space" in line.lower()
        assert not [p for p in reader.tree() if fk.is_temp(p)], "temporary files left behind"
        crash.assert_no_partial(reader.area(), [want])
        reader.run("pull")  # without the injector: plenty of room
        assert crash.diff_trees(want, reader.tree(), mtime=True) == []


@needs_mount
def test_pull_onto_a_full_disk_keeps_the_previous_state(tmp_path):
    """An update that does not fit leaves the previous pull untouched and usable."""
    writer, first = _store_with(tmp_path, 35, big=1)
    with small_fs(80 * MiB) as fs:
        reader = fk.Workspace(fs.path / "cache", writer.remote, writer.env)
        reader.run("pull")
        fk.make_tree(writer.area() / "more", 36, files=10, big=20)  # ~15 MiB more
        writer.run("push")
        fill(fs, leave=70 * MiB)
        r = reader.run("pull", ok=False)
        assert r.returncode == 4, r.stderr
        _one_clear_line(r.stderr)
        assert crash.diff_trees(first, reader.tree(), mtime=True) == []
        assert reader.run("verify").returncode == 0


@needs_mount
def test_refusal_counts_the_bytes_to_write_not_the_bytes_to_fetch(tmp_path):
    """docs/design.md §5 step 4: the preflight counts the files the pull writes, not what it
    downloads. A tree of compressible files, each content four times over: the store holds
    a few hundred KiB, the tree is 100 MiB, the disk 80 MiB. The pull must refuse up front
    naming exactly the 100 MiB it would write (fetching compressed bytes, or one copy per
    digest, would start it and run out of disk half-way, with no numbers)."""
    writer = fk.workspace(tmp_path, name="writer")
    spec = {}
    for k in range(5):
        text = b"".join(b"line %d of compressible file %d\n" % (n, k) for n in range(200_000))
        for copy in range(4):
            spec[f"pkg{k}/copy{copy}.txt"] = text[:5 * MiB]
    crash.write_tree(writer.area(), spec)
    writer.run("push")
    raw = sum(len(v) for v in spec.values())
    stored = sum(f.stat().st_size for f in (tmp_path / "store" / "objects").rglob("*")
                 if f.is_file())
    assert raw == 100 * MiB and stored < 5 * MiB, stored  # the store holds far less
    with small_fs(80 * MiB) as fs:
        reader = fk.Workspace(fs.path / "cache", writer.remote, writer.env)
        r = reader.run("pull", ok=False)
        assert r.returncode == 4, r.stderr
        line = _one_clear_line(r.stderr)
        need = re.search(r"needs ([\d,]+) bytes", line)
        assert need and int(need.group(1).replace(",", "")) == raw, line
        total, free = _need_and_free(line)
        assert total > free, line
        assert [p for p, e in reader.tree().items() if e.kind == "file"] == []
