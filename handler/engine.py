"""The engine interface, its errors, and the light engine used by the default tests.

An engine is loaded once at start-up (``load()``, warm) and then called per job
(``synthesize()``), from a worker thread. The light engine has the same contract as the
F5-TTS engine, including loading from an explicit file under ``models/`` and failing with the
same missing-file error, so every piece of worker logic is exercised without torch. It makes
deterministic synthetic tones, not speech, and says so in every result.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from handler.asr import AsrBackend, FakeBackend
from handler.audio import SAMPLE_RATE, Audio
from handler.config import HandlerConfig


class ModelMissingError(FileNotFoundError):
    """A model file the engine needs is not on disk. The message names it and the fix."""

    def __init__(self, path: Path, what: str, setting: str, root: Path) -> None:
        self.path = path
        super().__init__(
            f"model file missing: {path} ({what}). Put it in the cache's models area from a "
            f"dev box with `cache-sync push models` (so `cache-sync pull` brings it to "
            f"{root}/models on the worker), or point {setting} at the file."
        )


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
    samples: array  # float32 mono in [-1, 1]
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
            import time
            time.sleep(delay)
        self.params = {"base_hz": base_hz, "chars_per_second": 14.0,
                       "synth_seconds": float(params.get("synth_seconds", 0.0))}
        return {"model": str(path), "base_hz": base_hz}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "device": "cpu",
                "note": "synthetic test tones, not speech"}

    def asr_backend(self, model_dir: Path) -> AsrBackend:
        return FakeBackend(model_dir)

    def synthesize(self, req: SynthesisRequest) -> SynthesisResult:
        if self.params is None:
            raise EngineError("engine not loaded")
        if self.params["synth_seconds"] > 0:  # simulate inference time (SIGTERM tests)
            import time
            time.sleep(self.params["synth_seconds"])
        seed = req.seed if req.seed is not None else int.from_bytes(
            hashlib.sha256(req.text.encode()).digest()[:4], "little")
        rng = random.Random(seed)
        per_char = int(SAMPLE_RATE / self.params["chars_per_second"] / req.speed)
        # Loudness follows the reference clip, as F5-TTS matches the reference's RMS.
        ref = req.ref_audio.samples
        rms = math.sqrt(sum(s * s for s in ref) / len(ref)) if len(ref) else 0.1
        amp = min(0.9, max(0.05, rms * 1.4))
        out = array("f")
        for ch in " ".join(req.chunks):
            hz = self.params["base_hz"] * (1 + (ord(ch) % 24) / 24) * (1 + rng.random() * 0.01)
            step = 2 * math.pi * hz / SAMPLE_RATE
            out.extend(amp * math.sin(step * i) for i in range(per_char))
        return SynthesisResult(out, SAMPLE_RATE, {"engine": self.name, "seed": seed,
                                                  "chunks": len(req.chunks),
                                                  "note": "synthetic test tones, not speech"})


def make_engine(config: HandlerConfig) -> Engine:
    if config.engine == "light":
        return LightEngine(config)
    from handler.f5_engine import F5Engine  # imports nothing heavy until load()

    return F5Engine(config)
