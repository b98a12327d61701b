"""Profile one cache-sync cold pull: ``python -m bench.profile --size full --dataset a``.

Starts SeaweedFS, pushes the dataset with cache-sync (not profiled), then runs the cold pull
under ``py-spy record`` (sampling, every thread; ``--idle`` so waiting on the network shows up
too) or, with ``--cprofile``, under cProfile. Prints the top functions by own samples and by
inclusive samples, and leaves the raw profile (collapsed stacks / pstats) in the results dir.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import datasets, latency_proxy
from bench.peers import CacheSync, Target

REPO = Path(__file__).resolve().parent.parent


def _frame(f: str) -> str:
    """'fetch (/x/cache_sync/transfer.py:123)' -> 'fetch (transfer.py)'."""
    name, sep, where = f.partition(" (")
    if not sep:
        return f
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0].rstrip(')')})"


IDLE_LEAVES = ("_worker (thread.py)", "Condition.wait (threading.py)", "wait (threading.py)",
               "Event.wait (threading.py)")


def summarize_collapsed(path: Path, rate: int, top: int = 22) -> str:
    """Where the time goes, from py-spy's collapsed output recorded with --idle --threads:
    the main thread's wall time by function (inclusive), and the worker threads' busy time
    (samples whose leaf is not an idle wait) by own and inclusive function."""
    main_incl: collections.Counter[str] = collections.Counter()
    busy_own: collections.Counter[str] = collections.Counter()
    busy_incl: collections.Counter[str] = collections.Counter()
    main_total = busy_total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        parts = stack.split(";")
        is_main = any("<module>" in f for f in parts)
        frames = [_frame(f) for f in parts if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if is_main:
            main_total += n
            for f in set(frames):
                main_incl[f] += n
        elif frames[-1] not in IDLE_LEAVES:
            busy_total += n
            busy_own[frames[-1]] += n
            for f in set(frames):
                busy_incl[f] += n
    out = [f"main thread: {main_total / rate:.2f} s of wall time; inclusive share:"]
    out += [f"  {100 * n / main_total:5.1f}%  {f}" for f, n in main_incl.most_common(top)]
    out += ["", f"worker threads: {busy_total / rate:.2f} thread-seconds busy; own share:"]
    out += [f"  {100 * n / busy_total:5.1f}%  {f}" for f, n in busy_own.most_common(top)]
    out += ["", "worker threads, inclusive share:"]
    out += [f"  {100 * n / busy_total:5.1f}%  {f}" for f, n in busy_incl.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--size", choices=datasets.SIZES, default="quick")
    ap.add_argument("--dataset", choices=tuple(datasets.DATASETS), default="a")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="pull through the latency proxy")
    ap.add_argument("--cprofile", action="store_true", help="cProfile instead of py-spy")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/cache-sync-bench"))
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.support.s3servers import seaweedfs_server

    pieces = datasets.build_pieces(args.data_dir, args.size)
    scratch = Path(tempfile.mkdtemp(prefix="profile-", dir=args.data_dir))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        (scratch / "weed").mkdir()
        with seaweedfs_server(str(scratch / "weed")) as server:
            bucket = server.make_bucket("profile")
            tool = CacheSync()
            t = Target(server.endpoint, bucket, "cache", server.env(),
                       datasets.DATASETS[args.dataset], scratch)
            src = datasets.make_root(pieces, args.dataset, scratch / "src")
            env = tool.env(t)
            subprocess.run(tool.push(src, t), env=env, check=True)
            stack = contextlib.ExitStack()
            if args.rtt_ms:
                t.endpoint = stack.enter_context(latency_proxy.start(server.endpoint, args.rtt_ms))
                env = tool.env(t)
            plain = scratch / "plain"
            plain.mkdir()
            start = time.perf_counter()
            subprocess.run(tool.pull(plain, t), env=env, check=True)
            print(f"cold pull of ({args.dataset}) {args.size}: "
                  f"{time.perf_counter() - start:.2f}s without a profiler")
            shutil.rmtree(plain)
            dst = scratch / "dst"
            dst.mkdir()
            cmd = tool.pull(dst, t)
            if args.cprofile:
                out = args.results / f"{stamp}-pull-{args.size}-{args.dataset}.pstats"
                cmd = [cmd[0], "-m", "cProfile", "-o", str(out), *cmd[1:]]
            else:
                out = args.results / f"{stamp}-pull-{args.size}-{args.dataset}.collapsed"
                # --nonblocking: do not pause the process per sample (it distorts a 2-core run)
                cmd = ["py-spy", "record", "--idle", "--threads", "--nonblocking",
                       "--rate", str(args.rate),
                       "--format", "raw", "-o", str(out), "--", *cmd]
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            stack.close()
            print(f"cold pull of ({args.dataset}) {args.size}: "
                  f"{time.perf_counter() - start:.2f}s under the profiler")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.cprofile:
        import pstats

        pstats.Stats(str(out)).sort_stats("cumulative").print_stats(30)
        pstats.Stats(str(out)).sort_stats("tottime").print_stats(20)
    else:
        summary = summarize_collapsed(out, args.rate)
        out.with_suffix(".txt").write_text(summary)
        print(summary)
    print(f"profile: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
