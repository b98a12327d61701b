"""The limit: the same number of bytes as a pull, fetched as ONE object with parallel ranged GETs
from the same server and written to disk. No per-file work at all, so no sync tool can beat it.

Two readers, both run as separate processes and measured like the tools:
- ``python -m bench.limit read ...``: threads issue ranged GETs and ``os.pwrite`` each range at
  its offset into a preallocated file (the shape a chunked pull has);
- ``s5cmd cp`` of the single object (Go, parallel multipart download).
The faster of the two is "the limit" in the table.

The object is random bytes (incompressible) built from one repeated random block, so it can be
uploaded without a local copy and its sha256 is known without reading it back.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MiB = 1024 * 1024
PART = 16 * MiB
KEY = "limit/object.bin"


def _block() -> bytes:
    return hashlib.sha256(b"limit-seed").digest() * (PART // 32)


def expected_digest(size: int) -> str:
    h, block, left = hashlib.sha256(), _block(), size
    while left:
        h.update(block[: min(left, PART)])
        left -= min(left, PART)
    return h.hexdigest()


def upload(client, bucket: str, size: int) -> None:
    """Multipart upload of ``size`` bytes (parts of PART; last part shorter)."""
    block = _block()
    if size <= PART:
        client.put_object(Bucket=bucket, Key=KEY, Body=block[:size])
        return
    mpu = client.create_multipart_upload(Bucket=bucket, Key=KEY)
    offsets = list(range(0, size, PART))

    def put(i_off: tuple[int, int]) -> dict:
        i, off = i_off
        body = block[: min(PART, size - off)]
        r = client.upload_part(Bucket=bucket, Key=KEY, UploadId=mpu["UploadId"],
                               PartNumber=i + 1, Body=body)
        return {"PartNumber": i + 1, "ETag": r["ETag"]}

    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(put, enumerate(offsets)))
    client.complete_multipart_upload(Bucket=bucket, Key=KEY, UploadId=mpu["UploadId"],
                                     MultipartUpload={"Parts": parts})


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 * MiB):
            h.update(b)
    return h.hexdigest()


def python_reader_cmd(endpoint: str, bucket: str, out: Path, size: int, parallel: int) -> list:
    return [sys.executable, "-m", "bench.limit", "read", "--endpoint", endpoint, "--bucket",
            bucket, "--out", str(out), "--size", str(size), "--parallel", str(parallel)]


def s5cmd_reader_cmd(endpoint: str, bucket: str, out: Path, parallel: int) -> list:
    return ["s5cmd", "--endpoint-url", endpoint, "--log", "error", "cp", "--concurrency",
            str(parallel), "--part-size", str(PART // MiB), f"s3://{bucket}/{KEY}", str(out)]


def _read(endpoint: str, bucket: str, out: str, size: int, parallel: int) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint, config=Config(
            max_pool_connections=parallel, s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required"))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)

        def fetch(off: int) -> None:
            end = min(size, off + PART) - 1
            body = client.get_object(Bucket=bucket, Key=KEY, Range=f"bytes={off}-{end}")["Body"]
            pos = off
            while data := body.read(1024 * 1024):
                os.pwrite(fd, data, pos)
                pos += len(data)
            if pos != end + 1:
                raise OSError(f"short range at {off}: got {pos - off} bytes")

        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(fetch, range(0, size, PART)))
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.limit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("read", help="fetch the limit object with parallel ranged GETs")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--bucket", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--parallel", type=int, default=8)
    a = ap.parse_args(argv)
    _read(a.endpoint, a.bucket, a.out, a.size, a.parallel)


if __name__ == "__main__":
    main()
