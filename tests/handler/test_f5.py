"""Real F5-TTS tier (marker ``f5``): a tiny randomly initialised F5-TTS (DiT dim 64, depth 2)
and a tiny Vocos, built and saved by the test, published to the store as the ``models/``
area, pulled by a fresh worker and loaded through the production engine code, answering a
job through runpod's own server with a real WAV.

The heavy stack is not installed in the test interpreter. Either make torch, f5_tts and vocos
importable, or point ``HANDLER_F5_SITE`` at a directory that holds them (a
``pip install --target`` dir, or a venv's site-packages built for the same Python): the worker
then runs with it on PYTHONPATH, exactly as a deployed worker runs with the cache's
``packages/`` area. See docs/handler.md ("The real F5-TTS test tier") for the install recipe.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handler.audio import decode_wav
from tests.support.worker_helpers import REPO, api_worker, tone_b64, worker_env

pytestmark = [pytest.mark.f5, pytest.mark.timeout(900)]

SITE = os.environ.get("HANDLER_F5_SITE", "")
HEAVY = ("torch", "f5_tts", "vocos")


def _stack_available() -> bool:
    if SITE:
        return all((Path(SITE) / m).is_dir() for m in HEAVY)
    return all(importlib.util.find_spec(m) is not None for m in HEAVY)


if not _stack_available():
    pytest.skip("F5 tier: torch/f5_tts/vocos not importable and HANDLER_F5_SITE not set "
                "(see docs/handler.md, 'The real F5-TTS test tier')", allow_module_level=True)

HAS_SYNC = (REPO / "cache_sync" / "pull.py").exists()


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(REPO), SITE]))


def test_tiny_f5_from_a_pulled_cache_answers_through_runpod(tmp_path):
    dev = tmp_path / "devbox"
    base_env = {**os.environ, "PYTHONPATH": _pythonpath(), "HF_HUB_OFFLINE": "1"}
    built = subprocess.run([sys.executable, str(REPO / "tests/support/f5_tiny.py"),
                            str(dev / "models")], env=base_env, capture_output=True,
                           text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    rel = json.loads(built.stdout.strip().splitlines()[-1])

    root = tmp_path / "worker-cache"
    if HAS_SYNC:  # the production path: dev box pushes models/, a fresh worker pulls it
        remote = f"file://{tmp_path / 'store'}"
        for cache, verb in ((dev, "push"), (root, "pull")):
            env = {**worker_env(cache, tmp_path), "CACHE_SYNC_REMOTE": remote}
            done = subprocess.run([sys.executable, "-m", "cache_sync", verb, "models"],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr
    else:  # engine not merged yet: load straight from the dev box's cache
        root = dev
    models = root / "models"
    env = worker_env(root, tmp_path, {
        "HANDLER_ENGINE": "f5", "HANDLER_DEVICE": "cpu",
        **{k: str(models / v) for k, v in rel.items()},
    })
    env["PYTHONPATH"] = _pythonpath()
    with api_worker(env, tmp_path / "worker.log") as w:
        startup = w.ready_seconds
        health = w.runsync({"health": True})["output"]
        assert health["ready"], (health, w.output()[-3000:])
        assert health["loaded"]["checkpoint"] == str(models / rel["HANDLER_F5_CKPT"])
        assert health["loaded"]["parameters"] < 1_000_000 and health["versions"]["f5-tts"]

        job = {"text": "Hello from a tiny model.", "ref_audio": tone_b64(1.5),
               "ref_text": "A short reference.", "nfe_step": 4, "seed": 11}
        latencies, outs = [], []
        for _ in range(3):
            t0 = time.monotonic()
            res = w.runsync(job, timeout=300)
            latencies.append(time.monotonic() - t0)
            assert res["status"] == "COMPLETED", (res, w.output()[-3000:])
            outs.append(res["output"])
        audio = decode_wav(base64.b64decode(outs[0]["audio_base64"]))
        assert audio.sample_rate == 24000 and audio.seconds > 0.5
        assert max(abs(s) for s in audio.samples) > 0.0
        assert outs[0]["audio_base64"] == outs[1]["audio_base64"]  # same seed, same audio
        bad = w.runsync({**job, "nfe_step": 0})
        assert bad["status"] == "FAILED" and "nfe_step" in bad["error"]
    # No copy of any model file was made anywhere under the worker's cache.
    sizes = sorted(p.stat().st_size for p in root.rglob("*.safetensors"))
    assert len(sizes) == 1
    print(f"\nF5 tier: start-up to listening {startup:.1f}s (load {health['load_seconds']}s), "
          f"job latency {', '.join(f'{x:.2f}s' for x in latencies)}, "
          f"audio {audio.seconds:.2f}s, via {'store push/pull' if HAS_SYNC else 'dev cache'}")
