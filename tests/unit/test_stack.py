"""One pinned stack: requirements/stack.py renders requirements/runpod.txt (GPU) and its CPU
twin runpod-cpu.txt (what the f5 tier installs); the files, and the docs that quote them, must
not drift from it, and the two files may differ only in the torch build."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

from cache_sync.reqs import parse_file

REPO = Path(__file__).resolve().parents[2]
STACK = runpy.run_path(str(REPO / "requirements" / "stack.py"))


def test_generated_files_match_the_source_of_truth():
    assert STACK["drift"]() == []
    p = subprocess.run([sys.executable, str(REPO / "requirements" / "stack.py"), "--check"],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr


def test_drift_is_detected(tmp_path, monkeypatch):
    """--check fails, naming the file and the fix, when a generated file is edited by hand."""
    copy = tmp_path / "requirements"
    copy.mkdir()
    for name in ("stack.py", "runpod.txt", "runpod-cpu.txt"):
        (copy / name).write_text((REPO / "requirements" / name).read_text())
    cpu = copy / "runpod-cpu.txt"
    cpu.write_text(cpu.read_text().replace("transformers==4.57.6", "transformers==4.57.5"))
    p = subprocess.run([sys.executable, str(copy / "stack.py"), "--check"],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 1
    assert "runpod-cpu.txt differs from requirements/stack.py" in p.stderr
    assert "runpod.txt differs" not in p.stderr.replace("runpod-cpu.txt differs", "")


def test_gpu_and_cpu_files_differ_only_in_the_torch_build():
    gpu = parse_file(REPO / "requirements" / "runpod.txt")
    cpu = parse_file(REPO / "requirements" / "runpod-cpu.txt")
    g = {s.name: s for s in gpu.specs}
    c = {s.name: s for s in cpu.specs}
    assert list(g) == list(c)
    for name, spec in g.items():
        gt, ct = spec.text, c[name].text
        if name in ("torch", "torchaudio"):
            assert gt == ct + "+" + STACK["CUDA_TAG"], (gt, ct)
        else:
            assert gt == ct and spec.no_deps == c[name].no_deps
    assert gpu.options == ["--extra-index-url", STACK["TORCH_INDEX"]] and cpu.options == []
    # Everything the worker's code touches is pinned exactly.
    for name in ("torch", "torchaudio", "f5-tts", "transformers", "vocos", "huggingface-hub",
                 "datasets", "x-transformers", "accelerate"):
        assert "==" in c[name].text, name


def test_docs_quote_the_pins():
    doc = (REPO / "docs" / "handler.md").read_text()
    for line in STACK["render"]("cpu").splitlines():
        if line and not line.startswith("#"):
            assert line in doc, f"docs/handler.md does not quote {line!r}"
    assert f"--extra-index-url {STACK['TORCH_INDEX']}" in doc
