"""cache-sync gc: delete old snapshots and unreferenced objects."""

from __future__ import annotations

import argparse

from cache_sync import garbage
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.progress import human_bytes

NAME = "gc"
HELP = ("delete snapshots beyond --keep per area; mark objects no kept snapshot references and "
        "delete those an earlier run marked")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    p.add_argument("--keep", type=int, metavar="N",
                   help="snapshots to keep per area (default CACHE_SYNC_KEEP or 5)")
    p.add_argument("--grace", type=float, metavar="S",
                   help="mark only objects older than S seconds, and delete them no sooner "
                        "than S seconds (at least CACHE_SYNC_GC_WINDOW) after marking (default "
                        "CACHE_SYNC_GC_GRACE or 86400)")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    r = garbage.gc(settings, dry_run=args.dry_run, keep=args.keep, grace=args.grace)
    verb = "would delete" if args.dry_run else "deleted"
    out.result(r.to_dict(), (f"gc: {verb} {r.snapshots_deleted} snapshots and "
                             f"{r.objects_deleted} objects ({human_bytes(r.bytes_deleted)}) "
                             f"marked earlier; kept {r.snapshots_kept} snapshots; marked "
                             f"{r.objects_marked} objects ({human_bytes(r.bytes_marked)}) for "
                             f"deletion by a run at least {r.delete_after_seconds:g} s from "
                             f"now; {r.objects_in_grace} unreferenced objects are within the "
                             "grace period"
                             + (f"; {verb} {r.versions_deleted} hidden versions "
                                f"({human_bytes(r.version_bytes_deleted)}) the bucket kept"
                                if r.versions_deleted else "")))
    return 0
