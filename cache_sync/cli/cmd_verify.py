"""cache-sync verify [AREA...]: re-hash local files against their snapshot."""

from __future__ import annotations

import argparse

from cache_sync import maintenance
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.progress import human_bytes

NAME = "verify"
HELP = "re-hash local files against the snapshot they were synced to"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    data = maintenance.verify(settings, args.areas)
    lines = []
    for a in data.areas:
        line = (f"verify {a.area}: {'ok' if a.ok else 'FAILED'}: {a.checked} files, "
                f"{human_bytes(a.bytes)} checked")
        if a.missing:
            line += f"; missing: {', '.join(a.missing[:5])}"
        if a.mismatched:
            line += f"; differ: {', '.join(a.mismatched[:5])}"
        if a.note:
            line += f" ({a.note})"
        lines.append(line)
    out.result(data.to_dict(), "\n".join(lines))
    maintenance.verify_or_raise(data)
    return 0
