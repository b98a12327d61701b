"""What each command reports: typed records the CLI prints (as text or ``--json``) and the
worker lifecycle and installer embed in their own reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
