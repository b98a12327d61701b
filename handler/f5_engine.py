"""The real engine: F5-TTS through its own inference API, from explicit local files only.

Loading uses ``f5_tts.infer.utils_infer.load_model`` / ``load_vocoder(is_local=True)``, the
library's own code path, pointed at files under the cache's ``models/`` area: the checkpoint
(``.safetensors``), ``vocab.txt``, and the Vocos directory (``config.yaml`` +
``pytorch_model.bin``). ``HF_HUB_OFFLINE=1`` is set before the import, so a wrong path fails
loudly instead of downloading; nothing is ever copied (seed 003: models live in one place).

Inference calls ``utils_infer.infer_batch_process`` with audio decoded and preprocessed by the
worker (``handler.refprep``: upstream's clip, trim and chunk rules without pydub, so no
ffmpeg/torchcodec is needed for the reference clip), as ``infer_process`` does. The
transcriber (``asr_backend``) is transformers' Whisper pipeline on the same device.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Any

from handler.asr import AsrBackend, WhisperBackend
from handler.config import HandlerConfig
from handler.engine import (
    EngineError,
    SynthesisRequest,
    SynthesisResult,
    cache_relative,
    require_file,
    seeded,
)

BACKBONES = ("DiT", "UNetT", "MMDiT")


def _model_config(spec: str) -> tuple[str, dict[str, Any]]:
    """(backbone class name, arch kwargs) from a packaged config name or a YAML path."""
    import yaml

    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"HANDLER_F5_MODEL_CONFIG={spec}: no such file")
        text = path.read_text()
    else:
        from importlib.resources import files

        res = files("f5_tts").joinpath(f"configs/{spec}.yaml")
        if not res.is_file():
            raise FileNotFoundError(f"HANDLER_F5_MODEL_CONFIG={spec!r} is not a config "
                                    "packaged with f5_tts (e.g. F5TTS_v1_Base) nor a YAML path")
        text = res.read_text()
    cfg = yaml.safe_load(text)
    model = cfg.get("model", cfg)
    backbone = model.get("backbone", "DiT")
    if backbone not in BACKBONES:
        raise EngineError(f"unknown F5-TTS backbone {backbone!r} in {spec}")
    mel = model.get("mel_spec", {})
    if mel.get("mel_spec_type", "vocos") != "vocos":
        raise EngineError(f"{spec}: only the vocos vocoder is supported by this worker")
    return backbone, dict(model["arch"])


class F5Engine:
    name = "f5"

    def __init__(self, config: HandlerConfig) -> None:
        self.config = config
        self.model: Any = None
        self.vocoder: Any = None
        self.device = "cpu"

    def _files(self) -> dict[str, Path]:
        c, root = self.config, self.config.cache_root
        return {
            "checkpoint": require_file(c.f5_ckpt, "F5-TTS checkpoint, .safetensors",
                                       "HANDLER_F5_CKPT", root),
            "vocab": require_file(c.f5_vocab, "F5-TTS vocab.txt", "HANDLER_F5_VOCAB", root),
            "vocos_config": require_file(c.vocos_dir / "config.yaml", "Vocos vocoder config",
                                         "HANDLER_VOCOS_DIR", root),
            "vocos_weights": require_file(c.vocos_dir / "pytorch_model.bin",
                                          "Vocos vocoder weights", "HANDLER_VOCOS_DIR", root),
        }

    def check_files(self) -> None:
        self._files()

    def import_modules(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch  # noqa: F401  (seconds of imports, done while models/ is still pulling)
        import vocos  # noqa: F401
        from f5_tts import model  # noqa: F401
        from f5_tts.infer import utils_infer  # noqa: F401

    def load(self) -> dict[str, Any]:
        files = self._files()  # check every file before importing torch: fail fast and clear
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from f5_tts import model as f5_model
        from f5_tts.infer import utils_infer

        self.device = self._pick_device(torch)
        backbone, arch = _model_config(self.config.f5_model_config)
        self.model = utils_infer.load_model(
            getattr(f5_model, backbone), arch, str(files["checkpoint"]),
            mel_spec_type="vocos", vocab_file=str(files["vocab"]), device=self.device,
        )
        self.vocoder = utils_infer.load_vocoder(
            "vocos", is_local=True, local_path=str(self.config.vocos_dir), device=self.device,
        )
        params = sum(p.numel() for p in self.model.parameters())
        root = self.config.cache_root
        return {**{k: cache_relative(v, root) for k, v in files.items()}, "backbone": backbone,
                "parameters": params, "device": self.device,
                "dtype": str(next(self.model.parameters()).dtype)}

    def _pick_device(self, torch: Any) -> str:
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device,
                "model_config": self.config.f5_model_config}

    def asr_backend(self, model_dir: Path) -> AsrBackend:
        return WhisperBackend(model_dir, self.device)

    def synthesize(self, req: SynthesisRequest) -> SynthesisResult:
        if self.model is None:
            raise EngineError("engine not loaded")
        import numpy as np
        import torch
        from f5_tts.infer import utils_infer

        audio = torch.from_numpy(np.frombuffer(req.ref_audio.samples.tobytes(), dtype=np.float32)
                                 .copy()).unsqueeze(0)
        sr = req.ref_audio.sample_rate
        batches = req.chunks
        if not batches:
            raise EngineError("the text has nothing to speak")
        ref_text = req.ref_text

        def run() -> Any:
            return next(utils_infer.infer_batch_process(
                (audio, sr), ref_text, batches, self.model, self.vocoder,
                mel_spec_type="vocos", progress=None, nfe_step=req.nfe_step,
                speed=req.speed, device=self.device,
            ))

        with seeded(req.seed, torch.manual_seed) as seed:  # every job: see seeded()
            wave, rate, _ = run()
        if wave is None:
            raise EngineError("F5-TTS produced no audio")
        samples = array("f", np.asarray(wave, dtype=np.float32).tobytes())
        return SynthesisResult(samples, int(rate), {"engine": self.name, "chunks": len(batches),
                                                    "nfe_step": req.nfe_step, "seed": seed})
