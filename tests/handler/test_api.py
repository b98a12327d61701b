"""The worker driven through runpod's own local API server (POST /runsync), light engine:
valid jobs, every kind of bad input, base64 and S3 outputs, and the missing-model start-up."""

from __future__ import annotations

import base64
import http.server
import json
import os
import struct
import threading
import urllib.request

import pytest

from handler.audio import b64encode, decode_wav
from tests.support.worker_helpers import (
    api_worker,
    tone_b64,
    tone_wav,
    worker_env,
    write_light_model,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def wav_server():
    """A plain HTTP server on 127.0.0.1 serving reference WAVs (for URL ref_audio)."""
    files = {"/ref.wav": tone_wav(1.0), "/big.wav": tone_wav(8.0)}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def s3_bucket(moto):
    return moto.make_bucket()


@pytest.fixture(scope="module")
def worker(tmp_path_factory, moto, s3_bucket):
    tmp = tmp_path_factory.mktemp("api")
    root = tmp / "cache"
    write_light_model(root)
    (root / "voices").mkdir()
    (root / "voices" / "ref.wav").write_bytes(tone_wav(1.0))
    os.symlink("/etc/hostname", root / "voices" / "escape.wav")
    env = worker_env(root, tmp, {
        **moto.env(),
        "HANDLER_ENGINE": "light",
        "CACHE_SYNC_REMOTE": f"s3://{s3_bucket}/cache",
        "HANDLER_MAX_REF_SECONDS": "5",
        "HANDLER_MAX_REF_AUDIO_BYTES": "300000",
        "HANDLER_MAX_TEXT_CHARS": "200",
        "HANDLER_MAX_OUTPUT_SECONDS": "20",
        "HANDLER_ALLOW_URL_REF_AUDIO": "true",  # off by default
        "HANDLER_URL_ALLOWLIST": "127.0.0.1",  # wav_server is on loopback, refused by default
    })
    with api_worker(env, tmp / "worker.log") as w:
        yield w


def wav_bytes(channels: int, rate: int = 16000, frames: int = 1600) -> bytes:
    """16-bit PCM silence with any channel count (encode_wav writes mono only)."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    data = bytes(frames * channels * 2)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


def job(**over):
    base = {"text": "Hello from the worker.", "ref_audio": tone_b64(1.0),
            "ref_text": "A reference clip."}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def ok_output(worker, inp):
    out = worker.runsync(inp)
    assert out["status"] == "COMPLETED", (out, worker.output()[-3000:])
    return out["output"]


def test_valid_job_returns_a_real_24khz_wav(worker):
    out = ok_output(worker, job(seed=7, speed=1.0, nfe_step=16))
    audio = decode_wav(base64.b64decode(out["audio_base64"]))
    assert audio.sample_rate == 24000 == out["sample_rate"]
    assert abs(audio.seconds - out["duration_seconds"]) < 0.01
    assert audio.seconds > 1.0  # 22 characters at 14/s
    assert max(abs(s) for s in audio.samples) > 0.1
    assert out["engine"] == "light" and "not speech" in out["engine_info"]["note"]
    assert set(out["timings"]) == {"load_seconds", "preprocess_seconds", "inference_seconds",
                                   "encode_seconds", "output_seconds"}
    assert "transcript" not in out and "asr" not in out  # ref_text given: no transcriber


def test_seed_is_deterministic_and_speed_shortens(worker):
    a = ok_output(worker, job(seed=3))["audio_base64"]
    b = ok_output(worker, job(seed=3))["audio_base64"]
    c = ok_output(worker, job(seed=4))["audio_base64"]
    assert a == b != c
    fast = ok_output(worker, job(seed=3, speed=2.0))
    assert fast["duration_seconds"] < decode_wav(base64.b64decode(a)).seconds * 0.6


def test_ref_audio_by_cache_path_url_and_data_url(worker, wav_server):
    ok_output(worker, job(ref_audio="voices/ref.wav"))
    ok_output(worker, job(ref_audio=str(worker.cache_root / "voices" / "ref.wav")))
    ok_output(worker, job(ref_audio=f"{wav_server}/ref.wav"))
    ok_output(worker, job(ref_audio="data:audio/wav;base64," + tone_b64(0.5)))


def test_output_to_s3_gives_a_working_presigned_url(worker, moto, s3_bucket):
    out = ok_output(worker, job(output="s3", seed=1))
    assert "audio_base64" not in out
    assert out["s3_uri"].startswith(f"s3://{s3_bucket}/outputs/")
    with urllib.request.urlopen(out["audio_url"], timeout=10) as resp:
        body = resp.read()
    assert len(body) == out["bytes"]
    assert decode_wav(body).seconds == pytest.approx(out["duration_seconds"], abs=0.01)
    key = out["s3_uri"].split("/", 3)[3]
    assert moto.client().head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == len(body)


BAD_INPUTS = [
    ({"text": None}, "text", "is required"),
    ({"text": "   "}, "text", "is required"),
    ({"text": 42}, "text", "is required"),
    ({"text": "x" * 201}, "text", "limit is 200"),
    ({"ref_text": ["a"]}, "ref_text", "must be a string"),
    ({"ref_text": "x" * 201}, "ref_text", "limit is 200"),
    ({"speed": "fast"}, "speed", "from 0.3 to 3.0"),
    ({"speed": 9}, "speed", "from 0.3 to 3.0"),
    ({"speed": True}, "speed", "from 0.3 to 3.0"),
    ({"nfe_step": 0}, "nfe_step", "from 1 to 64"),
    ({"nfe_step": 8.5}, "nfe_step", "whole number"),
    ({"seed": -1}, "seed", "from 0 to"),
    ({"seed": "7"}, "seed", "whole number"),
    ({"output": "ftp"}, "output", "base64, s3"),
    ({"voice": "bob"}, "input", "unknown field(s) 'voice'"),
    ({"ref_audio": None}, "ref_audio", "is required"),
    ({"ref_audio": "UklGR!!notbase64"}, "ref_audio", "not valid base64"),
    ({"ref_audio": "UklGRg=="}, "ref_audio", "not a WAV file"),
    ({"ref_audio": base64.b64encode(b"RIFF\0\0\0\0WAVEjunk").decode()}, "ref_audio",
     "no valid fmt chunk"),
    # One answer for missing, outside, symlinked out or not a WAV: no file-existence oracle.
    ({"ref_audio": "voices/missing.wav"}, "ref_audio", "no usable WAV at this cache path"),
    ({"ref_audio": "../../etc/hostname"}, "ref_audio", "no usable WAV at this cache path"),
    ({"ref_audio": "voices/escape.wav"}, "ref_audio", "no usable WAV at this cache path"),
    ({"ref_audio": "/etc/hostname"}, "ref_audio", "no usable WAV at this cache path"),
    ({"ref_audio": "models/light-tts/model.json"}, "ref_audio", "no usable WAV at this cache"),
    ({"ref_audio": tone_b64(6.0)}, "ref_audio", "limit is 5 s"),
    ({"ref_audio": tone_b64(0.2, rate=1_000_000)}, "ref_audio", "300000-byte limit"),
    # Hostile paths and other containers: clean per-field errors, never a traceback.
    ({"ref_audio": "voices/a\x00b.wav"}, "ref_audio", "no NUL"),
    ({"ref_audio": "voices/" + "a" * 3000 + ".wav"}, "ref_audio", "at most 1024 characters"),
    ({"ref_audio": base64.b64encode(b"fLaC" + bytes(400)).decode()}, "ref_audio",
     "base64 FLAC audio"),
    ({"ref_audio": base64.b64encode(b"RF64" + bytes(400)).decode()}, "ref_audio",
     "base64 RF64 (64-bit WAV) audio"),
    ({"ref_audio": "ftp://127.0.0.1/ref.wav"}, "ref_audio", "no usable WAV at this cache path"),
    # Memory: only standard rates, at most two channels, bounded output.
    ({"ref_audio": tone_b64(0.5, rate=47999)}, "ref_audio", "47999 Hz is not a standard rate"),
    ({"ref_audio": b64encode(wav_bytes(channels=3))}, "ref_audio", "3 channels"),
    ({"text": "x" * 150, "speed": 0.3}, "text", "the limit is 20 s"),
    ({"text": "surrogate \ud800"}, "text", "lone surrogate"),
]


@pytest.mark.parametrize("over,field,words", BAD_INPUTS,
                         ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_clear_per_field_error(worker, over, field, words):
    out = worker.runsync(job(**over))
    assert out["status"] == "FAILED", out
    assert out["error"].startswith("invalid input: ")
    assert f"{field}: " in out["error"] and words in out["error"], out["error"]
    assert "Traceback" not in out["error"] and "error_traceback" not in json.dumps(out)
    assert str(worker.cache_root) not in out["error"]


def test_bad_url_ref_audio_gets_the_one_url_error(worker, wav_server):
    errors = set()
    for path in ("/nope.wav", "/big.wav"):  # 404; 8 s, 384 kB > limit
        out = worker.runsync(job(ref_audio=f"{wav_server}{path}"))
        assert out["status"] == "FAILED" and "could not use this URL" in out["error"]
        errors.add(out["error"])
    assert len(errors) == 1, errors
    assert "HTTP 404" in worker.output() and "over 300000 bytes" in worker.output()  # the log


def test_missing_asr_model_fails_only_jobs_that_need_it(worker):
    """This worker's models/ has no transcriber: a job without ref_text gets the path and the
    fix (tests/handler/test_asr_api.py covers the transcriber itself)."""
    out = worker.runsync(job(ref_text=None))
    assert out["status"] == "FAILED"
    assert out["error"].startswith("ref_text is empty and the transcriber is unavailable")
    assert "models--openai--whisper-large-v3-turbo" in out["error"]
    assert "cache-sync push models" in out["error"] and "Traceback" not in out["error"]
    ok_output(worker, job(ref_text="Given."))


def test_all_errors_reported_at_once(worker):
    out = worker.runsync({"text": "", "speed": 0, "nfe_step": -1, "ref_audio": "UklGRg=="})
    for field in ("text", "speed", "nfe_step", "ref_audio"):
        assert f"{field}: " in out["error"]


def test_health_reports_engine_and_versions_but_no_internals(worker):
    h = ok_output(worker, {"health": True})
    assert h["ready"] is True and h["not_ready_reason"] is None
    assert h["loaded"]["model"] == "models/light-tts/model.json"  # relative to the cache root
    assert h["versions"]["runpod"].startswith("1.12")
    assert h["gpu"] is None and h["jobs_done"] >= 0 and h["url_ref_audio"] is True
    text = json.dumps(h)
    assert str(worker.cache_root) not in text and "cache_root" not in text
    assert "free_bytes" not in text and "s3://" not in text and "127.0.0.1" not in text


def test_missing_model_start_up_answers_every_job_with_the_fix(tmp_path):
    """The production engine, with nothing under models/: the worker does not crash-loop;
    it reports the first missing file (checked before torch is imported) and the fix."""
    root = tmp_path / "cache"
    root.mkdir()
    env = worker_env(root, tmp_path, {"HANDLER_ENGINE": "f5"})
    with api_worker(env, tmp_path / "worker.log") as w:
        out = w.runsync(job())
        assert out["status"] == "FAILED"
        want = "models/F5TTS_v1_Base/model_1250000.safetensors"  # relative: no worker paths
        assert want in out["error"] and "cache-sync push models" in out["error"]
        assert "HANDLER_F5_CKPT" in out["error"] and str(root) not in out["error"]
        h = w.runsync({"health": True})
        assert h["status"] == "COMPLETED"
        assert h["output"]["ready"] is False and want in h["output"]["not_ready_reason"]
        assert str(root) not in json.dumps(h)
        assert w.proc.poll() is None  # still up
        assert "NOT READY" in w.output() and str(root / want) in w.output()  # the log has it
