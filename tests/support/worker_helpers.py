"""Helpers for the handler tests: start `python -m handler` (runpod's local API server or its
real job loop) as a subprocess, talk to it over HTTP, and always stop it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from handler.audio import b64encode, encode_wav
from tests.support import REPO

# Without these the SDK probes the network and the GPU before the first job and exits here.
BASE_ENV = {
    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
    "RUNPOD_SKIP_GPU_CHECK": "true",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tone_wav(seconds: float = 1.0, rate: int = 24000, amp: float = 0.3) -> bytes:
    return encode_wav([amp * math.sin(2 * math.pi * 200 * i / rate)
                       for i in range(int(seconds * rate))], rate)


def tone_b64(seconds: float = 1.0, rate: int = 24000) -> str:
    return b64encode(tone_wav(seconds, rate))


def write_light_model(root: Path, **params: Any) -> Path:
    path = root / "models" / "light-tts" / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"base_hz": 220.0, **params}))
    return path


def worker_env(root: Path, tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNPOD_", "HANDLER_", "CACHE_SYNC_", "AWS_"))}
    env.update(BASE_ENV)
    env.update({"CACHE_SYNC_ROOT": str(root), "HOME": str(tmp),  # no ~/.runpod credentials
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
    env.update(extra or {})
    return env


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Stop a process group we started; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


class ApiWorker:
    """`python -m handler --rp_serve_api` on 127.0.0.1:port."""

    def __init__(self, env: dict[str, str], log: Path, ready_timeout: float = 60) -> None:
        self.cache_root = Path(env["CACHE_SYNC_ROOT"])
        self.port = free_port()
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "handler", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(self.port)],
            cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()
        try:
            self.ready_seconds = self._wait(ready_timeout)
        except BaseException:  # never leave a worker running behind a failed start
            self.close()
            raise

    def _wait(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.2):
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise RuntimeError(f"worker did not listen within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def runsync(self, job_input: Any, timeout: float = 60) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/runsync",
            data=json.dumps({"input": job_input}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)

    def close(self) -> None:
        stop(self.proc)
        self._log_file.close()


@contextlib.contextmanager
def api_worker(env: dict[str, str], log: Path, ready_timeout: float = 60) -> Iterator[ApiWorker]:
    worker = ApiWorker(env, log, ready_timeout)
    try:
        yield worker
    finally:
        worker.close()
