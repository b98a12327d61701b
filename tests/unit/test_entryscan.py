"""cache_sync.entryscan: the modules CMD's source imports, in order, without running it."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from cache_sync.entryscan import imported_modules
from cache_sync.unitplan import UnitPlan, need_rank


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def test_a_module_run_with_dash_m_is_read_depth_first_with_its_local_imports(tmp_path):
    _tree(tmp_path, {
        "app/__init__.py": "import yaml\n",
        "app/__main__.py": """
            import os, json
            from app.engine import load
            from . import util
            import requests
            """,
        "app/engine.py": """
            import numpy as np
            def load():
                import torch            # lazy: still read
                from torch import nn
            """,
        "app/util.py": "from .engine import load\nimport zstandard\n",
        "broken.py": "def (:\n",
    })
    got = imported_modules([sys.executable, "-u", "-X", "dev", "-m", "app"], tmp_path)
    assert got == ["yaml", "numpy", "torch", "zstandard", "requests"]


def test_a_script_and_a_python_shebang_are_read_and_anything_else_gives_nothing(tmp_path):
    _tree(tmp_path, {"serve.py": "import broken\nimport local_mod\nimport f5_tts\n",
                     "local_mod.py": "import vocos\n", "broken.py": "def (:\n"})
    assert imported_modules(["python3", "serve.py"], tmp_path) == ["vocos", "f5_tts"]
    tool = tmp_path / "tool"
    tool.write_text("#!/usr/bin/env python3\nimport transformers\n")
    os.chmod(tool, 0o755)
    assert imported_modules([str(tool), "--flag"], tmp_path) == ["transformers"]
    assert imported_modules(["sh", "-c", "python -m app"], tmp_path) == []
    assert imported_modules(["python", "-c", "import torch"], tmp_path) == []
    assert imported_modules(["python", "-m", "not_local"], tmp_path) == []
    assert imported_modules(["python", "missing.py"], tmp_path) == []
    assert imported_modules([], tmp_path) == []


def test_need_rank_is_the_first_module_that_waits_for_each_unit():
    plan = UnitPlan(modules={"torch": {"torch", "nvidia-cublas"}, "f5_tts": {"f5-tts", "torch"},
                             "late": {""}})
    assert need_rank(plan, ["numpy", "torch", "f5_tts", "late"]) == {
        "torch": 1, "nvidia-cublas": 1, "f5-tts": 2}
