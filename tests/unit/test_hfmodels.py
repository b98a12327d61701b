"""Hub model specs and the "is it complete in HF_HUB_CACHE" check (no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cache_sync import hfmodels
from cache_sync.errors import ConfigError
from cache_sync.hfmodels import HubModel

COMMIT = "c" * 40


def test_parse_specs():
    assert hfmodels.parse("org/name") == HubModel("org/name", "main", ())
    assert hfmodels.parse("gpt2@v1.0") == HubModel("gpt2", "v1.0", ())
    m = hfmodels.parse(f"SWivid/F5-TTS@{COMMIT}:F5TTS_v1_Base/*;vocab.txt")
    assert m == HubModel("SWivid/F5-TTS", COMMIT, ("F5TTS_v1_Base/*", "vocab.txt"))
    assert hfmodels.parse(str(m)) == m  # round trip
    for bad in ("", "/abs", "a/b/c", "../x", "org/na me"):
        with pytest.raises(ConfigError, match="does not name a Hub repo"):
            hfmodels.parse(bad)


def _cache(tmp: Path, files: dict[str, bytes], listing: list[str] | None,
           ref: str | None = "main") -> Path:
    """An HF cache with the standard layout: blobs, snapshot symlinks, refs, trees/."""
    store = tmp / "models--org--m"
    snap = store / "snapshots" / COMMIT
    for path, data in files.items():
        blob = store / "blobs" / f"b{abs(hash(path))}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (store / "refs").mkdir(parents=True, exist_ok=True)
        (store / "refs" / ref).write_text(COMMIT)
    if listing is not None:
        (store / "trees").mkdir(parents=True, exist_ok=True)
        (store / "trees" / f"{COMMIT}.json").write_text(json.dumps(
            {"format_version": 1, "files": {p: {"size": 1, "blob_id": "x"} for p in listing}}))
    return tmp


def test_present_follows_refs_and_the_tree_listing(tmp_path):
    cache = _cache(tmp_path, {"ckpt/a.bin": b"a", "ckpt/b.txt": b"b"},
                   listing=["ckpt/a.bin", "ckpt/b.txt", "other/big.bin"])
    assert hfmodels.present(cache, hfmodels.parse("org/m@main:ckpt/*"))
    assert hfmodels.present(cache, hfmodels.parse(f"org/m@{COMMIT}:ckpt/"))
    assert not hfmodels.present(cache, hfmodels.parse("org/m"))  # other/big.bin is missing
    assert not hfmodels.present(cache, hfmodels.parse("org/m@v2:ckpt/*"))  # unknown ref
    assert not hfmodels.present(cache, hfmodels.parse("org/other"))


def test_a_dangling_snapshot_link_is_not_present(tmp_path):
    cache = _cache(tmp_path, {"ckpt/a.bin": b"a"}, listing=["ckpt/a.bin"])
    for blob in (tmp_path / "models--org--m" / "blobs").iterdir():
        blob.unlink()  # the symlink stays, its blob is gone (a half-pulled cache)
    assert not hfmodels.present(cache, hfmodels.parse("org/m@main:ckpt/*"))


def test_without_a_listing_literal_files_decide(tmp_path):
    """A cache from an older huggingface_hub or a dev box has no trees/ listing."""
    cache = _cache(tmp_path, {"F5/model.safetensors": b"w", "F5/vocab.txt": b"v"},
                   listing=None)
    assert hfmodels.present(cache, hfmodels.parse(
        "org/m@main:F5/model.safetensors;F5/vocab.txt"))
    assert not hfmodels.present(cache, hfmodels.parse(
        "org/m@main:F5/model.safetensors;F5/missing.txt"))
    assert hfmodels.present(cache, hfmodels.parse("org/m@main:F5/*"))  # non-empty snapshot


def test_hook_errors_name_the_setting():
    with pytest.raises(ConfigError, match="CACHE_SYNC_HF_MODELS_HOOK"):
        hfmodels.from_hook("cache_sync.hfmodels:no_such_function", {})
    assert [str(m) for m in hfmodels.from_hook(
        "handler.models:hub_models", {"HANDLER_VOCOS_MODEL_REPO": "charactr/vocos-mel-24khz"})
    ] == ["charactr/vocos-mel-24khz@main:config.yaml;pytorch_model.bin"]
