"""What each command reports: typed records the CLI prints (as text or ``--json``) and the
worker lifecycle and installer embed in their own reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # an annotation only: the CLI's reports need not import the planner
    from cache_sync.plan import PullSummary


@dataclass
class AreaReport:
    """The outcome of a pull or push of one area."""

    area: str
    action: str
    snapshot: str | None = None
    heads: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    objects: int = 0
    requests: int = 0
    removed: int = 0
    up_to_date: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    note: str = ""
    skipped: list[str] = field(default_factory=list)
    local_changes: int = 0  # pull: unpushed local changes merged as the newest head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PushEstimate:
    """What a push would read now (``status``)."""

    changed: bool
    files_to_read: int
    bytes_to_read: int


@dataclass
class AreaStatus:
    area: str
    local: list[str]  # the snapshot ids the area was last synced to
    remote: list[str]  # the store's heads
    in_sync: bool
    pull: PullSummary
    push: PushEstimate


@dataclass
class StatusResult:
    root: str
    remote: str
    free_bytes: int
    areas: list[AreaStatus]
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> lease.describe

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LogEntry:
    """One snapshot as ``log`` lists it."""

    area: str
    id: str
    head: bool
    parents: list[str]
    time: str
    host: str
    files: int
    bytes: int
    tool: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AreaVerify:
    area: str
    snapshot: list[str]
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    note: str = ""  # "never synced with this remote"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.note:
            del d["note"]
        return d


@dataclass
class VerifyResult:
    areas: list[AreaVerify] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.areas)

    def to_dict(self) -> dict[str, Any]:
        return {"areas": [a.to_dict() for a in self.areas], "ok": self.ok}


@dataclass
class GcReport:
    """What one ``gc`` run did (design 6.1): the delete phase of earlier runs' ripe marks,
    then retention and this run's mark. Field order is the ``--json`` key order."""

    dry_run: bool
    objects_deleted: int = 0  # by this run's delete phase (marked by an earlier run)
    bytes_deleted: int = 0
    objects_spared: int = 0  # of a ripe mark, but named again by a snapshot or a claim
    delete_phase: str = "no ripe mark"  # "done", or why it stopped
    snapshots_kept: int = 0
    snapshots_deleted: int = 0
    objects_marked: int = 0  # for deletion by a later run
    bytes_marked: int = 0
    objects_in_grace: int = 0  # unreferenced but younger than the grace period
    objects_referenced: int = 0
    marks_pending: int = 0
    delete_after_seconds: float = 0.0  # the earliest a later run may delete this run's mark
    # On a bucket that keeps versions (B2 always): hidden versions deleted by id (6.3).
    versions_deleted: int = 0
    version_bytes_deleted: int = 0
    versions_note: str = ""  # why hidden versions were left (and the lifecycle rule to set)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
