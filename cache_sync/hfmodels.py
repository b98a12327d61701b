"""Hugging Face Hub models a worker needs: which, whether the cache already has them, and the
download (``huggingface_hub.snapshot_download`` straight into ``HF_HUB_CACHE``: the standard
``models--org--name/{blobs,snapshots,refs}`` layout, so the files exist exactly once).

A model is named ``REPO[@REVISION][:GLOB[;GLOB...]]``, e.g.
``SWivid/F5-TTS@main:F5TTS_v1_Base/model_1250000.safetensors;F5TTS_v1_Base/vocab.txt``.
The globs are ``snapshot_download``'s ``allow_patterns``; without them the whole repo is
fetched.

The download runs in a child interpreter: huggingface_hub reads ``HF_HUB_OFFLINE`` and
``HF_ENDPOINT`` once at import, the worker's own environment keeps ``HF_HUB_OFFLINE=1`` for
serving, and the supervisor (PID 1) should not carry the Hub client's memory for its whole life.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cache_sync.errors import CacheSyncError, ConfigError

_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class ModelDownloadError(CacheSyncError):
    """The Hub download of a configured model failed."""

    exit_code = 1


@dataclass(frozen=True)
class HubModel:
    repo: str
    revision: str = "main"
    patterns: tuple[str, ...] = ()

    def __str__(self) -> str:
        tail = (":" + ";".join(self.patterns)) if self.patterns else ""
        return f"{self.repo}@{self.revision}{tail}"


def parse(spec: str, origin: str = "CACHE_SYNC_HF_MODELS") -> HubModel:
    head, _, globs = spec.strip().partition(":")
    repo, _, revision = head.partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise ConfigError(f"{origin}: {spec!r} does not name a Hub repo",
                          hint="write REPO[@REVISION][:GLOB;GLOB], e.g. org/name@main")
    patterns = tuple(g.strip() for g in globs.split(";") if g.strip())
    return HubModel(repo, revision.strip() or "main", patterns)


def from_hook(hook: str, environ: Mapping[str, str]) -> list[HubModel]:
    """``module:function``: a function of the environment returning model specs (the handler
    package provides ``handler.models:hub_models``)."""
    module, _, attr = hook.partition(":")
    try:
        func: Callable[[Mapping[str, str]], Sequence[str]] = getattr(
            importlib.import_module(module), attr)
        specs = list(func(environ))
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"CACHE_SYNC_HF_MODELS_HOOK={hook!r}: {exc}",
                          hint="name a module:function returning model specs") from None
    return [parse(s, origin=hook) for s in specs]


def storage_dir(hub_cache: Path, repo: str) -> Path:
    return hub_cache / ("models--" + repo.replace("/", "--"))


def snapshot_dir(hub_cache: Path, model: HubModel) -> Path | None:
    """The snapshot folder the revision points at, or None when the cache does not know it
    (a branch or tag is resolved through ``refs/``, as huggingface_hub does offline)."""
    store = storage_dir(hub_cache, model.repo)
    commit = model.revision if _COMMIT.fullmatch(model.revision) else None
    if commit is None:
        try:
            commit = (store / "refs" / model.revision).read_text().strip()
        except OSError:
            return None
    snap = store / "snapshots" / commit
    return snap if snap.is_dir() else None


def present(hub_cache: Path, model: HubModel) -> bool:
    """True when every file the model needs is in the cache (symlink and blob both)."""
    snap = snapshot_dir(hub_cache, model)
    if snap is None:
        return False
    listed = _tree_listing(storage_dir(hub_cache, model.repo), snap.name)
    if listed is not None:
        wanted = [p for p in listed if _allowed(p, model.patterns)]
        return all((snap / p).exists() for p in wanted)
    literal = [p for p in model.patterns if not any(c in p for c in "*?[")]
    if literal and len(literal) == len(model.patterns):
        return all((snap / p).exists() for p in literal)
    return any(snap.iterdir())  # no listing to compare with: a non-empty snapshot counts


def _tree_listing(store: Path, commit: str) -> list[str] | None:
    """huggingface_hub (>= 1.x) keeps the repo's file list per commit in ``trees/``."""
    try:
        doc = json.loads((store / "trees" / f"{commit}.json").read_text())
        return list(doc["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _allowed(path: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return True
    return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)


def download(models: Sequence[HubModel], hub_cache: Path, base_env: Mapping[str, str],
             log: Callable[[str], None]) -> None:
    """Fetch ``models`` into ``hub_cache`` in a child interpreter (see the module docstring)."""
    env = {k: v for k, v in base_env.items() if not k.startswith("HF_HUB_OFFLINE")}
    env.update({"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_OFFLINE": "0"})
    env.pop("HF_HUB_ENABLE_HF_TRANSFER", None)
    hub_cache.mkdir(parents=True, exist_ok=True)
    for model in models:
        log(f"downloading {model} from {env.get('HF_ENDPOINT') or 'the Hub'}")
        proc = subprocess.run([sys.executable, "-m", "cache_sync.hfmodels",
                               json.dumps(asdict(model))], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            raise ModelDownloadError(f"download of {model} failed: {lines[-1]}",
                                     hint="check HF_ENDPOINT and the network, the repo, "
                                     "its revision and HF_TOKEN")
        if not present(hub_cache, model):
            raise ModelDownloadError(f"download of {model} finished but files are missing "
                                     f"under {storage_dir(hub_cache, model.repo)}")


def _main(argv: list[str]) -> int:
    spec = HubModel(**{**json.loads(argv[0]),
                       "patterns": tuple(json.loads(argv[0])["patterns"])})
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        print("huggingface_hub is not installed (pip install huggingface_hub)", file=sys.stderr)
        return 2
    try:
        path = snapshot_download(spec.repo, revision=spec.revision,
                                 allow_patterns=list(spec.patterns) or None,
                                 cache_dir=os.environ["HF_HUB_CACHE"])
    except Exception as exc:  # noqa: BLE001 -- the one line the parent reports
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
