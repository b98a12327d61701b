"""WAV encode/decode and base64: numpy when present (it is, beside f5-tts), else stdlib only.

The decoder reads the RIFF chunks itself rather than using ``wave``: Python 3.11's ``wave``
refuses IEEE-float WAVs, which many tools (and torchaudio) write by default.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import operator
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Any, TypeVar

SAMPLE_RATE = 24000  # F5-TTS and its Vocos vocoder work at 24 kHz
STANDARD_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
MAX_CHANNELS = 2
MAX_CHUNKS = 64  # RIFF chunks walked before "data" (fmt, LIST, fact, bext, ...)

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class AudioError(ValueError):
    """The bytes are not a WAV file this worker can read (message says why)."""


@dataclass
class Audio:
    samples: array[float]  # float32 mono, in [-1, 1]
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


def decode_wav(data: bytes, max_seconds: float | None = None) -> Audio:
    """Decode a WAV within this worker's limits, fast enough for any clip that passes them.

    Only standard sample rates (f5-tts resamples with a kernel whose size grows with the
    rates' least common multiple: GiBs for 47999 Hz), at most ``MAX_CHANNELS`` channels, and
    the length is checked from the header before any sample is converted. Conversion is
    vectorised (numpy), or without numpy runs in C loops (array slicing, ``bytes.translate``,
    ``map`` over ``operator``): never a Python statement per sample.
    """
    if data[:4] == b"RF64":
        raise AudioError("RF64 (64-bit WAV) is not supported: export a plain WAV")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("not a WAV file (no RIFF/WAVE header)")
    pos, fmt, payload, chunks = 12, None, None, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_CHUNKS:  # a file of tiny chunks would cost a Python loop per chunk
            raise AudioError(f"WAV has more than {MAX_CHUNKS} chunks before its data")
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if cid == b"fmt ":
            fmt = data[pos + 8:pos + 8 + size]
        elif cid == b"data":
            payload = data[pos + 8:pos + 8 + size]
            break
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise AudioError("WAV has no valid fmt chunk")
    if payload is None:
        raise AudioError("WAV has no data chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the subformat GUID
    if rate not in STANDARD_RATES:
        raise AudioError(f"sample rate {rate} Hz is not a standard rate (use one of "
                         f"{', '.join(map(str, STANDARD_RATES))})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"WAV has {channels} channels: use mono or stereo")
    if (tag, bits) not in _ENCODINGS:
        raise AudioError(f"unsupported WAV encoding (format tag {tag}, {bits} bits): "
                         "use 8/16/24/32-bit PCM or 32-bit float")
    frames = len(payload) // (channels * bits // 8)
    if max_seconds is not None and frames / rate > max_seconds:
        raise AudioError(f"is {frames / rate:.1f} s long, the limit is {max_seconds:g} s")
    payload = payload[: frames * channels * bits // 8]
    np = _numpy()
    if np is not None:
        return Audio(_np_decode(np, payload, tag, bits, channels), rate)
    samples = _to_float(payload, tag, bits)
    if channels == 2:  # mix down: F5-TTS takes one channel
        samples = array("f", map(operator.mul, map(operator.add, samples[0::2], samples[1::2]),
                                 itertools.repeat(0.5)))
    return Audio(samples, rate)


_ENCODINGS = {(_PCM, 8), (_PCM, 16), (_PCM, 24), (_PCM, 32), (_FLOAT, 32)}
_INT32 = "i" if array("i").itemsize == 4 else "l"
_FLIP_SIGN = bytes((b ^ 0x80) for b in range(256))  # unsigned 8-bit -> two's complement


def _numpy() -> Any:
    """numpy when importable (always beside f5-tts; the image alone has none), else None."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _np_decode(np: Any, payload: bytes, tag: int, bits: int, channels: int) -> array[float]:
    if tag == _FLOAT:
        values = np.frombuffer(payload, "<f4").astype(np.float32)
    elif bits == 8:
        values = (np.frombuffer(payload, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 24:
        raw = np.frombuffer(payload, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        values = (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / 8388608.0)
    else:
        values = np.frombuffer(payload, "<i2" if bits == 16 else "<i4") / float(1 << (bits - 1))
    if channels == 2:
        values = values.reshape(-1, 2).mean(axis=1)
    out = array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def _scaled(ints: array[int], scale: float) -> array[float]:
    return array("f", map(operator.mul, _le(ints), itertools.repeat(scale)))


def _to_float(payload: bytes, tag: int, bits: int) -> array[float]:
    """The standard-library decoder (no numpy): C-level loops only, ~3x slower than numpy."""
    if tag == _FLOAT:
        out = array("f")
        out.frombytes(payload)
        return _le(out)
    if bits == 16:
        return _scaled(array("h", payload), 1 / 32768.0)
    if bits == 8:  # each byte becomes the high byte of a little-endian int16
        wide = bytearray(2 * len(payload))
        wide[1::2] = payload.translate(_FLIP_SIGN)
        return _scaled(array("h", wide), 1 / 32768.0)
    if bits == 24:  # each 3-byte sample becomes the high bytes of a little-endian int32
        n = len(payload) // 3
        wide = bytearray(4 * n)
        for k in range(3):
            wide[k + 1::4] = payload[k::3]
        return _scaled(array(_INT32, wide), 1 / 2147483648.0)
    return _scaled(array(_INT32, payload), 1 / 2147483648.0)


T = TypeVar("T", int, float)


def _le(values: array[T]) -> array[T]:
    if sys.byteorder == "big":  # WAV is little-endian
        values.byteswap()
    return values


def encode_wav(samples: array[float] | list[float], sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit PCM WAV; samples are floats, clipped to [-1, 1]."""
    np = _numpy()
    if np is not None:
        values = np.asarray(samples, dtype=np.float32)
        raw = (np.clip(values, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    else:
        clipped = map(max, itertools.repeat(-1.0), map(min, itertools.repeat(1.0), samples))
        pcm = array("h", map(int, map(operator.mul, clipped, itertools.repeat(32767))))
        raw = _le(pcm).tobytes()
    buf = io.BytesIO()
    buf.write(b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVE")
    buf.write(b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, 1, sample_rate, sample_rate * 2, 2, 16))
    buf.write(b"data" + struct.pack("<I", len(raw)) + raw)
    return buf.getvalue()
