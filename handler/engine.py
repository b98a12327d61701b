"""The engine interface, its errors, and the light engine used by the default tests.

An engine is loaded once at start-up (``load()``, warm) and then called per job
(``synthesize()``), from a worker thread. The light engine has the same contract as the
F5-TTS engine, including loading from an explicit file under ``models/`` and failing with the
same missing-file error and the same use of a process-wide RNG, so every piece of worker logic
is exercised without torch. It makes synthetic tones (reproducible by seed), not speech, and
says so in every result.
"""

from __future__ import annotations

import json
import math
import operator
import random
import secrets
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from handler.asr import AsrBackend, FakeBackend
from handler.audio import SAMPLE_RATE, Audio
from handler.config import HandlerConfig

MAX_SEED = 2**31 - 1
_RNG_LOCK = threading.Lock()


def cache_relative(path: Path, root: Path) -> str:
    """How replies name a file: relative to the cache root, never the worker's absolute path."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return f"<outside the cache>/{Path(path).name}"


class ModelMissingError(FileNotFoundError):
    """A model file the engine needs is not on disk. The message names it and the fix;
    ``public`` says the same without the worker's absolute paths (for replies)."""

    def __init__(self, path: Path, what: str, setting: str, root: Path) -> None:
        self.path = path
        fix = (f"Put it in the cache's models area from a dev box with `cache-sync push "
               f"models` (so `cache-sync pull` brings it to the worker), or point {setting} "
               "at the file.")
        if "/models--" in str(path):  # from a Hub repo named by HANDLER_*_MODEL_REPO
            fix = ("It comes from the Hub repo in HANDLER_*_MODEL_REPO: `cache-sync run` "
                   "downloads it once per fleet when CACHE_SYNC_HF_MODELS_HOOK="
                   "handler.models:hub_models is set (the image sets it); see the `bootstrap:` "
                   "lines of the worker's log.")
        super().__init__(f"model file missing: {path} ({what}). {fix}")
        self.public = f"model file missing: {cache_relative(path, root)} ({what}). {fix}"


class EngineError(RuntimeError):
    """Inference failed for a reason the caller should see (not an input error)."""


@dataclass
class SynthesisRequest:
    text: str
    ref_audio: Audio  # preprocessed as upstream does (handler.refprep)
    ref_text: str  # given or transcribed, ending a sentence (refprep.finish_ref_text)
    chunks: list[str]  # text split with upstream's chunk rule (refprep.plan_chunks)
    speed: float = 1.0
    nfe_step: int = 32
    seed: int | None = None


@dataclass
class SynthesisResult:
    samples: array[float]  # float32 mono in [-1, 1]
    sample_rate: int
    info: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def check_files(self) -> None:
        """Raise ModelMissingError for the first model file that is not on disk (cheap)."""

    def import_modules(self) -> None:
        """Import the engine's libraries; needs ``packages/`` only, not the model files, so
        it runs while ``cache-sync run`` is still pulling ``models/``."""

    def load(self) -> dict[str, Any]:
        """Load everything from local files, once; returns what was loaded (for health)."""

    def synthesize(self, req: SynthesisRequest) -> SynthesisResult:
        """Run one job; thread-safe for the configured concurrency."""

    def describe(self) -> dict[str, Any]:
        """Versions, device, memory: reported by the health job."""

    def asr_backend(self, model_dir: Path) -> AsrBackend:
        """Load this engine's transcriber from ``model_dir`` (called on demand, per use)."""


@contextmanager
def seeded(seed: int | None, seed_global: Callable[[int], None]) -> Iterator[int]:
    """Run one job's sampling alone on the process-wide RNG, seeded for it.

    F5-TTS draws its initial noise from torch's global generator (``torch.randn`` in
    ``CFM.sample``), which every thread shares: with ``HANDLER_CONCURRENCY>1`` two jobs would
    interleave their draws and a seeded job would not reproduce. So every job, seeded or not,
    samples under one lock; an unseeded job gets a fresh random seed, reported in its result
    so it can be reproduced. Yields the seed used."""
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    with _RNG_LOCK:
        seed_global(seed)
        yield seed


def require_file(path: Path, what: str, setting: str, root: Path) -> Path:
    if not path.is_file():
        raise ModelMissingError(path, what, setting, root)
    return path


class LightEngine:
    """Deterministic synthetic audio: a tone per character, pitch set by the model file.

    Not a TTS model. It exists so the worker's validation, outputs, errors and lifecycle are
    tested through runpod's real server in the default (torch-free) test run.
    """

    name = "light"

    def __init__(self, config: HandlerConfig) -> None:
        self.config = config
        self.params: dict[str, Any] | None = None

    def check_files(self) -> None:
        require_file(self.config.light_model, "light test engine parameters, JSON",
                     "HANDLER_LIGHT_MODEL", self.config.cache_root)

    def import_modules(self) -> None:
        """Nothing to import: the light engine is pure Python."""

    def load(self) -> dict[str, Any]:
        path = require_file(self.config.light_model, "light test engine parameters, JSON",
                            "HANDLER_LIGHT_MODEL", self.config.cache_root)
        try:
            params = json.loads(path.read_text())
            base_hz = float(params.get("base_hz", 220.0))
        except (ValueError, TypeError) as err:
            raise EngineError(f"{path} is not valid light-engine JSON: {err}") from None
        delay = float(params.get("load_seconds", 0.0))  # lets tests simulate a slow warm load
        if delay > 0:
            time.sleep(delay)
        self.params = {"base_hz": base_hz, "chars_per_second": 14.0,
                       "synth_seconds": float(params.get("synth_seconds", 0.0)),
                       # Faults on demand, to test that no internal detail reaches a reply.
                       "fail_synthesis": params.get("fail_synthesis"),
                       "fail_describe": params.get("fail_describe")}
        return {"model": cache_relative(path, self.config.cache_root), "base_hz": base_hz}

    def describe(self) -> dict[str, Any]:
        if self.params and self.params["fail_describe"]:
            raise RuntimeError(self.params["fail_describe"])
        return {"engine": self.name, "device": "cpu",
                "note": "synthetic test tones, not speech"}

    def asr_backend(self, model_dir: Path) -> AsrBackend:
        return FakeBackend(model_dir)

    def synthesize(self, req: SynthesisRequest) -> SynthesisResult:
        if self.params is None:
            raise EngineError("engine not loaded")
        if self.params["fail_synthesis"]:
            raise RuntimeError(self.params["fail_synthesis"])
        per_char = int(SAMPLE_RATE / self.params["chars_per_second"] / req.speed)
        # Loudness follows the reference clip, as F5-TTS matches the reference's RMS.
        ref = req.ref_audio.samples
        rms = math.sqrt(math.fsum(map(operator.mul, ref, ref)) / len(ref)) if len(ref) else 0.1
        amp = min(0.9, max(0.05, rms * 1.4))
        # Simulated inference time (SIGTERM and concurrency tests), spread over the text so
        # that, like F5-TTS's torch.randn, the draws from the process-wide RNG of jobs running
        # side by side would interleave if seeded() did not keep them apart.
        out = array("f")
        spoken = " ".join(req.chunks)
        pause = self.params["synth_seconds"] / max(1, len(spoken))
        with seeded(req.seed, random.seed) as seed:
            for ch in spoken:
                jitter = 1 + random.random() * 0.01
                hz = self.params["base_hz"] * (1 + (ord(ch) % 24) / 24) * jitter
                step = 2 * math.pi * hz / SAMPLE_RATE
                out.extend(amp * math.sin(step * i) for i in range(per_char))
                if pause:
                    time.sleep(pause)
        return SynthesisResult(out, SAMPLE_RATE, {"engine": self.name, "seed": seed,
                                                  "chunks": len(req.chunks),
                                                  "note": "synthetic test tones, not speech"})


def make_engine(config: HandlerConfig) -> Engine:
    if config.engine == "light":
        return LightEngine(config)
    from handler.f5_engine import F5Engine  # imports nothing heavy until load()

    return F5Engine(config)
