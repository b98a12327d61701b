"""Job input validation: every field checked, every problem reported at once, per field.

The result of a bad job is RunPod's ``{"error": "..."}`` with one line such as
``invalid input: speed: must be a number from 0.3 to 3.0 (got 'fast'); text: is required``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.audio import Audio, AudioError, b64decode, decode_wav
from handler.config import HandlerConfig

FIELDS = ("text", "ref_audio", "ref_text", "speed", "nfe_step", "seed", "output")
OUTPUTS = ("base64", "s3")
SPEED_RANGE = (0.3, 3.0)
MAX_SEED = 2**31 - 1


class InputError(ValueError):
    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__("invalid input: " + "; ".join(f"{k}: {v}" for k, v in fields.items()))


@dataclass
class JobInput:
    text: str
    ref_audio: Audio
    ref_text: str  # "" when absent or blank: transcribe the reference
    speed: float
    nfe_step: int
    seed: int | None
    output: str


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate(raw: Any, config: HandlerConfig) -> JobInput:
    """Check a job's ``input``; raise InputError naming every bad field."""
    if not isinstance(raw, dict):
        raise InputError({"input": f"must be a JSON object (got {type(raw).__name__})"})
    errors: dict[str, str] = {}
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        errors["input"] = f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(FIELDS)})"

    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        errors["text"] = "is required: a non-empty string"
    elif len(text) > config.max_text_chars:
        errors["text"] = f"is {len(text)} characters, the limit is {config.max_text_chars}"

    ref_text = raw.get("ref_text")
    if ref_text is None:
        ref_text = ""  # absent or empty: the worker transcribes the reference (handler.asr)
    if not isinstance(ref_text, str):
        errors["ref_text"] = f"must be a string (got {type(ref_text).__name__})"
    elif len(ref_text) > config.max_text_chars:
        errors["ref_text"] = f"is {len(ref_text)} characters, the limit is {config.max_text_chars}"

    speed = raw.get("speed", 1.0)
    lo, hi = SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not lo <= speed <= hi:
        errors["speed"] = f"must be a number from {lo} to {hi} (got {_short(speed)})"

    nfe = raw.get("nfe_step", 32)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= config.max_nfe_step:
        errors["nfe_step"] = f"must be a whole number from 1 to {config.max_nfe_step} " \
                             f"(got {_short(nfe)})"

    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed <= MAX_SEED):
        errors["seed"] = f"must be a whole number from 0 to {MAX_SEED} (got {_short(seed)})"

    output = raw.get("output", "base64")
    if output not in OUTPUTS:
        errors["output"] = f"must be one of {', '.join(OUTPUTS)} (got {_short(output)})"
    elif output == "s3" and not config.output_url:
        errors["output"] = ("'s3' needs a bucket: set HANDLER_OUTPUT_URL=s3://bucket/prefix "
                            "or an s3:// CACHE_SYNC_REMOTE on the endpoint")

    audio = None
    ref = raw.get("ref_audio")
    if not isinstance(ref, str) or not ref:
        errors["ref_audio"] = "is required: base64 WAV, an http(s) URL, or a path under the cache"
    else:
        try:
            audio = load_ref_audio(ref, config)
        except InputError as err:
            errors.update(err.fields)

    if errors:
        raise InputError(errors)
    assert audio is not None and isinstance(text, str) and isinstance(ref_text, str)
    return JobInput(text, audio, ref_text if ref_text.strip() else "", float(speed), int(nfe),
                    None if seed is None else int(seed), str(output))


def load_ref_audio(ref: str, config: HandlerConfig) -> Audio:
    """Resolve ``ref_audio`` (base64 / URL / cache path) to decoded audio, within limits."""
    limit = config.max_ref_audio_bytes
    if ref.startswith(("UklGR", "data:")):  # "RIFF" in base64, or a data: URL
        if len(ref) * 3 // 4 > limit + 3:
            raise InputError({"ref_audio": f"is over the {limit}-byte limit"})
        try:
            data = b64decode(ref)
        except AudioError as err:
            raise InputError({"ref_audio": str(err)}) from None
    elif ref.startswith(("http://", "https://")):
        data = _fetch(ref, config)
    else:
        data = _read_cache_path(ref, config)
    if len(data) > limit:
        raise InputError({"ref_audio": f"is {len(data)} bytes, over the {limit}-byte limit"})
    try:
        audio = decode_wav(data)
    except AudioError as err:
        raise InputError({"ref_audio": str(err)}) from None
    if audio.seconds <= 0.0:
        raise InputError({"ref_audio": "has no samples"})
    if audio.seconds > config.max_ref_seconds:
        raise InputError({"ref_audio": f"is {audio.seconds:.1f} s long, the limit is "
                                       f"{config.max_ref_seconds:g} s"})
    return audio


def _fetch(url: str, config: HandlerConfig) -> bytes:
    if not config.allow_url_ref_audio:
        raise InputError({"ref_audio": "URLs are disabled (HANDLER_ALLOW_URL_REF_AUDIO=false)"})
    limit = config.max_ref_audio_bytes
    try:
        with urllib.request.urlopen(url, timeout=config.url_timeout) as resp:
            data = resp.read(limit + 1)  # never read an unbounded body
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise InputError({"ref_audio": f"could not fetch {url}: {err}"}) from None
    if len(data) > limit:
        raise InputError({"ref_audio": f"{url} is over the {limit}-byte limit"})
    return data


def _read_cache_path(ref: str, config: HandlerConfig) -> bytes:
    root = config.cache_root.resolve()
    path = Path(ref) if os.path.isabs(ref) else root / ref
    real = path.resolve()
    # Refuse anything outside the cache, including via `..` or a symlink.
    if real != root and root not in real.parents:
        raise InputError({"ref_audio": f"path {ref!r} is outside the cache root {root}; "
                                       "give base64 WAV, a URL, or a path under the cache"})
    if not real.is_file():
        raise InputError({"ref_audio": f"no file at {real} (neither base64 WAV, which starts "
                                       "'UklGR', nor a URL, nor an existing cache path)"})
    size = real.stat().st_size
    if size > config.max_ref_audio_bytes:
        raise InputError({"ref_audio": f"{real} is {size} bytes, over the "
                                       f"{config.max_ref_audio_bytes}-byte limit"})
    return real.read_bytes()
