"""cache-sync gc: delete old snapshots and unreferenced objects."""

from __future__ import annotations

from cache_sync import maintenance
from cache_sync.cli.output import human_bytes

NAME = "gc"
HELP = "delete snapshots beyond --keep per area and objects no kept snapshot references"


def add_arguments(p) -> None:
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    p.add_argument("--keep", type=int, metavar="N",
                   help="snapshots to keep per area (default CACHE_SYNC_KEEP or 5)")
    p.add_argument("--grace", type=float, metavar="S",
                   help="only delete objects older than S seconds (default CACHE_SYNC_GC_GRACE"
                        " or 86400)")


def run(args, settings, out) -> int:
    data = maintenance.gc(settings, dry_run=args.dry_run, keep=args.keep, grace=args.grace)
    verb = "would delete" if args.dry_run else "deleted"
    out.result(data, (f"gc: {verb} {data['snapshots_deleted']} snapshots and "
                      f"{data['objects_deleted']} objects ({human_bytes(data['bytes_deleted'])});"
                      f" kept {data['snapshots_kept']} snapshots; "
                      f"{data['objects_in_grace']} unreferenced objects are within the grace "
                      "period"))
    return 0
