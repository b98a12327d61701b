"""Job input validation: every field checked, every problem reported at once, per field.

The result of a bad job is RunPod's ``{"error": "..."}`` with one line such as
``invalid input: speed: must be a number from 0.3 to 3.0 (got 'fast'); text: is required``.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.audio import Audio, AudioError, b64decode, decode_wav
from handler.config import HandlerConfig
from handler.engine import MAX_SEED
from handler.jsonsafe import echo
from handler.logs import log
from handler.netfetch import FetchError, fetch

FIELDS = ("text", "ref_audio", "ref_text", "speed", "nfe_step", "seed", "output")
OUTPUTS = ("base64", "s3")
SPEED_RANGE = (0.3, 3.0)


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
    return echo(value, 40)


def check_output_length(text: str, ref_text: str, ref_seconds: float, speed: float,
                        config: HandlerConfig) -> None:
    """Refuse a job whose speech would be over ``HANDLER_MAX_OUTPUT_SECONDS``, estimated by
    F5-TTS's own rule (``utils_infer.infer_batch_process``: the prepared reference's seconds
    per UTF-8 byte of its text, times the text's bytes, divided by speed), before inference."""
    ref_bytes = len(ref_text.encode("utf-8", "surrogatepass")) or 1
    seconds = ref_seconds / ref_bytes * len(text.encode("utf-8", "surrogatepass")) / speed
    if seconds > config.max_output_seconds:
        raise InputError({"text": f"would make about {seconds:.0f} s of speech at speed "
                                  f"{speed:g}, the limit is {config.max_output_seconds:g} s: "
                                  "shorten the text or raise the speed"})


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate(raw: Any, config: HandlerConfig) -> JobInput:
    """Check a job's ``input``; raise InputError naming every bad field."""
    if not isinstance(raw, dict):
        raise InputError({"input": f"must be a JSON object (got {type(raw).__name__})"})
    errors: dict[str, str] = {}
    unknown = sorted(str(k) for k in set(raw) - set(FIELDS))
    if unknown:
        names = ", ".join(echo(k, 30) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        errors["input"] = f"unknown field(s) {names} (allowed: {', '.join(FIELDS)})"

    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        errors["text"] = "is required: a non-empty string"
    elif len(text) > config.max_text_chars:
        errors["text"] = f"is {len(text)} characters, the limit is {config.max_text_chars}"
    elif not _is_utf8(text):
        errors["text"] = "has a character UTF-8 cannot carry (a lone surrogate such as \\ud800)"

    ref_text = raw.get("ref_text")
    if ref_text is None:
        ref_text = ""  # absent or empty: the worker transcribes the reference (handler.asr)
    if not isinstance(ref_text, str):
        errors["ref_text"] = f"must be a string (got {type(ref_text).__name__})"
    elif len(ref_text) > config.max_text_chars:
        errors["ref_text"] = f"is {len(ref_text)} characters, the limit is {config.max_text_chars}"
    elif not _is_utf8(ref_text):
        errors["ref_text"] = "has a character UTF-8 cannot carry (a lone surrogate such as " \
                             "\\ud800)"

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
    if ref.startswith(("UklGR", "data:")):  # "RIFF" in base64, or a data: URL
        return _decode(_from_base64(ref, config), config)
    if ref.startswith(("http://", "https://")):
        return _from_url(ref, config)
    return _from_cache_path(ref, config)


def _decode(data: bytes, config: HandlerConfig) -> Audio:
    if len(data) > config.max_ref_audio_bytes:
        raise InputError({"ref_audio": f"is {len(data)} bytes, over the "
                                       f"{config.max_ref_audio_bytes}-byte limit"})
    try:
        audio = decode_wav(data, max_seconds=config.max_ref_seconds)
    except AudioError as err:
        raise InputError({"ref_audio": str(err)}) from None
    if audio.seconds <= 0.0:
        raise InputError({"ref_audio": "has no samples"})
    return audio


def _from_base64(ref: str, config: HandlerConfig) -> bytes:
    limit = config.max_ref_audio_bytes
    if len(ref) * 3 // 4 > limit + 3:
        raise InputError({"ref_audio": f"is over the {limit}-byte limit"})
    try:
        return b64decode(ref)
    except AudioError as err:
        raise InputError({"ref_audio": str(err)}) from None


def url_error(config: HandlerConfig) -> str:
    """The one answer for every URL that cannot be used, whatever the reason: a caller must
    not tell "refused" from "HTTP 500" from "not a WAV" (that would make the worker a port
    scanner for its network). The reason is in the worker's log."""
    return (f"could not use this URL (blocked address, unreachable, HTTP error, over "
            f"{config.max_ref_audio_bytes} bytes or {config.url_timeout:g} s, or not a WAV "
            "this worker accepts); the worker's log has the reason")


def _from_url(url: str, config: HandlerConfig) -> Audio:
    if not config.allow_url_ref_audio:
        raise InputError({"ref_audio": "URLs are disabled on this endpoint (the operator can "
                                       "set HANDLER_ALLOW_URL_REF_AUDIO=true); send base64 WAV"})
    try:
        return _decode(fetch(url, config.url_policy()), config)
    except FetchError as err:
        log(f"ref_audio URL {echo(url, 200)} refused: {err}")
    except InputError as err:
        log(f"ref_audio URL {echo(url, 200)} unusable: {err}")
    raise InputError({"ref_audio": url_error(config)})


# Base64 of other audio containers, taken for a path before: name them instead.
_OTHER_AUDIO = {b"fLaC": "FLAC", b"RF64": "RF64 (64-bit WAV)", b"OggS": "Ogg",
                b"ID3": "MP3", b"FORM": "AIFF", b"caff": "CAF"}
_B64_HEAD = re.compile(r"[A-Za-z0-9+/]{8}")
MAX_PATH_CHARS = 1024


def _from_cache_path(ref: str, config: HandlerConfig) -> Audio:
    if _B64_HEAD.match(ref):
        head = base64.b64decode(ref[:8])
        for magic, name in _OTHER_AUDIO.items():
            if head.startswith(magic):
                raise InputError({"ref_audio": f"looks like base64 {name} audio: only WAV is "
                                               "accepted (base64 WAV starts 'UklGR')"})
    if "\x00" in ref or len(ref) > MAX_PATH_CHARS:
        raise InputError({"ref_audio": "is neither base64 WAV (which starts 'UklGR'), an "
                                       "http(s) URL, nor a cache path (at most "
                                       f"{MAX_PATH_CHARS} characters, no NUL)"})
    try:
        data = _read_cache_file(ref, config)
    except (OSError, ValueError, UnicodeError) as err:
        log(f"ref_audio path {echo(ref, 200)}: {type(err).__name__}: {err}")
        data = None
    if data is None or data[:4] not in (b"RIFF", b"RF64"):
        # One answer for missing, outside the cache, too big, unreadable or not audio: a
        # caller learns nothing about which files exist on the worker, nor their sizes.
        raise InputError({"ref_audio": "no usable WAV at this cache path (give a WAV file "
                                       "inside the cache root, e.g. voices/ref.wav, of at "
                                       f"most {config.max_ref_audio_bytes} bytes)"})
    return _decode(data, config)


def _read_cache_file(ref: str, config: HandlerConfig) -> bytes:
    root = config.cache_root.resolve()
    real = (Path(ref) if os.path.isabs(ref) else root / ref).resolve()
    # Refuse anything outside the cache, including via `..` or a symlink.
    if real != root and root not in real.parents:
        raise ValueError(f"{real} is outside the cache root {root}")
    with open(real, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > config.max_ref_audio_bytes:
            raise ValueError(f"{real} is {size} bytes, over the limit")
        return f.read(config.max_ref_audio_bytes + 1)
