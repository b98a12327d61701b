"""`cache-sync install` end to end through the CLI, against a local package index built and
served by the test (no network beyond 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

HAVE_UV = subprocess.run(["uv", "--version"], capture_output=True).returncode == 0 if (
    __import__("shutil").which("uv")) else False


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("index")
    w = d / "wheels"
    wheels = [
        make_wheel(w, "alpha", "1.0", {"alpha/__init__.py": "__version__ = '1.0'\n"},
                   requires=("beta>=1",)),
        make_wheel(w, "alpha", "2.0", {"alpha/__init__.py": "__version__ = '2.0'\n",
                                       "alpha/extra.py": "NEW = True\n"},
                   requires=("beta>=1",)),
        make_wheel(w, "beta", "1.2", {"beta.py": "X = 1\n"}),
        make_wheel(w, "brokenmod", "0.1",
                   {"brokenmod/__init__.py": "raise ImportError('deliberately broken')\n"}),
        make_wheel(w, "padded", "1.0", {"padded/__init__.py": "",
                                        "padded/blob.bin": os.urandom(600 * 1024)}),
        make_wheel(w, "hugepkg", "1.0", {"hugepkg/__init__.py": "",
                                         "hugepkg/blob.bin": os.urandom(3 << 20)}),
    ]
    return build_index(d / "idx", wheels)


def cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cache_sync", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def js(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


def units(report: dict) -> dict:
    return {u["name"]: u for u in report["units"]}


INSTALLERS = ["pip", pytest.param("uv", marks=pytest.mark.skipif(not HAVE_UV, reason="no uv"))]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_install_then_warm_start_skips_resolver(index, tmp_path, installer):
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        p = cli(env, "--json", "install", "--no-push", "--installer", installer, "alpha")
        assert p.returncode == 0, p.stderr
        r = js(p)
        assert r["installer"] == installer
        assert units(r)["alpha"]["status"] == "installed"
        assert units(r)["alpha"]["new"] == {"alpha": "2.0", "beta": "1.2"}
        pkgs = tmp_path / "cache" / "packages"
        assert (pkgs / "alpha" / "__init__.py").is_file() and (pkgs / "beta.py").is_file()
        assert {i["module"]: i["ok"] for i in r["imports"]} == {"alpha": True, "beta": True}
        served = len(srv.requests)
        # Warm start: everything present, so no installer process and no index request.
        p2 = cli(env, "--json", "install", "--no-push", "--installer", installer, "alpha>=1")
        assert p2.returncode == 0, p2.stderr
        u = units(js(p2))["alpha"]
        assert u["status"] == "satisfied" and u["attempts"] == 0
        assert len(srv.requests) == served


def test_version_change_replaces_old_files(index, tmp_path):
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        assert cli(env, "install", "--no-push", "--installer", "pip", "alpha==1.0").returncode == 0
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "alpha==2.0")
        assert p.returncode == 0, p.stderr
        pkgs = tmp_path / "cache" / "packages"
        assert "2.0" in (pkgs / "alpha" / "__init__.py").read_text()
        assert not (pkgs / "alpha-1.0.dist-info").exists()
        assert (pkgs / "alpha-2.0.dist-info").is_dir()


def test_optional_failure_degrades_required_failure_fails(index, tmp_path):
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "beta",
                "--optional", "no-such-package")
        assert p.returncode == 0, p.stderr
        u = units(js(p))
        assert u["beta"]["status"] == "installed"
        assert u["no-such-package"]["status"] == "failed"
        assert u["no-such-package"]["attempts"] == 1  # a missing package is not retried
        assert any("no-such-package" in line for line in u["no-such-package"]["error"])

        p = cli(env, "install", "--no-push", "--installer", "pip", "no-such-package")
        assert p.returncode == 1
        assert "no-such-package" in p.stderr and "Traceback" not in p.stderr
        assert "No matching distribution" in p.stdout + p.stderr


def test_flaky_index_is_retried_with_backoff(index, tmp_path):
    # pip retries a request once itself (--retries 1), so 3 failures outlast one attempt.
    with serve(index, fail_first=3) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "beta")
        assert p.returncode == 0, p.stdout + p.stderr
        u = units(js(p))["beta"]
        assert u["status"] == "installed" and u["attempts"] >= 2
        assert [code for _, code in srv.requests[:3]] == [503, 503, 503]
    with serve(index, fail_first=3) as srv:  # the same index without retries fails
        env = hermetic_env(tmp_path / "b", srv.url + "/simple")
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "--attempts", "1",
                "beta")
        assert p.returncode == 1
        assert units(js(p))["beta"]["status"] == "failed"


def test_hanging_index_hits_the_per_package_timeout(index, tmp_path):
    with serve(index, hang=True) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        # the subprocess timeout is the hang guard: without the per-package timeout pip
        # waits on the hanging index far longer
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "--attempts", "2",
                "--timeout", "beta=2", "beta", timeout=90)
        assert p.returncode == 1
        u = units(js(p))["beta"]
        assert u["attempts"] == 2 and "timed out after 2s" in u["error"][0]
        assert not list((tmp_path / "cache" / "packages").glob("beta*"))


def test_import_check_catches_broken_module(index, tmp_path):
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "brokenmod",
                "--check-imports", "beta")
        assert p.returncode == 1
        imports = {i["module"]: i for i in js(p)["imports"]}
        assert not imports["brokenmod"]["ok"]
        assert imports["brokenmod"]["error"] == "ImportError: deliberately broken"
        assert not imports["beta"]["ok"]  # asked for explicitly, never installed
        # Warm start: nothing is installed, but explicit checks still run.
        p = cli(env, "install", "--no-push", "--installer", "pip", "brokenmod",
                "--check-imports", "brokenmod")
        assert p.returncode == 1 and "satisfied" in p.stdout
        assert "FAILED" in p.stdout and "deliberately broken" in p.stdout


@pytest.mark.parametrize("installer", INSTALLERS)
def test_pip_config_passes_through_but_paths_are_forced(index, tmp_path, installer):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with serve(index) as srv:
        env = hermetic_env(tmp_path)
        conf = tmp_path / "pip.conf"
        conf.write_text(f"[global]\nindex-url = {srv.url}/simple\n")
        env.update({"PIP_CONFIG_FILE": str(conf), "PIP_TARGET": str(elsewhere / "t"),
                    "PIP_CACHE_DIR": str(elsewhere / "c"), "UV_CACHE_DIR": str(elsewhere / "u"),
                    "TMPDIR": str(elsewhere)})
        p = cli(env, "--json", "install", "--no-push", "--installer", installer, "beta")
        assert p.returncode == 0, p.stdout + p.stderr
        assert (tmp_path / "cache" / "packages" / "beta.py").is_file()
        assert any(path.startswith("/simple/beta") for path, _ in srv.requests)
        assert list(elsewhere.iterdir()) == []


def test_requirements_file_annotations_and_options(index, tmp_path):
    with serve(index) as srv:
        req = tmp_path / "req.txt"
        req.write_text(f"--index-url {srv.url}/simple\n"
                       "beta==1.2\n"
                       "alpha==1.0  # cache-sync: no-deps\n"
                       "ghost-package  # cache-sync: optional, timeout=30\n")
        env = hermetic_env(tmp_path)  # no PIP_INDEX_URL: the file's option must be used
        p = cli(env, "--json", "install", "--no-push", "--installer", "pip", "-r", str(req))
        assert p.returncode == 0, p.stdout + p.stderr
        u = units(js(p))
        assert u["alpha"]["new"] == {"alpha": "1.0"}  # no-deps: beta came from its own line
        assert u["ghost-package"]["status"] == "failed" and u["ghost-package"]["optional"]
        bad = tmp_path / "bad.txt"
        bad.write_text("beta  # cache-sync: sometimes\n")
        p = cli(env, "install", "--no-push", "-r", str(bad))
        assert p.returncode == 2 and "unknown cache-sync option 'sometimes'" in p.stderr


def test_disk_guard_refuses_before_installing(index, tmp_path):
    env = hermetic_env(tmp_path, "http://127.0.0.1:9/simple")
    env["CACHE_SYNC_MIN_FREE"] = "1000T"
    p = cli(env, "install", "--no-push", "beta")
    assert p.returncode == 4
    assert "cache root" in p.stderr and "below the floor" in p.stderr
    assert not (tmp_path / "cache" / "packages" / "beta.py").exists()


def test_bad_input_is_one_line(tmp_path):
    env = hermetic_env(tmp_path)
    for args, needle in ((["install"], "nothing to install"),
                         (["install", "--timeout", "x=y", "beta"], "not a number"),
                         (["install", "not a ==== spec"], "not a valid requirement"),
                         (["install", "-r", str(tmp_path / "missing.txt")], "cannot read")):
        p = cli(env, *args)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.fixture
def tiny_dir(tmp_path):
    """A nearly full filesystem for TMPDIR and HOME: a 2 MiB tmpfs when mounting is permitted
    (root), else a plain directory (then only the file listing proves nothing landed)."""
    d = tmp_path / "tiny"
    d.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)],
        capture_output=True).returncode == 0
    if mounted:
        free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
        (d / "filler").write_bytes(b"\0" * (free - 128 * 1024))  # leave 128 KiB
    else:
        (d / "filler").write_bytes(b"\0" * 1024)
    (d / "home").mkdir()
    try:
        yield d, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("installer", INSTALLERS)
def test_nothing_lands_in_tmpdir_or_home(index, tmp_path, tiny_dir, installer):
    d, mounted = tiny_dir

    def snapshot():
        files = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
        return files, (os.statvfs(d).f_bfree if mounted else None)

    before = snapshot()
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        env.update({"TMPDIR": str(d), "HOME": str(d / "home"), "TEMP": str(d), "TMP": str(d)})
        env.pop("XDG_CACHE_HOME")
        # pip's user agent runs `rustc --version`; on this machine that is a rustup proxy
        # which writes ~/.rustup/settings.toml. Not an install artefact, and not on a worker.
        env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".cargo" not in p)
        # padded's wheel (600 KiB of random bytes) does not fit in what is left of the tiny
        # filesystem: the install only succeeds if nothing goes there.
        p = cli(env, "--json", "install", "--no-push", "--installer", installer, "padded",
                "alpha")
        assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "cache" / "packages" / "padded" / "blob.bin").stat().st_size == 600 * 1024
    assert snapshot() == before


@pytest.mark.parametrize("remote", ["local", "seaweedfs-b2"], indirect=True)
def test_install_pushes_packages_so_a_second_worker_needs_no_install(index, tmp_path, remote):
    url, extra = remote
    with serve(index) as srv:
        env = {**hermetic_env(tmp_path, srv.url + "/simple"), **extra, "CACHE_SYNC_REMOTE": url}
        env["CACHE_SYNC_PROGRESS"] = "off"
        p = cli(env, "--json", "install", "--installer", "pip", "beta")
        assert p.returncode == 0, p.stderr
        assert [r["area"] for r in js(p)["pushed"]] == ["packages", "pip"]  # roles: pip too
        served = len(srv.requests)
        second = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "second")}
        assert cli(second, "pull", "packages").returncode == 0
        p = cli(second, "--json", "install", "--installer", "pip", "beta")
        assert units(js(p))["beta"]["status"] == "satisfied"
        assert len(srv.requests) == served  # the second worker never touched the index
        assert (tmp_path / "second" / "packages" / "beta.py").is_file()


def test_disk_guard_stops_an_install_that_eats_the_floor(index, tmp_path):
    """The cache root is an 8 MiB tmpfs with a 6 MiB floor; hugepkg (3 MiB, sent at 1 MiB/s)
    crosses the floor while downloading, and the watcher kills the installer."""
    root = tmp_path / "cache"
    root.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs",
                                            str(root)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with serve(index, rate=1 << 20) as srv:
            env = hermetic_env(tmp_path, srv.url + "/simple")
            env["CACHE_SYNC_MIN_FREE"] = "6M"
            p = cli(env, "install", "--no-push", "--installer", "pip", "hugepkg")
        assert p.returncode == 4, p.stdout + p.stderr
        assert "cache root" in p.stderr and "refusing to continue" in p.stderr
        assert not (root / "packages" / "hugepkg").exists()
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_push_failure_after_install_keeps_the_report(index, tmp_path):
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        env["CACHE_SYNC_REMOTE"] = "file:///dev/null/store"  # cannot be created
        p = cli(env, "--json", "install", "--installer", "pip", "beta")
    assert p.returncode == 3, p.stderr
    r = js(p)
    assert units(r)["beta"]["status"] == "installed"
    assert "Not a directory" in r["push_error"]
    assert "installed, but the push of packages failed" in p.stderr


def _pyc_matches_source(pyc: Path, src: Path) -> bool:
    """The .pyc is what the import system would use for ``src`` as it is on disk now: this
    interpreter's magic number and, for a timestamp pyc, the source's mtime and size."""
    import importlib.util
    import struct

    head = pyc.read_bytes()[:16]
    if head[:4] != importlib.util.MAGIC_NUMBER:
        return False
    flags = struct.unpack("<I", head[4:8])[0]
    if flags & 1:  # hash-based: checked against the source's hash at import
        return True
    mtime, size = struct.unpack("<II", head[8:16])
    st = src.stat()
    return mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF


@pytest.mark.parametrize("installer", INSTALLERS)
def test_install_compiles_bytecode_that_stays_valid_on_the_next_worker(index, tmp_path,
                                                                      installer):
    """Workers import packages/ without compiling it: install leaves a current .pyc beside
    every module it installed (uv does not compile by itself), push carries them, and on a
    second worker, after a pull, each still matches its source (mtime and size restored)."""
    with serve(index) as srv:
        env = {**hermetic_env(tmp_path, srv.url + "/simple"),
               "CACHE_SYNC_REMOTE": f"file://{tmp_path}/store", "CACHE_SYNC_PROGRESS": "off"}
        p = cli(env, "install", "--installer", installer, "alpha==2.0")
        assert p.returncode == 0, p.stderr
        assert "bytecode: packages/ compiled" in p.stderr
    second = tmp_path / "second"
    assert cli({**env, "CACHE_SYNC_ROOT": str(second)}, "pull", "packages").returncode == 0
    tag = sys.implementation.cache_tag
    for src in ("alpha/__init__.py", "alpha/extra.py", "beta.py"):
        path = second / "packages" / src
        pyc = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
        assert pyc.is_file(), f"no bytecode for {src}"
        assert _pyc_matches_source(pyc, path), f"stale bytecode for {src} after the pull"
    # ... and each .pyc belongs to its distribution (an upgrade or uninstall removes it)
    record = next((second / "packages").glob("alpha-2.0.dist-info")) / "RECORD"
    assert f"alpha/__pycache__/extra.{tag}.pyc" in record.read_text()


def test_bytecode_can_be_turned_off(index, tmp_path):
    if not HAVE_UV:
        pytest.skip("uv not installed")
    with serve(index) as srv:
        env = {**hermetic_env(tmp_path, srv.url + "/simple"), "CACHE_SYNC_BYTECODE": "0"}
        p = cli(env, "install", "--no-push", "--installer", "uv", "beta")
        assert p.returncode == 0, p.stderr
    assert not list((tmp_path / "cache" / "packages").rglob("*.pyc"))
