"""Build a tiny, randomly initialised F5-TTS (DiT dim 64, depth 2) and Vocos vocoder, and save
them in the layout production uses under ``models/``. Needs torch, f5_tts and vocos.

Run as a script (``python tests/support/f5_tiny.py MODELS_DIR``) so it can execute in the
interpreter that has the heavy stack, not the test runner's.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

TINY_ARCH = {
    "dim": 64, "depth": 2, "heads": 2, "ff_mult": 2, "text_dim": 32, "conv_layers": 1,
    "text_mask_padding": True, "qk_norm": None, "pe_attn_head": None, "attn_backend": "torch",
    "attn_mask_enabled": False, "checkpoint_activations": False,
}
VOCOS_CONFIG = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 32, intermediate_dim: 64, num_layers: 2}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 32, n_fft: 1024, hop_length: 256, padding: center}
"""


def build(models: Path) -> dict[str, str]:
    """Write the tiny model under ``models``; returns the handler settings, as paths
    relative to ``models`` (the caller joins them onto wherever the area ends up)."""
    import torch
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from safetensors.torch import save_file
    from vocos import Vocos

    torch.manual_seed(0)
    f5_dir, vocos_dir = models / "f5-tiny", models / "vocos-tiny"
    f5_dir.mkdir(parents=True, exist_ok=True)
    vocos_dir.mkdir(parents=True, exist_ok=True)

    vocab = f5_dir / "vocab.txt"
    chars = [" "] + sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab.write_text("\n".join(chars) + "\n")
    char_map, vocab_size = get_tokenizer(str(vocab), "custom")
    model = CFM(
        transformer=DiT(**TINY_ARCH, text_num_embeds=vocab_size, mel_dim=100),
        mel_spec_kwargs={"n_fft": 1024, "hop_length": 256, "win_length": 1024,
                         "n_mel_channels": 100, "target_sample_rate": 24000,
                         "mel_spec_type": "vocos"},
        vocab_char_map=char_map,
    )
    ckpt = f5_dir / "model_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    cfg = f5_dir / "model.yaml"
    cfg.write_text(json.dumps({"model": {"backbone": "DiT", "arch": TINY_ARCH,
                                         "mel_spec": {"mel_spec_type": "vocos"}}}))

    (vocos_dir / "config.yaml").write_text(VOCOS_CONFIG)
    vocoder = Vocos.from_hparams(str(vocos_dir / "config.yaml"))
    torch.save(vocoder.state_dict(), str(vocos_dir / "pytorch_model.bin"))
    return {
        "HANDLER_F5_CKPT": str(ckpt.relative_to(models)),
        "HANDLER_F5_VOCAB": str(vocab.relative_to(models)),
        "HANDLER_F5_MODEL_CONFIG": str(cfg.relative_to(models)),
        "HANDLER_VOCOS_DIR": str(vocos_dir.relative_to(models)),
    }


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
