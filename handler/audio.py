"""WAV encode/decode and base64, in the standard library only (the image has no numpy).

The decoder reads the RIFF chunks itself rather than using ``wave``: Python 3.11's ``wave``
refuses IEEE-float WAVs, which many tools (and torchaudio) write by default.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import sys
from array import array
from dataclasses import dataclass

SAMPLE_RATE = 24000  # F5-TTS and its Vocos vocoder work at 24 kHz

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class AudioError(ValueError):
    """The bytes are not a WAV file this worker can read (message says why)."""


@dataclass
class Audio:
    samples: array  # float32 mono, in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


def b64decode(text: str) -> bytes:
    """Strict base64 (a data: URL prefix is allowed); AudioError on anything else."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise AudioError(f"not valid base64 ({err})") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_wav(data: bytes) -> Audio:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("not a WAV file (no RIFF/WAVE header)")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            payload = body
            break
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise AudioError("WAV has no valid fmt chunk")
    if payload is None:
        raise AudioError("WAV has no data chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the subformat GUID
    if channels < 1 or rate < 1000:
        raise AudioError(f"WAV header is implausible ({channels} channels, {rate} Hz)")
    mono = _to_float(payload, tag, bits)
    if channels > 1:  # mix down: F5-TTS takes one channel
        frames = len(mono) // channels
        mixed = array("f", bytes(4 * frames))
        for i in range(frames):
            mixed[i] = sum(mono[i * channels:(i + 1) * channels]) / channels
        mono = mixed
    return Audio(mono, rate)


def _to_float(payload: bytes, tag: int, bits: int) -> array:
    if tag == _FLOAT and bits == 32:
        out = array("f")
        out.frombytes(payload[: len(payload) // 4 * 4])
    elif tag == _PCM and bits == 16:
        ints = array("h")
        ints.frombytes(payload[: len(payload) // 2 * 2])
        out = array("f", (s / 32768.0 for s in _le(ints)))
        return out
    elif tag == _PCM and bits == 32:
        ints = array("i")
        ints.frombytes(payload[: len(payload) // 4 * 4])
        return array("f", (s / 2147483648.0 for s in _le(ints)))
    elif tag == _PCM and bits == 24:
        n = len(payload) // 3
        return array("f", (
            int.from_bytes(payload[3 * i:3 * i + 3], "little", signed=True) / 8388608.0
            for i in range(n)
        ))
    elif tag == _PCM and bits == 8:
        return array("f", ((b - 128) / 128.0 for b in payload))
    else:
        raise AudioError(f"unsupported WAV encoding (format tag {tag}, {bits} bits): "
                         "use 16-bit PCM or 32-bit float")
    return _le(out)


def _le(values: array) -> array:
    if sys.byteorder == "big":  # WAV is little-endian
        values.byteswap()
    return values


def encode_wav(samples: array | list[float], sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit PCM WAV; samples are floats, clipped to [-1, 1]."""
    pcm = array("h", (int(max(-1.0, min(1.0, s)) * 32767) for s in samples))
    if sys.byteorder == "big":
        pcm.byteswap()
    raw = pcm.tobytes()
    buf = io.BytesIO()
    buf.write(b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVE")
    buf.write(b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, 1, sample_rate, sample_rate * 2, 2, 16))
    buf.write(b"data" + struct.pack("<I", len(raw)) + raw)
    return buf.getvalue()
