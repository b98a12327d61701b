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
    (b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0" + bytes(16) + b"data\0\0\0\0", "not a standard rate"),
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


# --- hostile jobs: decoders, address policy, guards ----------------------------------------

@pytest.fixture(params=["numpy", "stdlib"])
def decoder(request, monkeypatch):
    """Both WAV decoders: numpy's (beside f5-tts) and the bare image's standard library one."""
    from handler import audio

    if request.param == "stdlib":
        monkeypatch.setattr(audio, "_numpy", lambda: None)
    return request.param


def test_both_decoders_agree_on_every_encoding(decoder):
    frames24 = b"".join(v.to_bytes(3, "little", signed=True) for v in (4194304, -8388608, 1))
    assert list(decode_wav(_wav(1, 24, 1, frames24)).samples) == \
        pytest.approx([0.5, -1.0, 1 / 8388608])
    assert list(decode_wav(_wav(1, 8, 1, bytes([128, 192, 0]))).samples) == \
        pytest.approx([0, 0.5, -1.0])
    pcm16 = array("h", [16384, -32768, 0, 8192]).tobytes()
    stereo = decode_wav(_wav(1, 16, 2, pcm16))
    assert list(stereo.samples) == pytest.approx([-0.25, 0.125])
    pcm32 = array("i", [2**30, -2**31]).tobytes()
    assert list(decode_wav(_wav(1, 32, 1, pcm32)).samples) == pytest.approx([0.5, -1.0])
    assert decode_wav(encode_wav([0.25] * 10)).samples[3] == pytest.approx(0.25, abs=1e-4)


@pytest.mark.parametrize("rate,channels,words", [
    (47999, 1, "47999 Hz is not a standard rate"),
    (1000, 1, "not a standard rate"),
    (16000, 3, "3 channels"),
    (16000, 32767, "32767 channels"),
])
def test_only_standard_rates_and_mono_or_stereo(rate, channels, words):
    with pytest.raises(AudioError, match=words):
        decode_wav(_wav(1, 16, channels, bytes(2 * channels * 4), rate=rate))


def test_length_is_checked_from_the_header_before_decoding(decoder):
    data = _wav(1, 24, 2, bytes(6 * 48000 * 31), rate=48000)  # 31 s of 24-bit stereo
    with pytest.raises(AudioError, match="31.0 s long, the limit is 30 s"):
        decode_wav(data, max_seconds=30)


def _audio_lines_run(fn) -> int:
    """Lines of handler/audio.py executed while ``fn()`` runs: a cost that does not depend on
    the machine (a Python loop per sample or per chunk shows up as millions)."""
    import sys

    import handler.audio as audio_mod

    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename == audio_mod.__file__:
            if event == "line":
                count += 1
            return tracer
        return None

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_a_long_24bit_stereo_clip_decodes_without_a_python_loop_per_sample(decoder):
    """Decoding cost must not grow with Python steps per sample (the per-sample loop took
    ~2 s for 30 s mono). Counted, not timed: the lines of handler/audio.py executed for 1 s
    and for 30 s of 48 kHz 24-bit stereo are nearly the same."""
    def lines_run(seconds: int) -> int:
        data = _wav(1, 24, 2, bytes(range(252)) * (6 * 48000 * seconds // 252), rate=48000)
        seen: list[float] = []
        count = _audio_lines_run(lambda: seen.append(decode_wav(data).seconds))
        assert seen[0] == pytest.approx(seconds, abs=0.01)
        return count

    short, long = lines_run(1), lines_run(30)
    assert long < short * 2 + 200, (short, long)  # per sample: 30 x 96,000 more


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("2002:7f00:1::", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("fd00::1", "private"), ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("100.64.0.1", "not globally routable"), ("64:ff9b::7f00:1", "reserved"),
    ("8.8.8.8", None), ("2001:4860:4860::8888", None),
])
def test_address_policy(address, reason):
    import ipaddress

    from handler.netfetch import blocked_reason

    got = blocked_reason(ipaddress.ip_address(address))
    assert (got is None) if reason is None else (got is not None and reason in got), got


def test_allowlist_parses_hosts_and_networks_and_names_a_bad_entry():
    import ipaddress

    cfg = HandlerConfig.from_env({"CACHE_SYNC_ROOT": "/tmp/x", "HANDLER_URL_ALLOWLIST":
                                  " Audio.Internal. , 10.20.0.0/16,127.0.0.2,[::1]"})
    assert cfg.url_allow_hosts == frozenset({"audio.internal"})
    assert ipaddress.ip_address("10.20.3.4") in cfg.url_allow_nets[0]
    policy = cfg.url_policy()
    assert policy.allows("x", ipaddress.ip_address("::1"))
    assert not policy.allows("x", ipaddress.ip_address("127.0.0.1"))
    assert cfg.allow_url_ref_audio is False  # URL fetching is off by default
    with pytest.raises(HandlerConfigError, match="HANDLER_URL_ALLOWLIST: 'bad host!'"):
        HandlerConfig.from_env({"HANDLER_URL_ALLOWLIST": "ok.example, bad host!"})


def test_last_guard_turns_any_exception_into_a_generic_json_safe_reply(tmp_path, monkeypatch):
    import json

    from handler import worker as worker_mod
    from handler.validate import InputError

    (tmp_path / "models" / "light-tts").mkdir(parents=True)
    (tmp_path / "models" / "light-tts" / "model.json").write_text("{}")
    w = Worker(HandlerConfig.from_env({"CACHE_SYNC_ROOT": str(tmp_path),
                                       "HANDLER_ENGINE": "light"}))
    assert w.warm_load()

    def explode(raw, config):
        raise OSError(f"disk error under {tmp_path}")

    monkeypatch.setattr(worker_mod, "validate", explode)
    out = asyncio.run(w.handle({"id": "j-1", "input": {}}))
    assert out == {"error": "internal error in job j-1; the worker's log has the details"}

    def surrogate(raw, config):
        raise InputError({"input": "bad \ud800 name"})

    monkeypatch.setattr(worker_mod, "validate", surrogate)
    out = asyncio.run(w.handle({"id": "j-\udc80", "input": {}}))
    json.dumps(out, ensure_ascii=False).encode("utf-8")  # what runpod does: must not raise
    assert "\\ud800" in out["error"] and "\\ud800" in out["fields"]["input"]


def test_health_names_an_asr_model_directory_relative_to_the_cache(tmp_path):
    (tmp_path / "models" / "light-tts").mkdir(parents=True)
    (tmp_path / "models" / "light-tts" / "model.json").write_text("{}")
    w = Worker(HandlerConfig.from_env({
        "CACHE_SYNC_ROOT": str(tmp_path), "HANDLER_ENGINE": "light",
        "HANDLER_ASR_MODEL": str(tmp_path / "models" / "whisper-tiny")}))
    assert w.warm_load()
    health = asyncio.run(w.handle({"id": "h", "input": {"health": True}}))
    assert health["asr"]["model"] == "models/whisper-tiny"
    assert str(tmp_path) not in repr(health)


def test_a_wav_of_countless_tiny_chunks_is_refused_quickly():
    """Refused after a bounded number of chunks, not after walking a million (counted in
    lines executed, not timed)."""
    junk = (b"junk" + struct.pack("<I", 0)) * 1_000_000  # 8 MB of empty chunks
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + junk + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + bytes(4)

    def refuse() -> None:
        with pytest.raises(AudioError, match="more than 64 chunks"):
            decode_wav(b"RIFF" + struct.pack("<I", len(body)) + body)

    assert _audio_lines_run(refuse) < 5_000  # 64 chunks' worth; a walk of all: millions
