"""Merges that respect units, end to end (docs/design.md 5.1): real ``pip install --target
--upgrade`` and ``pip uninstall`` in separate worker roots on one store, real pushes through
the CLI, and a fresh worker whose pull must see one whole version of each distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import cli_env, run_cli
from tests.support.pkgindex import make_wheel


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
        self.pip("uninstall", "-y", name)  # finds it through PYTHONPATH=packages

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


def test_concurrent_upgrades_take_one_version_whole(tmp_path, wheels):
    remote = f"file://{tmp_path}/store"
    _base(tmp_path, remote, wheels, "other==1.0")
    a, b = Worker(tmp_path, "a", remote, wheels), Worker(tmp_path, "b", remote, wheels)
    for w in (a, b):
        w.cs("pull", "packages")
    a.install("mypkg==1.0")
    b.install("mypkg==2.0")
    assert a.probe()["code"] == "1.0" and b.probe()["code"] == "2.0"  # each tree consistent
    a.cs("push", "packages")
    b.cs("push", "packages")  # the later head
    c = Worker(tmp_path, "c", remote, wheels)
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
    remote = f"file://{tmp_path}/store"
    _base(tmp_path, remote, wheels, "mypkg==1.0")
    un, ed = Worker(tmp_path, "un", remote, wheels), Worker(tmp_path, "ed", remote, wheels)
    for w in (un, ed):
        w.cs("pull", "packages")
    un.uninstall("mypkg")
    assert not (un.packages / "mypkg").exists()
    (ed.packages / "mypkg" / "a.py").write_text("A = 'edited'\n")
    first, second = (un, ed) if later == "edit" else (ed, un)
    first.cs("push", "packages")
    second.cs("push", "packages")
    c = Worker(tmp_path, "c", remote, wheels)
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
