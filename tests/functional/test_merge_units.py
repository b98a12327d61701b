"""Merges that respect units, end to end (docs/design.md 5.1): real ``pip install --target
--upgrade`` and ``pip uninstall`` in separate worker roots on one store, real pushes through
the CLI, and a fresh worker whose pull must see one whole version of each distribution."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import cli_env, run_cli
from tests.support.pkgindex import make_wheel
from tests.support.uninstall import uninstall


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("wheels")
    make_wheel(w, "mypkg", "1.0", {"mypkg/__init__.py": "__version__ = '1.0'\n",
                                   "mypkg/a.py": "A = 1\n", "mypkg/only_v1.py": "X = 1\n"})
    make_wheel(w, "mypkg", "2.0", {"mypkg/__init__.py": "__version__ = '2.0'\n",
                                   "mypkg/a.py": "A = 2\n", "mypkg/only_v2.py": "Y = 2\n"})
    make_wheel(w, "other", "1.0", {"other.py": "O = 1\n"})
    return w


class Worker:
    def __init__(self, tmp: Path, name: str, remote: str, wheels: Path) -> None:
        self.root = tmp / name
        self.wheels = wheels
        self.env = cli_env(remote, {"CACHE_SYNC_ROOT": str(self.root)})
        self.packages = self.root / "packages"

    def cs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(list(args), self.env, check=check)

    def pip(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
                   PYTHONPATH=str(self.packages))
        subprocess.run([sys.executable, "-m", "pip", *args], env=env, check=True,
                       capture_output=True, text=True, timeout=120)

    def install(self, spec: str) -> None:
        self.pip("install", "--target", str(self.packages), "--upgrade", "--no-deps",
                 "--no-index", "--find-links", str(self.wheels), "--no-compile", spec)

    def uninstall(self, name: str) -> None:
        uninstall(self.packages, name)  # what `pip uninstall` removes, in a venv or not

    def probe(self) -> dict[str, str]:
        """What a worker's Python sees: the metadata's version, the code's version, and the
        dist-infos of mypkg."""
        code = ("import importlib.metadata as m, json, sys\n"
                "out = {}\n"
                "try: out['meta'] = m.version('mypkg')\n"
                "except m.PackageNotFoundError: out['meta'] = None\n"
                "try:\n"
                "    import mypkg; out['code'] = getattr(mypkg, '__version__', 'namespace')\n"
                "except ImportError: out['code'] = None\n"
                "print(json.dumps(out))\n")
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(self.packages)}
        proc = subprocess.run([sys.executable, "-S", "-c", code], env=env, check=True,
                              capture_output=True, text=True)
        import json
        out = json.loads(proc.stdout)
        out["dist_infos"] = sorted(p.name for p in self.packages.glob("mypkg-*.dist-info"))
        return out


def _base(tmp: Path, remote: str, wheels: Path, *specs: str) -> None:
    w0 = Worker(tmp, "w0", remote, wheels)
    for spec in specs:
        w0.install(spec)
    w0.cs("push", "packages")


def _workers_on_a_base(tmp: Path, wheels: Path, names: tuple[str, ...], *specs: str
                       ) -> list[Worker]:
    """A store whose packages/ has ``specs`` installed, and workers that pulled it."""
    remote = f"file://{tmp}/store"
    _base(tmp, remote, wheels, *specs)
    workers = [Worker(tmp, n, remote, wheels) for n in names]
    for w in workers:
        w.cs("pull", "packages")
    return workers


def test_concurrent_upgrades_take_one_version_whole(tmp_path, wheels):
    a, b = _workers_on_a_base(tmp_path, wheels, ("a", "b"), "other==1.0")
    a.install("mypkg==1.0")
    b.install("mypkg==2.0")
    assert a.probe()["code"] == "1.0" and b.probe()["code"] == "2.0"  # each tree consistent
    a.cs("push", "packages")
    b.cs("push", "packages")  # the later head
    c = Worker(tmp_path, "c", a.env["CACHE_SYNC_REMOTE"], wheels)
    c.cs("pull", "packages")
    seen = c.probe()
    assert seen["dist_infos"] == ["mypkg-2.0.dist-info"], seen
    assert seen["meta"] == seen["code"] == "2.0", seen
    assert not (c.packages / "mypkg" / "only_v1.py").exists()
    assert (c.packages / "other.py").exists()
    # A pulls too and converges on the same tree.
    a.cs("pull", "packages")
    assert a.probe() == seen


@pytest.mark.parametrize("later", ["edit", "uninstall"])
def test_uninstall_versus_edit_ends_whole(tmp_path, wheels, later):
    un, ed = _workers_on_a_base(tmp_path, wheels, ("un", "ed"), "mypkg==1.0")
    un.uninstall("mypkg")
    assert not (un.packages / "mypkg").exists()
    (ed.packages / "mypkg" / "a.py").write_text("A = 'edited'\n")
    first, second = (un, ed) if later == "edit" else (ed, un)
    first.cs("push", "packages")
    second.cs("push", "packages")
    c = Worker(tmp_path, "c", un.env["CACHE_SYNC_REMOTE"], wheels)
    c.cs("pull", "packages")
    seen = c.probe()
    if later == "edit":
        assert seen == {"meta": "1.0", "code": "1.0", "dist_infos": ["mypkg-1.0.dist-info"]}
        assert (c.packages / "mypkg" / "a.py").read_text() == "A = 'edited'\n"
        assert (c.packages / "mypkg" / "__init__.py").exists()
    else:
        # Before: the edited a.py alone survived and imported as a namespace package.
        assert seen == {"meta": None, "code": None, "dist_infos": []}, seen
        assert not (c.packages / "mypkg").exists()


def test_deletion_survives_a_merge_of_racing_heads(tmp_path):
    """A worker deletes a file while two others add files, all from one base, pushing at the
    same time: the final pull merges three heads and the deleted file stays deleted."""
    remote = f"file://{tmp_path}/store"
    roots = {n: tmp_path / n for n in ("base", "del", "add1", "add2", "fresh")}
    env = {n: cli_env(remote, {"CACHE_SYNC_ROOT": str(r)}) for n, r in roots.items()}
    area = roots["base"] / "deps"
    area.mkdir(parents=True)
    for name in ("gone.txt", "kept.txt"):
        (area / name).write_text(name)
    run_cli(["push", "deps"], env["base"])
    for n in ("del", "add1", "add2"):
        run_cli(["pull", "deps"], env[n])
    (roots["del"] / "deps" / "gone.txt").unlink()
    (roots["add1"] / "deps" / "one.txt").write_text("1")
    (roots["add2"] / "deps" / "two.txt").write_text("2")
    procs = [subprocess.Popen([sys.executable, "-m", "cache_sync", "push", "deps"], env=env[n],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n in ("add1", "del", "add2")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rep = run_cli(["--json", "pull", "deps"], env["fresh"]).stdout
    assert rep.count("Z-") >= 3  # three heads were merged
    got = sorted(p.name for p in (roots["fresh"] / "deps").iterdir())
    assert got == ["kept.txt", "one.txt", "two.txt"]
    # The deleter pulls the merge too: its deletion is not undone there either.
    run_cli(["pull", "deps"], env["del"])
    assert not (roots["del"] / "deps" / "gone.txt").exists()


PROBE = ("import importlib.metadata as m, json, pathlib, os\n"
         "import mypkg, other\n"
         "pk = pathlib.Path(os.environ['PIP_TARGET'])\n"
         "print(json.dumps({'meta': m.version('mypkg'), 'code': mypkg.__version__,\n"
         "                  'other': m.version('other'),\n"
         "                  'dist_infos': sorted(p.name for p in pk.glob('mypkg-*.dist-info')),\n"
         "                  'v1_module': (pk / 'mypkg' / 'only_v1.py').exists()}))\n")


def test_run_after_a_cut_off_push_keeps_the_local_upgrade_whole(tmp_path, wheels):
    """Issue 13 case 3, through `cache-sync run` on one root: the worker upgrades mypkg, the
    shutdown push is cut off by --push-timeout; meanwhile another worker upgrades `other`.
    The next `run` on the same root pulls: the local upgrade is neither reverted nor mixed
    (5.2: it is the newest head), the remote upgrade arrives, and the shutdown push publishes
    that whole state."""
    import json
    remote = f"file://{tmp_path}/store"
    _base(tmp_path, remote, wheels, "mypkg==1.0", "other==1.0")
    w = Worker(tmp_path, "w", remote, wheels)
    # `pip install --target --upgrade` leaves the old dist-info behind (pip's own
    # behaviour), so the worker upgrades the way a consistent tree needs: uninstall (what
    # `pip uninstall` removes; pip itself refuses inside a venv), install.
    py = sys.executable
    upgrade = (f'{py} -m tests.support.uninstall "$PIP_TARGET" mypkg && '
               f"{py} -m pip install --no-deps --no-index "
               f"--find-links {wheels} --no-compile mypkg==2.0")  # PIP_TARGET comes from run
    env = {**w.env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    p = run_cli(["run", "--push-timeout", "0.001", "--", "sh", "-c", upgrade], env, check=False)
    assert p.returncode == 0 and "cut short" in p.stderr, p.stderr
    assert (w.packages / "mypkg-2.0.dist-info").is_dir()  # installed, never pushed
    other = Worker(tmp_path, "o", remote, wheels)
    other.cs("pull", "packages")
    make_wheel(wheels, "other", "2.0", {"other.py": "O = 2\n"})
    other.uninstall("other")
    other.install("other==2.0")
    other.cs("push", "packages")
    # The next start on the same root.
    p = run_cli(["run", "--", sys.executable, "-c", PROBE], env)
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen == {"meta": "2.0", "code": "2.0", "other": "2.0",
                    "dist_infos": ["mypkg-2.0.dist-info"], "v1_module": False}, seen
    assert "kept" in p.stderr and "local change" in p.stderr, p.stderr
    # What that run's shutdown push published is the same whole state.
    c = Worker(tmp_path, "c", remote, wheels)
    c.cs("pull", "packages")
    assert c.probe() == {"meta": "2.0", "code": "2.0", "dist_infos": ["mypkg-2.0.dist-info"]}
    assert not (c.packages / "mypkg" / "only_v1.py").exists()
    assert (c.packages / "other.py").read_text() == "O = 2\n"


def test_pull_with_local_changes_merges_them_or_discards_them(tmp_path):
    """Without pip (fast): edits, deletions and additions not yet pushed survive a pull that
    also brings remote changes; `pull --discard-local` makes the area the store's state."""
    remote = f"file://{tmp_path}/store"
    env = {n: cli_env(remote, {"CACHE_SYNC_ROOT": str(tmp_path / n)}) for n in ("a", "b")}
    area = tmp_path / "a" / "deps"
    area.mkdir(parents=True)
    for name in ("edit.txt", "gone.txt", "same.txt", "remote.txt"):
        (area / name).write_text(name)
    run_cli(["push", "deps"], env["a"])
    run_cli(["pull", "deps"], env["b"])
    (tmp_path / "b" / "deps" / "remote.txt").write_text("changed remotely")
    run_cli(["push", "deps"], env["b"])
    # Local changes on a, never pushed.
    (area / "edit.txt").write_text("edited locally, same size?")
    (area / "gone.txt").unlink()
    (area / "new.txt").write_text("added locally")
    os.utime(area / "same.txt", ns=(1, 1))  # touched only: not a change worth a merge
    out = run_cli(["--json", "pull", "deps"], env["a"]).stdout
    assert '"local_changes": 3' in out, out
    assert (area / "edit.txt").read_text() == "edited locally, same size?"
    assert not (area / "gone.txt").exists()
    assert (area / "new.txt").read_text() == "added locally"
    assert (area / "remote.txt").read_text() == "changed remotely"
    # A second pull changes nothing; the push then publishes the merge.
    # (the up-to-date fast path does not even scan: the remote side did not move)
    again = run_cli(["--json", "pull", "deps"], env["a"]).stdout
    assert '"up_to_date": true' in again
    assert (area / "edit.txt").read_text() == "edited locally, same size?"
    assert not (area / "gone.txt").exists()
    run_cli(["push", "deps"], env["a"])
    run_cli(["pull", "deps"], env["b"])
    assert sorted(os.listdir(tmp_path / "b" / "deps")) == [
        "edit.txt", "new.txt", "remote.txt", "same.txt"]
    # --discard-local: b's unpushed edits and additions go, its deletions come back.
    bd = tmp_path / "b" / "deps"
    (bd / "edit.txt").write_text("local junk")
    (bd / "junk.txt").write_text("junk")
    (bd / "new.txt").unlink()
    run_cli(["pull", "--discard-local", "deps"], env["b"])
    assert sorted(os.listdir(bd)) == ["edit.txt", "new.txt", "remote.txt", "same.txt"]
    assert (bd / "edit.txt").read_text() == "edited locally, same size?"
    assert '"local_changes": 0' in run_cli(["--json", "pull", "deps"], env["b"]).stdout


def _hf_revision(models: Path, rev: str, files: dict[str, str]) -> None:
    """What huggingface_hub writes for one revision: blobs by hash, snapshot links, a ref."""
    import hashlib
    repo = models / "hub" / "models--org--name"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        blob = hashlib.sha256(text.encode()).hexdigest()
        (repo / "blobs" / blob).write_text(text)
        link = snap / name
        if not link.is_symlink():
            link.symlink_to(f"../../blobs/{blob}")
    (repo / "refs" / "main").write_text(rev)


def test_hf_repo_downloaded_at_two_revisions_comes_from_one(tmp_path):
    """Two workers update one model repo to different revisions from one base: the pull has
    the later worker's ref and snapshot, every snapshot link resolves, and huggingface_hub's
    own cache scanner finds one consistent repo."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    remote = f"file://{tmp_path}/store"
    revs = {"r0": "a" * 40, "r1": "b" * 40, "r2": "c" * 40}
    env = {n: cli_env(remote, {"CACHE_SYNC_ROOT": str(tmp_path / n)}) for n in "0abc"}
    _hf_revision(tmp_path / "0" / "models", revs["r0"], {"config.json": "{}", "w.bin": "w0"})
    run_cli(["push", "models"], env["0"])
    for n, rev in (("a", "r1"), ("b", "r2")):
        run_cli(["pull", "models"], env[n])
        _hf_revision(tmp_path / n / "models", revs[rev], {"config.json": "{}", "w.bin": f"w-{rev}"})
    run_cli(["push", "models"], env["a"])
    run_cli(["push", "models"], env["b"])
    run_cli(["pull", "models"], env["c"])
    repo = tmp_path / "c" / "models" / "hub" / "models--org--name"
    assert (repo / "refs" / "main").read_text() == revs["r2"]
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [revs["r0"], revs["r2"]]
    for link in (repo / "snapshots").rglob("*"):
        if link.is_symlink():
            assert link.resolve().is_file(), link
    info = huggingface_hub.scan_cache_dir(tmp_path / "c" / "models" / "hub")
    assert not info.warnings, info.warnings
    (found,) = info.repos
    assert {r.commit_hash for r in found.revisions} == {revs["r0"], revs["r2"]}
    assert (repo / "snapshots" / revs["r2"] / "w.bin").read_text() == "w-r2"


def _legacy_install(target: Path, src_root: Path, version: str, record: bool) -> None:
    """A real legacy (pre-wheel) install: setuptools' ``setup.py install
    --single-version-externally-managed`` writes ``legacy-<v>-pyX.Y.egg-info/`` (PKG-INFO,
    top_level.txt, no RECORD). With ``record``, also the ``installed-files.txt`` pip's legacy
    path wrote into it (paths relative to the egg-info)."""
    src = src_root / f"legacy-{version}"
    (src / "legacy").mkdir(parents=True)
    (src / "setup.py").write_text("from setuptools import setup\n"
                                  f"setup(name='legacy', version={version!r}, "
                                  "packages=['legacy'])\n")
    (src / "legacy" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (src / "legacy" / f"only_v{version.split('.')[0]}.py").write_text("X = 1\n")
    rec = src / "record.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    subprocess.run([sys.executable, "setup.py", "-q", "install",
                    "--single-version-externally-managed", "--root=/",
                    f"--install-lib={target}", f"--install-scripts={target}/bin",
                    f"--record={rec}"], cwd=src, env=env, check=True, capture_output=True,
                   text=True, timeout=120)
    (egg,) = target.glob(f"legacy-{version}-*.egg-info")
    if record:
        lines = [os.path.relpath(p, egg) for p in rec.read_text().split()]
        (egg / "installed-files.txt").write_text("\n".join(lines) + "\n")


def _legacy_uninstall(target: Path) -> None:
    """What uninstalling a legacy install removes: the top-level packages its top_level.txt
    names, and the egg-info."""
    (egg,) = target.glob("legacy-*.egg-info")
    for top in (egg / "top_level.txt").read_text().split():
        shutil.rmtree(target / top)
    shutil.rmtree(egg)


LEGACY_PROBE = ("import importlib.metadata as m, json, legacy, os, pathlib\n"
                "pk = pathlib.Path(os.environ['PYTHONPATH'])\n"
                "print(json.dumps({'meta': m.version('legacy'), 'code': legacy.__version__,\n"
                "  'eggs': sorted(p.name.split('-')[1] for p in pk.glob('legacy-*.egg-info')),\n"
                "  'modules': sorted(p.name for p in (pk / 'legacy').glob('only_v*.py'))}))\n")


@pytest.mark.parametrize("listing", ["top_level", "installed_files"])
def test_concurrent_upgrades_of_a_legacy_egg_info_install_take_one_version_whole(
        tmp_path, wheels, listing):
    """A distribution installed the legacy way (an ``.egg-info``, no RECORD) is one unit too:
    two workers upgrade it from one base to different versions and push; a fresh pull has
    one egg-info, importlib.metadata agrees with the code, and no module of the other
    versions is left (fails when ``units`` knows only ``.dist-info``: two egg-infos and
    ``only_v2.py`` beside version 3)."""
    import json
    remote = f"file://{tmp_path}/store"
    record = listing == "installed_files"
    w0 = Worker(tmp_path, "w0", remote, wheels)
    w0.install("other==1.0")
    _legacy_install(w0.packages, tmp_path / "src0", "1.0", record)
    w0.cs("push", "packages")
    a, b, c = (Worker(tmp_path, n, remote, wheels) for n in "abc")
    for w, version in ((a, "2.0"), (b, "3.0")):
        w.cs("pull", "packages")
        _legacy_uninstall(w.packages)
        _legacy_install(w.packages, tmp_path / f"src-{w.root.name}", version, record)
    a.cs("push", "packages")
    b.cs("push", "packages")  # the later head
    c.cs("pull", "packages")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(c.packages)}
    out = subprocess.run([sys.executable, "-S", "-c", LEGACY_PROBE], env=env, check=True,
                         capture_output=True, text=True).stdout
    seen = json.loads(out)
    assert seen == {"meta": "3.0", "code": "3.0", "eggs": ["3.0"], "modules": ["only_v3.py"]}
    assert (c.packages / "other.py").exists()
