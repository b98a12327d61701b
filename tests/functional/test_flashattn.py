"""flash-attn wheel selection for Python/torch/CUDA/ABI combinations, and the install path that
probes the torch in packages/ (a fake torch module built by the test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cache_sync.flashattn import RELEASES, RELEASES_MATRIX, Target, select
from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

# Each release's build matrix as its .github/workflows/publish.yml states it (python-version,
# torch-version, cuda-version, exclude), transcribed independently of the module's table, and
# the asset naming of that workflow: tmpname=cu${CUDA}torch${MAJOR.MINOR}cxx11abi${ABI}, where
# CUDA is `awk '{print $1 $2}'` of cuda-version (major+minor) before 2.7 and `'{print $1}'`
# (major) since; setup.py maps an installed CUDA 11 torch to the 11.8 build, CUDA 12 to 12.3.
WORKFLOWS = {
    "2.6.3": {"python": ["3.8", "3.9", "3.10", "3.11", "3.12"],
              "torch": ["2.0.1", "2.1.2", "2.2.2", "2.3.1", "2.4.0"],
              "cuda": ["11.8.0", "12.3.2"],
              "exclude": [{"torch": "2.0.1", "python": "3.12"},
                          {"torch": "2.1.2", "python": "3.12"},
                          {"torch": "2.0.1", "cuda": "12.3.2"}]},
    "2.7.4.post1": {"python": ["3.9", "3.10", "3.11", "3.12", "3.13"],
                    "torch": ["2.2.2", "2.3.1", "2.4.0", "2.5.1", "2.6.0"],
                    "cuda": ["12.4.1"],
                    "exclude": [{"torch": t, "python": "3.13"} for t in ("2.2.2", "2.3.1", "2.4.0")]},
    "2.8.0.post2": {"python": ["3.9", "3.10", "3.11", "3.12", "3.13"],
                    "torch": ["2.4.0", "2.5.1", "2.6.0", "2.7.1"], "cuda": ["12.9.0"],
                    "exclude": [{"torch": "2.4.0", "python": "3.13"}]},
    "2.8.3": {"python": ["3.9", "3.10", "3.11", "3.12", "3.13"],
              "torch": ["2.4.0", "2.5.1", "2.6.0", "2.7.1", "2.8.0"], "cuda": ["12.9.1"],
              "exclude": [{"torch": "2.4.0", "python": "3.13"}]},
}


def _asset(fa, cuda, torch, abi, py):
    major, minor = cuda.split(".")[:2]
    tag = major + minor if fa in ("2.6.3",) else major
    t = ".".join(torch.split(".")[:2])
    p = py.replace(".", "")
    return f"flash_attn-{fa}+cu{tag}torch{t}cxx11abi{abi}-cp{p}-cp{p}-linux_x86_64.whl"


def _built(fa):
    wf = WORKFLOWS[fa]
    for py in wf["python"]:
        for torch in wf["torch"]:
            for cuda in wf["cuda"]:
                row = {"python": py, "torch": torch, "cuda": cuda}
                if any(all(row[k] == v for k, v in ex.items()) for ex in wf["exclude"]):
                    continue
                yield py, torch, cuda


def test_every_table_entry_is_a_published_asset_url():
    """No network: every (release, Python, torch, CUDA major, ABI) the table accepts gives
    exactly the asset URL the release's workflow uploaded, and every combination it built is
    accepted; a torch with a CUDA major a release was not built for gets no URL."""
    assert set(RELEASES_MATRIX) == set(WORKFLOWS)
    checked = 0
    for fa in WORKFLOWS:
        built = set(_built(fa))
        majors = {int(c.split(".")[0]) for c in WORKFLOWS[fa]["cuda"]}
        for py in ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]:
            for torch in ["2.0.1", "2.1.2", "2.2.2", "2.3.1", "2.4.0", "2.5.1", "2.6.0",
                          "2.7.1", "2.8.0", "2.9.1"]:
                for major, local_cuda in ((11, "11.8"), (12, "12.4"), (12, "12.8"),
                                          (13, "13.0")):
                    for abi in (False, True):
                        sel = select(fa, Target(torch, local_cuda, abi, py))
                        match = [c for p_, t_, c in built if p_ == py and t_[:3] == torch[:3]
                                 and int(c.split(".")[0]) == major]
                        if match:
                            want = _asset(fa, match[0], torch, "TRUE" if abi else "FALSE", py)
                            assert sel.url == f"{RELEASES}/v{fa}/{want}", (fa, py, torch, major)
                            checked += 1
                        else:
                            assert sel.url is None and "publishes no wheel" in sel.reason, \
                                (fa, py, torch, major, sel)
        assert majors  # sanity
    assert checked > 300


def test_2_7_4_post1_has_no_cuda_11_wheels():
    sel = select("2.7.4.post1", Target("2.5.1", "11.8", False, "3.11"))
    assert sel.url is None and "CUDA 11" in sel.reason


def test_pinned_stack_torch_2_9_has_no_upstream_wheel():
    """The worker's pinned torch (requirements/stack.py) is 2.9: upstream built none, so the
    optional install skips it and says why (flash-attn is not needed: docs/handler.md)."""
    sel = select("2.8.3", Target("2.9.1+cu128", "12.8", True, "3.11"))
    assert sel.url is None and "torch 2.9" in sel.reason


@pytest.mark.parametrize("fa,target,name", [
    # the wheel from seed 002: Python 3.10, torch 2.6, CUDA 12, old ABI
    ("2.8.0.post2", Target("2.6.0+cu124", "12.4", False, "3.10"),
     "flash_attn-2.8.0.post2+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
    # torch 2.7 on PyPI uses the new C++ ABI
    ("2.8.3", Target("2.7.1+cu126", "12.6", True, "3.11"),
     "flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"),
    ("2.8.3", Target("2.8.0", "12.8", True, "3.12"),
     "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"),
    # before 2.7 the CUDA tag was cu118 / cu123
    ("2.6.3", Target("2.3.1+cu118", "11.8", False, "3.9"),
     "flash_attn-2.6.3+cu118torch2.3cxx11abiFALSE-cp39-cp39-linux_x86_64.whl"),
    ("2.6.3", Target("2.4.0+cu121", "12.1", True, "3.10"),
     "flash_attn-2.6.3+cu123torch2.4cxx11abiTRUE-cp310-cp310-linux_x86_64.whl"),
    ("2.7.4.post1", Target("2.5.1", "12.4", False, "3.11"),
     "flash_attn-2.7.4.post1+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"),
])
def test_wheel_names(fa, target, name):
    sel = select(fa, target)
    assert sel.name == name
    assert sel.url == f"{RELEASES}/v{fa}/{name}"
    assert sel.reason == ""


@pytest.mark.parametrize("fa,target,why", [
    ("2.8.3", Target("2.6.0+cpu", None, False, "3.10"), "CPU build"),
    ("2.8.3", Target("2.3.0", "12.1", False, "3.10"), "torch 2.3"),
    ("2.8.0.post2", Target("2.6.0", "11.8", False, "3.10"), "CUDA 11"),
    ("2.6.3", Target("2.4.0", "12.1", False, "3.13"), "Python 3.13"),
    ("2.8.3", Target("2.6.0", "12.4", False, "3.10", machine="aarch64"), "aarch64"),
    ("not-a-version", Target("2.6.0", "12.4", False, "3.10"), "invalid version"),
])
def test_no_wheel_says_why(fa, target, why):
    sel = select(fa, target)
    assert sel.url is None and why in sel.reason


def test_unknown_release_uses_naming_rule_with_caveat():
    sel = select("2.9.1", Target("2.9.0", "12.8", True, "3.12"))
    assert sel.name == "flash_attn-2.9.1+cu12torch2.9cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    assert "not in the known wheel matrix" in sel.reason


def test_module_cli_prints_url():
    p = subprocess.run([sys.executable, "-m", "cache_sync.flashattn", "--version", "2.8.0.post2",
                        "--torch", "2.6.0", "--cuda", "12.4", "--abi", "FALSE", "--python",
                        "3.10"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip().endswith(
        "flash_attn-2.8.0.post2+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl")


def _fake_torch(tmp_path, cuda):
    """A wheel named torch whose module reports a version, CUDA and ABI like the real one."""
    init = (f"__version__ = '2.6.0+cu124'\nclass version:\n    cuda = {cuda!r}\n"
            "class _C:\n    _GLIBCXX_USE_CXX11_ABI = False\n")
    return make_wheel(tmp_path / "w", "torch", "2.6.0", {"torch/__init__.py": init})


def test_install_flash_attn_probes_torch_in_packages(tmp_path):
    """CUDA torch in packages/: the matching wheel is chosen from a mirror (served here),
    installed last without deps, and its module import-checked."""
    py = "%d%d" % sys.version_info[:2]
    name = f"flash_attn-2.8.3+cu12torch2.6cxx11abiFALSE-cp{py}-cp{py}-linux_x86_64.whl"
    idx = build_index(tmp_path / "idx", [_fake_torch(tmp_path, "12.4")])
    fa = make_wheel(tmp_path / "fa", "flash_attn", "2.8.3+cu12torch2.6cxx11abiFALSE",
                    {"flash_attn/__init__.py": "__version__ = '2.8.3'\n"},
                    requires=("einops",))  # --no-deps: einops is never looked up
    (idx / "v2.8.3").mkdir()
    (idx / "v2.8.3" / name).write_bytes(fa.read_bytes())
    with serve(idx) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        env["CACHE_SYNC_FLASH_ATTN_BASE_URL"] = srv.url
        p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "install", "--no-push",
                            "--installer", "pip", "torch==2.6.0", "--flash-attn", "2.8.3"],
                           env=env, capture_output=True, text=True, timeout=120)
    r = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr
    assert [u["name"] for u in r["units"]] == ["torch", "flash-attn"]
    unit = r["units"][1]
    assert unit["optional"] and unit["status"] == "installed", unit
    assert unit["new"] == {"flash-attn": "2.8.3+cu12torch2.6cxx11abiFALSE"}
    assert f"flash-attn wheel: {name}" in r["notes"]
    assert {i["module"]: i["ok"] for i in r["imports"]}["flash_attn"] is True
    # Warm start: the same wheel is recognised as installed, nothing is fetched.
    with serve(idx) as srv:
        env["CACHE_SYNC_FLASH_ATTN_BASE_URL"] = srv.url
        env["PIP_INDEX_URL"] = srv.url + "/simple"
        p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "install", "--no-push",
                            "--installer", "pip", "torch==2.6.0", "--flash-attn", "2.8.3"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert srv.requests == []
    assert [u["status"] for u in json.loads(p.stdout)["units"]] == ["satisfied", "satisfied"]


def test_bootstrap_installs_flash_attn_last(tmp_path):
    """`run --requirements FILE --flash-attn VER`: the bootstrapping worker installs FILE, then
    the matching flash-attn wheel, before the command starts."""
    py = "%d%d" % sys.version_info[:2]
    name = f"flash_attn-2.8.3+cu12torch2.6cxx11abiFALSE-cp{py}-cp{py}-linux_x86_64.whl"
    idx = build_index(tmp_path / "idx", [_fake_torch(tmp_path, "12.4")])
    fa = make_wheel(tmp_path / "fa", "flash_attn", "2.8.3+cu12torch2.6cxx11abiFALSE",
                    {"flash_attn/__init__.py": "__version__ = '2.8.3'\n"})
    (idx / "v2.8.3").mkdir()
    (idx / "v2.8.3" / name).write_bytes(fa.read_bytes())
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("torch==2.6.0\n")
    with serve(idx) as srv:
        env = {**hermetic_env(tmp_path, srv.url + "/simple"), "CACHE_SYNC_INSTALLER": "pip",
               "CACHE_SYNC_FLASH_ATTN_BASE_URL": srv.url, "CACHE_SYNC_PROGRESS": "off"}
        p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "run", "--requirements",
                            str(reqs), "--flash-attn", "2.8.3", "--", sys.executable, "-c",
                            "import flash_attn, torch; print(flash_attn.__version__)"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    child_line, _, doc = p.stdout.partition("\n")
    boot = json.loads(doc)["bootstrap"]
    assert boot["role"] == "installed"
    assert boot["installed"] == ["torch==2.6.0", "flash-attn==2.8.3+cu12torch2.6cxx11abiFALSE"]
    assert child_line == "2.8.3"
    assert f"flash-attn wheel: {name}" in p.stderr


def test_install_flash_attn_skipped_for_cpu_torch(tmp_path):
    idx = build_index(tmp_path / "idx", [_fake_torch(tmp_path, None)])
    with serve(idx) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "install", "--no-push",
                            "--installer", "pip", "torch==2.6.0", "--flash-attn"], env=env,
                           capture_output=True, text=True, timeout=120)
    r = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr
    assert [u["name"] for u in r["units"]] == ["torch"]
    assert any("CPU build" in n for n in r["notes"])
