"""cache-sync status [AREA...]: local vs remote snapshot, pending transfers, free disk."""

from __future__ import annotations

import argparse

from cache_sync import maintenance
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.progress import human_bytes

NAME = "status"
HELP = "show local and remote snapshots, what pull/push would transfer, free disk"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA")


def _ids(ids: list[str]) -> str:
    return "+".join(ids) if ids else "-"


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    data = maintenance.status(settings, args.areas)
    rows = []
    for a in data.areas:
        rows.append([
            a.area, _ids(a.local), _ids(a.remote),
            "yes" if a.in_sync else "no",
            f"{a.pull.fetch_files} files {human_bytes(a.pull.fetch_bytes)}",
            (f"{a.push.files_to_read} files {human_bytes(a.push.bytes_to_read)}"
             if a.push.changed else "nothing"),
        ])
    text = (f"root   {data.root} ({human_bytes(data.free_bytes)} free)\n"
            f"remote {data.remote}\n\n"
            + out.table(["area", "local", "remote", "in sync", "pull would fetch",
                         "push would read"], rows))
    for name, held in data.leases.items():
        text += (f"\n\nlease {name}: held by {held['holder']} (renewed "
                 f"{held['renewed_seconds_ago']:g}s ago), {len(held['waiting'])} waiting")
    out.result(data.to_dict(), text)
    return 0
