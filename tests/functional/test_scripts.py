"""The deployment scripts: shellcheck, clear messages for missing settings without secrets, and
the whole worker flow against a real S3 server (moto) and a local package index:
setup (source) -> install-runpod-deps.sh -> cache-sync run, then a second worker that gets
everything from the bucket with no install at all."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cache_sync.reqs import parse_file
from tests.support import REPO
from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

LEFT_OUT = __import__("runpy").run_path(str(REPO / "requirements" / "stack.py"))["LEFT_OUT"]

SETUP = REPO / "scripts" / "setup-backblaze-storage.sh"
INSTALL = REPO / "scripts" / "install-runpod-deps.sh"


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean():
    p = subprocess.run(["shellcheck", "-x", str(SETUP), str(INSTALL)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout


def bash(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=180, cwd=REPO)


def test_setup_names_missing_settings_and_never_prints_secrets(tmp_path):
    env = hermetic_env(tmp_path)
    del env["CACHE_SYNC_REMOTE"]
    env.update({"CACHE_SYNC_PYTHON": sys.executable, "B2_APPLICATION_KEY": "K005-very-secret"})
    p = bash(f"source {SETUP}; echo after=$?", env)
    assert "after=2" in p.stdout  # returned to the calling shell, which kept running
    assert "missing setting: B2_BUCKET" in p.stderr
    assert "missing setting: B2_APPLICATION_KEY_ID" in p.stderr
    assert "missing setting: B2_REGION" in p.stderr
    assert "B2_APPLICATION_KEY (or" not in p.stderr  # that one is set
    assert "K005-very-secret" not in p.stdout + p.stderr


def test_runpod_requirements_curate_f5_tts():
    """f5-tts without its deps; its runtime deps listed; gradio and bitsandbytes absent.
    F5_REQUIRES is f5-tts 1.1.22's METADATA (pip download --no-deps f5-tts==1.1.22); the slow
    test below re-reads it from PyPI."""
    specs = parse_file(REPO / "requirements" / "runpod.txt")
    by_name = {s.name: s for s in specs.specs}
    assert by_name["f5-tts"].no_deps
    assert "gradio" not in by_name and "bitsandbytes" not in by_name
    for raw in F5_REQUIRES:
        name = canonicalize_name(Requirement(raw).name)
        if name not in LEFT_OUT:
            assert name in by_name, f"f5-tts runtime dependency {name} is missing"
    assert by_name["torch"].timeout == 900


F5_REQUIRES = [
    "accelerate>=0.33.0", "bitsandbytes>0.37.0", "cached_path", "click", "datasets",
    "ema_pytorch>=0.5.2", "gradio>=6.15.0", "hydra-core>=1.3.0", "librosa", "matplotlib",
    "numpy<=1.26.4", "pydub", "pypinyin", "rjieba", "safetensors", "soundfile", "tomli",
    "torch>=2.0.0", "torchaudio>=2.0.0", "torchcodec", "torchdiffeq", "tqdm>=4.65.0",
    "transformers", "transformers_stream_generator", "unidecode", "vocos", "wandb",
    "x_transformers>=1.31.14",
]


@pytest.mark.slow
def test_f5_tts_metadata_from_pypi_matches(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(tmp_path), "f5-tts==1.1.22"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    import zipfile

    whl = next(tmp_path.glob("f5_tts-*.whl"))
    with zipfile.ZipFile(whl) as z:
        meta = z.read("f5_tts-1.1.22.dist-info/METADATA").decode()
    live = [ln.split(":", 1)[1].strip().split(";")[0] for ln in meta.splitlines()
            if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert sorted(live) == sorted(F5_REQUIRES)


def test_worker_flow_setup_install_run_then_second_worker(moto, tmp_path):
    idx = build_index(tmp_path / "idx", [
        make_wheel(tmp_path / "w", "workerdep", "1.0", {"workerdep.py": "OK = 'yes'\n"}),
        make_wheel(tmp_path / "w", "workerapp", "1.0",
                   {"workerapp/__init__.py": "import workerdep\n"}, requires=("workerdep",)),
    ])
    req = tmp_path / "runpod-test.txt"
    req.write_text("workerapp==1.0\n")
    bucket = moto.make_bucket()
    with serve(idx) as srv:
        base = hermetic_env(tmp_path, srv.url + "/simple")
        del base["CACHE_SYNC_REMOTE"]
        base.update({
            "CACHE_SYNC_PYTHON": sys.executable, "CACHE_SYNC_PROGRESS": "off",
            "B2_BUCKET": bucket, "B2_PREFIX": "workers",
            "B2_APPLICATION_KEY_ID": moto.access_key, "B2_APPLICATION_KEY": moto.secret_key,
            "CACHE_SYNC_ENDPOINT_URL": moto.endpoint, "AWS_REGION": moto.region,
            "RUNPOD_REQUIREMENTS": str(req), "FLASH_ATTN_VERSION": "none",
            "RUNPOD_CHECK_IMPORTS": "workerapp", "CACHE_SYNC_DOCTOR_SIZE": "1M",
        })
        flow = (f"source {SETUP} || exit 90\n"
                f"{INSTALL} --installer pip || exit 91\n"
                f'{sys.executable} -m cache_sync run -- python -c "import workerapp, '
                'workerdep, tempfile; print(workerdep.OK, tempfile.gettempdir())"')
        first = bash(flow, {**base, "CACHE_SYNC_ROOT": str(tmp_path / "w1")})
        assert first.returncode == 0, first.stdout + first.stderr
        assert "verdict: ok" in first.stderr and "batch delete" in first.stderr  # doctor ran
        assert f"yes {tmp_path / 'w1' / 'tmp'}" in first.stdout
        assert "workerapp" in first.stdout and "installed" in first.stdout
        served = len(srv.requests)
        second = bash(flow, {**base, "CACHE_SYNC_ROOT": str(tmp_path / "w2")})
        assert second.returncode == 0, second.stdout + second.stderr
        assert "satisfied" in second.stdout and "installed" not in second.stdout
        assert len(srv.requests) == served  # the second worker installed nothing
    for out in (first, second):
        assert moto.secret_key not in out.stdout + out.stderr
