"""The records gc and pushes exchange through the store, and the push's half of the protocol
(``docs/design.md`` section 6).

```
gc/marks/<run-id>.json.zst            gc: objects found unreferenced, deleted by a later run
gc/claims/<area>-<snap-id>.json.zst   push: the objects the snapshot it is about to commit names
gc/clock/<run-id>                     gc: a probe whose LastModified is the store's "now"
```
Each side writes its record first and reads the other's second, so of a push and a gc delete
phase running at once at least one sees the other. Times are the store's own (LastModified);
durations are the acting process's monotonic clock.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import zstandard

from cache_sync import checkpoints
from cache_sync.errors import FormatError, ObjectNotFound, StorageError
from cache_sync.layout import OBJECTS, is_oid, oid_from_key
from cache_sync.storage import Store

log = logging.getLogger("cache_sync.gc")

MARKS = "gc/marks/"
CLAIMS = "gc/claims/"
CLOCK = "gc/clock/"
SUFFIX = ".json.zst"
MARK_KIND = "cache-sync-gc-mark"
CLAIM_KIND = "cache-sync-push-claim"
VISIBLE = 10.0  # seconds between a PUT's LastModified and the moment LIST shows it, at most
CLAIM_TTL = 3600.0  # a push commits within CLAIM_TTL / 2 of its claim, or claims again
MAX_RECORD = 256 << 20


@dataclass(frozen=True)
class Mark:
    key: str
    time: float  # store time the mark was written
    grace: float
    window: float
    objects: frozenset[str]

    @property
    def delay(self) -> float:
        """Objects of a mark may be deleted only once it is this old."""
        return max(self.grace, self.window)

    def ripe(self, now: float) -> bool:
        return now - self.time >= self.delay


@dataclass(frozen=True)
class Claim:
    key: str
    time: float
    ttl: float
    objects: frozenset[str]


def run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(4).hex()


def encode_record(kind: str, objects: Iterable[str], **fields: Any) -> bytes:
    doc = {"format": 1, "kind": kind, **fields, "objects": sorted(set(objects))}
    return zstandard.ZstdCompressor(level=3).compress(json.dumps(doc).encode())


def decode_record(data: bytes, kind: str, what: str) -> dict[str, Any]:
    """The record's fields, its objects as a frozenset; FormatError if it is not one."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_RECORD)
        doc = json.loads(raw)
    except (zstandard.ZstdError, ValueError, RecursionError):
        raise FormatError(f"{what} is not a zstd JSON record") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("format") != 1:
        raise FormatError(f"{what} is not a {kind} record of format 1")
    objects = doc.get("objects")
    if not isinstance(objects, list) or not all(isinstance(o, str) and is_oid(o)
                                                 for o in objects):
        raise FormatError(f"{what} lists something that is not an object id")
    for name in ("grace", "window", "ttl"):
        value = doc.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise FormatError(f"{what} has a bad {name}")
    doc["objects"] = frozenset(objects)
    return doc


def store_now(store: Store) -> float:
    """The store's clock: the LastModified of a probe written now."""
    key = f"{CLOCK}{run_id()}"
    store.put(key, b"")
    try:
        info = store.head(key)
    finally:
        store.delete([key])
    if info is None:
        raise FormatError(f"{store.url}: a key written a moment ago is not there")
    return info.mtime


def list_marks(store: Store) -> list[Mark]:
    """Every readable mark. An unreadable one is skipped by gc and pushes alike: gc deletes
    objects only of marks it can read, so a push need not fear the others."""
    marks = []
    for info in store.list(MARKS):
        if not info.key.endswith(SUFFIX):
            continue
        try:
            doc = decode_record(store.get(info.key), MARK_KIND, info.key)
        except (FormatError, ObjectNotFound) as exc:
            log.warning("ignoring %s", exc)
            continue
        marks.append(Mark(info.key, info.mtime, float(doc.get("grace", 0)),
                          float(doc.get("window", 0)), doc["objects"]))
    return marks


def write_mark(store: Store, objects: Iterable[str], grace: float, window: float) -> str:
    key = f"{MARKS}{run_id()}{SUFFIX}"
    store.put(key, encode_record(MARK_KIND, objects, grace=grace, window=window))
    return key


@dataclass
class Claims:
    live: list[Claim]
    expired: list[str]
    unreadable: list[str]

    @property
    def objects(self) -> set[str]:
        return set().union(*(c.objects for c in self.live))


def list_claims(store: Store, now: float) -> Claims:
    out = Claims([], [], [])
    for info in store.list(CLAIMS):
        if not info.key.endswith(SUFFIX):
            continue
        try:
            doc = decode_record(store.get(info.key), CLAIM_KIND, info.key)
        except ObjectNotFound:
            continue  # released (its snapshot is committed) while we listed
        except FormatError:
            out.unreadable.append(info.key)
            continue
        ttl = float(doc.get("ttl", CLAIM_TTL))
        if now - info.mtime >= ttl:
            out.expired.append(info.key)
        else:
            out.live.append(Claim(info.key, info.mtime, ttl, doc["objects"]))
    return out


def stored_objects(store: Store) -> set[str]:
    return {oid for info in store.list(OBJECTS) if (oid := oid_from_key(info.key))}


class PushClaim:
    """A push's claim on the objects its snapshot will name (design 6.1, push steps 1-7)."""

    def __init__(self, store: Store, name: str, *, sleep: Callable[[float], None] = time.sleep,
                 ttl: float | None = None) -> None:
        self.store = store
        self.key = f"{CLAIMS}{name}{SUFFIX}"
        self.sleep = sleep
        self.ttl = CLAIM_TTL if ttl is None else ttl
        self.started = 0.0

    def claim(self, objects: set[str]) -> set[str]:
        """Claim ``objects``; return those that are gone or being deleted (the push must not
        name them: it uploads their files again and claims anew)."""
        checkpoints.reached("push:claim")
        self.store.put(self.key, encode_record(CLAIM_KIND, objects, ttl=self.ttl))
        self.started = time.monotonic()
        checkpoints.reached("push:claimed")
        marks = [m for m in list_marks(self.store) if m.objects & objects]
        missing = objects - stored_objects(self.store)
        if marks:
            info = self.store.head(self.key)
            # The store's time of the claim, never this worker's clock (design 6.1). A store
            # that cannot show the claim just written gives no time: every mark counts as
            # late, so the push waits out their window and looks again (the safe side).
            late = [m for m in marks
                    if info is None or info.mtime + VISIBLE >= m.time + m.delay]
            if late:
                # A delete phase may have listed claims before ours existed: wait until it
                # has run out of its budget, then look again at what it could delete.
                checkpoints.reached("push:wait")
                left = max(m.window for m in late) - (time.monotonic() - self.started)
                if left > 0:
                    self.sleep(left)
                doubtful = (objects & set().union(*(m.objects for m in late))) - missing
                checkpoints.reached("push:recheck")
                missing |= {o for o in doubtful
                            if self.store.head(f"{OBJECTS}{o[:2]}/{o}") is None}
        if missing:
            log.warning("%d objects this push meant to reuse are gone or being deleted by "
                        "gc; uploading their files again", len(missing))
        return missing

    def fresh(self) -> bool:
        """True while a commit may still rely on the claim."""
        return time.monotonic() - self.started < self.ttl / 2

    def release(self) -> None:
        try:
            self.store.delete([self.key])
        except StorageError as exc:  # gc removes expired claims; a leftover only delays gc
            log.warning("could not delete claim %s: %s", self.key, exc)
