"""Upstream F5-TTS's reference preprocessing and text chunking, without pydub or ffmpeg.

Ported from ``f5_tts.infer.utils_infer`` (F5-TTS 1.1.x) so the worker treats a reference
exactly as ``f5-tts_infer-cli`` does, on audio the worker has already decoded:

``preprocess_ref_audio_text``
  1. split on silences of >= 1000 ms below -50 dBFS (pydub ``split_on_silence``, keeping up to
     1000 ms of silence around each piece, 10 ms steps) and keep whole pieces while the total
     stays <= 12 s (or is still <= 6 s);
  2. if that is still over 12 s, the same with silences of >= 100 ms below -40 dBFS;
  3. if still over 12 s, cut at 12 s;
  then trim leading/trailing audio quieter than -42 dBFS (10 ms steps) and append 50 ms of
  silence. The reference text gets a closing ". " unless it ends with ". " or "。".
``infer_process``
  ``max_chars = int(len(ref_text in UTF-8 bytes) / ref_seconds * (22 - ref_seconds) * speed)``
  on the preprocessed clip, then ``chunk_text(gen_text, max_chars)``.

Levels are pydub's: RMS of the window against full scale (1.0 for float samples, the same
ratio as 32768 for 16-bit), ``<=`` the threshold for silence windows, ``<`` for edge trimming.
Positions are in milliseconds like pydub, mapped to samples as ``int(ms * rate / 1000)``.
Differences from upstream, all deliberate: the worker does not write the clip to a temporary
WAV and re-read it (no resampling or 16-bit rounding in between); windows are computed with a
running sum instead of per-slice ``audioop.rms`` (integer RMS there, float here: levels agree
to well under 0.01 dB); the 50 ms tail is exactly 50 ms (upstream builds it at pydub's default
11025 Hz and resamples it, 1198 samples at 24 kHz); and a reference with nothing above
-50 dBFS is refused as silent, where upstream would go on with 50 ms of silence. The ``f5``
test tier compares this module with upstream's own functions on the same audio.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

CLIP_MS = 12000  # upstream's reference limit
MIN_KEEP_MS = 6000  # pieces are added while the total is still under this, whatever it makes
TAIL_SILENCE_MS = 50
EDGE_THRESH_DB = -42.0
# (min_silence_len ms, silence_thresh dBFS): the long-silence pass, then the short-silence one
PASSES = ((1000, -50.0), (100, -40.0))
KEEP_SILENCE_MS = 1000
SEEK_STEP_MS = 10
CONTEXT_SECONDS = 22.0  # reference + one generated chunk, in infer_process's chunk rule


class SilentReferenceError(ValueError):
    """Nothing in the reference is louder than the silence threshold."""


@dataclass
class Prepared:
    samples: Any  # numpy float32 mono
    sample_rate: int
    input_seconds: float
    clipped: str | None  # None, "long-silence", "short-silence" or "hard-cut"

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def report(self) -> dict[str, Any]:
        return {"input_seconds": round(self.input_seconds, 3),
                "seconds": round(self.seconds, 3), "clipped": self.clipped}

    def to_array(self) -> array[float]:
        return array("f", self.samples.astype("float32").tobytes())


class _Segment:
    """Milliseconds-addressed view over float samples with pydub's level rules."""

    def __init__(self, samples: Any, rate: int) -> None:
        import numpy as np

        self.x = np.asarray(samples, dtype=np.float64)
        self.rate = rate
        self.csum = np.concatenate(([0.0], np.cumsum(self.x * self.x)))

    def __len__(self) -> int:  # milliseconds, as len(AudioSegment)
        return round(1000 * len(self.x) / self.rate)

    def idx(self, ms: Any) -> Any:
        import numpy as np

        return np.minimum(np.asarray(ms, dtype=np.int64) * self.rate // 1000, len(self.x))

    def rms(self, start_ms: Any, length_ms: int) -> Any:
        import numpy as np

        a, b = self.idx(start_ms), self.idx(np.asarray(start_ms) + length_ms)
        n = np.maximum(b - a, 1)
        return np.sqrt(np.maximum(self.csum[b] - self.csum[a], 0.0) / n) * (b > a)


def _db_to_amp(db: float) -> float:
    return 10 ** (db / 20)


def detect_silence(seg: _Segment, min_len: int, thresh_db: float,
                   step: int = SEEK_STEP_MS) -> list[list[int]]:
    """pydub.silence.detect_silence: [start, end] ms ranges of silence."""
    import numpy as np

    n = len(seg)
    if n < min_len:
        return []
    last = n - min_len
    starts = np.arange(0, last + 1, step)
    if last % step:
        starts = np.append(starts, last)
    silent = starts[seg.rms(starts, min_len) <= _db_to_amp(thresh_db)].tolist()
    if not silent:
        return []
    ranges: list[list[int]] = []
    prev = cur = silent.pop(0)
    for s in silent:
        if s != prev + step and s > prev + min_len:
            ranges.append([cur, prev + min_len])
            cur = s
        prev = s
    ranges.append([cur, prev + min_len])
    return ranges


def detect_nonsilent(seg: _Segment, min_len: int, thresh_db: float) -> list[list[int]]:
    silent = detect_silence(seg, min_len, thresh_db)
    n = len(seg)
    if not silent:
        return [[0, n]]
    if silent[0] == [0, n]:
        return []
    out, prev_end = [], 0
    for start, end in silent:
        out.append([prev_end, start])
        prev_end = end
    if prev_end != n:
        out.append([prev_end, n])
    if out and out[0] == [0, 0]:
        out.pop(0)
    return out


def split_on_silence(seg: _Segment, min_len: int, thresh_db: float,
                     keep: int = KEEP_SILENCE_MS) -> list[tuple[int, int]]:
    """pydub.silence.split_on_silence, as (start, end) ms ranges instead of segments."""
    ranges = [[s - keep, e + keep] for s, e in detect_nonsilent(seg, min_len, thresh_db)]
    for a, b in pairwise(ranges):
        if b[0] < a[1]:  # overlapping kept silence is shared half and half
            a[1] = (a[1] + b[0]) // 2
            b[0] = a[1]
    n = len(seg)
    return [(max(s, 0), min(e, n)) for s, e in ranges]


def _leading_silence(seg: _Segment, thresh_db: float, chunk: int = 10) -> int:
    """pydub.silence.detect_leading_silence: ms of audio quieter than ``thresh_db``."""
    import numpy as np

    n = len(seg)
    starts = np.arange(0, n, chunk)
    loud = np.nonzero(seg.rms(starts, chunk) >= _db_to_amp(thresh_db))[0]
    return min(int(starts[loud[0]]) if len(loud) else n + (-n % chunk), n)


def preprocess(samples: Any, rate: int) -> Prepared:
    """Upstream's clip-at-silence, edge trim and 50 ms tail, on float mono samples."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float32)
    seg = _Segment(x, rate)
    clipped: str | None = None
    pieces: list[tuple[int, int]] = []
    for name, (min_len, thresh) in zip(("long-silence", "short-silence"), PASSES):
        pieces, total, clipped = [], 0, None
        for start, end in split_on_silence(seg, min_len, thresh):
            length = end - start
            if total > MIN_KEEP_MS and total + length > CLIP_MS:
                clipped = name
                break
            pieces.append((start, end))
            total += length
        if total <= CLIP_MS:
            break
    if not pieces:
        raise SilentReferenceError("the reference is silent (nothing above -50 dBFS)")
    out = np.concatenate([x[seg.idx(s):seg.idx(e)] for s, e in pieces])
    if len(_Segment(out, rate)) > CLIP_MS:
        out, clipped = out[: int(CLIP_MS * rate / 1000)], "hard-cut"
    out = _trim_edges(out, rate)
    if not len(out):
        raise SilentReferenceError(f"the reference is silent (nothing above {EDGE_THRESH_DB:g} "
                                   "dBFS after clipping)")
    tail = np.zeros(int(TAIL_SILENCE_MS * rate / 1000), dtype=np.float32)
    return Prepared(np.concatenate([out, tail]), rate, len(x) / rate, clipped)


def _trim_edges(x: Any, rate: int) -> Any:
    """upstream remove_silence_edges: leading then trailing audio under -42 dBFS."""
    seg = _Segment(x, rate)
    x = x[seg.idx(_leading_silence(seg, EDGE_THRESH_DB)):]
    rev = _Segment(x[::-1], rate)
    end = _leading_silence(rev, EDGE_THRESH_DB)
    return x[: len(x) - int(rev.idx(end))] if end > 0 else x


def finish_ref_text(ref_text: str) -> str:
    """Upstream: make sure the reference text ends a sentence (". " or "。")."""
    if ref_text.endswith((". ", "。")):
        return ref_text
    return ref_text + (" " if ref_text.endswith(".") else ". ")


def max_chars(ref_text: str, ref_seconds: float, speed: float) -> int:
    """infer_process's chunk size: each chunk plus the reference fits in ~22 s of audio."""
    return int(len(ref_text.encode("utf-8")) / ref_seconds
               * (CONTEXT_SECONDS - ref_seconds) * speed)


_SENTENCE = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def chunk_text(text: str, max_chars: int = 135) -> list[str]:
    """utils_infer.chunk_text, unchanged: sentences packed into chunks of <= max_chars bytes
    (a sentence longer than that is a chunk of its own)."""
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCE.split(text):
        if not sentence:
            continue
        piece = sentence + " " if len(sentence[-1].encode("utf-8")) == 1 else sentence
        if len(current.encode("utf-8")) + len(sentence.encode("utf-8")) <= max_chars:
            current += piece
        else:
            if current:
                chunks.append(current.strip())
            current = piece
    if current:
        chunks.append(current.strip())
    return chunks


def plan_chunks(text: str, ref_text: str, ref_seconds: float, speed: float) -> list[str]:
    return chunk_text(text, max_chars(ref_text, ref_seconds, speed))
