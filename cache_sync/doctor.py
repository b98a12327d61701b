"""``cache-sync doctor``: probe the configured store once with harmless requests and say what
works, what does not, and the fix.

The probe writes only under ``doctor/<random id>/`` (a prefix no other part of cache-sync reads,
lists or collects) and deletes what it wrote. Order: list, write a small object, read it,
read a range of it, write and read one larger object (latency and throughput), then delete
both with one batch delete (DeleteObjects: the request gc makes), then look for versions the
delete left (a bucket that keeps versions, as B2 does) and delete those by id, as gc does. Each
check runs even when an earlier one failed, so one run shows every missing capability at once.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cache_sync.config import MiB, Settings
from cache_sync.errors import AccessDenied, ObjectNotFound, StorageError, TransientStorageError
from cache_sync.storage import Store, open_store
from cache_sync.storage.dialect import derive
from cache_sync.versions import LIFECYCLE_FIX, plan_purge

PROBE_PREFIX = "doctor/"
SMALL = 4096
REQUIRED = ("list", "read", "write")  # without one of these no pull/push works
REGION_CODES = {"AuthorizationHeaderMalformed", "PermanentRedirect", "301",
                "IllegalLocationConstraintException", "InvalidRegion"}
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "InvalidAccessKey"}

# What each capability is called where the key is made, and what lacks without it.
_CAPABILITY = {
    # capability: (B2 key capability, AWS IAM action, what stops working)
    "list": ("listFiles", "s3:ListBucket", "pull, push and gc cannot find snapshots"),
    "read": ("readFiles", "s3:GetObject", "pull cannot fetch anything"),
    "write": ("writeFiles", "s3:PutObject", "push cannot store snapshots"),
    "delete": ("deleteFiles", "s3:DeleteObject", "gc is unavailable; pull and push still work"),
    "versions": ("deleteFiles", "s3:ListBucketVersions and s3:DeleteObjectVersion",
                 "gc frees no storage: deleted objects stay stored as hidden versions"),
}


@dataclass
class Check:
    name: str
    capability: str
    result: str = "skipped"          # ok | refused | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    fix: str = ""
    code: str = ""                   # the store's error code, when it gave one


@dataclass
class Report:
    remote: str
    endpoint: str | None
    dialect: str
    dialect_reason: str
    checks: list[Check] = field(default_factory=list)
    throughput: dict[str, float] = field(default_factory=dict)
    left_behind: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return sorted({c.capability for c in self.checks if c.result in ("refused", "failed")})

    @property
    def verdict(self) -> str:
        missing = self.missing
        if any(cap in REQUIRED for cap in missing):
            return "unusable"
        if missing == ["versions"]:
            return "usable, gc frees no storage"
        if missing:
            return "usable without gc"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        data["missing"] = self.missing
        return data


def _dialect(settings: Settings) -> tuple[str, str]:
    if not settings.remote.startswith("s3://"):
        return "-", "not an S3 store"
    if settings.s3_dialect == "auto":
        dialect, why = derive(settings.endpoint_url, False)
        return dialect, f"auto: {why}"
    return settings.s3_dialect, settings.sources.get("s3_dialect", "CACHE_SYNC_S3_DIALECT")


def fix_for(capability: str, exc: Exception, dialect: str, bucket_wide: bool) -> str:
    """The one-line remedy for a refused check. ``bucket_wide``: every check was refused the
    same way, so the key (or bucket) is wrong as a whole, not one capability."""
    code = getattr(exc, "code", "")
    b2 = dialect == "b2"
    if isinstance(exc, TransientStorageError) and "network" in str(exc):
        return ("the endpoint does not answer: check CACHE_SYNC_ENDPOINT_URL"
                + (" / B2_REGION" if b2 else "") + " and the network")
    if code in REGION_CODES or "region" in str(exc).lower():
        return ("wrong region: set " + ("B2_REGION (the bucket's region, e.g. us-west-004)"
                                        if b2 else "CACHE_SYNC_REGION") + " to the bucket's")
    if code == "NoSuchBucket":
        return ("the bucket does not exist here: check the name in CACHE_SYNC_REMOTE"
                + (", and that B2_REGION is the bucket's region" if b2 else "")
                + ", or create it")
    if code in CREDENTIAL_CODES:
        return ("the key id or secret is wrong"
                + (" (B2: an application key's keyID/applicationKey; the master key does not"
                   " work with the S3 API)" if b2 else ""))
    if "refused a request header" in str(exc) or code in ("NotImplemented", "InvalidArgument"):
        return "set CACHE_SYNC_S3_DIALECT=compat (b2 on Backblaze)"
    if code == "InvalidRequest" and capability == "delete":
        return "the store wants Content-MD5 on DeleteObjects: set CACHE_SYNC_S3_DIALECT=compat"
    if isinstance(exc, AccessDenied) and capability == "versions" and not bucket_wide:
        return LIFECYCLE_FIX
    if isinstance(exc, AccessDenied):
        if bucket_wide:
            return ("the key may not use this bucket at all: the bucket may belong to another"
                    " account, or the key is restricted to another bucket or name prefix"
                    + (" (B2: check the key's bucket and namePrefix)" if b2 else ""))
        b2_name, iam, lost = _CAPABILITY[capability]
        grant = f"give the key the {b2_name} capability" if b2 else f"allow {iam}"
        return f"{grant} ({lost})"
    return f"see the error above ({type(exc).__name__})"


class _Probe:
    def __init__(self, store: Store, report: Report, size: int) -> None:
        self.store = store
        self.report = report
        self.size = size
        self.base = f"{PROBE_PREFIX}{uuid.uuid4().hex[:16]}/"
        self.small_key = self.base + "small"
        self.big_key = self.base + "big"
        self.small = os.urandom(SMALL)
        self.written: list[str] = []
        self.errors: list[tuple[Check, Exception]] = []

    def check(self, name: str, capability: str, fn: Callable[[], str]) -> Check:
        c = Check(name, capability)
        t0 = time.perf_counter()
        try:
            c.detail = fn()
            c.result = "ok"
        except AccessDenied as exc:
            c.result, c.detail, c.code = "refused", str(exc.message), exc.code
            self.errors.append((c, exc))
        except StorageError as exc:
            c.result, c.detail, c.code = "failed", str(exc.message), exc.code
            self.errors.append((c, exc))
        c.seconds = time.perf_counter() - t0
        self.report.checks.append(c)
        return c

    def run(self) -> None:
        store = self.store
        listed = self.check("list", "list", lambda: f"{sum(1 for _ in store.list(PROBE_PREFIX))} "
                            f"keys under {PROBE_PREFIX}").result == "ok"
        wrote = self.check("write", "write", self._write_small).result == "ok"
        self.check("read", "read", self._read_small if wrote else self._read_existing)
        if wrote:
            self.check("ranged read", "read", self._ranged)
            self.check(f"transfer {self.size // MiB or self.size} "
                       f"{'MiB' if self.size >= MiB else 'B'}", "write", self._transfer)
        deleted = self.check("batch delete", "delete", self._delete).result == "ok"
        if listed and deleted:
            self.check("deletes free space", "versions", self._versions)
        else:
            self.report.checks.append(Check("deletes free space", "versions",
                                            detail="needs list and batch delete"))
        self._fixes()

    def _write_small(self) -> str:
        self.store.put(self.small_key, self.small)
        self.written.append(self.small_key)
        return f"{SMALL} B probe object under {self.base}"

    def _read_small(self) -> str:
        if self.store.get(self.small_key) != self.small:
            raise StorageError("the probe object came back different")
        return "bytes match"

    def _read_existing(self) -> str:
        try:
            self.store.get("store.json")
        except ObjectNotFound:
            return "store.json not found (not initialised yet); read not proven"
        return "store.json read (the probe object could not be written)"

    def _ranged(self) -> str:
        body = self.store.open_range(self.small_key, 100, 200)
        try:
            got = body.read()
        finally:
            body.close()
        if got != self.small[100:300]:
            raise StorageError(f"a ranged GET returned {len(got)} wrong bytes (wanted 100-299)")
        return "bytes 100-299 match"

    def _transfer(self) -> str:
        data = os.urandom(self.size)
        t0 = time.perf_counter()
        self.store.put(self.big_key, data)
        put_s = time.perf_counter() - t0
        self.written.append(self.big_key)
        t0 = time.perf_counter()
        got = self.store.get(self.big_key)
        get_s = time.perf_counter() - t0
        if got != data:
            raise StorageError("the probe object came back different")
        put_mbs, get_mbs = self.size / 1e6 / max(put_s, 1e-6), self.size / 1e6 / max(get_s, 1e-6)
        self.report.throughput = {"bytes": self.size, "put_seconds": round(put_s, 4),
                                  "get_seconds": round(get_s, 4),
                                  "put_MBps": round(put_mbs, 1), "get_MBps": round(get_mbs, 1)}
        return f"put {put_mbs:.0f} MB/s, get {get_mbs:.0f} MB/s (one request each)"

    def _delete(self) -> str:
        keys = self.written or [self.small_key]  # nothing written: an absent key is no error
        try:
            self.store.delete(keys)
        except StorageError:
            self.report.left_behind = [f"{self.report.remote.rstrip('/')}/{k}"
                                       for k in self.written]
            raise
        self.written = []
        return f"{len(keys)} probe objects deleted in one request"

    def _versions(self) -> str:
        """Whether a delete frees storage: on a bucket that keeps versions (B2 always) the
        probe objects are only hidden; delete them by version id, as gc does (design 6.3)."""
        left = list(self.store.list_versions(self.base))
        if not left:
            return "deleted objects are gone (the bucket keeps no versions)"
        purge = plan_purge(left)
        self.store.delete_versions(purge.first)
        self.store.delete_versions(purge.then)
        if list(self.store.list_versions(self.base)):
            raise StorageError("hidden versions of the probe objects remain after deleting "
                               "them by id")
        return (f"the bucket keeps versions (a delete only hides); {len(left)} hidden "
                "versions deleted by id, as gc does")

    def _fixes(self) -> None:
        refused = [c for c, _ in self.errors]
        bucket_wide = bool(refused) and all(
            c.result == "refused" for c in self.report.checks if c.capability in REQUIRED)
        for i, (c, exc) in enumerate(self.errors):
            # one remedy for the key as a whole, said once
            c.fix = "see above" if bucket_wide and i and isinstance(exc, AccessDenied) else (
                fix_for(c.capability, exc, self.report.dialect, bucket_wide))
        if self.report.left_behind:
            last = next(c for c in self.report.checks if c.capability == "delete")
            last.fix += "; delete by hand: " + ", ".join(self.report.left_behind)


def diagnose(settings: Settings, size: int = 8 * MiB) -> Report:
    """Probe the store named by ``settings`` (retries kept short: a diagnosis, not a job)."""
    dialect, why = _dialect(settings)
    report = Report(settings.remote, settings.endpoint_url, dialect, why)
    store = open_store(settings.with_overrides(retries=min(settings.retries, 3)))
    try:
        _Probe(store, report, size).run()
    finally:
        store.close()
    return report
