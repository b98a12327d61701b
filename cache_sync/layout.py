"""Key layout of a store and snapshot identifiers (pure, no I/O).

```
store.json                                   format marker, written once
objects/<oid[:2]>/<oid>                      packs and chunks, oid = sha256 of the stored bytes
snapshots/<area>/<id>[_<parent>...].json.zst one immutable manifest per push
```
A snapshot's parents are part of its key, so one LIST of ``snapshots/<area>/`` gives the whole
history graph and its heads without reading any manifest.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

STORE_KEY = "store.json"
OBJECTS = "objects/"
SNAPSHOTS = "snapshots/"
FORMAT_VERSION = 1
SNAPSHOT_SUFFIX = ".json.zst"
MAX_PARENTS_IN_KEY = 24  # keeps keys far below S3's 1024-byte limit

_ID_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
_OID_RE = re.compile(r"^[0-9a-f]{64}$")


def new_snapshot_id(now: float | None = None) -> str:
    """Sortable by time (microseconds, UTC), unique by 32 random bits."""
    now = time.time() if now is None else now
    micros = int(now * 1_000_000) % 1_000_000
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}{micros:06d}Z-{os.urandom(4).hex()}"


def is_snapshot_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def is_oid(text: str) -> bool:
    return bool(_OID_RE.match(text))


def object_key(oid: str) -> str:
    return f"{OBJECTS}{oid[:2]}/{oid}"


def oid_from_key(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    return name if key.startswith(OBJECTS) and is_oid(name) else None


def area_prefix(area: str) -> str:
    return f"{SNAPSHOTS}{area}/"


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot as seen in a listing: its id, its parents, and its key."""

    area: str
    id: str
    parents: tuple[str, ...]
    key: str
    mtime: float = 0.0


def snapshot_key(area: str, snap_id: str, parents: tuple[str, ...] | list[str]) -> str:
    named = sorted(set(parents))[-MAX_PARENTS_IN_KEY:]
    return area_prefix(area) + "_".join([snap_id, *named]) + SNAPSHOT_SUFFIX


def parse_snapshot_key(key: str, mtime: float = 0.0) -> SnapshotRef | None:
    """None for keys that are not snapshots (foreign files in the prefix are ignored)."""
    if not key.startswith(SNAPSHOTS) or not key.endswith(SNAPSHOT_SUFFIX):
        return None
    rest = key[len(SNAPSHOTS) : -len(SNAPSHOT_SUFFIX)]
    if rest.count("/") != 1:
        return None
    area, name = rest.split("/")
    ids = name.split("_")
    if not all(is_snapshot_id(i) for i in ids):
        return None
    return SnapshotRef(area=area, id=ids[0], parents=tuple(ids[1:]), key=key, mtime=mtime)


def heads(refs: list[SnapshotRef]) -> list[SnapshotRef]:
    """Snapshots that no other snapshot names as a parent, oldest first."""
    named = {p for r in refs for p in r.parents}
    return sorted((r for r in refs if r.id not in named), key=lambda r: r.id)
