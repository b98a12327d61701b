"""runpod's real production job loop (not the local API server) against a fake RunPod job
server, then SIGTERM: the in-flight job finishes and its result is posted before exit.
Under `cache-sync run`, the cache is then pushed."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handler.audio import decode_wav
from tests.support.fake_runpod import FakeRunPod
from tests.support.worker_helpers import REPO, stop, tone_b64, worker_env, write_light_model

pytestmark = pytest.mark.timeout(180)

JOB = {"text": "A job that is still running when SIGTERM arrives.", "ref_audio": tone_b64(0.5),
       "ref_text": "Reference.", "seed": 5}


@pytest.fixture
def fake():
    server = FakeRunPod().start()
    yield server
    server.stop()


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _drive_sigterm(fake: FakeRunPod, proc: subprocess.Popen, log: Path,
                   before_sigterm=None, exit_timeout: float = 30) -> float:
    """Bad job, then a slow job; SIGTERM while the slow job runs. Returns SIGTERM time."""
    fake.add_job("job-bad", {"text": "x", "ref_audio": "UklGRg==", "ref_text": "r"})
    fake.add_job("job-slow", JOB)
    ok = fake.wait_for(lambda: fake.progress("job-slow") or proc.poll() is not None, 90)
    assert ok and proc.poll() is None, log.read_text()[-4000:]
    if before_sigterm:
        before_sigterm()
    sigterm_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # to the main process only, as a container's PID 1 gets
    fake.add_job("job-after", JOB)  # must not be taken: the worker is shutting down
    try:
        rc = proc.wait(exit_timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"worker did not exit after SIGTERM:\n{log.read_text()[-4000:]}")
    assert rc == 0, log.read_text()[-4000:]

    bad = fake.results("job-bad")
    assert len(bad) == 1 and "ref_audio: not a WAV file" in bad[0].body["error"]
    final = fake.results("job-slow")
    assert len(final) == 1, log.read_text()[-4000:]
    assert final[0].at > sigterm_at  # it really was in flight when SIGTERM came
    assert final[0].query.get("isStream") == ["false"]
    out = final[0].body["output"]
    audio = decode_wav(base64.b64decode(out["audio_base64"]))
    assert audio.seconds == pytest.approx(out["duration_seconds"], abs=0.01) and audio.seconds > 3
    assert [p.body["output"] for p in fake.progress("job-slow")] == ["synthesizing"]
    assert [j for j, _ in fake.taken] == ["job-bad", "job-slow"]
    assert not fake.bad_auth
    return sigterm_at


def test_job_loop_finishes_in_flight_job_on_sigterm(fake, tmp_path):
    root = tmp_path / "cache"
    write_light_model(root, synth_seconds=2.0)
    env = worker_env(root, tmp_path, {**fake.env(), "HANDLER_ENGINE": "light"})
    log = tmp_path / "worker.log"
    proc = _start([sys.executable, "-m", "handler"], env, log)
    try:
        _drive_sigterm(fake, proc, log)
        assert fake.pings and fake.pings[0]["runpod_version"]  # heartbeat reached us
    finally:
        stop(proc)


def test_concurrency_runs_jobs_side_by_side_in_threads(fake, tmp_path):
    """HANDLER_CONCURRENCY=2 reaches runpod's concurrency_modifier: two 1.5 s jobs overlap
    (inference runs in a thread, so the event loop keeps taking and answering)."""
    root = tmp_path / "cache"
    write_light_model(root, synth_seconds=1.5)
    env = worker_env(root, tmp_path, {**fake.env(), "HANDLER_ENGINE": "light",
                                      "HANDLER_CONCURRENCY": "2"})
    log = tmp_path / "worker.log"
    proc = _start([sys.executable, "-m", "handler"], env, log)
    try:
        assert fake.wait_for(lambda: fake.pings, 60), log.read_text()[-3000:]  # loop is up
        fake.add_job("a", JOB)
        fake.add_job("b", JOB)
        assert fake.wait_for(lambda: fake.results("a") and fake.results("b"), 60), \
            log.read_text()[-3000:]
        a, b = fake.results("a")[0], fake.results("b")[0]
        starts = [t for j, t in fake.taken if j in ("a", "b")]
        assert "audio_base64" in a.body["output"] and "audio_base64" in b.body["output"]
        assert max(a.at, b.at) - min(starts) < 2.6  # serial would be >= 3.0 s
    finally:
        stop(proc)


RUN_CMD = REPO / "cache_sync" / "cli" / "cmd_run.py"


@pytest.mark.skipif(not RUN_CMD.exists(),
                    reason="`cache-sync run` (cache_sync/cli/cmd_run.py, branch install) has not "
                           "landed on this branch yet")
def test_under_cache_sync_run_pulls_then_pushes_after_the_last_result(fake, tmp_path):
    store = tmp_path / "store"
    remote = f"file://{store}"
    dev = tmp_path / "devbox"
    write_light_model(dev, synth_seconds=2.0)

    def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
        env = worker_env(root, tmp_path, {"CACHE_SYNC_REMOTE": remote})
        return subprocess.run([sys.executable, "-m", "cache_sync", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    pushed = cli(dev, "push", "models")  # the dev box publishes the model
    assert pushed.returncode == 0, pushed.stderr

    root = tmp_path / "worker-cache"  # a fresh worker: empty cache
    env = worker_env(root, tmp_path, {**fake.env(), "HANDLER_ENGINE": "light",
                                      "CACHE_SYNC_REMOTE": remote})
    log = tmp_path / "run.log"
    proc = _start([sys.executable, "-m", "cache_sync", "run", "--", sys.executable, "-m",
                   "handler"], env, log)

    def add_file_during_job():
        # Warm-started from the pulled cache; now "download" something the push must keep.
        assert (root / "models" / "light-tts" / "model.json").is_file()
        (root / "models" / "downloaded-during-run.bin").write_bytes(b"new weights" * 1000)

    try:
        _drive_sigterm(fake, proc, log, before_sigterm=add_file_during_job, exit_timeout=90)
    finally:
        stop(proc)
    posted = fake.results("job-slow")[0].wall
    store_files = [p for p in store.rglob("*") if p.is_file()]
    assert max(p.stat().st_mtime for p in store_files) >= posted - 0.01  # push came after

    check = tmp_path / "check"
    pulled = cli(check, "pull", "models")
    assert pulled.returncode == 0, pulled.stderr
    assert (check / "models" / "downloaded-during-run.bin").read_bytes() == b"new weights" * 1000
