"""`cache-sync run --unit-start` (docs/design.md section 5.4): on a cold start CMD starts
while packages/ is still arriving and its imports wait, each for its own distribution, which
is whole when the import returns; a pull that fails or is killed after placing some units
leaves no half of packages/ behind and nothing pushed; another worker's push and gc meanwhile
change nothing of what this pull places. Real pip installs, the real CLI, a paused pull
(support/_killpoint) rather than a guessed delay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.helpers import cli_env, describe, run_cli
from tests.support.pkgindex import make_wheel
from tests.support.waits import wait_until

KILLPOINT = str(REPO / "tests" / "support" / "_killpoint")
NAMES = ("alpha", "beta", "gamma")

# CMD: reports what it saw, imports (or looks up the metadata of) the three distributions
# and checks, as each returns, that the whole distribution is there: every file its RECORD
# lists, with the RECORD's hash.
CHILD = textwrap.dedent("""
    import base64, csv, hashlib, importlib, importlib.metadata, json, os, sys
    from pathlib import Path
    report, mode = Path(sys.argv[1]), sys.argv[2]
    pk = Path(os.environ["CACHE_SYNC_ROOT"]) / "packages"
    ready = os.environ.get("CACHE_SYNC_READY_FILE")
    seen = {"hooked": any(type(f).__name__ == "UnitWait" for f in sys.meta_path),
            "status_at_start": json.loads(Path(ready).read_text()) if ready else None,
            "units": {}}
    Path(str(report) + ".started").write_text(str(os.getpid()))

    def whole(name):
        bad = []
        for dist in pk.glob(name + "-*.dist-info"):
            for row in csv.reader((dist / "RECORD").read_text().splitlines()):
                if len(row) < 2 or not row[1]:
                    continue
                algo, _, want = row[1].partition("=")
                p = pk / row[0]
                got = (base64.urlsafe_b64encode(hashlib.new(algo, p.read_bytes()).digest())
                       .rstrip(b"=").decode() if p.is_file() else None)
                if got != want:
                    bad.append(row[0])
        return bad

    try:
        for name in %r:
            if mode == "metadata":
                value = importlib.metadata.version(name)
            else:
                value = importlib.import_module(name).VALUE
            seen["units"][name] = {"value": value, "bad": whole(name),
                                   "dist_infos": len(list(pk.glob(name + "-*.dist-info")))}
        # a namespace package two distributions share, both listing ns/__init__.py
        import ns.a, ns.b
        seen["ns"] = [ns.a.VALUE, ns.b.VALUE, whole("nsa"), whole("nsb")]
    except ImportError as exc:
        seen["import_error"] = str(exc)
    report.write_text(json.dumps(seen))
    sys.exit(3 if "import_error" in seen else 0)
""") % (NAMES,)


def _source(tmp: Path) -> Path:
    """packages/ of a real `pip install --target` of three wheels; beta carries 3 MiB of
    data in its own objects, so it is still arriving when the small ones are placed."""
    wheels = tmp / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "alpha", "1.0", {"alpha/__init__.py": "VALUE = 'a1'\n",
                                        "alpha/sub/x.py": "X = 1\n"})
    make_wheel(wheels, "beta", "2.0", {"beta/__init__.py": "VALUE = 'b2'\n",
                                       "beta/data.bin": os.urandom(3 << 20)},
               requires=("gamma",))
    make_wheel(wheels, "gamma", "3.0", {"gamma.py": "VALUE = 'g3'\n"})
    for x in "ab":  # like nvidia-*: each wheel ships the namespace's __init__.py
        make_wheel(wheels, f"ns{x}", "1.0", {"ns/__init__.py": "", f"ns/{x}.py": f"VALUE = '{x}'\n"})
    src = tmp / "src"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                    "--find-links", str(wheels), "--target", str(src / "packages"), *NAMES,
                    "nsa", "nsb"],
                   check=True, capture_output=True)
    return src


@pytest.fixture()
def seeded(tmp_path):
    src = _source(tmp_path)
    env = cli_env(f"file://{tmp_path}/store", {"CACHE_SYNC_ROOT": str(src),
                                               "CACHE_SYNC_AREAS": "packages",
                                               "CACHE_SYNC_CHUNK_SIZE": "256K",
                                               "CACHE_SYNC_TRANSFERS": "1"})
    run_cli(["push", "packages"], env)
    worker = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "worker")}
    return src, worker, tmp_path


_STARTED: list[tuple[subprocess.Popen, Path]] = []  # (run, CMD's pid file) of this test


@pytest.fixture(autouse=True)
def _reap():
    """A test that fails while its run is held leaves no run or CMD behind."""
    yield
    while _STARTED:
        proc, pid_file = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _start(env: dict, tmp: Path, *run_args: str, mode: str = "import",
           pause_at: str = "pull:unit-placed#1", child: str = CHILD
           ) -> tuple[subprocess.Popen, Path, Path]:
    script, report, release = tmp / "child.py", tmp / "seen.json", tmp / "release"
    script.write_text(child)
    env = {**env, "FAULTS_PAUSE_AT": pause_at, "FAULTS_PAUSE_FILE": str(release),
           "PYTHONPATH": os.pathsep.join([KILLPOINT, env["PYTHONPATH"]])}
    proc = subprocess.Popen([sys.executable, "-m", "cache_sync", "run", "--unit-start",
                             *run_args, "--", sys.executable, str(script), str(report), mode],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = Path(f"{report}.started")
    _STARTED.append((proc, started))
    if not wait_until(lambda: (started.exists() and Path(f"{release}.reached").exists())
                      or proc.poll() is not None, 120):
        proc.kill()
        raise AssertionError("the run neither paused nor ended")
    assert proc.poll() is None, proc.communicate()
    return proc, report, release


def _tree(area: Path) -> dict:
    """The area as ``describe`` sees it, without the empty ``bin/`` that `run` makes."""
    out = describe(area)
    if out.get("bin", ("",))[0] == "d" and not any(k.startswith("bin/") for k in out):
        del out["bin"]
    return out


def _whole_units(seen: dict) -> None:
    assert set(seen["units"]) == set(NAMES), seen
    for name, unit in seen["units"].items():
        assert unit["bad"] == [] and unit["dist_infos"] == 1, (name, unit)
    assert seen["ns"] == ["a", "b", [], []], seen


@pytest.mark.parametrize("mode", ["import", "metadata"])
def test_imports_wait_for_their_own_distribution_which_is_whole(seeded, mode):
    """CMD starts while the pull is held just after its first unit: at least two of the
    three imports (or metadata lookups) must wait, and each returns with its distribution
    whole. Fails without the hook's wait (ModuleNotFoundError / PackageNotFoundError)."""
    src, env, tmp = seeded
    proc, report, release = _start(env, tmp, "--no-push", mode=mode)
    assert not report.exists()  # CMD is held: the pull is paused with one unit placed
    release.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    seen = json.loads(report.read_text())
    assert seen["hooked"] is True
    start = seen["status_at_start"]
    assert "packages" in start["pending"]
    assert len(set(start["units"]["dists"]) & set(NAMES)) >= 2, start
    _whole_units(seen)
    assert {n: u["value"] for n, u in seen["units"].items()} == (
        {"alpha": "a1", "beta": "b2", "gamma": "g3"} if mode == "import"
        else {"alpha": "1.0", "beta": "2.0", "gamma": "3.0"})
    assert "waited" in err and "for packages/" in err, err
    assert _tree(Path(env["CACHE_SYNC_ROOT"]) / "packages") == _tree(src / "packages")


def test_a_warm_area_is_pulled_whole_before_cmd(seeded):
    """Not a cold start (packages/ already holds the snapshot): the pull is the usual one,
    CMD starts after it, with no hook to go through."""
    src, env, tmp = seeded
    run_cli(["pull", "packages"], env)  # a warm network volume
    script, report = tmp / "child.py", tmp / "seen.json"
    script.write_text(CHILD)
    p = run_cli(["run", "--unit-start", "--no-push", "--", sys.executable, str(script),
                 str(report), "import"], env, check=False)
    assert p.returncode == 0, p.stderr
    seen = json.loads(report.read_text())
    assert seen["hooked"] is False and "not a cold start" in p.stderr
    _whole_units(seen)


def test_a_pull_failing_after_placing_units_empties_the_area_and_pushes_nothing(seeded):
    """Held after the first unit, every object in the store is then damaged: the pull
    fails, the held import fails with the pull's error, `run` exits non-zero, packages/ is
    empty again and the store got no new snapshot."""
    src, env, tmp = seeded
    store = tmp / "store"
    snaps = sorted((store / "snapshots").rglob("*"))
    proc, report, release = _start(env, tmp)
    area = Path(env["CACHE_SYNC_ROOT"]) / "packages"
    assert any(area.iterdir())  # one unit is in place
    for obj in (p for p in (store / "objects").rglob("*") if p.is_file()):
        data = obj.read_bytes()
        obj.write_bytes(bytes(b ^ 0xFF for b in data[:64]) + data[64:])
    release.touch()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0, err
    seen = json.loads(report.read_text())
    assert "did not arrive" in seen["import_error"], seen
    assert list(area.iterdir()) == []
    assert not list((Path(env["CACHE_SYNC_ROOT"]) / ".cache-sync").glob("*.placing.json"))
    assert "nothing pushed" in err, err
    assert sorted((store / "snapshots").rglob("*")) == snaps


def test_a_run_killed_while_placing_is_undone_by_the_next_command(seeded):
    """`run` is SIGKILLed while held after its first unit: CMD's held import fails (its
    `run` is gone) instead of hanging, the next command that opens the root empties the
    half-placed area, and a pull then gives every distribution whole."""
    src, env, tmp = seeded
    proc, report, release = _start(env, tmp)
    child_pid = int(Path(f"{report}.started").read_text())
    area = Path(env["CACHE_SYNC_ROOT"]) / "packages"
    try:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert wait_until(report.exists, 60), "CMD kept waiting for a dead run"
    finally:
        try:
            os.kill(child_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    seen = json.loads(report.read_text())
    assert "is gone" in seen["import_error"], seen
    assert any(area.iterdir())  # what the killed pull placed is still there ...
    assert list((Path(env["CACHE_SYNC_ROOT"]) / ".cache-sync").glob("*.placing.json"))
    run_cli(["pull", "--dry-run", "packages"], env)
    assert list(area.iterdir()) == []  # ... until the next command takes the root
    run_cli(["pull", "packages"], env)
    assert _tree(area) == _tree(src / "packages")


def test_a_push_and_gc_by_another_worker_while_units_are_placed(seeded):
    """While this worker's pull is held after its first unit, another worker uninstalls
    beta, installs nothing else, pushes, and runs gc: the held pull still completes with the
    snapshot it planned (beta whole), and a later pull gets the other worker's."""
    src, env, tmp = seeded
    proc, report, release = _start(env, tmp, "--no-push")
    other = {**env, "CACHE_SYNC_ROOT": str(src)}
    from tests.support.uninstall import uninstall

    uninstall(src / "packages", "beta")
    run_cli(["push", "packages"], other)
    run_cli(["gc"], other)
    release.touch()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    _whole_units(json.loads(report.read_text()))
    run_cli(["pull", "packages"], env)
    area = Path(env["CACHE_SYNC_ROOT"]) / "packages"
    assert not list(area.glob("beta*")) and (area / "gamma.py").is_file()


NEED_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    Path(sys.argv[1] + ".started").write_text(str(os.getpid()))
    import gamma
    from alpha import sub
    import alpha
    Path(sys.argv[1]).write_text(gamma.VALUE + alpha.VALUE)
""")


def test_the_modules_cmd_imports_first_are_fetched_first(seeded):
    """CMD's source imports gamma, then alpha: with one transfer at a time, the first unit
    placed is gamma, fetched ahead of alpha, beta and ns (whose files come first in the
    store's packs). Fails without the need order: alpha is placed first."""
    src, env, tmp = seeded
    proc, report, release = _start(env, tmp, "--no-push", child=NEED_CHILD)
    area = Path(env["CACHE_SYNC_ROOT"]) / "packages"
    placed = {p.name for p in area.iterdir()}
    assert "gamma.py" in placed and "alpha" not in placed, placed
    release.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert report.read_text() == "g3a1"
    assert "need order:" in err and "(gamma, alpha)" in err, err


# CMD imports by names it reads at run time: its source says nothing (entryscan finds only the
# standard library), so only a recorded start can order the pull.
PROFILE_CHILD = textwrap.dedent("""
    import importlib, importlib.metadata, os, sys
    from pathlib import Path
    Path(sys.argv[1] + ".started").write_text(str(os.getpid()))
    got = [importlib.import_module(n).VALUE for n in os.environ["IMPORT_ORDER"].split()]
    got.append(importlib.metadata.version("beta"))
    Path(sys.argv[1]).write_text(" ".join(got))
""")


def _profile_argv(tmp: Path) -> list[str]:
    """CMD as `_start` runs it: the profile's key is a digest of exactly this argv."""
    (tmp / "child.py").write_text(PROFILE_CHILD)
    return [sys.executable, str(tmp / "child.py"), str(tmp / "seen.json"), "import"]


def _stored_profiles(tmp: Path) -> dict[str, list[str]]:
    from cache_sync import accessprofile

    d = tmp / "store" / "profiles"
    return {p.name: accessprofile.decode(p.read_bytes())
            for p in (d.iterdir() if d.is_dir() else ())}


def _first_placed(env: dict, tmp: Path, order: str) -> tuple[set[str], str]:
    """A cold `run --unit-start --no-push` held after its first unit: (what is placed then,
    run's stderr once released)."""
    for name in ("seen.json", "seen.json.started", "release", "release.reached"):
        (tmp / name).unlink(missing_ok=True)  # an earlier start's
    proc, report, release = _start({**env, "IMPORT_ORDER": order}, tmp, "--no-push",
                                   child=PROFILE_CHILD)
    placed = {p.name for p in (Path(env["CACHE_SYNC_ROOT"]) / "packages").iterdir()}
    release.touch()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert report.read_text() == {"gamma alpha": "g3 a1 2.0", "gamma": "g3 2.0"}[order]
    return placed, err


def test_a_recorded_start_is_the_need_order_of_the_next_cold_pull(seeded):
    """CMD imports gamma then alpha by names its source does not hold. A cold start without
    a profile places alpha first (the store's order). A worker that pushes records the
    start as the profile (gamma, alpha, then the metadata lookup of beta); the next cold
    start on another root places gamma first and says why. `--no-push` records nothing."""
    src, env, tmp = seeded
    argv = _profile_argv(tmp)
    placed, err = _first_placed({**env, "CACHE_SYNC_ROOT": str(tmp / "w0")}, tmp,
                                "gamma alpha")
    assert "alpha" in placed and "gamma.py" not in placed, placed
    assert "a recorded start" not in err and _stored_profiles(tmp) == {}

    p = run_cli(["run", "--unit-start", "--", *argv], {**env, "IMPORT_ORDER": "gamma alpha"})
    assert "pushed the access profile: 3 first uses" in p.stderr, p.stderr
    from cache_sync.accessprofile import key_for

    key = key_for(argv).removeprefix("profiles/")
    assert _stored_profiles(tmp) == {key: ["gamma", "alpha", "dist:beta"]}

    placed, err = _first_placed({**env, "CACHE_SYNC_ROOT": str(tmp / "w2")}, tmp,
                                "gamma alpha")
    assert "gamma.py" in placed and "alpha" not in placed, placed
    assert "need order: a recorded start first (gamma, alpha, dist:beta; 3 names)" in err, err
    # the same start again learned nothing new: the stored profile is not rewritten
    mtime = (tmp / "store" / "profiles" / key).stat().st_mtime_ns
    p = run_cli(["run", "--unit-start", "--", *argv],
                {**env, "CACHE_SYNC_ROOT": str(tmp / "w3"), "IMPORT_ORDER": "gamma"})
    assert "pushed the access profile" not in p.stderr, p.stderr
    assert (tmp / "store" / "profiles" / key).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("content, says", [
    (b"\x28\xb5\x2f\xfd garbage", "not JSON"),
    (b'{"format": "cache-sync-profile", "version": 9, "need": []}', "version 9"),
    (b'{"format": "cache-sync-profile", "version": 1, "need": ["../../etc/passwd"]}',
     "no module or distribution name"),
    (b'{"format": "cache-sync-profile", "version": 1, "need": ["a"]}' + b" " * (300 << 10),
     "more than"),
], ids=["garbage", "another-version", "not-a-name", "too-big"])
def test_a_hostile_or_foreign_profile_is_ignored_and_the_pull_is_whole(seeded, content, says):
    """A profile is a hint: one that does not decode is named in run's log and ignored; the
    area is the snapshot, whole; the run pushes a good profile over it."""
    from cache_sync.accessprofile import key_for

    src, env, tmp = seeded
    argv = _profile_argv(tmp)
    key = tmp / "store" / key_for(argv)
    key.parent.mkdir(parents=True)
    key.write_bytes(content)
    p = run_cli(["run", "--unit-start", "--", *argv], {**env, "IMPORT_ORDER": "gamma alpha"})
    assert f"access profile {key_for(argv)} ignored: " in p.stderr and says in p.stderr, p.stderr
    assert (tmp / "seen.json").read_text() == "g3 a1 2.0"
    assert _tree(Path(env["CACHE_SYNC_ROOT"]) / "packages") == _tree(src / "packages")
    assert _stored_profiles(tmp) == {key.name: ["gamma", "alpha", "dist:beta"]}


def test_a_profile_replaced_and_gc_while_a_pull_places_change_nothing_of_it(seeded):
    """Held after its first unit (the profile read, gamma placed first), another worker
    pushes a different profile and gc runs: the held pull completes whole in the order it
    read, gc keeps the profile (it names no object, and gc sweeps objects and snapshots
    only), and the next cold start follows the new one."""
    from cache_sync import accessprofile
    from cache_sync.storage.local import LocalStore

    src, env, tmp = seeded
    argv = _profile_argv(tmp)
    store = LocalStore(tmp / "store")
    key = accessprofile.key_for(argv)
    store.put(key, accessprofile.encode(["gamma", "alpha"]))
    proc, report, release = _start({**env, "IMPORT_ORDER": "gamma alpha"}, tmp, "--no-push",
                                   child=PROFILE_CHILD)
    area = Path(env["CACHE_SYNC_ROOT"]) / "packages"
    assert "gamma.py" in {p.name for p in area.iterdir()}
    store.put(key, accessprofile.encode(["alpha", "gamma"]))  # another worker's, meanwhile
    other = {**env, "CACHE_SYNC_ROOT": str(src)}
    run_cli(["gc"], other)
    release.touch()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "(gamma, alpha; 2 names)" in err, err
    assert _tree(area) == _tree(src / "packages")
    assert accessprofile.decode(store.get(key)) == ["alpha", "gamma"]
    placed, err = _first_placed({**env, "CACHE_SYNC_ROOT": str(tmp / "w2")}, tmp,
                                "gamma alpha")
    assert "alpha" in placed and "gamma.py" not in placed, placed


def test_a_killed_runs_record_is_never_pushed_as_a_later_runs(seeded):
    """A run SIGKILLed after CMD's imports pushes no profile (it never reached its push) and
    leaves its record behind; the next run of that worker starts a record of its own."""
    src, env, tmp = seeded
    argv = _profile_argv(tmp)
    env = {**env, "CACHE_SYNC_WORKER": "w1"}
    record = Path(env["CACHE_SYNC_ROOT"]) / ".cache-sync" / "access-w1.txt"
    p = run_cli(["run", "--unit-start", "--", *argv],
                {**env, "IMPORT_ORDER": "alpha", "FAULTS_KILL_AT": "push:scanned",
                 "PYTHONPATH": os.pathsep.join([KILLPOINT, env["PYTHONPATH"]])}, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    # (CMD's interpreter also runs the killpoint's sitecustomize, which imports cache_sync)
    assert record.read_text().endswith("m alpha\nd beta\n") and _stored_profiles(tmp) == {}
    p = run_cli(["run", "--unit-start", "--", *argv], {**env, "IMPORT_ORDER": "gamma"})
    assert p.returncode == 0, p.stderr
    assert list(_stored_profiles(tmp).values()) == [["gamma", "dist:beta"]]
    assert not record.exists()
