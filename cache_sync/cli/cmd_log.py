"""cache-sync log [AREA...]: list snapshots, newest first."""

from __future__ import annotations

import argparse

from cache_sync import maintenance
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.progress import human_bytes

NAME = "log"
HELP = "list snapshots, newest first (* marks heads)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    entries = maintenance.log(settings, args.areas)
    rows = [[("*" if e.head else " ") + e.id, e.area, e.time, e.host,
             e.files, human_bytes(e.bytes), ",".join(e.parents) or "-"]
            for e in entries]
    text = out.table(["snapshot", "area", "time", "host", "files", "size", "parents"], rows)
    out.result({"snapshots": [e.to_dict() for e in entries]}, text if rows else "no snapshots")
    return 0
