"""The snapshot graph of an area and the merge of its heads (pure: manifests are loaded
through a callback).

The current state of an area is the merge of its heads, oldest first: each further head is
merged three-way against the latest common ancestor, so one worker's deletions are kept and
two workers' additions both survive; where two heads changed the same path (or, through
``units.merger``, the same installed distribution or Hugging Face repo) the later one wins:
heads are ordered by id, i.e. by creation time to the microsecond, then by the random suffix.
"""

from __future__ import annotations

from collections.abc import Callable

from cache_sync.layout import SnapshotRef, heads
from cache_sync.snapshot import Entry, Merge, Snapshot, merge3

Loader = Callable[[SnapshotRef], Snapshot]


class History:
    def __init__(self, refs: list[SnapshotRef]) -> None:
        self.refs = {r.id: r for r in refs}
        self.heads = heads(refs)

    def ancestors(self, snap_id: str) -> set[str]:
        """The ids reachable through parent links (including itself) that still exist."""
        seen: set[str] = set()
        stack = [snap_id]
        while stack:
            cur = stack.pop()
            if cur in seen or cur not in self.refs:
                continue
            seen.add(cur)
            stack.extend(self.refs[cur].parents)
        return seen

    def merge_base(self, left: set[str], right: set[str]) -> str | None:
        """The newest common ancestor of two ancestor sets (ids sort by time)."""
        common = left & right
        return max(common) if common else None

    def current(self, load: Loader, merge: Merge = merge3) -> tuple[list[str], dict[str, Entry]]:
        """(head ids, merged entries) of the area; ([], {}) when it has no snapshot. ``merge``
        is called as ``merge(base, merged_so_far, next_head)``: the later head is ``theirs``."""
        if not self.heads:
            return [], {}
        first = self.heads[0]
        merged = load(first).entries
        merged_anc = self.ancestors(first.id)
        for ref in self.heads[1:]:
            anc = self.ancestors(ref.id)
            base_id = self.merge_base(merged_anc, anc)
            base = load(self.refs[base_id]).entries if base_id else {}
            merged = merge(base, merged, load(ref).entries)
            merged_anc |= anc
        return [h.id for h in self.heads], merged
