"""The handler names its Hub models (HANDLER_*_MODEL_REPO); `cache-sync run` with the image's
hook downloads exactly those files into HF_HUB_CACHE once, and the handler's config finds them
there. With no repo set, nothing is downloaded and the old plain paths stay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from handler.config import HandlerConfig
from handler.models import F5_FILES, VOCOS_FILES, hub_models
from tests.support.fakehub import FakeHub, Repo
from tests.support.pkgindex import hermetic_env

CHILD = """
import json, sys
from handler.config import HandlerConfig
c = HandlerConfig.from_env()
files = [c.f5_ckpt, c.f5_vocab, c.vocos_dir / "config.yaml", c.vocos_dir / "pytorch_model.bin"]
print(json.dumps({str(f): f.read_bytes().decode() for f in files}))
"""


def test_run_downloads_the_handlers_models_once_and_the_config_finds_them(tmp_path):
    f5 = Repo("SWivid/F5-TTS", {**{p: f"f5:{p}".encode() for p in F5_FILES},
                                "E2TTS_Base/model_1200000.safetensors": b"not needed"})
    vocos = Repo("charactr/vocos-mel-24khz", {p: f"vocos:{p}".encode() for p in VOCOS_FILES})
    with FakeHub(f5, vocos) as hub:
        env = {**hermetic_env(tmp_path), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1",
               "CACHE_SYNC_HF_MODELS_HOOK": "handler.models:hub_models",
               "HANDLER_F5_MODEL_REPO": "SWivid/F5-TTS",
               "HANDLER_VOCOS_MODEL_REPO": "charactr/vocos-mel-24khz",
               "CACHE_SYNC_PROGRESS": "off"}
        cmd = [sys.executable, "-m", "cache_sync", "--json", "run", "--", sys.executable, "-c",
               CHILD]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                                check=False)
        assert first.returncode == 0, first.stderr
        assert sorted(hub.downloads) == sorted(
            [("SWivid/F5-TTS", p) for p in F5_FILES] + [("charactr/vocos-mel-24khz", p)
                                                        for p in VOCOS_FILES])
        # a second worker on a fresh root pulls the models from the store: no Hub request
        env2 = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "cache2")}
        second = subprocess.run(cmd, env=env2, capture_output=True, text=True, timeout=120,
                                check=False)
        assert second.returncode == 0, second.stderr
        assert sum(hub.downloads.values()) == len(F5_FILES) + len(VOCOS_FILES)
    for proc, root in ((first, tmp_path / "cache"), (second, tmp_path / "cache2")):
        seen = json.loads(proc.stdout.splitlines()[0])
        hub_dir = root / "models" / "huggingface" / "hub"
        assert all(Path(p).is_relative_to(hub_dir) for p in seen)
        assert sorted(seen.values()) == sorted(
            [f"f5:{p}" for p in F5_FILES] + [f"vocos:{p}" for p in VOCOS_FILES])
        assert all(Path(p).is_symlink() for p in seen)  # HF layout: snapshot links to blobs


def test_no_repo_configured_keeps_the_plain_paths_and_downloads_nothing(tmp_path):
    env = {"CACHE_SYNC_ROOT": str(tmp_path), "HANDLER_ENGINE": "f5"}
    assert hub_models(env) == []
    c = HandlerConfig.from_env(env)
    assert c.f5_ckpt == tmp_path / "models" / "F5TTS_v1_Base" / "model_1250000.safetensors"
    assert c.vocos_dir == tmp_path / "models" / "vocos-mel-24khz"
    assert hub_models({**env, "HANDLER_ENGINE": "light",
                       "HANDLER_F5_MODEL_REPO": "SWivid/F5-TTS"}) == []
    pinned = hub_models({**env, "HANDLER_F5_MODEL_REPO": "SWivid/F5-TTS",
                         "HANDLER_F5_MODEL_REVISION": "a" * 40})
    assert pinned == [f"SWivid/F5-TTS@{'a' * 40}:{';'.join(F5_FILES)}"]


def test_a_missing_hub_file_names_the_bootstrap_as_the_fix(tmp_path):
    from handler.engine import ModelMissingError

    c = HandlerConfig.from_env({"CACHE_SYNC_ROOT": str(tmp_path),
                                "HANDLER_F5_MODEL_REPO": "SWivid/F5-TTS"})
    err = ModelMissingError(c.f5_ckpt, "F5-TTS checkpoint", "HANDLER_F5_CKPT", tmp_path)
    assert "models--SWivid--F5-TTS" in err.public and "CACHE_SYNC_HF_MODELS_HOOK" in err.public
    assert str(tmp_path) not in err.public
