"""Secrets scaffolding: known fake credentials, and scanners that look for them (whole, or any
long fragment of them) in command output, logs and store files (zstd snapshots decompressed)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import zstandard

FAKE_KEY_ID = "AKIAFAKELEAKCHECK7Q3Z"
FAKE_SECRET = "fAkE/sEcReT+LeAkChEcK/9f8e7d6c5b4a3928171605x"
FAKE_TOKEN = "FwoGZXIvYXdzEFAKESESSIONTOKENleakcheck0123456789abcdef"
FRAGMENT = 12  # a fragment this long of a secret counts as a leak (truncated prints)


def secret_env(session_token: bool = True) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}
    if session_token:
        env["AWS_SESSION_TOKEN"] = FAKE_TOKEN
    return env


def _needles(secrets: Iterable[str]) -> list[str]:
    """The secrets, their URL-encoded forms, and every FRAGMENT-long piece of them."""
    out: set[str] = set()
    for s in secrets:
        for form in (s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)):
            out.add(form)
        for i in range(max(1, len(s) - FRAGMENT + 1)):
            out.add(s[i:i + FRAGMENT])
    return sorted(out, key=len, reverse=True)


def find_leaks(text: str | bytes, secrets: Iterable[str] = (FAKE_SECRET, FAKE_TOKEN),
               where: str = "output") -> list[str]:
    """Leaks of ``secrets`` in ``text``. The access key id is not a secret by AWS's rules but
    tests may pass it too."""
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    hits = []
    for needle in _needles(secrets):
        pos = data.find(needle)
        if pos >= 0:
            hits.append(f"{where}: {needle!r} at {pos}: ...{data[max(0, pos - 40):pos + 60]!r}")
            break
    return hits


def _file_texts(path: Path) -> Iterable[bytes]:
    data = path.read_bytes()
    yield data
    if path.name.endswith(".zst") or data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            yield zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError:
            pass


def scan_tree(root: str | os.PathLike, secrets: Iterable[str] = (FAKE_SECRET, FAKE_TOKEN),
              ) -> list[str]:
    """Leaks in any regular file under ``root`` (a cache root, a file:// store, a log dir)."""
    secrets = list(secrets)
    hits: list[str] = []
    root = Path(root)
    if not root.exists():
        return hits
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        for blob in _file_texts(path):
            found = find_leaks(blob, secrets, where=str(path))
            if found:  # one report per file is enough
                hits += found
                break
    return hits


def scan_bucket(client, bucket: str, secrets: Iterable[str] = (FAKE_SECRET, FAKE_TOKEN),
                prefix: str = "") -> list[str]:
    """Leaks in every object of a bucket (keys included)."""
    secrets = list(secrets)
    hits: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            hits += find_leaks(obj["Key"], secrets, where=f"key {obj['Key']}")
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            texts = [body]
            if body[:4] == b"\x28\xb5\x2f\xfd":
                try:
                    texts.append(zstandard.ZstdDecompressor().decompressobj().decompress(body))
                except zstandard.ZstdError:
                    pass
            for t in texts:
                hits += find_leaks(t, secrets, where=f"s3://{bucket}/{obj['Key']}")
    return hits
