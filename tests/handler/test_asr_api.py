"""Transcription and reference preprocessing through runpod's local API server (light engine,
whose fake transcriber has the real one's lifecycle: loaded from models/ on demand, freed
after use or after HANDLER_ASR_KEEP_SECONDS of idle)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from handler.audio import b64encode, decode_wav, encode_wav
from tests.support.worker_helpers import api_worker, tone_b64, worker_env, write_light_model

pytestmark = pytest.mark.timeout(120)

SHA = "0123456789abcdef0123456789abcdef01234567"


def write_fake_asr(root, **params):
    """A 'model' in the HF cache layout where cache-sync puts HF models (models/huggingface)."""
    repo = root / "models" / "huggingface" / "hub" / "models--openai--whisper-large-v3-turbo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"transcript": "heard", **params}))


def start(tmp_path, asr=True, **env):
    root = tmp_path / "cache"
    write_light_model(root)
    if asr:
        write_fake_asr(root, load_seconds=0.2)
    return api_worker(worker_env(root, tmp_path, {"HANDLER_ENGINE": "light", **env}),
                      tmp_path / "worker.log")


def ok(w, inp):
    out = w.runsync(inp)
    assert out["status"] == "COMPLETED", (out, w.output()[-3000:])
    return out["output"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with start(tmp_path_factory.mktemp("asr")) as w:
        yield w


def test_no_ref_text_is_transcribed_and_the_model_freed(worker):
    w = worker
    loads = ok(w, {"health": True})["asr"]["loads"]
    for ref_text in (None, "", "   "):
        inp = {"text": "Hello there.", "ref_audio": tone_b64(1.5), "seed": 1}
        if ref_text is not None:
            inp["ref_text"] = ref_text
        out = ok(w, inp)
        assert out["transcript"] == "heard 1.55 seconds."  # of the trimmed clip + 50 ms
        assert out["timings"]["asr_load_seconds"] >= 0.2  # loaded for this job...
        assert out["timings"]["asr_seconds"] >= 0
        assert out["asr"]["resident"] is False and out["asr"]["model_collected"] is True
        assert decode_wav(base64.b64decode(out["audio_base64"])).seconds > 0.5
    health = ok(w, {"health": True})
    assert health["asr"]["loads"] == loads + 3 and health["asr"]["resident"] is False
    # A job with ref_text never touches the transcriber.
    out = ok(w, {"text": "Hi.", "ref_audio": tone_b64(1.0), "ref_text": "Given."})
    assert "transcript" not in out
    assert ok(w, {"health": True})["asr"]["loads"] == loads + 3


def test_keep_alive_loads_once_for_a_burst_then_frees(tmp_path):
    with start(tmp_path, HANDLER_ASR_KEEP_SECONDS="1.5") as w:
        first = ok(w, {"text": "One.", "ref_audio": tone_b64(1.0)})
        second = ok(w, {"text": "Two.", "ref_audio": tone_b64(1.0)})
        assert first["timings"]["asr_load_seconds"] >= 0.2
        assert second["timings"]["asr_load_seconds"] is None  # still resident
        assert ok(w, {"health": True})["asr"]["resident"] is True
        import time

        deadline = time.monotonic() + 15
        while ok(w, {"health": True})["asr"]["resident"] and time.monotonic() < deadline:
            time.sleep(0.2)
        h = ok(w, {"health": True})["asr"]
        assert h["resident"] is False and h["model_collected"] is True and h["loads"] == 1


def _speechy_25s(rate=24000):
    rng = np.random.default_rng(3)
    parts = [0.0005 * rng.standard_normal(int(0.5 * rate))]
    for _ in range(6):
        n = int(2.7 * rate)
        parts.append(0.3 * np.sin(2 * np.pi * 180 * np.arange(n) / rate))
        parts.append(0.0005 * rng.standard_normal(int(1.3 * rate)))
    x = np.concatenate(parts).astype(np.float32)
    return b64encode(encode_wav(x.tolist(), rate))


def test_25s_reference_is_clipped_and_chunked_like_upstream(worker):
    ref = _speechy_25s()
    text = " ".join(f"This is sentence number {i}, spoken at an even pace." for i in range(12))
    w = worker
    out = ok(w, {"text": text, "ref_audio": ref, "seed": 5,
                 "ref_text": "One two three four five six seven eight nine ten eleven "
                             "twelve thirteen fourteen fifteen sixteen"})
    r = out["reference"]
    assert r["input_seconds"] == pytest.approx(24.5, abs=0.01)
    assert r["clipped"] == "long-silence" and r["seconds"] == pytest.approx(10.75, abs=0.02)
    assert 80 < r["chunk_chars"] < 200
    assert 3 <= out["engine_info"]["chunks"] <= 8
    # Transcribed, the same clip is what the transcriber hears (after clipping).
    heard = ok(w, {"text": "Short.", "ref_audio": ref})["transcript"]
    assert heard == f"heard {r['seconds']:.2f} seconds."
    silent = b64encode(encode_wav([0.0] * 24000, 24000))
    out = w.runsync({"text": "Hi.", "ref_audio": silent, "ref_text": "x"})
    assert out["status"] == "FAILED"
    assert out["error"].startswith("invalid input: ref_audio: the reference is silent")
