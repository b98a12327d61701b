"""The tools under test, each as a pair of commands (push a root, pull into a root) with the
tuning that was best on this machine. ``TUNING`` is what the docs report.

Every tool gets the same endpoint (direct or through the latency proxy), its own bucket, and the
same credentials (``S3Server.env()``).
"""

from __future__ import annotations

import os
import shutil
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    endpoint: str
    bucket: str
    prefix: str
    env: dict[str, str]  # credentials and region
    areas: tuple[str, ...]
    workdir: Path  # for tool config files

    @property
    def s3_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class Tool(ABC):
    name = ""
    binary = ""

    def __init__(self, parallel: int | None = None) -> None:
        self.parallel = parallel

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def env(self, t: Target) -> dict[str, str]:
        return {**os.environ, **t.env}

    @abstractmethod
    def push(self, root: Path, t: Target) -> list[str]:
        """The command line that uploads ``root`` to the target."""

    @abstractmethod
    def pull(self, root: Path, t: Target) -> list[str]:
        """The command line that downloads the target into ``root``."""

    def tuning(self) -> str:
        return ""


class CacheSync(Tool):
    name = "cache-sync"
    binary = sys.executable

    def env(self, t: Target) -> dict[str, str]:
        env = {**os.environ, **t.env, "CACHE_SYNC_ENDPOINT_URL": t.endpoint,
               "CACHE_SYNC_REMOTE": t.s3_url, "PYTHONPATH": str(REPO)}
        if self.parallel:
            env["CACHE_SYNC_TRANSFERS"] = str(self.parallel)
        return env

    def _cmd(self, root: Path, op: str, t: Target) -> list[str]:
        return [sys.executable, "-m", "cache_sync", "--root", str(root), "-q",
                "--progress", "off", op, *t.areas]

    def push(self, root: Path, t: Target) -> list[str]:
        return self._cmd(root, "push", t)

    def pull(self, root: Path, t: Target) -> list[str]:
        return self._cmd(root, "pull", t)

    def tuning(self) -> str:
        return f"CACHE_SYNC_TRANSFERS={self.parallel}" if self.parallel else "defaults"


class AwsCli(Tool):
    """awscli v1 (no CRT client). Tuned through a private AWS_CONFIG_FILE: more concurrent
    requests and bigger multipart parts than the defaults (10 requests, 8 MiB parts)."""

    name = "aws s3 sync"
    binary = "aws"

    def _config(self, t: Target) -> Path:
        path = t.workdir / "aws-config"
        n = self.parallel or 32
        path.write_text(
            "[default]\nregion = us-east-1\ns3 =\n"
            f"  max_concurrent_requests = {n}\n  max_queue_size = 10000\n"
            "  multipart_threshold = 64MB\n  multipart_chunksize = 16MB\n"
            "  addressing_style = path\n"
        )
        return path

    def env(self, t: Target) -> dict[str, str]:
        return {**os.environ, **t.env, "AWS_CONFIG_FILE": str(self._config(t)),
                "AWS_SHARED_CREDENTIALS_FILE": str(t.workdir / "no-credentials"),
                # botocore sends Expect: 100-continue on 0-byte PUTs and stalls without this.
                "BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE": "true"}

    def _sync(self, src: str, dst: str, t: Target) -> list[str]:
        return ["aws", "--endpoint-url", t.endpoint, "s3", "sync", src, dst,
                "--only-show-errors", "--no-progress"]

    def push(self, root: Path, t: Target) -> list[str]:
        return self._sync(str(root), t.s3_url + "/", t)

    def pull(self, root: Path, t: Target) -> list[str]:
        return self._sync(t.s3_url + "/", str(root), t)

    def tuning(self) -> str:
        return (f"max_concurrent_requests={self.parallel or 32}, multipart 64MB threshold / "
                "16MB chunks, BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE=true")


class Rclone(Tool):
    """Debian's rclone 1.60, configured by RCLONE_CONFIG_BENCH_* variables. ``--links`` stores
    symlinks as ``.rclonelink`` objects and ``-M`` keeps modes/mtimes as object metadata, so it
    is the one peer that can reproduce the tree."""

    name = "rclone copy"
    binary = "rclone"

    def env(self, t: Target) -> dict[str, str]:
        env = {**os.environ, **t.env}
        env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 refuses to start with it set
        env.update({
            "RCLONE_CONFIG": str(t.workdir / "rclone.conf"),
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": t.env["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": t.env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_BENCH_ENDPOINT": t.endpoint,
            "RCLONE_CONFIG_BENCH_REGION": t.env.get("AWS_REGION", "us-east-1"),
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        })
        (t.workdir / "rclone.conf").touch()
        return env

    def _flags(self) -> list[str]:
        n = self.parallel or 32
        return ["--transfers", str(n), "--checkers", str(2 * n), "--links", "--metadata",
                "--fast-list", "--s3-no-check-bucket", "--s3-chunk-size", "16M",
                "--s3-upload-concurrency", "4", "--multi-thread-streams", "8",
                "--multi-thread-cutoff", "64M", "-q"]

    def push(self, root: Path, t: Target) -> list[str]:
        return ["rclone", "copy", str(root), f"bench:{t.bucket}/{t.prefix}", *self._flags()]

    def pull(self, root: Path, t: Target) -> list[str]:
        return ["rclone", "copy", f"bench:{t.bucket}/{t.prefix}", str(root), *self._flags()]

    def tuning(self) -> str:
        n = self.parallel or 32
        return (f"--transfers {n} --checkers {2 * n} --links --metadata --fast-list, 16M chunks "
                "x4 up, 8 streams down above 64M")


class S5cmd(Tool):
    name = "s5cmd sync"
    binary = "s5cmd"

    def _base(self, t: Target) -> list[str]:
        return ["s5cmd", "--endpoint-url", t.endpoint, "--log", "error",
                "--numworkers", str(self.parallel or 64)]

    def push(self, root: Path, t: Target) -> list[str]:
        return [*self._base(t), "sync", "--concurrency", "8", f"{root}/", f"{t.s3_url}/"]

    def pull(self, root: Path, t: Target) -> list[str]:
        return [*self._base(t), "sync", "--concurrency", "8", f"{t.s3_url}/*", f"{root}/"]

    def tuning(self) -> str:
        return f"--numworkers {self.parallel or 64}, --concurrency 8 (parts per large file)"


TOOLS: dict[str, type[Tool]] = {
    "cache-sync": CacheSync, "aws": AwsCli, "rclone": Rclone, "s5cmd": S5cmd,
}
PEERS = ("aws", "rclone", "s5cmd")
