"""Choosing the prebuilt flash-attn wheel for the running Python, torch, CUDA and C++ ABI.

flash-attn on PyPI is a source distribution whose build needs nvcc and ~30 minutes; its GitHub
releases carry prebuilt wheels named like
``flash_attn-2.8.0.post2+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl``. A wheel
built for another torch minor, CUDA major or C++ ABI installs fine and then fails at import
with an undefined symbol, so all four must match what is installed in ``packages/``.

Naming rule (each release's ``.github/workflows/publish.yml``, which builds and uploads the
assets): ``flash_attn-<version>+cu<C>torch<major>.<minor>cxx11abi<TRUE|FALSE>-cp<py>-cp<py>-
linux_x86_64.whl`` under ``releases/download/v<version>/``. ``<C>`` is the CUDA the wheel was
built with: major and minor before 2.7 (``cu118`` for a CUDA 11 torch, ``cu123`` for CUDA 12,
as setup.py maps them), the major alone since 2.7 (``cu12``). Which combinations exist is the
workflow's build matrix, copied into ``RELEASES_MATRIX`` per release: 2.7.4.post1, for
instance, was built with CUDA 12.4 only, so a CUDA 11 torch has no wheel there.

Usage as a tool: ``python -m cache_sync.flashattn --torch 2.6.0+cu124 --cuda 12.4
--abi FALSE --python 3.10`` prints the wheel URL.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

DEFAULT_VERSION = "2.8.3"
RELEASES = "https://github.com/Dao-AILab/flash-attention/releases/download"



@dataclass(frozen=True)
class Release:
    """One release's build matrix (its publish.yml), both C++ ABIs built for every entry."""

    pythons: frozenset[str]
    torches: frozenset[str]  # torch minors
    cuda_tags: Mapping[int, str]  # the installed torch's CUDA major -> the wheel's CUDA tag
    exclude: tuple[tuple[str, str], ...] = ()  # (torch minor, python) pairs not built
    exclude_cuda: tuple[tuple[str, int], ...] = ()  # (torch minor, CUDA major) not built


def _set(*items: str) -> frozenset[str]:
    return frozenset(items)


RELEASES_MATRIX: dict[str, Release] = {
    # v2.6.3: python 3.8-3.12, torch 2.0.1/2.1.2/2.2.2/2.3.1/2.4.0, CUDA 11.8.0 and 12.3.2;
    # excluded: torch 2.0 and 2.1 on 3.12, torch 2.0 with CUDA 12.
    "2.6.3": Release(_set("3.8", "3.9", "3.10", "3.11", "3.12"),
                     _set("2.0", "2.1", "2.2", "2.3", "2.4"), {11: "cu118", 12: "cu123"},
                     exclude=(("2.0", "3.12"), ("2.1", "3.12")), exclude_cuda=(("2.0", 12),)),
    # v2.7.4.post1: python 3.9-3.13, torch 2.2.2-2.6.0, CUDA 12.4.1 ONLY; torch 2.2-2.4
    # not on 3.13.
    "2.7.4.post1": Release(_set("3.9", "3.10", "3.11", "3.12", "3.13"),
                           _set("2.2", "2.3", "2.4", "2.5", "2.6"), {12: "cu12"},
                           exclude=(("2.2", "3.13"), ("2.3", "3.13"), ("2.4", "3.13"))),
    # v2.8.0.post2: python 3.9-3.13, torch 2.4.0/2.5.1/2.6.0/2.7.1, CUDA 12.9.0; 2.4 not 3.13.
    "2.8.0.post2": Release(_set("3.9", "3.10", "3.11", "3.12", "3.13"),
                           _set("2.4", "2.5", "2.6", "2.7"), {12: "cu12"},
                           exclude=(("2.4", "3.13"),)),
    # v2.8.3: as 2.8.0.post2 plus torch 2.8.0, CUDA 12.9.1. No torch 2.9 wheel upstream.
    "2.8.3": Release(_set("3.9", "3.10", "3.11", "3.12", "3.13"),
                     _set("2.4", "2.5", "2.6", "2.7", "2.8"), {12: "cu12"},
                     exclude=(("2.4", "3.13"),)),
}


def cuda_tag(fa: Version, cuda_major: int) -> str:
    """The naming rule alone (for releases not in the matrix)."""
    if fa < Version("2.7"):
        return "cu118" if cuda_major == 11 else "cu123"
    return f"cu{cuda_major}"


_PROBE = r"""
import json, sys
try:
    import torch
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"})); sys.exit(0)
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False)),
                  "python": "%d.%d" % sys.version_info[:2]}))
"""


@dataclass(frozen=True)
class Target:
    torch: str  # e.g. "2.6.0+cu124"
    cuda: str | None  # torch.version.cuda, None for a CPU build
    cxx11_abi: bool
    python: str  # "3.10"
    machine: str = "x86_64"
    system: str = "Linux"


@dataclass(frozen=True)
class Selection:
    name: str | None
    url: str | None
    reason: str  # why no wheel, or a caveat about the one chosen

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "reason": self.reason}


def _minor(version: str) -> str:
    v = Version(version)
    return f"{v.major}.{v.minor}"


def select(fa_version: str, t: Target, base: str = RELEASES) -> Selection:
    """The wheel for ``t``, or ``Selection(None, None, reason)`` when there cannot be one."""
    try:
        fa = Version(fa_version)
        torch_minor = _minor(t.torch)
    except InvalidVersion as exc:
        return Selection(None, None, f"invalid version: {exc}")
    if t.system != "Linux" or t.machine != "x86_64":
        return Selection(None, None, f"no prebuilt wheels for {t.system} {t.machine}")
    if not t.cuda:
        return Selection(None, None, f"torch {t.torch} is a CPU build; flash-attn needs CUDA")
    cuda_major = int(t.cuda.split(".")[0])
    release = RELEASES_MATRIX.get(fa_version)
    reason = ""
    if release is None:
        tag = cuda_tag(fa, cuda_major)
        reason = f"flash-attn {fa_version} is not in the known wheel matrix; trying the name"
    else:
        missing = [what for what, ok in (
            (f"torch {torch_minor}", torch_minor in release.torches),
            (f"CUDA {cuda_major}", cuda_major in release.cuda_tags),
            (f"Python {t.python}", t.python in release.pythons),
            (f"torch {torch_minor} on Python {t.python}",
             (torch_minor, t.python) not in release.exclude),
            (f"torch {torch_minor} with CUDA {cuda_major}",
             (torch_minor, cuda_major) not in release.exclude_cuda)) if not ok]
        if missing:
            return Selection(None, None,
                             f"flash-attn {fa_version} publishes no wheel for "
                             + ", ".join(missing))
        tag = release.cuda_tags[cuda_major]
    py = t.python.replace(".", "")
    name = (f"flash_attn-{fa_version}+{tag}torch{torch_minor}"
            f"cxx11abi{'TRUE' if t.cxx11_abi else 'FALSE'}-cp{py}-cp{py}-linux_x86_64.whl")
    return Selection(name, f"{base}/v{fa_version}/{name}", reason)


def probe(env: Mapping[str, str], python: str = sys.executable) -> Target | str:
    """What torch the cache's PYTHONPATH gives (a fresh interpreter), or why there is none."""
    proc = subprocess.run([python, "-c", _PROBE], env=dict(env), capture_output=True,
                          text=True, timeout=300)
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"torch probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    if "error" in data:
        return f"torch is not importable ({data['error']})"
    return Target(data["torch"], data["cuda"], data["abi"], data["python"],
                  platform.machine(), platform.system())


def last_spec(settings: Any, version: str | None, url: str | None,
              base_env: Mapping[str, str], notes: list[str]) -> Callable[[Any], list[Any]]:
    """The ``extra`` hook of ``install.install``: after the other specs are in, the flash-attn
    wheel matching the torch just installed (or ``url``), optional and without deps; nothing
    when neither ``version`` nor ``url`` is given. Why it was skipped goes into ``notes``."""
    from cache_sync.envs import cache_env
    from cache_sync.reqs import parse_spec

    def extra(_installed: Any) -> list[Any]:
        if not (version or url):
            return []
        chosen = url
        if chosen is None:
            target = probe(cache_env(settings, base_env))
            if isinstance(target, str):
                notes.append(f"flash-attn skipped: {target}")
                return []
            sel = select(version or DEFAULT_VERSION, target, settings.flash_attn_base_url)
            if sel.url is None:
                notes.append(f"flash-attn skipped: {sel.reason}")
                return []
            if sel.reason:
                notes.append(sel.reason)
            chosen = sel.url
        notes.append(f"flash-attn wheel: {chosen.rsplit('/', 1)[-1]}")
        return [parse_spec(chosen, optional=True, no_deps=True,
                           timeout=settings.install_big_timeout)]

    return extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cache_sync.flashattn",
                                description="print the flash-attn wheel URL for a combination")
    p.add_argument("--version", default=DEFAULT_VERSION, help="flash-attn version")
    p.add_argument("--torch", required=True)
    p.add_argument("--cuda", default=None, help="e.g. 12.4; omit for a CPU torch")
    p.add_argument("--abi", choices=("TRUE", "FALSE"), required=True)
    p.add_argument("--python", default="%d.%d" % sys.version_info[:2])
    a = p.parse_args(argv)
    sel = select(a.version, Target(a.torch, a.cuda, a.abi == "TRUE", a.python))
    if sel.url is None:
        print(f"no wheel: {sel.reason}", file=sys.stderr)
        return 1
    print(sel.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
