"""Upstream F5-TTS's reference preprocessing and chunk rule (handler/refprep.py), checked on
synthetic speech-like audio, and against pydub's own silence functions (what upstream's
``preprocess_ref_audio_text`` calls) when pydub is importable."""

from __future__ import annotations

import io

import numpy as np
import pytest

from handler import refprep
from handler.audio import encode_wav

RATE = 24000


def speechy(plan, rate=RATE, seed=1):
    """'s' = a voiced burst (~ -13 dBFS), 'z' = near silence (~ -66 dBFS), 'q' = quiet room
    noise (~ -46 dBFS: silent for the -40 dB pass, not for the -50 dB one)."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, sec in plan:
        n = int(sec * rate)
        if kind == "s":
            out.append(0.3 * np.sin(2 * np.pi * 180 * np.arange(n) / rate)
                       * (0.6 + 0.4 * rng.random(n)))
        else:
            out.append((0.005 if kind == "q" else 0.0005) * rng.standard_normal(n))
    return np.concatenate(out).astype(np.float32)


# A 25 s reference: 0.5 s lead-in, six 2.7 s phrases each followed by 1.3 s of silence.
LONG_GAPS = [("z", 0.5)] + [("s", 2.7), ("z", 1.3)] * 6 + [("z", 0.3)]


def test_25s_reference_is_clipped_at_a_silence():
    x = speechy(LONG_GAPS)
    assert len(x) / RATE == pytest.approx(24.8)
    p = refprep.preprocess(x, RATE)
    assert p.clipped == "long-silence"
    assert 6.0 < p.seconds <= 12.05
    # Whole phrases only: 3 phrases (8.1 s) with the kept silence between them, edges trimmed
    # to the first and last voiced sample (10 ms steps), plus upstream's 50 ms tail.
    assert p.seconds == pytest.approx(3 * 2.7 + 2 * 1.3 + 0.05, abs=0.02)
    body = p.samples[: -int(0.05 * RATE)]
    assert np.sqrt(np.mean(body[-240:] ** 2)) > 0.1  # ends on voice, not mid-silence...
    assert not p.samples[-int(0.05 * RATE):].any()  # ...then the 50 ms of silence
    # The cut is in the fourth gap: nothing of the fourth phrase is in the clip.
    assert p.report() == {"input_seconds": 24.8, "seconds": round(p.seconds, 3),
                          "clipped": "long-silence"}


def test_short_silences_then_hard_cut():
    short = refprep.preprocess(speechy([("s", 2.0), ("z", 0.3)] * 10), RATE)
    assert short.clipped == "short-silence" and short.seconds <= 12.05
    hard = refprep.preprocess(speechy([("s", 25.0)]), RATE)
    assert hard.clipped == "hard-cut" and hard.seconds == pytest.approx(12.05, abs=0.001)


def test_short_reference_is_only_trimmed():
    p = refprep.preprocess(speechy([("z", 0.4), ("s", 3.0), ("z", 0.8)]), RATE)
    assert p.clipped is None and p.seconds == pytest.approx(3.05, abs=0.011)


def test_silent_reference_is_refused():
    with pytest.raises(refprep.SilentReferenceError, match="silent"):
        refprep.preprocess(np.zeros(RATE * 3, dtype=np.float32), RATE)


def test_chunk_rule_is_upstreams():
    ref_text = refprep.finish_ref_text("Some call me nature, others call me mother nature")
    assert ref_text.endswith("nature. ")
    assert refprep.finish_ref_text("Done.") == "Done. "
    assert refprep.finish_ref_text("好。") == "好。"
    # infer_process: int(len(ref bytes) / ref_s * (22 - ref_s) * speed)
    assert refprep.max_chars(ref_text, 4.0, 1.0) == int(len(ref_text) / 4.0 * 18.0)
    assert refprep.max_chars(ref_text, 4.0, 0.5) == int(len(ref_text) / 4.0 * 18.0 * 0.5)
    text = ("The quick brown fox jumps over the lazy dog. " * 12).strip()
    chunks = refprep.chunk_text(text, 100)
    assert len(chunks) == 6 and all(len(c.encode()) <= 100 for c in chunks)
    assert " ".join(chunks) == text
    # A sentence longer than the limit is a chunk of its own (never split mid-sentence).
    assert refprep.chunk_text("a" * 50 + ". Short.", 20) == ["a" * 50 + ".", "Short."]
    assert refprep.chunk_text("一句。两句。", 6) == ["一句。", "两句。"]


def test_clipped_25s_reference_gives_sane_chunks():
    """Upstream's worker skipped clipping, so a 25 s reference made max_chars negative (each
    sentence its own chunk) or, with the old floor, 20-character chunks. Clipped, the
    chunks hold whole sentences worth ~10 s of speech."""
    p = refprep.preprocess(speechy(LONG_GAPS), RATE)
    ref_text = refprep.finish_ref_text("One two three four five six seven eight nine ten "
                                       "eleven twelve thirteen fourteen fifteen sixteen")
    limit = refprep.max_chars(ref_text, p.seconds, 1.0)
    assert 80 < limit < 200
    text = " ".join(f"This is sentence number {i}, spoken at an even pace." for i in range(12))
    chunks = refprep.plan_chunks(text, ref_text, p.seconds, 1.0)
    assert 3 <= len(chunks) <= 8
    assert all(len(c.encode()) <= limit for c in chunks)
    assert " ".join(chunks) == text
    unclipped = refprep.max_chars(ref_text, 24.8, 1.0)
    assert unclipped < 0  # what upstream's formula gives for the raw clip


CASES = {
    "long-gaps": LONG_GAPS,
    "short-gaps": [("s", 2.0), ("z", 0.3)] * 10,
    "quiet-gaps": [("s", 3.0), ("q", 1.5)] * 6,
    "no-gap": [("s", 25.0)],
    "short": [("z", 0.4), ("s", 3.0), ("z", 0.8)],
}


@pytest.mark.parametrize("case,rate", [("long-gaps", 24000), ("short-gaps", 16000),
                                       ("quiet-gaps", 24000), ("no-gap", 16000),
                                       ("short", 44100)])
def test_same_clip_as_upstream_pydub(case, rate):
    """upstream preprocess_ref_audio_text's pydub steps, verbatim, on the same 16-bit WAV:
    the same samples come out."""
    pytest.importorskip("pydub")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Couldn't find ffmpeg": not needed for WAV
        from pydub import AudioSegment, silence

    x = speechy(CASES[case], rate)
    pcm16 = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    wav = encode_wav([], rate)[:40] + (2 * len(pcm16)).to_bytes(4, "little") + pcm16.tobytes()
    aseg = AudioSegment.from_file(io.BytesIO(wav), format="wav")
    for min_len, thresh in ((1000, -50), (100, -40)):
        segs = silence.split_on_silence(aseg, min_silence_len=min_len, silence_thresh=thresh,
                                        keep_silence=1000, seek_step=10)
        wave = AudioSegment.silent(duration=0)
        for seg in segs:
            if len(wave) > 6000 and len(wave + seg) > 12000:
                break
            wave += seg
        if len(wave) <= 12000:
            break
    if len(wave) > 12000:
        wave = wave[:12000]
    lead = silence.detect_leading_silence(wave, silence_threshold=-42)
    wave = wave[lead:]
    tail = silence.detect_leading_silence(wave.reverse(), silence_threshold=-42)
    if tail > 0:
        wave = wave[: len(wave) - tail]
    body = len(wave.get_array_of_samples())
    wave = wave + AudioSegment.silent(duration=50)
    theirs = np.array(wave.get_array_of_samples(), dtype=np.float32) / 32768

    pcm = pcm16.astype(np.float32) / 32768
    ours = refprep.preprocess(pcm, rate)
    # Identical clip; upstream's 50 ms tail is made at pydub's default 11025 Hz and resampled
    # (e.g. 1198 samples at 24 kHz instead of 1200): the only difference, < 0.2 ms.
    assert np.array_equal(ours.samples[:body], theirs[:body])
    assert not ours.samples[body:].any() and not theirs[body:].any()
    assert abs(len(ours.samples) - len(theirs)) <= rate * 0.0002
