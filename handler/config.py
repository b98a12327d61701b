"""Handler configuration: the one place the worker reads its environment variables.

Model locations default to files under the cache root's ``models/`` area (the area
``cache-sync pull`` fills before the worker starts), so a deployed worker needs no setting at
all; every path can be overridden. The cache root itself comes from ``CACHE_SYNC_ROOT`` or
cache-sync's own default (``/runpod-volume/cache`` when a network volume is mounted, else
``/tmp/runpod-cache``), so the handler and ``cache-sync run`` always agree on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_sync.config import default_root
from handler.models import F5_CKPT, F5_DIR, repo_dir
from handler.netfetch import IPNetwork, UrlPolicy, parse_allowlist

ENGINES = ("f5", "light")
MiB = 1024 * 1024

# Where `cache-sync push models` from a dev box puts the upstream F5-TTS v1 files (the layout
# of the HF repos SWivid/F5-TTS and charactr/vocos-mel-24khz, without the HF cache wrapper).
DEFAULT_F5_DIR = F5_DIR
DEFAULT_F5_CKPT = F5_CKPT
DEFAULT_VOCOS_DIR = "vocos-mel-24khz"
DEFAULT_LIGHT_MODEL = "light-tts/model.json"
# The transcriber upstream F5-TTS uses (utils_infer.initialize_asr_pipeline), as an HF id found
# in the HF cache layout under models/huggingface/hub (cache-sync env's HF_HUB_CACHE).
DEFAULT_ASR_MODEL = "openai/whisper-large-v3-turbo"
DEFAULT_ASR_REVISION = "main"


class HandlerConfigError(ValueError):
    """A handler environment variable is malformed (one line, names the variable).

    The full message (with the value) goes to the worker's log; replies name only
    ``variable``, since a value such as a bucket URL is the operator's business."""

    def __init__(self, message: str, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HandlerConfigError(f"{name}={raw!r} is not a whole number", name) from None
    if value < minimum:
        raise HandlerConfigError(f"{name}={value} is below the minimum {minimum}", name)
    return value


def _float(env: Mapping[str, str], name: str, default: float,
           minimum: float | None = None) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HandlerConfigError(f"{name}={raw!r} is not a number", name) from None
    if minimum is not None and not value >= minimum:  # also refuses nan
        raise HandlerConfigError(f"{name}={raw} is below the minimum {minimum:g}", name)
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise HandlerConfigError(f"{name}={raw!r} is not a boolean (use true/false)", name)


@dataclass(frozen=True)
class HandlerConfig:
    cache_root: Path
    engine: str
    models_dir: Path
    f5_ckpt: Path
    f5_vocab: Path
    f5_model_config: str  # a packaged f5_tts config name (F5TTS_v1_Base) or a YAML file path
    vocos_dir: Path
    light_model: Path
    device: str  # "auto", "cpu", "cuda", "cuda:1", ...
    concurrency: int
    max_text_chars: int
    max_ref_audio_bytes: int
    max_ref_seconds: float
    max_nfe_step: int
    allow_url_ref_audio: bool
    url_timeout: float  # the whole fetch of a reference URL, every hop and byte
    url_allow_hosts: frozenset[str]  # exempt from the address checks (HANDLER_URL_ALLOWLIST)
    url_allow_nets: tuple[IPNetwork, ...]
    max_output_seconds: float  # estimated length of the generated audio
    output_url: str | None  # s3://bucket/prefix for "output": "s3"
    output_url_expires: int
    asr_model: str  # HF id (looked up in hf_hub_dir) or a model directory path
    asr_revision: str  # branch/tag name (refs/<name>) or a 40-hex commit
    asr_keep_seconds: float  # keep the transcriber this long after its last use; 0 = free now
    hf_hub_dir: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HandlerConfig:
        env = dict(os.environ if environ is None else environ)
        root = Path(os.path.abspath(env.get("CACHE_SYNC_ROOT") or default_root(env)))
        models = Path(env.get("HANDLER_MODELS_DIR") or root / "models")
        f5_repo = repo_dir(env, root, "F5")  # HANDLER_F5_MODEL_REPO: the HF cache snapshot
        f5_dir = f5_repo / DEFAULT_F5_DIR if f5_repo else models / DEFAULT_F5_DIR
        vocos_dir = repo_dir(env, root, "VOCOS") or models / DEFAULT_VOCOS_DIR
        engine = (env.get("HANDLER_ENGINE") or "f5").strip().lower()
        if engine not in ENGINES:
            raise HandlerConfigError(
                f"HANDLER_ENGINE={engine!r} is unknown (use one of: {', '.join(ENGINES)})",
                "HANDLER_ENGINE")
        output_url = env.get("HANDLER_OUTPUT_URL") or _default_output_url(env)
        if output_url and not output_url.startswith("s3://"):
            raise HandlerConfigError(
                f"HANDLER_OUTPUT_URL={output_url!r} is not an s3://bucket/prefix URL",
                "HANDLER_OUTPUT_URL")
        try:
            allow_hosts, allow_nets = parse_allowlist(env.get("HANDLER_URL_ALLOWLIST", ""))
        except ValueError as err:
            raise HandlerConfigError(f"HANDLER_URL_ALLOWLIST: {err}",
                                     "HANDLER_URL_ALLOWLIST") from None
        return cls(
            cache_root=root,
            engine=engine,
            models_dir=models,
            f5_ckpt=Path(env.get("HANDLER_F5_CKPT") or f5_dir / DEFAULT_F5_CKPT),
            f5_vocab=Path(env.get("HANDLER_F5_VOCAB") or f5_dir / "vocab.txt"),
            f5_model_config=env.get("HANDLER_F5_MODEL_CONFIG") or "F5TTS_v1_Base",
            vocos_dir=Path(env.get("HANDLER_VOCOS_DIR") or vocos_dir),
            light_model=Path(env.get("HANDLER_LIGHT_MODEL") or models / DEFAULT_LIGHT_MODEL),
            device=env.get("HANDLER_DEVICE") or "auto",
            concurrency=_int(env, "HANDLER_CONCURRENCY", 1, minimum=1),
            max_text_chars=_int(env, "HANDLER_MAX_TEXT_CHARS", 2000, minimum=1),
            max_ref_audio_bytes=_int(env, "HANDLER_MAX_REF_AUDIO_BYTES", 10 * MiB, minimum=1),
            max_ref_seconds=_float(env, "HANDLER_MAX_REF_SECONDS", 30.0),
            max_output_seconds=_float(env, "HANDLER_MAX_OUTPUT_SECONDS", 300.0, minimum=1.0),
            max_nfe_step=_int(env, "HANDLER_MAX_NFE_STEP", 64, minimum=1),
            allow_url_ref_audio=_bool(env, "HANDLER_ALLOW_URL_REF_AUDIO", False),
            url_timeout=_float(env, "HANDLER_URL_TIMEOUT", 20.0, minimum=0.1),
            url_allow_hosts=allow_hosts,
            url_allow_nets=allow_nets,
            output_url=output_url,
            output_url_expires=_int(env, "HANDLER_OUTPUT_URL_EXPIRES", 3600, minimum=1),
            asr_model=env.get("HANDLER_ASR_MODEL") or DEFAULT_ASR_MODEL,
            asr_revision=env.get("HANDLER_ASR_REVISION") or DEFAULT_ASR_REVISION,
            asr_keep_seconds=_float(env, "HANDLER_ASR_KEEP_SECONDS", 0.0, minimum=0.0),
            hf_hub_dir=Path(env.get("HF_HUB_CACHE") or models / "huggingface" / "hub"),
        )


    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(max_bytes=self.max_ref_audio_bytes, deadline=self.url_timeout,
                         allow_hosts=self.url_allow_hosts, allow_nets=self.url_allow_nets)


def _default_output_url(env: Mapping[str, str]) -> str | None:
    """Outputs go to ``outputs/`` at the root of the cache's bucket: same bucket, endpoint and
    credentials, but outside the store prefix so cache-sync's gc never sees them."""
    remote = env.get("CACHE_SYNC_REMOTE", "")
    if not remote.startswith("s3://"):
        return None
    bucket = remote[len("s3://"):].split("/", 1)[0]
    return f"s3://{bucket}/outputs" if bucket else None
