"""What an S3 backend needs to know, and nothing else: the backends take this record, built
from ``Settings`` in one place (``storage.open_store`` / ``storage.s3_options``), so no
storage module imports ``config``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class S3Options:
    remote: str  # s3://bucket/prefix
    dialect: str  # aws | b2 | compat, resolved (storage/dialect.py)
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    ca_bundle: str | None = None
    transfers: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
