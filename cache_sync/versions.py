"""Which stored versions a gc run deletes on a versioned bucket (pure).

On a bucket that keeps versions (Backblaze B2 always does; AWS S3, R2 and MinIO when
versioning is on) a plain DELETE only hides a key: a delete marker becomes its latest version
and the bytes stay stored and billed. gc therefore also deletes, by version id, what no read
can see any more (docs/design.md 6.3):

1. first every version that is not the latest and is not a delete marker (the bytes of a
   deleted or overwritten key), and every delete marker that is not the latest (it hides
   nothing);
2. then, only for a key all of whose data versions step 1 deleted, the delete marker that is
   its latest version. Deleting that marker earlier would bring the key's last data version
   back into view; after step 1 there is none to bring back.

A read without a version id (every read cache-sync makes) sees only latest versions, and no
step deletes a latest data version: the store every actor reads is the same before and
after. A key written again after the listing has a new latest version the plan does not name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# What to do when the key may not delete versions (gc's warning, doctor's fix).
LIFECYCLE_FIX = (
    "deleted objects stay stored as hidden versions and still cost storage: give the key "
    "deleteFiles (B2) or s3:ListBucketVersions and s3:DeleteObjectVersion (AWS), or set a "
    "lifecycle rule that removes them: on B2 'Keep only the last version' "
    '({"fileNamePrefix": "", "daysFromHidingToDeleting": 1}); on S3, R2 or MinIO '
    "NoncurrentVersionExpiration (NoncurrentDays 1) with ExpiredObjectDeleteMarker")


@dataclass(frozen=True)
class VersionInfo:
    key: str
    version_id: str
    latest: bool
    delete_marker: bool
    size: int = 0  # 0 for a delete marker


@dataclass
class Purge:
    first: list[VersionInfo]  # hidden bytes and markers that hide nothing
    then: list[VersionInfo]  # latest delete markers, once the keys' data versions are gone

    @property
    def bytes(self) -> int:
        return sum(v.size for v in self.first)


def plan_purge(versions: Iterable[VersionInfo]) -> Purge:
    by_key: dict[str, list[VersionInfo]] = {}
    for v in versions:
        by_key.setdefault(v.key, []).append(v)
    first: list[VersionInfo] = []
    then: list[VersionInfo] = []
    for key in sorted(by_key):
        vs = by_key[key]
        if not any(v.latest for v in vs):
            continue  # a listing that did not show the latest: touch nothing of this key
        first += [v for v in vs if not v.latest]
        then += [v for v in vs if v.latest and v.delete_marker]
    return Purge(first, then)
