"""On-demand transcription of the reference clip when a job gives no ``ref_text``.

The worker's GPU plan (seeds, architecture constraints): F5-TTS stays loaded; the transcriber
is loaded only when a job needs it and freed as soon as it has made its transcript (before
synthesis, so F5-TTS gets the memory back), unless ``HANDLER_ASR_KEEP_SECONDS`` keeps it for
that many idle seconds so a burst of such jobs loads it once. Freeing is: drop the last
reference, ``gc.collect()``, ``torch.cuda.empty_cache()`` on CUDA; a weak reference to the
model object proves it is gone, and the health job and every transcribing job report it.

The model comes from the cache's ``models/`` area only (``HF_HUB_OFFLINE=1``): an HF id is
looked up in the HF cache layout under ``models/huggingface/hub`` (the ``HF_HUB_CACHE`` that
``cache-sync env`` exports) at ``HANDLER_ASR_REVISION``; a path is used as it is.
"""

from __future__ import annotations

import gc
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from handler.config import HandlerConfig

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class AsrModelMissingError(FileNotFoundError):
    """The ASR model is not in the cache; the message names where it was looked for."""


class AsrBackend(Protocol):
    device: str

    def __call__(self, samples: Any, sample_rate: int) -> str:
        """The transcript of float32 mono samples."""

    def model_object(self) -> Any:
        """The object whose lifetime is the model's (for the weak-reference check)."""


def resolve_model_dir(config: HandlerConfig) -> Path:
    """The directory holding the ASR model's files (``config.json`` and weights)."""
    spec, rev = config.asr_model, config.asr_revision
    fix = (f"On a dev box: HF_HOME=<cache root>/models/huggingface huggingface-cli download "
           f"{spec} --revision {rev}, then `cache-sync push models`; or set HANDLER_ASR_MODEL "
           "to a local model directory; or give ref_text.")
    if spec.startswith(("/", ".")):
        path = Path(spec)
    else:
        repo = config.hf_hub_dir / ("models--" + spec.replace("/", "--"))
        if _COMMIT.match(rev):
            path = repo / "snapshots" / rev
        else:
            ref = repo / "refs" / rev
            if not ref.is_file():
                raise AsrModelMissingError(f"ASR model {spec} (revision {rev}) is not in the "
                                           f"cache: no {ref}. {fix}")
            path = repo / "snapshots" / ref.read_text().strip()
    if not (path / "config.json").is_file():
        raise AsrModelMissingError(f"ASR model files missing: no {path / 'config.json'}. {fix}")
    return path


@dataclass
class Transcript:
    text: str
    seconds: float  # transcription itself
    load_seconds: float | None  # None when the model was already resident (keep-alive)
    model: str
    device: str


class Transcriber:
    """Loads the backend on first use, serialises transcriptions, frees after use."""

    def __init__(self, load: Callable[[], AsrBackend], keep_seconds: float, name: str) -> None:
        self._load = load
        self.keep_seconds = keep_seconds
        self.name = name
        self._lock = threading.Lock()  # guards the fields below
        self._run = threading.Lock()  # one transcription at a time on one model
        self._backend: AsrBackend | None = None
        self._users = 0
        self._timer: threading.Timer | None = None
        self._last_model: weakref.ref[Any] | None = None
        self.loads = 0
        self.last_load_seconds: float | None = None
        self.cuda_before: int | None = None  # allocated bytes before the last load
        self.cuda_after_free: int | None = None
        self.last_free_seconds: float | None = None  # drop + gc.collect() + empty_cache()

    # --- use ----------------------------------------------------------------------------
    def transcribe(self, samples: Any, sample_rate: int) -> Transcript:
        with self._lock:
            self._users += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        try:
            load_seconds = self._ensure_loaded()
            with self._run:
                backend = self._backend
                assert backend is not None
                t0 = time.perf_counter()
                text = backend(samples, sample_rate)
                seconds = time.perf_counter() - t0
                device = backend.device
                del backend
            return Transcript(text, round(seconds, 4), load_seconds, self.name, device)
        finally:
            self._done()

    def _ensure_loaded(self) -> float | None:
        with self._run:  # a second job waits for the first one's load instead of loading too
            if self._backend is not None:
                return None
            self.cuda_before = _cuda_allocated()
            t0 = time.perf_counter()
            backend = self._load()
            self.last_load_seconds = round(time.perf_counter() - t0, 4)
            self.loads += 1
            model = backend.model_object()
            self._last_model = weakref.ref(model) if model is not None else None
            del model
            self._backend = backend
            return self.last_load_seconds

    def _done(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            if self.keep_seconds <= 0:
                self._release_locked()
                return
            self._timer = threading.Timer(self.keep_seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._release_locked()

    def _release_locked(self) -> None:
        with self._run:
            backend, self._backend = self._backend, None
            if backend is None:
                return
            device = backend.device
            t0 = time.perf_counter()
            del backend
            gc.collect()
            if device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            self.last_free_seconds = round(time.perf_counter() - t0, 4)
            self.cuda_after_free = _cuda_allocated()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._release_locked()

    # --- reporting ----------------------------------------------------------------------
    @property
    def resident(self) -> bool:
        return self._backend is not None

    def model_collected(self) -> bool | None:
        """True when the last loaded model object no longer exists (None: never loaded)."""
        if self._last_model is None:
            return None
        return self._last_model() is None

    def status(self) -> dict[str, Any]:
        return {"model": self.name, "resident": self.resident, "loads": self.loads,
                "last_load_seconds": self.last_load_seconds,
                "last_free_seconds": self.last_free_seconds,
                "keep_seconds": self.keep_seconds,
                "model_collected": None if self.resident else self.model_collected(),
                "cuda_allocated_before_load": self.cuda_before,
                "cuda_allocated_after_free": self.cuda_after_free}


def _cuda_allocated() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated())


class WhisperBackend:
    """transformers' ASR pipeline, called as upstream ``utils_infer.transcribe`` calls it,
    with decoded samples instead of a file path (no ffmpeg)."""

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        from transformers import pipeline

        self.device = device
        # upstream initialize_asr_pipeline: fp16 on CUDA with compute capability >= 7
        dtype = torch.float32
        if "cuda" in device and torch.cuda.get_device_properties(device).major >= 7 \
                and not torch.cuda.get_device_name().endswith("[ZLUDA]"):
            dtype = torch.float16
        self.pipe: Any = pipeline("automatic-speech-recognition", model=str(model_dir),
                                  torch_dtype=dtype, device=device)

    def model_object(self) -> Any:
        return self.pipe.model

    def __call__(self, samples: Any, sample_rate: int) -> str:
        import numpy as np

        audio = {"raw": np.asarray(samples, dtype=np.float32), "sampling_rate": sample_rate}
        out = self.pipe(audio, chunk_length_s=30, batch_size=128,
                        generate_kwargs={"task": "transcribe"}, return_timestamps=False)
        return str(out["text"]).strip()


class FakeBackend:
    """The light engine's transcriber: same lifecycle, loads a JSON ``config.json`` from the
    model directory; its transcript names the clip's length. Not speech recognition."""

    device = "cpu"

    class _Model:  # something to hold a weak reference to, like a torch module
        def __init__(self, params: dict[str, Any]) -> None:
            self.params = params

    def __init__(self, model_dir: Path) -> None:
        import json

        params = json.loads((model_dir / "config.json").read_text())
        delay = float(params.get("load_seconds", 0.0))  # lets tests see a load's cost
        if delay > 0:
            time.sleep(delay)
        self.model = self._Model(params)

    def model_object(self) -> Any:
        return self.model

    def __call__(self, samples: Any, sample_rate: int) -> str:
        prefix = self.model.params.get("transcript", "light transcript of")
        return f"{prefix} {len(samples) / sample_rate:.2f} seconds."
