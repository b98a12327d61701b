"""Build a tiny, randomly initialised F5-TTS (DiT dim 64, depth 2), Vocos vocoder and Whisper
transcriber, and save them in the layout production uses under ``models/`` (the Whisper one in
the HF cache layout, as ``huggingface-cli download`` leaves it). Needs torch, f5_tts, vocos
and transformers; no hub access (the Whisper tokenizer is a byte-level vocabulary written
here).

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
def vocos_config(dim: int, intermediate_dim: int, num_layers: int) -> str:
    """A Vocos mel-24 kHz config (the upstream shape) with the backbone's size chosen."""
    return f"""\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {{sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {{input_channels: 100, dim: {dim}, intermediate_dim: {intermediate_dim}, \
num_layers: {num_layers}}}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {{dim: {dim}, n_fft: 1024, hop_length: 256, padding: center}}
"""


VOCOS_CONFIG = vocos_config(32, 64, 2)


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
        **build_whisper(models),
        "HANDLER_F5_CKPT": str(ckpt.relative_to(models)),
        "HANDLER_F5_VOCAB": str(vocab.relative_to(models)),
        "HANDLER_F5_MODEL_CONFIG": str(cfg.relative_to(models)),
        "HANDLER_VOCOS_DIR": str(vocos_dir.relative_to(models)),
    }


WHISPER_ID = "tiny-test/whisper"
WHISPER_SHA = "5eed000000000000000000000000000000000001"
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                    "<|notimestamps|>"]


def build_whisper(models: Path) -> dict[str, str]:
    """A 90k-parameter Whisper (1 encoder and 1 decoder layer, d_model 32) with a 256-token
    byte-level tokenizer, saved as snapshot ``WHISPER_SHA`` of ``WHISPER_ID`` under
    ``models/huggingface/hub`` with ``refs/main`` pointing at it."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    repo = models / "huggingface" / "hub" / ("models--" + WHISPER_ID.replace("/", "--"))
    snap = repo / "snapshots" / WHISPER_SHA
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(WHISPER_SHA)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    (snap / "vocab.json").write_text(json.dumps(vocab))
    (snap / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(snap / "vocab.json"), str(snap / "merges.txt"),
                           additional_special_tokens=WHISPER_SPECIALS[1:],
                           pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=80, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, d_model=32, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        max_length=32, no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        begin_suppress_tokens=[eot], suppress_tokens=[])
    model.save_pretrained(snap)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80),
                     tokenizer=tok).save_pretrained(snap)
    return {"HANDLER_ASR_MODEL": WHISPER_ID, "HANDLER_ASR_REVISION": "main"}


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
