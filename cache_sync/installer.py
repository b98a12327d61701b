"""Running one installer invocation (pip or uv) with everything forced into the cache.

Whatever the caller's environment or pip.conf says, the target is ``packages/``, the download
cache is ``pip/`` and every temporary file goes to ``tmp/``: pip unpacks and builds under
TMPDIR even with ``--target`` (seed 002), and uses ``~/.cache`` unless told otherwise. The rest
of pip's configuration (index URLs, find-links, certificates) passes through; for uv, which
does not read pip's configuration, it is resolved with pip's precedence and translated into
uv's flags (``pipconf.py``; with more than one index, uv picks versions as pip does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_sync.config import Settings
from cache_sync.diskguard import Floor, Watch
from cache_sync.envs import cache_env
from cache_sync.workers import scratch_dirs

# Variables that would send files elsewhere or make `--target` fail; removed from the child.
_DROPPED = ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER", "PIP_NO_CACHE_DIR",
            "PIP_CACHE_DIR", "PIP_SRC", "UV_CACHE_DIR", "UV_NO_CACHE", "UV_TARGET",
            "VIRTUAL_ENV", "UV_SYSTEM_PYTHON", "PIP_REQUIRE_VIRTUALENV", "UV_PYTHON")


def find_uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    try:  # the `uv` wheel ships the binary inside the package
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def choose(preference: str) -> tuple[str, str | None]:
    """("uv", path) or ("pip", None) for ``auto|uv|pip``."""
    from cache_sync.errors import ConfigError

    if preference in ("auto", "uv"):
        uv = find_uv()
        if uv:
            return "uv", uv
        if preference == "uv":
            raise ConfigError("--installer uv: uv is not installed",
                              hint="pip install uv, or use --installer pip")
    return "pip", None


def child_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _DROPPED}
    cached = cache_env(settings, base)
    # PYTHONPATH stays the caller's: packages/ first would let a `pip` or `setuptools` that
    # some package dragged into packages/ replace the installer's own.
    cached.pop("PYTHONPATH")
    cached.pop("PIP_TARGET")
    env.update(cached)
    tmp = cached["TMPDIR"]
    env.update({"TEMP": tmp, "TMP": tmp, "PIP_NO_INPUT": "1", "PIP_PROGRESS_BAR": "off",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_NO_PROGRESS": "1",
                "PYTHONDONTWRITEBYTECODE": "1"})
    return env


@dataclass
class Invocation:
    kind: str  # "pip" | "uv"
    uv_path: str | None
    settings: Settings
    env: dict[str, str]
    options: list[str]  # from requirements files (and translated pip config for uv)

    @property
    def stage(self) -> Path | None:
        """pip installs into an empty stage that ``target_merge`` moves into ``packages/``;
        uv installs into ``packages/`` directly (it treats the target as an environment)."""
        return scratch_dirs(self.settings)[0] / "pip-stage" if self.kind == "pip" else None

    @property
    def log_path(self) -> str:
        return str(scratch_dirs(self.settings)[0] / "pip-install.log")

    def command(self, spec_text: str, *, no_deps: bool, budget: float) -> list[str]:
        root = self.settings.root
        # pip's socket timeout and retries are matched to our budget: our own loop does the
        # backing off, pip's retry only covers a single dropped request.
        socket_timeout = str(int(max(5, min(60, budget / 5))))
        if self.kind == "uv":
            self.env["UV_HTTP_TIMEOUT"] = socket_timeout
            self.env["UV_HTTP_RETRIES"] = "1"
            cmd = [self.uv_path or "uv", "pip", "install", "--python", sys.executable,
                   "--target", str(root / "packages"), "--cache-dir", str(root / "pip" / "uv")]
        else:
            cmd = [sys.executable, "-m", "pip", "install", "--target", str(self.stage),
                   "--cache-dir", str(root / "pip"), "--timeout", socket_timeout,
                   "--retries", "1", "--no-input", "--disable-pip-version-check",
                   "--no-warn-script-location", "--progress-bar", "off",
                   # pip logs a failed index fetch (503, timeout) only at debug level; the
                   # log file keeps it so that is_transient can see it.
                   "--log", self.log_path]
        if no_deps:
            cmd.append("--no-deps")
        return [*cmd, *self.options, spec_text]


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float
    timed_out: bool = False
    disk_breach: str | None = None


def run_once(cmd: list[str], env: Mapping[str, str], timeout: float,
             floors: list[Floor]) -> Outcome:
    """Run the installer in its own process group, killed whole on timeout or disk breach."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=env.get("TMPDIR"))

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timed_out = False
    with Watch(floors, kill) as watch:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill()
            output, _ = proc.communicate()
    return Outcome(proc.returncode, output or "", time.monotonic() - start, timed_out,
                   watch.breach)


# Only lines that report a failure are classified: pip's debug log mentions "connection" and
# "retry" on every healthy request too.
_FAILURE_LINE = ("Could not fetch URL", "WARNING: Retrying", "ERROR:", "error:", "×", "╰─▶",
                 "Caused by", "Failed to")
_TRANSIENT = ("timed out", "timeout", "connection", "temporarily", "temporary failure",
              " 500", " 502", " 503", " 504", " 429", "server error", "retrying",
              "incompleteread", "reset by peer", "broken pipe", "name resolution",
              "network", "eof occurred", "remote end closed", "too many 5")


def is_transient(output: str) -> bool:
    """Whether a failed run failed for a reason worth retrying (network, 5xx, timeouts) as
    opposed to one that will fail again (no such package, unsatisfiable, broken build)."""
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(_FAILURE_LINE) or "Could not fetch URL" in line:
            low = line.lower()
            if any(word in low for word in _TRANSIENT):
                return True
    return False


def key_lines(output: str, limit: int = 4) -> list[str]:
    """The lines of an installer's output that say what went wrong."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    picked = [ln for ln in lines
              if ln.startswith(("ERROR:", "error:", "×", "╰─▶", "Caused by", "hint:"))]
    return (picked or lines)[-limit:]
