"""A fleet that bootstraps itself (issue 11; docs/design.md section 8): N real `cache-sync run
--requirements` processes start at once against one empty bucket, the tests' package index and
the fake Hub; exactly one installs and downloads, every worker's child starts with the packages
importable and the model present, and all end on the same snapshots. Also: the lease holder
SIGKILLed mid-install, and a store that answers conditional requests 501 (Backblaze B2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache_sync.config import Settings
from cache_sync.local_cache import CacheState
from tests.support.fakehub import FakeHub, Repo
from tests.support.faultproxy import B2Mode, fault_proxy
from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

MODEL = "org/tiny-tts"
MODEL_SPEC = f"{MODEL}@main:ckpt/*"

CHILD = r"""
import json, os, sys, pathlib, time
started = time.time()
import tinya, tinyb
hub = pathlib.Path(os.environ["HF_HUB_CACHE"]) / "models--org--tiny-tts"
commit = (hub / "refs" / "main").read_text()
weights = (hub / "snapshots" / commit / "ckpt" / "model.safetensors").read_bytes()
pathlib.Path(sys.argv[1]).write_text(json.dumps({
    "tinya": tinya.VERSION, "tinyb": tinyb.X, "weights": len(weights),
    "offline": os.environ.get("HF_HUB_OFFLINE"), "file": tinya.__file__, "t": started}))
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bsindex")
    w = d / "wheels"
    wheels = [
        make_wheel(w, "tinya", "1.0", {"tinya/__init__.py": "VERSION = '1.0'\n",
                                       "tinya/blob.bin": os.urandom(64 * 1024)},
                   requires=("tinyb>=1",)),
        make_wheel(w, "tinyb", "1.1", {"tinyb.py": "X = 11\n"}),
    ]
    return build_index(d / "idx", wheels)


@pytest.fixture
def hub():
    files = {"ckpt/model.safetensors": os.urandom(300_000), "ckpt/vocab.txt": b"a\nb\nc\n",
             "other/huge.bin": b"never fetched: not in the patterns"}
    with FakeHub(Repo(MODEL, files)) as h:
        yield h


@dataclass
class Worker:
    name: str
    root: Path
    proc: subprocess.Popen
    started: float  # wall clock (the child reports when it started on the same clock)
    out: Path
    err: Path
    served: Path
    ended: float = 0.0

    def to_serve(self) -> float:
        """Seconds from `cache-sync run` to the worker's command starting."""
        return round(json.loads(self.served.read_text())["t"] - self.started, 2)

    def result(self) -> dict:
        return json.loads(self.out.read_text())

    def log(self) -> str:
        return self.err.read_text()


def start_worker(tmp: Path, name: str, env: dict[str, str], reqs: Path,
                 root: Path | None = None) -> Worker:
    """A worker with its own HOME and logs; its own cache root unless ``root`` (a shared
    network volume) is given."""
    base = tmp / name
    base.mkdir(parents=True)
    wenv = {**env, **hermetic_env(base, env["PIP_INDEX_URL"]),
            "CACHE_SYNC_REMOTE": env["CACHE_SYNC_REMOTE"], "RUNPOD_POD_ID": name}
    if root is not None:
        wenv["CACHE_SYNC_ROOT"] = str(root)
    served = base / "served.json"
    out, err = base / "out.json", base / "err.log"
    (base / "child.py").write_text(CHILD)
    cmd = [sys.executable, "-m", "cache_sync", "--json", "run", "--requirements", str(reqs),
           "--", sys.executable, str(base / "child.py"), str(served)]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, env=wenv, stdout=fo, stderr=fe, start_new_session=True)
    return Worker(name, root or base / "cache", proc, time.time(), out, err, served)


def wait_all(workers: list[Worker], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    try:
        for w in workers:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
            w.ended = time.time()
    finally:
        for w in workers:
            if w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()


def fleet_env(tmp: Path, remote: str, server_env: dict[str, str], index_url: str,
              hub_url: str, expiry: float = 8.0, installer: str = "pip") -> dict[str, str]:
    reqs = tmp / "requirements.txt"
    reqs.write_text("tinya==1.0\n")
    return {**server_env, "CACHE_SYNC_REMOTE": remote, "PIP_INDEX_URL": index_url,
            "HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "1", "CACHE_SYNC_HF_MODELS": MODEL_SPEC,
            "CACHE_SYNC_LEASE_EXPIRY": str(expiry), "CACHE_SYNC_PROGRESS": "off",
            "PYTHONDONTWRITEBYTECODE": "1", "CACHE_SYNC_INSTALL_ATTEMPTS": "1",
            # pip fetches each wheel once (uv twice: for metadata, then to install), so the
            # exact count of wheel downloads is asserted with pip; the others use fast uv
            "CACHE_SYNC_INSTALLER": installer}


def _fetches(srv, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for path, status in srv.requests:
        if path.startswith(prefix) and status == 200:
            out[path] = out.get(path, 0) + 1
    return out


def resolves(srv) -> dict[str, int]:
    """Index page fetches per project: one per install of it, with pip or uv."""
    return _fetches(srv, "/simple/")


def wheel_downloads(srv) -> dict[str, int]:
    return _fetches(srv, "/files/")


def based_on(w: Worker, remote: str, area: str) -> tuple[str, ...]:
    return CacheState(w.root).load_state(area, remote).based_on


def store_heads(remote: str, env: dict[str, str], area: str) -> list[str]:
    settings = Settings.from_env({**env, "CACHE_SYNC_ROOT": "/nonexistent"})
    from cache_sync.history import History
    from cache_sync.repo import list_refs
    from cache_sync.storage import open_store

    return [h.id for h in History(list_refs(open_store(settings), area)).heads]


def check_served(w: Worker) -> None:
    assert w.proc.returncode == 0, (w.name, w.log())
    served = json.loads(w.served.read_text())
    assert served["tinya"] == "1.0" and served["tinyb"] == 11
    assert served["weights"] == 300_000 and served["offline"] == "1"
    assert served["file"].startswith(str(w.root / "packages"))


def test_six_workers_one_install_one_download_same_snapshots(index, hub, seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    remote = f"s3://{bucket}/cache"
    with serve(index) as srv:
        env = fleet_env(tmp_path, remote, seaweed.env(), srv.url + "/simple", hub.url)
        reqs = tmp_path / "requirements.txt"
        workers = [start_worker(tmp_path, f"w{i}", env, reqs) for i in range(6)]
        wait_all(workers)
        for w in workers:
            check_served(w)
        roles = sorted(w.result()["bootstrap"]["role"] for w in workers)
        assert roles == ["installed"] + ["waited"] * 5, roles
        # exactly one install and one model download across the fleet
        assert wheel_downloads(srv) == {"/files/tinya-1.0-py3-none-any.whl": 1,
                                        "/files/tinyb-1.1-py3-none-any.whl": 1}
        assert resolves(srv) == {"/simple/tinya/": 1, "/simple/tinyb/": 1}
        assert dict(hub.downloads) == {(MODEL, "ckpt/model.safetensors"): 1,
                                       (MODEL, "ckpt/vocab.txt"): 1}
        # every worker ends on the store's one head of each area
        for area in ("packages", "models"):
            heads = store_heads(remote, env, area)
            assert len(heads) == 1, (area, heads)
            assert {based_on(w, remote, area) for w in workers} == {tuple(heads)}
        holder = next(w for w in workers if w.result()["bootstrap"]["role"] == "installed")
        waiters = [w for w in workers if w is not holder]
        assert any("waiting for worker " + holder.name in w.log() for w in waiters)

        # a second-generation worker: pull only, no index or hub request, serves
        before_idx, before_hub = len(srv.requests), hub.total_downloads()
        gen2 = start_worker(tmp_path, "gen2", env, reqs)
        wait_all([gen2])
        check_served(gen2)
        assert gen2.result()["bootstrap"]["role"] == "satisfied"
        assert len(srv.requests) == before_idx and hub.total_downloads() == before_hub
    timings = {"first_worker_to_serve_s": holder.to_serve(),
               "waiters_to_serve_s": sorted(w.to_serve() for w in waiters),
               "second_generation_to_serve_s": gen2.to_serve()}
    print("fleet timings (tiny test packages, SeaweedFS on loopback):", timings)


@pytest.mark.slow  # a fleet scenario beyond the default set: the lease over fleet-root's locks
def test_workers_sharing_one_root_bootstrap_once(index, hub, seaweed, tmp_path):
    """Three workers on one network volume (one cache root) and one bucket: one install into
    the shared packages/, the others wait for its push, all serve."""
    bucket = seaweed.make_bucket()
    remote = f"s3://{bucket}/cache"
    shared = tmp_path / "volume" / "cache"
    with serve(index) as srv:
        env = fleet_env(tmp_path, remote, seaweed.env(), srv.url + "/simple", hub.url,
                        installer="uv")
        reqs = tmp_path / "requirements.txt"
        workers = [start_worker(tmp_path, f"v{i}", env, reqs, root=shared) for i in range(3)]
        wait_all(workers)
        for w in workers:
            check_served(w)
        assert sorted(w.result()["bootstrap"]["role"] for w in workers) == [
            "installed", "waited", "waited"]
        assert resolves(srv) == {"/simple/tinya/": 1, "/simple/tinyb/": 1}
        assert hub.total_downloads() == 2
        assert store_heads(remote, env, "packages") == list(
            based_on(workers[0], remote, "packages"))


def test_holder_killed_mid_install_another_takes_over(index, hub, seaweed, tmp_path):
    """The holder is SIGKILLed (with its installer) while its wheel download trickles; the next
    worker holds the lease within expiry plus a margin, installs, and the fleet converges on
    one install."""
    bucket = seaweed.make_bucket()
    remote = f"s3://{bucket}/cache"
    expiry = 5.0
    with serve(index, rate=40_000) as srv:  # tinya's 64 KiB wheel takes ~2 s
        env = fleet_env(tmp_path, remote, seaweed.env(), srv.url + "/simple", hub.url, expiry,
                        installer="uv")
        reqs = tmp_path / "requirements.txt"
        workers = [start_worker(tmp_path, f"k{i}", env, reqs) for i in range(3)]
        deadline = time.monotonic() + 60
        holder = None
        while holder is None and time.monotonic() < deadline:
            holder = next((w for w in workers if "/files/tinya" in str(srv.requests)
                           and "installing tinya" in w.log()), None)
            time.sleep(0.05)
        assert holder is not None, [w.log() for w in workers]
        os.killpg(holder.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        holder.proc.wait()
        srv.rate = None  # the next holder's download need not crawl
        assert store_heads(remote, env, "packages") == []  # nothing half-installed published
        rest = [w for w in workers if w is not holder]
        takeover = None
        while takeover is None and time.monotonic() < killed + 60:
            if any("this worker installs" in w.log() for w in rest):
                takeover = time.monotonic() - killed
            time.sleep(0.05)
        assert takeover is not None and takeover <= expiry + expiry / 4 + 3, takeover
        wait_all(rest)
        for w in rest:
            check_served(w)
        assert sorted(w.result()["bootstrap"]["role"] for w in rest) == ["installed", "waited"]
        heads = store_heads(remote, env, "packages")
        assert len(heads) == 1 and {based_on(w, remote, "packages") for w in rest} == {
            tuple(heads)}
        # the dead holder's install and the one that took over: two resolves, no more
        assert resolves(srv) == {"/simple/tinya/": 2, "/simple/tinyb/": 2}


def test_lease_elects_one_installer_when_conditional_requests_get_501(index, hub, seaweed,
                                                                      tmp_path):
    """Backblaze B2 has no conditional writes: through the proxy in B2 mode (501 for If-Match /
    If-None-Match, 400 for flexible-checksum headers or a DeleteObjects without Content-MD5,
    503 + Retry-After for bursts), the lease still elects one installer and releases."""
    bucket = seaweed.make_bucket()
    with fault_proxy(seaweed.endpoint, b2=B2Mode(burst=4, burst_times=2)) as proxy, \
            serve(index) as srv:
        server_env = {**seaweed.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint}
        remote = f"s3://{bucket}/cache"
        env = fleet_env(tmp_path, remote, server_env, srv.url + "/simple", hub.url,
                        installer="uv")
        reqs = tmp_path / "requirements.txt"
        workers = [start_worker(tmp_path, f"c{i}", env, reqs) for i in range(3)]
        wait_all(workers)
        for w in workers:
            check_served(w)
        assert sorted(w.result()["bootstrap"]["role"] for w in workers) == [
            "installed", "waited", "waited"]
        assert resolves(srv) == {"/simple/tinya/": 1, "/simple/tinyb/": 1}
        assert hub.total_downloads() == 2
        assert any("/leases/bootstrap/" in s.path for s in proxy.requests)
        assert proxy.conditional_requests() == []
        assert proxy.b2_refusals() == []  # B2 would have accepted every request
        assert any("?delete" in s.path for s in proxy.requests)  # the release, a DeleteObjects


class _FakeHolder:
    """Another worker holding the lease in a directory store: its claim is renewed by a thread
    until ``stop``."""

    def __init__(self, store_dir: Path) -> None:
        import threading

        from cache_sync.storage.local import LocalStore

        self.store = LocalStore(str(store_dir))
        self.store.put("leases/bootstrap/elsewhere-00000001.claim", b"{}")
        # alive from the start: a command can now finish before the first renewal is due
        self.store.put("leases/bootstrap/elsewhere-00000001.alive", b"{}")
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        while not self.done.wait(0.3):
            self.store.put("leases/bootstrap/elsewhere-00000001.alive", b"{}")

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)

    def claims(self) -> list[str]:
        return sorted(i.key for i in self.store.list("leases/") if "elsewhere" not in i.key)


def _waiter(tmp_path: Path, **extra: str) -> tuple[subprocess.Popen, Path]:
    env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off",
           "CACHE_SYNC_LEASE_EXPIRY": "5", "RUNPOD_POD_ID": "waiter", **extra}
    (tmp_path / "store").mkdir(exist_ok=True)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tinya==1.0\n")
    err = tmp_path / "err.log"
    with open(err, "wb") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "cache_sync", "run", "--requirements",
                                 str(reqs), "--", "true"], env=env, stdout=subprocess.DEVNULL,
                                stderr=fe)
    return proc, err


def test_a_waiting_worker_stops_at_once_on_sigterm_and_withdraws_its_claim(tmp_path):
    holder = _FakeHolder(tmp_path / "store")
    try:
        proc, err = _waiter(tmp_path)
        deadline = time.monotonic() + 30
        while "waiting for worker elsewhere" not in err.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
            time.sleep(0.05)
        assert len(holder.claims()) >= 1  # the waiter's own place in the queue
        st = subprocess.run([sys.executable, "-m", "cache_sync", "status"], env={
            **hermetic_env(tmp_path), "CACHE_SYNC_ROOT": str(tmp_path / "other")},
            capture_output=True, text=True, timeout=60, check=False)
        assert "lease bootstrap: held by elsewhere" in st.stdout and "1 waiting" in st.stdout
        proc.send_signal(signal.SIGTERM)
        # at once: the holder renews forever, so a waiter that ignored the signal would wait
        # out its whole budget (minutes), far past this hang guard
        assert proc.wait(30) == 128 + signal.SIGTERM
        assert "not started: SIGTERM" in err.read_text()
        assert holder.claims() == []
    finally:
        holder.stop()


def test_the_wait_is_bounded_one_line_and_exit_75(tmp_path):
    holder = _FakeHolder(tmp_path / "store")
    try:
        proc, err = _waiter(tmp_path, CACHE_SYNC_LEASE_WAIT="2")
        assert proc.wait(30) == 75
        last = err.read_text().strip().splitlines()[-1]
        assert last.startswith("cache-sync: error: gave up after 2s waiting for worker "
                               "elsewhere") and "CACHE_SYNC_LEASE_WAIT" in last
        assert "Traceback" not in err.read_text() and holder.claims() == []
    finally:
        holder.stop()


@pytest.mark.parametrize(("extra", "args", "expect"), [
    ({}, ["--requirements", "/nonexistent/reqs.txt"], "cannot read requirements file"),
    ({"CACHE_SYNC_HF_MODELS": "org/a/b"}, [], "does not name a Hub repo"),
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, ["--hf-model", "org/x"],
     "download of org/x@main failed"),
])
def test_bad_bootstrap_input_is_one_line_and_nothing_starts(tmp_path, extra, args, expect):
    env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off", **extra}
    marker = tmp_path / "started"
    p = subprocess.run([sys.executable, "-m", "cache_sync", "run", *args, "--",
                        sys.executable, "-c", f"open({str(marker)!r}, 'w')"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode in (1, 2), p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("cache-sync: error")]
    assert len(errors) == 1 and expect in errors[0], p.stderr
    assert "Traceback" not in p.stderr and not marker.exists()


def test_gc_at_any_moment_leaves_the_lease_alone(tmp_path):
    """gc (any worker, any moment) deletes only unreferenced objects and old snapshots: a live
    holder's claim and liveness objects survive it, so gc never hands the lease to a second
    installer."""
    holder = _FakeHolder(tmp_path / "store")
    try:
        env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off"}
        (tmp_path / "cache" / "packages").mkdir(parents=True)
        (tmp_path / "cache" / "packages" / "x.py").write_text("X = 1\n")
        for args in (["push"], ["gc", "--keep", "1", "--grace", "0"]):
            p = subprocess.run([sys.executable, "-m", "cache_sync", *args], env=env,
                               capture_output=True, text=True, timeout=60, check=False)
            assert p.returncode == 0, p.stderr
        keys = sorted(i.key for i in holder.store.list("leases/"))
        assert keys == ["leases/bootstrap/elsewhere-00000001.alive",
                        "leases/bootstrap/elsewhere-00000001.claim"]
    finally:
        holder.stop()


def test_no_pull_worker_still_pulls_what_the_store_has_before_installing(index, tmp_path):
    """`run --no-pull --requirements`: the cache is unsatisfied, but the store already holds
    the install; the worker pulls it instead of installing again (no index request)."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tinya==1.0\n")
    with serve(index) as srv:
        env = {**hermetic_env(tmp_path, srv.url + "/simple"), "CACHE_SYNC_PROGRESS": "off"}
        cmd = [sys.executable, "-m", "cache_sync", "--json", "run", "--requirements", str(reqs),
               "--", sys.executable, "-c", "import tinya"]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                               check=False)
        assert first.returncode == 0 and json.loads(first.stdout)["bootstrap"]["role"] == (
            "installed"), first.stderr
        asked = len(srv.requests)
        env2 = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "fresh")}
        second = subprocess.run([*cmd[:5], "--no-pull", *cmd[5:]], env=env2,
                                capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["bootstrap"]["role"] != "installed"
        assert len(srv.requests) == asked
