"""cache-sync pull [AREA...]: restore the current state of each area from the store."""

from __future__ import annotations

from cache_sync import sync
from cache_sync.cli._sync_common import report

NAME = "pull"
HELP = "restore areas from the store (merging concurrent pushes)"


def add_arguments(p) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA", help="areas (default: all configured)")
    p.add_argument("--dry-run", action="store_true", help="show what would be fetched")
    p.add_argument("--discard-local", action="store_true",
                   help="make each area exactly the store's state: local changes not yet "
                   "pushed (edits, deletions, added files) are lost; by default they are "
                   "merged in as the newest head")


def run(args, settings, out) -> int:
    report(out, NAME, sync.pull(settings, args.areas, dry_run=args.dry_run,
                                     discard_local=args.discard_local))
    return 0
