"""Shared output for pull and push."""

from __future__ import annotations

from cache_sync.cli.output import Output
from cache_sync.progress import human_bytes
from cache_sync.results import AreaReport


def summary_line(rep: AreaReport) -> str:
    verb = "would" if rep.dry_run else ""
    if rep.up_to_date and not rep.dry_run:
        text = f"{rep.action} {rep.area}: up to date"
        if rep.note:
            text += f" ({rep.note})"
        return text
    if rep.action == "pull":
        text = (f"pull {rep.area}: {verb + ' ' if verb else ''}fetch {rep.files} files, "
                f"{human_bytes(rep.bytes)}")
        if rep.removed:
            text += f", remove {rep.removed}"
        if not rep.dry_run:
            text += f" in {rep.seconds:.1f}s ({rep.requests} requests); snapshot {rep.snapshot}"
            if len(rep.heads) > 1:
                text += f" (merged {len(rep.heads)} heads)"
    else:
        if rep.dry_run:
            text = (f"push {rep.area}: would read {rep.files} changed files, "
                    f"{human_bytes(rep.bytes)}")
        else:
            text = (f"push {rep.area}: {rep.files} files read, {rep.objects} objects "
                    f"({human_bytes(rep.bytes)}) uploaded in {rep.seconds:.1f}s; "
                    f"snapshot {rep.snapshot}")
    return text


def report(out: Output, command: str, reports: list[AreaReport]) -> None:
    data = {"command": command, "areas": [r.to_dict() for r in reports]}
    out.result(data, "\n".join(summary_line(r) for r in reports))
    for r in reports:
        for s in r.skipped:
            out.info(f"warning: {r.area}: skipped symlink {s} (it leads out of the area)")
