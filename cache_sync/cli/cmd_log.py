"""cache-sync log [AREA...]: list snapshots, newest first."""

from __future__ import annotations

from cache_sync import maintenance
from cache_sync.cli.output import human_bytes

NAME = "log"
HELP = "list snapshots, newest first (* marks heads)"


def add_arguments(p) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA")


def run(args, settings, out) -> int:
    entries = maintenance.log(settings, args.areas)
    rows = [[("*" if e["head"] else " ") + e["id"], e["area"], e["time"], e["host"],
             e["files"], human_bytes(e["bytes"]), ",".join(e["parents"]) or "-"]
            for e in entries]
    text = out.table(["snapshot", "area", "time", "host", "files", "size", "parents"], rows)
    out.result({"snapshots": entries}, text if rows else "no snapshots")
    return 0
