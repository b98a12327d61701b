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
from tests.support.hostile_sites import URL_DEADLINE, open_sites
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


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One job-loop worker for the hostile-job tests: HANDLER_CONCURRENCY=3, URLs on with
    127.0.0.2 allow-listed, a 1 s light engine (draws from the process-wide RNG as it goes)."""
    tmp = tmp_path_factory.mktemp("hostile-loop")
    root = tmp / "cache"
    write_light_model(root, synth_seconds=1.0)
    with open_sites() as sites:
        fake = FakeRunPod().start()
        env = worker_env(root, tmp, {**fake.env(), "HANDLER_ENGINE": "light",
                                     "HANDLER_CONCURRENCY": "3",
                                     "HANDLER_ALLOW_URL_REF_AUDIO": "true",
                                     "HANDLER_URL_ALLOWLIST": "127.0.0.2",
                                     "HANDLER_URL_TIMEOUT": str(URL_DEADLINE)})
        log = tmp / "worker.log"
        proc = _start([sys.executable, "-m", "handler"], env, log)
        try:
            assert fake.wait_for(lambda: fake.pings, 60), log.read_text()[-3000:]  # loop is up
            yield fake, sites, log
        finally:
            stop(proc)
            fake.stop()


def _results(fake: FakeRunPod, log: Path, ids: list[str], timeout: float = 60) -> dict:
    assert fake.wait_for(lambda: all(fake.results(j) for j in ids), timeout), \
        log.read_text()[-3000:]
    return {j: fake.results(j)[0] for j in ids}


def _taken_at(fake: FakeRunPod, job_id: str) -> float:
    return next(t for j, t in fake.taken if j == job_id)


def test_a_slow_download_does_not_delay_an_ordinary_job(hostile):
    """HANDLER_CONCURRENCY reaches runpod's concurrency_modifier (batch job-take) and the
    download runs off the event loop: with a dripping server holding one job until the URL
    deadline, an ordinary job sent after it is answered in about its own 1 s."""
    fake, sites, log = hostile
    fake.add_job("slow", {**JOB, "ref_audio": sites["public"].url("/slow")})
    assert fake.wait_for(lambda: "/slow" in sites["public"].hits, 30)
    sent = time.monotonic()
    fake.add_job("quick", {**JOB, "text": "Quick."})
    res = _results(fake, log, ["slow", "quick"])
    quick_s = res["quick"].at - sent  # from queueing, not taking: a stalled loop takes late
    slow_s = res["slow"].at - _taken_at(fake, "slow")
    print(f"\nconcurrency 3: ordinary job answered in {quick_s:.2f} s while a slow download "
          f"ran; the slow job was cut after {slow_s:.2f} s")
    assert "audio_base64" in res["quick"].body["output"]
    assert quick_s < 3.0 and res["quick"].at < res["slow"].at
    assert "could not use this URL" in res["slow"].body["error"]
    assert URL_DEADLINE - 0.5 < slow_s < URL_DEADLINE + 3.0


def test_seeded_jobs_reproduce_while_running_side_by_side(hostile):
    """Two seeded jobs and an unseeded one at once give the same audio as the seeded jobs
    alone: every job samples under one lock (as F5-TTS's torch.randn needs), and an
    unseeded job reports the seed it drew, which reproduces it."""
    fake, _, log = hostile
    a, b = {**JOB, "text": "Seeded job A.", "seed": 11}, {**JOB, "text": "Seeded job B.",
                                                         "seed": 12}
    u = {k: v for k, v in JOB.items() if k != "seed"} | {"text": "Unseeded job."}
    for job_id, inp in (("a1", a), ("b1", b), ("u1", u)):
        fake.add_job(job_id, inp)
    together = _results(fake, log, ["a1", "b1", "u1"])
    drawn = together["u1"].body["output"]["engine_info"]["seed"]
    alone = {}
    for job_id, inp in (("a2", a), ("b2", b), ("u2", {**u, "seed": drawn})):
        fake.add_job(job_id, inp)
        alone.update(_results(fake, log, [job_id]))
    for one, two in (("a1", "a2"), ("b1", "b2"), ("u1", "u2")):
        assert together[one].body["output"]["audio_base64"] == \
            alone[two].body["output"]["audio_base64"], one
    assert together["a1"].body["output"]["audio_base64"] != \
        together["b1"].body["output"]["audio_base64"]


def test_lone_surrogates_get_a_posted_error_not_a_stuck_job(hostile):
    """A lone surrogate (JSON "\\ud800") in a field name, a path, a URL or the text: each
    job gets exactly one posted result, an error that shows the character escaped."""
    fake, _, log = hostile
    bad = {
        "name": {**JOB, "\ud800": 1},
        "path": {**JOB, "ref_audio": "voices/\ud800.wav"},
        "url": {**JOB, "ref_audio": "http://127.0.0.2/\ud800.wav"},
        "host": {**JOB, "ref_audio": "http://\ud800.example/ref.wav"},
        "text": {**JOB, "text": "hello \ud800"},
        "ref_text": {**JOB, "ref_text": "\ud800"},
    }
    for job_id, inp in bad.items():
        fake.add_job(f"sur-{job_id}", inp)
    res = _results(fake, log, [f"sur-{j}" for j in bad], timeout=60)
    for job_id, post in res.items():
        assert len(fake.results(job_id)) == 1
        error = post.body["error"]
        assert error.startswith("invalid input: ") and "Traceback" not in error, error
    assert "\\ud800" in res["sur-name"].body["error"]  # escaped, as six ASCII characters
    assert "ref_audio: could not use this URL" in res["sur-url"].body["error"]


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
