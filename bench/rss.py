"""``python -m bench rss [--files 200000]``: cache-sync's memory on a big synthetic tree.

Builds a ``packages/`` tree of N files (bench/synthetic.py) and, against each store (a
``file://`` directory and SeaweedFS on 127.0.0.1, so the engine's memory shows apart from
boto3's), measures the peak RSS (the child's own ``VmHWM`` at exit), wall time and CPU time
(user + sys, from ``wait4``) of: a cold push, a cold pull into an empty root, an up-to-date pull, an
incremental push after changing 1% of the files, and the pull that brings that change to the
other root. Two baselines show what the interpreter costs before any work: importing the CLI,
and importing it with boto3 and an S3 client. Prints a markdown table and writes
``bench/results/<stamp>-rss-<N>.{json,md}``. Everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import synthetic
from bench.report import machine

REPO = Path(__file__).resolve().parent.parent
OPS = ("cold_push", "cold_pull", "warm_pull", "incr_push", "incr_pull")
OP_TITLES = {"cold_push": "cold push", "cold_pull": "cold pull (empty root)",
             "warm_pull": "pull, up to date", "incr_push": "push after changing 1%",
             "incr_pull": "pull of that change", "baseline": "baseline: import only"}
BASELINES = {
    "import cache_sync CLI": "import cache_sync.cli.main",
    "+ boto3 S3 client": ("import cache_sync.cli.main, boto3; "
                          "boto3.client('s3', region_name='us-east-1')"),
}
STORE_TITLES = {"local": "file://", "s3": "SeaweedFS", "boto3": "SeaweedFS, boto3 reads"}
MiB = 1 << 20


def _log(msg: str) -> None:
    print(f"[bench rss {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench rss", description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, nargs="+", default=[200_000],
                    help="tree sizes to measure, e.g. --files 22000 200000 (default 200000)")
    ap.add_argument("--stores", default="local,s3,boto3",
                    help="comma list of local (file:// dir), s3 (SeaweedFS, the default "
                         "client: boto3-free reads) and boto3 (SeaweedFS, boto3 for reads too)")
    ap.add_argument("--big", type=int, default=0, help="also add this many ~120 MB files")
    ap.add_argument("--data-dir", type=Path,
                    default=Path("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"),
                    help="scratch for the trees (tmpfs by default: the disk's inode cost "
                         "would dominate the times; tmpfs pages are not the process's RSS)")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--code", type=Path, default=REPO,
                    help="the cache-sync checkout to measure (e.g. an older commit's tree "
                         "from git archive, for a before/after)")
    return ap.parse_args(argv)


# The child reports its own high-water mark (VmHWM) at exit: ru_maxrss from wait4 would be
# at least this benchmark's own RSS, which a forked child inherits until it execs.
_HWM = """
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    with open(os.environ["BENCH_RSS_OUT"], "w") as out:
        out.write(str(kb))
atexit.register(_hwm)
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_child(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> dict:
    """Run ``cmd`` (``python -m MODULE ...`` or ``python -c CODE``): its peak RSS (its own
    VmHWM, reported at exit), wall time, and CPU time (user + sys, from wait4)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as hwm:
        env = {**env, "BENCH_RSS_OUT": hwm.name}
        proc = subprocess.Popen([cmd[0], "-c", _HWM, *cmd[1:]], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                cwd=cwd)  # sys.path[0] of ``-c`` is the cwd: the code measured
        try:
            _pid, status, ru = _wait4(proc.pid, timeout)
        except TimeoutError:
            os.killpg(proc.pid, 9)
            _pid, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        tail = err.read()[-1500:].decode(errors="replace")
        reported = hwm.read().strip()
    row = {"seconds": round(seconds, 2), "cpu": round(ru.ru_utime + ru.ru_stime, 2),
           "peak_rss": int(reported) * 1024 if reported else 0,
           "returncode": proc.returncode}
    if proc.returncode:
        row["error"] = tail.strip().splitlines()[-3:]
    return row


def _wait4(pid: int, timeout: float) -> tuple[int, int, os.struct_rusage]:  # type: ignore[name-defined]
    deadline = time.monotonic() + timeout
    while True:
        got, status, ru = os.wait4(pid, os.WNOHANG)
        if got:
            return got, status, ru
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


@contextlib.contextmanager
def _stores(names: list[str], scratch: Path) -> Iterator[dict]:
    """name -> a function giving a fresh (remote URL, env) per tree size."""
    out = {}
    with contextlib.ExitStack() as stack:
        if "local" in names:
            def local(n: int) -> tuple[str, dict[str, str]]:
                d = scratch / f"store-{n}"
                shutil.rmtree(d, ignore_errors=True)
                return f"file://{d}", {}
            out["local"] = local
        if "s3" in names or "boto3" in names:
            sys.path.insert(0, str(REPO))
            from tests.support.s3servers import seaweedfs_server

            weed = Path(tempfile.mkdtemp(prefix="weed-rss-", dir="/tmp"))
            stack.callback(shutil.rmtree, weed, True)
            server = stack.enter_context(seaweedfs_server(str(weed)))

            def s3(n: int, client: str = "auto") -> tuple[str, dict[str, str]]:
                bucket = server.make_bucket(f"rss-{n}-{client}")
                return f"s3://{bucket}/cache", {**server.env(), "CACHE_SYNC_S3_CLIENT": client}
            if "s3" in names:
                out["s3"] = s3
            if "boto3" in names:
                out["boto3"] = lambda n: s3(n, "boto3")
        yield out


def _count(area: Path) -> tuple[int, int]:
    files = nbytes = 0
    for dirpath, _dirs, names in os.walk(area):
        for name in names:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                files += 1
                nbytes += os.lstat(p).st_size
    return files, nbytes


def measure_tree(n: int, args: argparse.Namespace, stores: dict, scratch: Path) -> list[dict]:
    rows = []
    src, dst = scratch / f"src-{n}", scratch / f"dst-{n}"
    t0 = time.perf_counter()
    tree = synthetic.build(src, n, big=args.big)
    _log(f"tree of {tree.files:,} files, {tree.links} links, {tree.bytes / MiB:,.0f} MiB "
         f"built in {time.perf_counter() - t0:.0f}s")
    try:
        for name, make in stores.items():
            remote, store_env = make(n)
            env = {**os.environ, **store_env, "CACHE_SYNC_REMOTE": remote,
                   "PYTHONPATH": str(args.code)}
            shutil.rmtree(src / ".cache-sync", ignore_errors=True)  # a cold push per store
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()

            def cs(root: Path, op: str) -> list[str]:
                return [sys.executable, "-m", "cache_sync", "--root", str(root), "-q",
                        "--progress", "off", op, "packages"]

            for op in OPS:
                if op == "incr_push":
                    changed = synthetic.touch(tree)
                    _log(f"  changed {changed:,} files")
                root = src if op.endswith("push") else dst
                row = {"files": tree.files, "bytes": tree.bytes, "store": name, "op": op,
                       **run_child(cs(root, op.split("_")[1]), env, args.timeout, args.code)}
                rows.append(row)
                _log(f"  {n:>7,} {name:5s} {op:10s} {row['seconds']:7.2f}s cpu "
                     f"{row['cpu']:7.2f}s rss {row['peak_rss'] / MiB:6.0f} MiB"
                     + (f"  FAILED: {row['error']}" if row["returncode"] else ""))
                if op == "cold_pull" and not row["returncode"]:
                    got = _count(dst / "packages")
                    want = _count(src / "packages")
                    row["verified"] = got == want
                    if got != want:
                        _log(f"  cold pull has {got} (files, bytes), the tree {want}")
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
    return rows


def render(rows: list[dict], meta: dict) -> str:
    sizes = sorted({r["files"] for r in rows if r["op"] != "baseline"})
    stores = [s for s in STORE_TITLES if any(r["store"] == s for r in rows)]
    out = [f"cache-sync memory ({meta.get('label') or 'run'}), {meta['started']}, "
           f"{meta['machine']}", "",
           "| operation | store | " + " | ".join(
               f"{n:,} files: peak RSS | wall | CPU" for n in sizes) + " |",
           "|---|---|" + "---:|---:|---:|" * len(sizes)]
    for store in stores:
        for op in OPS:
            cells = []
            for n in sizes:
                got = [r for r in rows if r["op"] == op and r["store"] == store
                       and r["files"] == n]
                r = got[0] if got else None
                cells.append(" | | " if r is None else "FAILED | | " if r["returncode"] else
                             f"{r['peak_rss'] / MiB:.0f} MiB | {r['seconds']:.1f} s | "
                             f"{r['cpu']:.1f} s")
            out.append(f"| {OP_TITLES[op]} | {STORE_TITLES[store]} | " + " | ".join(cells)
                       + " |")
    out.append("")
    out += [f"Baseline ({r['store']}): {r['peak_rss'] / MiB:.0f} MiB"
            for r in rows if r["op"] == "baseline"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = {"started": started.isoformat(timespec="seconds"), "machine": machine(),
            "label": args.label, "files": args.files, "big": args.big, "code": str(args.code)}
    env = {**os.environ, "PYTHONPATH": str(args.code)}
    rows: list[dict] = []
    for name, code in BASELINES.items():
        rows.append({"files": 0, "store": name, "op": "baseline",
                     **run_child([sys.executable, "-c", code], env, 120, args.code)})
    scratch = Path(tempfile.mkdtemp(prefix="cache-sync-rss-", dir=args.data_dir))
    try:
        with _stores([s.strip() for s in args.stores.split(",")], scratch) as stores:
            for n in args.files:
                rows += measure_tree(n, args, stores, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = render(rows, meta)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{started:%Y%m%dT%H%M%SZ}-rss-{max(args.files)}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": rows}, indent=1))
    stem.with_suffix(".md").write_text(table)
    _log(f"results: {stem}.{{json,md}}")
    return 1 if any(r["returncode"] for r in rows) else 0
