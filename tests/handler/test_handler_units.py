"""In-process checks of the pieces the API tests cannot reach cheaply: WAV encodings,
configuration defaults and errors, upload retries, and the worker's not-ready paths."""

from __future__ import annotations

import asyncio
import struct
from array import array
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from handler import outputs
from handler.audio import AudioError, decode_wav, encode_wav
from handler.config import HandlerConfig, HandlerConfigError
from handler.worker import Worker


def _wav(tag: int, bits: int, channels: int, frames: bytes, rate: int = 16000,
         extensible: bool = False) -> bytes:
    fmt_tag = 0xFFFE if extensible else tag
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * channels * bits // 8,
                      channels * bits // 8, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + bytes(14)
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\0"  # odd-sized chunk before data: padded
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + \
        b"data" + struct.pack("<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_wav_roundtrip_16bit():
    samples = [0.0, 0.5, -0.5, 0.999, -1.0]
    audio = decode_wav(encode_wav(samples, 24000))
    assert audio.sample_rate == 24000
    assert list(audio.samples) == pytest.approx(samples, abs=1e-4)


@pytest.mark.parametrize("extensible", [False, True])
def test_float32_stereo_is_mixed_down(extensible):
    frames = array("f", [0.5, 0.1, -0.25, -0.75]).tobytes()  # two stereo frames
    audio = decode_wav(_wav(3, 32, 2, frames, extensible=extensible))
    assert audio.sample_rate == 16000
    assert list(audio.samples) == pytest.approx([0.3, -0.5])


def test_24bit_and_8bit_pcm():
    frames24 = (4194304).to_bytes(3, "little", signed=True) + (-8388608).to_bytes(
        3, "little", signed=True)
    assert list(decode_wav(_wav(1, 24, 1, frames24)).samples) == pytest.approx([0.5, -1.0])
    assert list(decode_wav(_wav(1, 8, 1, bytes([128, 192]))).samples) == pytest.approx([0, 0.5])


@pytest.mark.parametrize("data,words", [
    (b"OggS" + bytes(40), "no RIFF/WAVE header"),
    (_wav(2, 4, 1, bytes(8)), "unsupported WAV encoding"),
    (b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0" + bytes(16) + b"data\0\0\0\0", "implausible"),
    (b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0" + bytes(16), "no data chunk"),
])
def test_bad_wavs_are_named(data, words):
    with pytest.raises(AudioError, match=words):
        decode_wav(data)


def test_config_defaults_follow_the_cache_root(tmp_path):
    volume = tmp_path / "runpod-volume"
    volume.mkdir()
    cfg = HandlerConfig.from_env({"CACHE_SYNC_RUNPOD_VOLUME": str(volume),
                                  "CACHE_SYNC_REMOTE": "s3://my-bucket/cache"})
    assert cfg.cache_root == volume / "cache"  # network volume mounted: cache lives there
    assert cfg.f5_ckpt == volume / "cache/models/F5TTS_v1_Base/model_1250000.safetensors"
    assert cfg.vocos_dir == volume / "cache/models/vocos-mel-24khz"
    assert cfg.output_url == "s3://my-bucket/outputs" and cfg.concurrency == 1
    cfg = HandlerConfig.from_env({"CACHE_SYNC_RUNPOD_VOLUME": str(tmp_path / "none")})
    assert str(cfg.cache_root) == "/tmp/runpod-cache" and cfg.output_url is None


@pytest.mark.parametrize("env,words", [
    ({"HANDLER_ENGINE": "tacotron"}, "HANDLER_ENGINE='tacotron' is unknown"),
    ({"HANDLER_CONCURRENCY": "two"}, "HANDLER_CONCURRENCY='two' is not a whole number"),
    ({"HANDLER_CONCURRENCY": "0"}, "below the minimum 1"),
    ({"HANDLER_OUTPUT_URL": "https://x"}, "not an s3://bucket/prefix URL"),
    ({"HANDLER_ALLOW_URL_REF_AUDIO": "maybe"}, "not a boolean"),
])
def test_config_errors_name_the_variable(env, words):
    with pytest.raises(HandlerConfigError, match=words.replace("(", r"\(")):
        HandlerConfig.from_env(env)


def test_configuration_error_is_answered_per_job_not_a_crash():
    w = Worker(None, startup_error="configuration error: HANDLER_ENGINE='x' is unknown")
    assert w.warm_load() is False
    out = asyncio.run(w.handle({"id": "1", "input": {"text": "hi"}}))
    assert out["error"].startswith("worker not ready: configuration error")
    health = asyncio.run(w.handle({"id": "2", "input": {"health": True}}))
    assert health["ready"] is False and "HANDLER_ENGINE" in health["not_ready_reason"]


def test_engine_import_failure_is_a_clear_not_ready(tmp_path, monkeypatch):
    """The f5 engine's files present but torch not importable (the default test env)."""
    models = tmp_path / "models"
    for rel in ("F5TTS_v1_Base/model_1250000.safetensors", "F5TTS_v1_Base/vocab.txt",
                "vocos-mel-24khz/config.yaml", "vocos-mel-24khz/pytorch_model.bin"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"x")
    import importlib.util
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is importable here")
    w = Worker(HandlerConfig.from_env({"CACHE_SYNC_ROOT": str(tmp_path)}))
    assert w.warm_load() is False
    assert "cannot import torch" in w.load_error and "cache-sync install" in w.load_error


class _FlakyClient:
    def __init__(self, failures: list[int]) -> None:
        self.failures = failures
        self.puts = 0

    def put_object(self, **kw):
        self.puts += 1
        if self.failures:
            status = self.failures.pop(0)
            raise ClientError({"Error": {"Code": "SlowDown" if status == 503 else "AccessDenied"},
                               "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    def generate_presigned_url(self, op, Params, ExpiresIn):
        return f"https://example.invalid/{Params['Key']}?expires={ExpiresIn}"


def _writer(client) -> outputs.OutputWriter:
    cfg = HandlerConfig.from_env({"CACHE_SYNC_ROOT": "/tmp/x", "HANDLER_OUTPUT_URL": "s3://b/o"})
    writer = outputs.OutputWriter(cfg)
    writer._client = client
    return writer


def test_upload_retries_throttling_then_succeeds():
    client = _FlakyClient([503, 503])
    out = _writer(client).deliver(b"RIFF", "s3", "job/../1")
    assert client.puts == 3
    assert out["s3_uri"].startswith("s3://b/o/") and out["s3_uri"].endswith("/job_.._1.wav")


def test_upload_does_not_retry_access_denied():
    client = _FlakyClient([403])
    with pytest.raises(ClientError):
        _writer(client).deliver(b"RIFF", "s3", "j")
    assert client.puts == 1


def test_light_engine_missing_model_names_file_and_fix(tmp_path: Path):
    w = Worker(HandlerConfig.from_env({"CACHE_SYNC_ROOT": str(tmp_path),
                                       "HANDLER_ENGINE": "light"}))
    assert w.warm_load() is False
    assert str(tmp_path / "models/light-tts/model.json") in w.load_error
    assert "cache-sync push models" in w.load_error and "HANDLER_LIGHT_MODEL" in w.load_error
