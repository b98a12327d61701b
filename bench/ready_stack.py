"""The worker stacks ``python -m bench ready`` starts, built once and cached under the data dir.

A stack is what a serving worker needs, in the layout a worker's cache root has:
- ``root/packages/``: the worker's requirements installed with ``cache-sync install`` from a
  local package index (``wheels/``, every wheel the requirements resolve to);
- ``root/models/``: the model area the handler loads from;
- ``reqs.txt``: the requirements, so the pip and uv modes install exactly the same set.

Two stacks:
- ``f5``: the CPU twin of the worker's pinned requirements (torch CPU, f5-tts and its runtime
  dependencies, transformers) and an F5-sized model area: the real ``F5TTS_v1_Base``
  architecture with random weights (a ~1.35 GB safetensors checkpoint), a full-size Vocos with
  random weights, f5-tts's own vocab. The real engine loads it, so "model load" is real work.
- ``tiny``: three tiny wheels and the handler's light engine: seconds, for the smoke test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACKS = ("f5", "tiny")
DEFAULT_F5_REQUIREMENTS = REPO / "requirements" / "runpod-cpu.txt"


@dataclass(frozen=True)
class Stack:
    name: str
    root: Path       # a complete cache root: packages/ and models/
    wheels: Path     # the local package index (a flat directory of wheels)
    reqs: Path       # the requirements file, with cache-sync's per-line options
    engine_env: dict[str, str]  # HANDLER_* settings that point the handler at the models

    @property
    def areas(self) -> tuple[str, ...]:
        return ("packages", "models")


def _log(msg: str) -> None:
    print(f"[bench ready] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    _log("$ " + " ".join(cmd[:8]) + (" ..." if len(cmd) > 8 else ""))
    subprocess.run(cmd, check=True, env=env)


def plain_requirements(reqs: Path) -> tuple[list[str], list[str]]:
    """(specs installed with dependencies, specs installed with --no-deps): what the pip and
    uv modes pass to the plain installers, read with cache-sync's own parser."""
    sys.path.insert(0, str(REPO))
    from cache_sync import reqs as reqs_mod

    deps: list[str] = []
    nodeps: list[str] = []
    for spec in reqs_mod.parse_file(reqs).specs:
        (nodeps if spec.no_deps else deps).append(spec.text)
    return deps, nodeps


def _download_wheels(reqs: Path, wheels: Path) -> None:
    """Every distribution the requirements resolve to, as wheels (``pip wheel`` builds the
    few that PyPI has only as sdists), so both the installers and the index serve wheels."""
    deps, nodeps = plain_requirements(reqs)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels)]
    if deps:
        _run(pip + deps)
    if nodeps:
        _run(pip + ["--no-deps"] + nodeps)


def _cache_sync_install(root: Path, reqs: Path, wheels: Path, scratch: Path) -> None:
    env = {**os.environ, "CACHE_SYNC_ROOT": str(root), "CACHE_SYNC_REMOTE":
           f"file://{scratch}/install-store", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
           "PIP_FIND_LINKS": str(wheels), "PYTHONPATH": str(REPO)}
    _run([sys.executable, "-m", "cache_sync", "install", "--installer", "uv", "--no-push",
          "-r", str(reqs)], env)


def _tiny(base: Path) -> Stack:
    sys.path.insert(0, str(REPO))
    from tests.support.pkgindex import make_wheel

    wheels = base / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(3):
        name = f"readytiny{i}"
        make_wheel(wheels, name, "1.0", {f"{name}/__init__.py": f"VALUE = {i}\n",
                                         f"{name}/data.txt": "x" * 4096})
        names.append(name)
    reqs = base / "reqs.txt"
    reqs.write_text("".join(f"{n}==1.0\n" for n in names))
    root = base / "root"
    _cache_sync_install(root, reqs, wheels, base)
    model = root / "models" / "light-tts" / "model.json"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text(json.dumps({"base_hz": 220.0}))
    return Stack("tiny", root, wheels, reqs, {"HANDLER_ENGINE": "light"})


F5_MODELS_SCRIPT = r"""
import sys, torch
from pathlib import Path
from importlib.resources import files
from omegaconf import OmegaConf
from f5_tts.model import CFM, DiT
from f5_tts.model.utils import get_tokenizer
from safetensors.torch import save_file
from vocos import Vocos
from tests.support.f5_tiny import vocos_config

models = Path(sys.argv[1])
f5_dir, vocos_dir = models / "F5TTS_v1_Base", models / "vocos-mel-24khz"
f5_dir.mkdir(parents=True, exist_ok=True); vocos_dir.mkdir(parents=True, exist_ok=True)
cfg = OmegaConf.load(str(files("f5_tts").joinpath("configs/F5TTS_v1_Base.yaml")))
vocab = f5_dir / "vocab.txt"
shipped = files("f5_tts").joinpath("infer/examples/vocab.txt")
vocab.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
char_map, vocab_size = get_tokenizer(str(vocab), "custom")
arch = OmegaConf.to_container(cfg.model.arch)
torch.manual_seed(0)
model = CFM(transformer=DiT(**arch, text_num_embeds=vocab_size, mel_dim=100),
            mel_spec_kwargs={"n_fft": 1024, "hop_length": 256, "win_length": 1024,
                             "n_mel_channels": 100, "target_sample_rate": 24000,
                             "mel_spec_type": "vocos"},
            vocab_char_map=char_map)
state = {"ema_model." + k: v.contiguous() for k, v in model.state_dict().items()}
save_file(state, str(f5_dir / "model_1250000.safetensors"))
(vocos_dir / "config.yaml").write_text(vocos_config(512, 1536, 8))  # upstream size
torch.save(Vocos.from_hparams(str(vocos_dir / "config.yaml")).state_dict(),
           str(vocos_dir / "pytorch_model.bin"))
"""


def _f5(base: Path, reqs_src: Path) -> Stack:
    wheels, root = base / "wheels", base / "root"
    reqs = base / "reqs.txt"
    shutil.copyfile(reqs_src, reqs)
    if not (base / "wheels.done").exists():
        wheels.mkdir(parents=True, exist_ok=True)
        _download_wheels(reqs, wheels)
        (base / "wheels.done").touch()
    if not (base / "packages.done").exists():
        _cache_sync_install(root, reqs, wheels, base)
        (base / "packages.done").touch()
    if not (base / "models.done").exists():
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(root / "packages"), str(REPO)])}
        _run([sys.executable, "-c", F5_MODELS_SCRIPT, str(root / "models")], env)
        (base / "models.done").touch()
    return Stack("f5", root, wheels, reqs, {"HANDLER_ENGINE": "f5", "HANDLER_DEVICE": "cpu"})


def build(data_dir: Path, name: str, requirements: Path | None = None) -> Stack:
    base = data_dir / "ready" / name
    if name == "tiny":
        shutil.rmtree(base, ignore_errors=True)  # seconds to build: always fresh
        base.mkdir(parents=True)
        return _tiny(base)
    reqs = requirements or DEFAULT_F5_REQUIREMENTS
    if not reqs.is_file():
        raise SystemExit(f"bench ready: requirements file {reqs} not found "
                         "(pass --requirements FILE: the CPU twin of requirements/runpod.txt)")
    base.mkdir(parents=True, exist_ok=True)
    return _f5(base, reqs)
