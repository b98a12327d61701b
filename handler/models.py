"""The Hub models the F5 handler needs, named by its settings, for cache-sync's bootstrap.

``HANDLER_F5_MODEL_REPO`` / ``HANDLER_F5_MODEL_REVISION`` and ``HANDLER_VOCOS_MODEL_REPO`` /
``HANDLER_VOCOS_MODEL_REVISION`` name the repos. When a repo is set, the handler reads its
files from that repo's snapshot in ``HF_HUB_CACHE`` (the standard HF cache layout inside the
cache's ``models/`` area), and ``cache-sync run`` with
``CACHE_SYNC_HF_MODELS_HOOK=handler.models:hub_models`` downloads exactly those files once per
fleet when they are missing (docs/design.md section 8). With no repo set, nothing is
downloaded and the files are expected at their plain paths under ``models/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cache_sync import hfmodels

F5_DIR = "F5TTS_v1_Base"  # the layout of the upstream repo SWivid/F5-TTS
F5_CKPT = "model_1250000.safetensors"
F5_FILES = (f"{F5_DIR}/{F5_CKPT}", f"{F5_DIR}/vocab.txt")
VOCOS_FILES = ("config.yaml", "pytorch_model.bin")  # charactr/vocos-mel-24khz


def _repo(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    repo = (env.get(f"HANDLER_{name}_MODEL_REPO") or "").strip()
    if not repo:
        return None
    return repo, (env.get(f"HANDLER_{name}_MODEL_REVISION") or "main").strip()


def hub_models(environ: Mapping[str, str]) -> list[str]:
    """Model specs (``REPO@REV:FILE;FILE``) for cache-sync's ``CACHE_SYNC_HF_MODELS_HOOK``."""
    if (environ.get("HANDLER_ENGINE") or "f5").strip().lower() != "f5":
        return []
    out = []
    for name, files in (("F5", F5_FILES), ("VOCOS", VOCOS_FILES)):
        found = _repo(environ, name)
        if found:
            out.append(f"{found[0]}@{found[1]}:{';'.join(files)}")
    return out


def hub_cache(environ: Mapping[str, str], root: Path) -> Path:
    """``HF_HUB_CACHE`` as ``cache-sync run`` exports it (same default when run alone)."""
    return Path(environ.get("HF_HUB_CACHE") or root / "models" / "huggingface" / "hub")


def repo_dir(environ: Mapping[str, str], root: Path, name: str) -> Path | None:
    """The snapshot folder of the ``HANDLER_<name>_MODEL_REPO`` repo, or None when unset.
    Before the download it is the path the files will have (so "missing" names it)."""
    found = _repo(environ, name)
    if found is None:
        return None
    cache = hub_cache(environ, root)
    model = hfmodels.HubModel(found[0], found[1])
    snap = hfmodels.snapshot_dir(cache, model)
    return snap or hfmodels.storage_dir(cache, found[0]) / "snapshots" / found[1]
