"""cache-sync verify [AREA...]: re-hash local files against their snapshot."""

from __future__ import annotations

from cache_sync import maintenance
from cache_sync.cli.output import human_bytes

NAME = "verify"
HELP = "re-hash local files against the snapshot they were synced to"


def add_arguments(p) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA")


def run(args, settings, out) -> int:
    data = maintenance.verify(settings, args.areas)
    lines = []
    for a in data["areas"]:
        state = "ok" if not (a["missing"] or a["mismatched"]) else "FAILED"
        line = (f"verify {a['area']}: {state}: {a['checked']} files, "
                f"{human_bytes(a['bytes'])} checked")
        if a["missing"]:
            line += f"; missing: {', '.join(a['missing'][:5])}"
        if a["mismatched"]:
            line += f"; differ: {', '.join(a['mismatched'][:5])}"
        if a.get("note"):
            line += f" ({a['note']})"
        lines.append(line)
    out.result(data, "\n".join(lines))
    maintenance.verify_or_raise(data)
    return 0
