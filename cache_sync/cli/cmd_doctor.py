"""cache-sync doctor: probe the store once (list, write, read, ranged read, one larger object,
batch delete) and print one table with the verdict, the dialect, latency, throughput and the
fix for anything refused. Exit 0 when pull and push can work (a missing delete permission is
a warning: only gc needs it), 3 when list, read or write is refused."""

from __future__ import annotations

import argparse

from cache_sync import doctor
from cache_sync.cli.output import Output
from cache_sync.config import Settings, _parse_size

NAME = "doctor"
HELP = "probe the store: what works, the S3 dialect, latency, throughput, fixes"
EXIT_UNUSABLE = 3  # the storage exit code: the store cannot serve pull or push


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="8M",
                   help="size of the object timed for throughput (default 8M)")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    size = _parse_size("--size", args.size)
    report = doctor.diagnose(settings, size=max(size, 1))
    rows = [["dialect", report.dialect, "-", report.dialect_reason]]
    rows += [[c.name, c.result, _ms(c.seconds), c.detail + (f" -> fix: {c.fix}" if c.fix else "")]
             for c in report.checks]
    verdict = report.verdict
    lines = [f"remote   {report.remote}"]
    if report.endpoint:
        lines.append(f"endpoint {report.endpoint}")
    lines += ["", out.table(["check", "result", "time", "detail"], rows), ""]
    if verdict == "ok":
        lines.append("verdict: ok - pull, push and gc can work")
    elif verdict == "usable, gc frees no storage":
        lines.append("verdict: usable - pull, push and gc work, but deleted objects stay "
                     "stored as hidden versions (see the fix of 'deletes free space')")
    elif verdict == "usable without gc":
        lines.append("verdict: usable - pull and push work; gc is unavailable "
                     "(batch delete " + next(c.result for c in report.checks
                                             if c.capability == "delete") + ", see its fix)")
    else:
        lines.append("verdict: unusable - missing " + ", ".join(
            c for c in report.missing if c in doctor.REQUIRED))
    out.result(report.to_json(), "\n".join(lines))
    return EXIT_UNUSABLE if verdict == "unusable" else 0
