"""The on-demand transcriber's lifecycle (handler/asr.py) and where it finds its model."""

from __future__ import annotations

import threading
import time

import pytest

from handler.asr import AsrModelMissingError, Transcriber, resolve_model_dir
from handler.config import HandlerConfig


class Model:  # stands in for a torch module: something a weak reference can watch
    pass


class Backend:
    device = "cpu"

    def __init__(self, log, delay=0.0):
        self.model = Model()
        self.delay = delay
        log.append("load")

    def model_object(self):
        return self.model

    def __call__(self, samples, rate):
        time.sleep(self.delay)
        return f"{len(samples)} at {rate}"


def make(keep=0.0, delay=0.0):
    log: list[str] = []
    return Transcriber(lambda: Backend(log, delay), keep, "fake/asr"), log


def test_loaded_on_demand_and_freed_after_use():
    t, log = make()
    assert not t.resident and t.model_collected() is None and log == []
    got = t.transcribe([0.0] * 10, 16000)
    assert got.text == "10 at 16000" and got.load_seconds is not None
    assert not t.resident and t.model_collected() is True  # no reference left anywhere
    t.transcribe([0.0], 16000)
    assert log == ["load", "load"] and t.loads == 2
    assert t.status()["model_collected"] is True and t.status()["resident"] is False


def test_keep_alive_reuses_then_frees_after_idle():
    t, log = make(keep=0.3)
    first = t.transcribe([0.0], 16000)
    second = t.transcribe([0.0], 16000)
    assert first.load_seconds is not None and second.load_seconds is None
    assert log == ["load"] and t.resident
    deadline = time.monotonic() + 5
    while t.resident and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not t.resident and t.model_collected() is True


def test_concurrent_jobs_share_one_load_and_free_after_the_last():
    t, log = make(delay=0.2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(t.transcribe([0.0], 8000)))
               for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(results) == 3 and not t.resident
    # Overlapping users share a load; each later, non-overlapping use loads again.
    assert 1 <= t.loads <= 3 and log.count("load") == t.loads
    assert sum(r.load_seconds is not None for r in results) == t.loads


def test_a_failing_transcription_still_frees():
    class Boom(Backend):
        def __call__(self, samples, rate):
            raise RuntimeError("boom")

    t = Transcriber(lambda: Boom([]), 0.0, "x")
    with pytest.raises(RuntimeError):
        t.transcribe([0.0], 16000)
    assert not t.resident and t.model_collected() is True


def _config(tmp_path, **env):
    return HandlerConfig.from_env({"CACHE_SYNC_ROOT": str(tmp_path), **env})


def test_model_found_in_the_hf_cache_layout_under_models(tmp_path):
    c = _config(tmp_path)
    assert c.asr_model == "openai/whisper-large-v3-turbo" and c.asr_revision == "main"
    repo = tmp_path / "models" / "huggingface" / "hub" / "models--openai--whisper-large-v3-turbo"
    with pytest.raises(AsrModelMissingError) as err:
        resolve_model_dir(c)
    assert str(repo / "refs" / "main") in str(err.value) and "cache-sync push models" in str(err.value)
    sha = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha + "\n")
    with pytest.raises(AsrModelMissingError, match="config.json"):
        resolve_model_dir(c)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    assert resolve_model_dir(c) == repo / "snapshots" / sha
    # A commit revision skips refs/; a path is taken as it is; HF_HUB_CACHE moves the hub.
    assert resolve_model_dir(_config(tmp_path, HANDLER_ASR_REVISION=sha)) == repo / "snapshots" / sha
    local = tmp_path / "mine"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert resolve_model_dir(_config(tmp_path, HANDLER_ASR_MODEL=str(local))) == local
    other = _config(tmp_path, HF_HUB_CACHE=str(tmp_path / "elsewhere"))
    with pytest.raises(AsrModelMissingError, match="elsewhere"):
        resolve_model_dir(other)


def test_keep_seconds_setting_is_checked(tmp_path):
    from handler.config import HandlerConfigError

    assert _config(tmp_path, HANDLER_ASR_KEEP_SECONDS="30").asr_keep_seconds == 30.0
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(HandlerConfigError, match="HANDLER_ASR_KEEP_SECONDS"):
            _config(tmp_path, HANDLER_ASR_KEEP_SECONDS=bad)


def test_warm_load_freezes_the_heap_so_freeing_is_cheap(tmp_path):
    """After the warm load, gc.collect() (run when the transcriber is freed) no longer walks
    the warm heap: it is frozen (worker.freeze_warm_heap)."""
    import gc

    from handler.worker import Worker

    (tmp_path / "models" / "light-tts").mkdir(parents=True)
    (tmp_path / "models" / "light-tts" / "model.json").write_text("{}")
    w = Worker(HandlerConfig.from_env({"CACHE_SYNC_ROOT": str(tmp_path),
                                       "HANDLER_ENGINE": "light"}))
    gc.unfreeze()
    try:
        assert w.warm_load()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
