"""cache-sync pull [AREA...]: restore the current state of each area from the store."""

from __future__ import annotations

import argparse

from cache_sync.cli._sync_common import report
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.pull import pull

NAME = "pull"
HELP = "restore areas from the store (merging concurrent pushes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA", help="areas (default: all configured)")
    p.add_argument("--dry-run", action="store_true", help="show what would be fetched")
    p.add_argument("--discard-local", action="store_true",
                   help="make each area exactly the store's state: local changes not yet "
                   "pushed (edits, deletions, added files) are lost; by default they are "
                   "merged in as the newest head")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    report(out, NAME, pull(settings, args.areas, dry_run=args.dry_run,
                           discard_local=args.discard_local))
    return 0
