"""uv with more than one index behaves as pip does: the best matching version from any index.

uv's default (first index that has the package wins) breaks the worker's GPU requirements:
their ``--extra-index-url`` (the PyTorch CUDA index) also hosts older copies of common
packages, so an exact pin such as ``numpy==2.4.6`` that only the default index has would fail.
``cache-sync install`` passes ``--index-strategy unsafe-best-match`` whenever uv gets an extra
index (from a requirements file or from pip's configuration)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

pytestmark = pytest.mark.skipif(not shutil.which("uv"), reason="uv not installed")


def test_uv_takes_an_exact_pin_from_the_default_index_despite_an_extra_one(tmp_path):
    new = make_wheel(tmp_path / "w2", "commonpkg", "2.0", {"commonpkg/__init__.py": "V = 2\n"})
    old = make_wheel(tmp_path / "w1", "commonpkg", "1.0", {"commonpkg/__init__.py": "V = 1\n"})
    default = build_index(tmp_path / "default", [new])  # "PyPI": has the pinned version
    extra = build_index(tmp_path / "extra", [old])  # "the PyTorch index": an old copy only
    with serve(default) as d, serve(extra) as x:
        req = tmp_path / "req.txt"
        req.write_text(f"--extra-index-url {x.url}/simple\ncommonpkg==2.0\n")
        env = hermetic_env(tmp_path, d.url + "/simple")
        p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "install", "--no-push",
                            "--installer", "uv", "-r", str(req), "--no-import-check"],
                           env=env, capture_output=True, text=True, timeout=180, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    units = json.loads(p.stdout)["units"]
    assert units[0]["status"] == "installed" and units[0]["new"] == {"commonpkg": "2.0"}
