"""cache-sync push [AREA...]: send local changes as a new immutable snapshot."""

from __future__ import annotations

import argparse
import time

from cache_sync.cli._sync_common import report
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.push import push

NAME = "push"
HELP = "send local changes to the store as new snapshots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("areas", nargs="*", metavar="AREA", help="areas (default: all configured)")
    p.add_argument("--dry-run", action="store_true", help="show what would be read and sent")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="give up after S seconds, leaving the store consistent")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    report(out, NAME, push(settings, args.areas, dry_run=args.dry_run, deadline=deadline))
    return 0
