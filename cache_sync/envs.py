"""The environment that points everything heavy into the cache root.

Pure functions: ``cache_env(settings, base)`` computes the variables from ``Settings`` and the
caller's current environment (only to prepend to PATH/PYTHONPATH); nothing here reads
``os.environ`` or touches the disk. ``render`` turns the mapping into shell code for ``eval``.

Why each variable exists (seeds 000-003): ``pip --target`` alone still downloads and unpacks
under TMPDIR on the OS disk, and HF/torch default to ``~/.cache``; a 5 GB container disk fills
long before the packages land. So every cache and every temporary directory is redirected.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping

from cache_sync.config import Settings
from cache_sync.workers import scratch_dirs

# Variables whose value is a search path: we prepend, the caller's entries stay after ours.
PATH_LIKE = ("PATH", "PYTHONPATH")

SHELLS = ("bash", "zsh", "fish", "json")


def _prepend(entry: str, current: str | None) -> str:
    """``entry`` first, then the existing entries minus duplicates of it, so evaluating the
    exports twice does not grow the variable."""
    parts = [p for p in (current or "").split(":") if p and p != entry]
    return ":".join([entry, *parts])


def cache_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The exports, in a stable order. ``base`` is the environment the exports will be
    applied to (for PATH and PYTHONPATH); pass ``{}`` for the bare values."""
    base = base or {}
    root = settings.root
    packages = root / "packages"
    models = root / "models"
    hf_home = models / "huggingface"
    tmp, build = scratch_dirs(settings)
    env = {
        # cache-sync itself: a child calling `cache-sync push` must reach the same cache and
        # store even though XDG_CACHE_HOME (which locates the default store) changes below.
        "CACHE_SYNC_ROOT": str(root),
        "CACHE_SYNC_REMOTE": settings.remote,
        "CACHE_SYNC_WORKER": settings.worker,
        # temporary files, one dir per worker (workers may share the root): what protects
        # the OS disk (pip no longer honours PIP_BUILD_DIR)
        "TMPDIR": str(tmp),
        "PIP_BUILD_DIR": str(build),
        # packages
        "PIP_CACHE_DIR": str(root / "pip"),
        "UV_CACHE_DIR": str(root / "pip" / "uv"),
        "PIP_TARGET": str(packages),
        "PYTHONPATH": _prepend(str(packages), base.get("PYTHONPATH")),
        "PATH": _prepend(str(packages / "bin"), base.get("PATH")),
        # models: one place, in the HF cache layout (blobs + symlinks), never copied
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "TRANSFORMERS_CACHE": str(hf_home / "hub"),
        "TORCH_HOME": str(models / "torch"),
        # everything else that follows the XDG convention (numba, matplotlib, triton, ...)
        "XDG_CACHE_HOME": str(root / "deps" / "xdg-cache"),
    }
    if settings.endpoint_url:
        env["CACHE_SYNC_ENDPOINT_URL"] = settings.endpoint_url
    return env


# Exports that name a directory a program may write into directly (without creating it first:
# tempfile falls back to /tmp when TMPDIR is missing, a library opening $TORCH_HOME/x fails).
EXPORTED_DIRS = ("TMPDIR", "PIP_BUILD_DIR", "PIP_CACHE_DIR", "UV_CACHE_DIR", "PIP_TARGET",
                 "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "TORCH_HOME",
                 "XDG_CACHE_HOME")


def ensure_layout(settings: Settings) -> None:
    """Create the areas and every directory the exports name (the one function here that
    touches disk)."""
    root = settings.root
    env = cache_env(settings, {})
    dirs = [str(root / a) for a in settings.areas] + [str(root / "packages" / "bin")]
    for path in dirs + [env[name] for name in EXPORTED_DIRS]:
        os.makedirs(path, exist_ok=True)


def describe(name: str) -> str:
    """One line on what a variable is for (``env --explain``)."""
    return {
        "CACHE_SYNC_ROOT": "cache root (so child cache-sync calls use the same cache)",
        "CACHE_SYNC_REMOTE": "store URL (so child cache-sync calls use the same store)",
        "CACHE_SYNC_ENDPOINT_URL": "S3 endpoint for child cache-sync calls",
        "CACHE_SYNC_WORKER": "this worker's id (its own tmp/ and build/ dirs on a shared root)",
        "TMPDIR": "all temporary files (pip unpack/build, tempfile) off the OS disk, per worker",
        "PIP_BUILD_DIR": "build dir for old pips (new pips use TMPDIR)",
        "PIP_CACHE_DIR": "pip download cache (area pip/)",
        "UV_CACHE_DIR": "uv cache (inside area pip/)",
        "PIP_TARGET": "default install target (area packages/)",
        "PYTHONPATH": "packages/ importable first",
        "PATH": "console scripts of packages/ first",
        "HF_HOME": "Hugging Face home (area models/)",
        "HF_HUB_CACHE": "Hugging Face hub cache (area models/)",
        "TRANSFORMERS_CACHE": "old transformers versions' cache (same hub cache)",
        "TORCH_HOME": "torch hub/checkpoints (area models/)",
        "XDG_CACHE_HOME": "other tools' caches (area deps/)",
    }.get(name, "")


_FISH_BARE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")  # words fish reads literally


def fish_quote(value: str) -> str:
    """Single quotes as fish reads them: unlike POSIX shells, fish treats ``\\'`` and
    ``\\\\`` inside single quotes as escapes, so POSIX quoting (``'...'\\''...'``) of a
    value holding ``\\'`` ends the quote early and can run what follows."""
    if value and _FISH_BARE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(env: Mapping[str, str], shell: str) -> str:
    """Shell code that sets ``env`` when evaluated (or JSON)."""
    if shell == "json":
        return json.dumps(dict(env), indent=2)
    lines = []
    for name, value in env.items():
        if shell == "fish":
            if name in PATH_LIKE:  # fish keeps PATH as a list
                parts = " ".join(fish_quote(p) for p in value.split(":") if p)
                lines.append(f"set -gx {name} {parts}")
            else:
                lines.append(f"set -gx {name} {fish_quote(value)}")
        else:  # bash and zsh share POSIX quoting
            lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines)
