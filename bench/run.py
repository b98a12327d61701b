"""One command for the whole benchmark: ``python -m bench [--size quick] [--latency both] ...``.

Starts SeaweedFS on 127.0.0.1, builds (or reuses) the datasets, and for every dataset, latency
mode and run times each tool through the same five operations on its own bucket:
first upload, no-op push, incremental push (one more small package), cold pull into an empty
root, pull onto the up-to-date root. Every cold pull is verified byte for byte against the
source. The limit (one object, parallel ranged GETs) runs on the same server in the same run.
Everything started here is stopped on exit, including on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import datasets, latency_proxy, limit, report
from bench.measure import run_measured, server_files, settle
from bench.peers import PEERS, TOOLS, Target, Tool
from bench.verify import compare, scan

REPO = Path(__file__).resolve().parent.parent
FLOOR = "floor: cp -a of the tree (disk only)"
OPS = ("upload", "noop_push", "incr_push", "cold_pull", "warm_pull")


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=datasets.SIZES, default="quick",
                    help="dataset size: full (issue's ~900 MB + 2x1 GiB), quick, tiny (smoke)")
    ap.add_argument("--quick", dest="size", action="store_const", const="quick")
    ap.add_argument("--datasets", default="abc", help="any of a, b, c (default: abc)")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median shown)")
    ap.add_argument("--pulls", type=int, default=1,
                    help="no-op pushes and cold+warm pulls per upload (e.g. --runs 1 --pulls 3 "
                         "for a full-size run: 3 samples of each for one costly upload)")
    ap.add_argument("--latency", choices=("none", "20ms", "both"), default="none",
                    help="add ~20 ms RTT through a TCP proxy (20ms), or run both modes")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--parallel", type=int, default=None, help="override every tool's parallelism")
    ap.add_argument("--no-limit", action="store_true", help="skip the one-object limit reader")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/cache-sync-bench"),
                    help="datasets are cached here between runs; scratch space too")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--timeout", type=float, default=3600, help="per tool invocation")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only print the table of an earlier results .json")
    return ap.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _bucket_bytes(client, bucket: str) -> tuple[int, int]:
    total = count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            total += obj["Size"]
            count += 1
    return total, count


def _drop_bucket(server, bucket: str) -> None:
    """Delete a bucket and everything in it, then ask SeaweedFS to reclaim the space (its
    volumes are append-only) so a full run does not fill the disk."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=bucket)
    if server.admin_url:
        try:
            urllib.request.urlopen(f"{server.admin_url}/vol/vacuum?garbageThreshold=0.01",
                                   timeout=120).read()
        except OSError as exc:
            _log(f"vacuum failed (disk may grow): {exc}")


class Bench:
    def __init__(self, args: argparse.Namespace, server) -> None:
        self.args, self.server = args, server
        self.work = Path(tempfile.mkdtemp(prefix="work-", dir=args.data_dir))
        self.records: list[dict] = []
        self.seq = 0

    def _measure(self, cmd: list[str], env: dict, disk: list[Path], **rec) -> dict:
        m = run_measured(cmd, env, disk_paths=[str(p) for p in disk], timeout=self.args.timeout)
        row = {**rec, "seconds": round(m.seconds, 3), "peak_rss": m.peak_rss,
               "peak_extra_disk": m.peak_extra_disk, "read_bytes": m.read_bytes,
               "returncode": m.returncode}
        if m.returncode:
            row["error"] = m.stderr_tail.strip().splitlines()[-3:]
            _log(f"  {rec['tool']} {rec['op']} FAILED rc={m.returncode}: {row['error']}")
        else:
            _log(f"  {rec['tool']:12s} {rec['op']:10s} {m.seconds:8.2f}s "
                 f"rss {m.peak_rss / 2**20:6.0f} MB  extra disk {m.peak_extra_disk / 2**20:6.0f} MB")
        self.records.append(row)
        return row

    def tool_run(self, tool: Tool, pieces, ds: str, reference, endpoints: dict[float, str],
                 base: dict):
        """One tool, one bucket. The first upload and the incremental push go through the
        first endpoint; no-op pushes and pulls are measured through every endpoint (direct and
        proxied), so ``--latency both`` pays for the costly upload once."""
        self.seq += 1
        bucket = self.server.make_bucket(f"bench-{self.seq}")
        tdir = self.work / f"t{self.seq}"
        tdir.mkdir()
        client = self.server.client()
        src, dst = tdir / "src", tdir / "dst"
        datasets.make_root(pieces, ds, src)
        tmp = tdir / "tmp"  # the tool's TMPDIR: staging there counts as extra disk
        tmp.mkdir()
        push_disk, pull_disk = [tmp, src / ".cache-sync"], [tmp, dst]

        def via(rtt: float) -> tuple[Target, dict]:
            t = Target(endpoints[rtt], bucket, "cache", self.server.env(),
                       datasets.DATASETS[ds], tdir)
            return t, {**tool.env(t), "TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)}

        first = next(iter(endpoints))
        try:
            t, env = via(first)
            rec = {**base, "tool": tool.name, "rtt_ms": first}
            up = self._measure(tool.push(src, t), env, push_disk, op="upload", **rec)
            up["stored_bytes"], up["stored_objects"] = _bucket_bytes(client, bucket)
            for rtt in endpoints:
                t, env = via(rtt)
                for k in range(self.args.pulls):  # idempotent and cheap: repeat like pulls
                    self._measure(tool.push(src, t), env, push_disk, op="noop_push",
                                  **{**rec, "rtt_ms": rtt, "pull": k})
            t, env = via(first)
            extra = datasets.add_extra_package(pieces, src)
            row = self._measure(tool.push(src, t), env, push_disk, op="incr_push", **rec)
            after, objects = _bucket_bytes(client, bucket)
            row.update(new_bytes=extra, uploaded_bytes=after - up["stored_bytes"],
                       uploaded_objects=objects - up["stored_objects"])
            for rtt in endpoints:
                t, env = via(rtt)
                for k in range(self.args.pulls):  # pulls are cheap to repeat; uploads are not
                    shutil.rmtree(dst, ignore_errors=True)
                    dst.mkdir()
                    settle(server_files(self.server.data_dir, bucket))
                    prec = {**rec, "rtt_ms": rtt, "pull": k}
                    row = self._measure(tool.pull(dst, t), env, pull_disk, op="cold_pull",
                                        **prec)
                    if row["returncode"] == 0:
                        row["fidelity"] = compare(reference, dst).to_dict()
                        _log(f"    verify: {row['fidelity']['summary']}")
                    self._measure(tool.pull(dst, t), env, pull_disk, op="warm_pull", **prec)
        finally:
            shutil.rmtree(tdir, ignore_errors=True)
            _drop_bucket(self.server, bucket)

    def limit_runs(self, ds: str, nbytes: int, endpoint: str, bucket: str, base: dict) -> None:
        (self.work / "limit").mkdir(exist_ok=True)
        out = self.work / "limit" / "object.bin"
        readers = {"limit (python ranged GET)": limit.python_reader_cmd(
            endpoint, bucket, out, nbytes, self.args.parallel or 16)}
        if shutil.which("s5cmd"):
            readers["limit (s5cmd cp)"] = limit.s5cmd_reader_cmd(
                endpoint, bucket, out, self.args.parallel or 16)
        env = {**os.environ, **self.server.env(), "PYTHONPATH": str(REPO)}
        floor_dir = self.work / "floor"
        shutil.rmtree(floor_dir, ignore_errors=True)
        floor_dir.mkdir()
        settle([self.work / "reference"])
        # What the disk allows with no network at all: a local copy of the same tree.
        self._measure(["cp", "-a", f"{self.work / 'reference'}/.", str(floor_dir)], env,
                      [floor_dir], op="cold_pull", tool=FLOOR, **base)
        shutil.rmtree(floor_dir, ignore_errors=True)
        for name, cmd in readers.items():
            out.unlink(missing_ok=True)
            settle(server_files(self.server.data_dir, bucket))
            row = self._measure(cmd, env, [out.parent], op="cold_pull", tool=name, **base)
            if row["returncode"] == 0:
                good = out.stat().st_size == nbytes and (
                    limit.file_digest(out) == limit.expected_digest(nbytes))
                row["fidelity"] = {"ok": good, "faithful": good, "bytes": nbytes,
                                   "summary": "bytes ok" if good else "BROKEN"}
            out.unlink(missing_ok=True)


def _run_all(args, server, bench: Bench, pieces, tools: list[Tool], modes: list[float],
             meta: dict) -> None:
    for ds in args.datasets:
        ref_root = datasets.make_root(pieces, ds, bench.work / "reference")
        datasets.add_extra_package(pieces, ref_root)
        reference = scan(ref_root)
        nbytes = sum(e.size for e in reference.values() if e.kind == "file")
        meta.setdefault("datasets", {})[ds] = {
            "files": sum(e.kind == "file" for e in reference.values()),
            "links": sum(e.kind == "link" for e in reference.values()), "bytes": nbytes}
        _log(f"dataset {ds} ({datasets.DATASET_TITLES[ds]}): {meta['datasets'][ds]}")
        limit_bucket = server.make_bucket(f"bench-limit-{ds}")
        if not args.no_limit:
            limit.upload(server.client(), limit_bucket, nbytes)
        with contextlib.ExitStack() as stack:
            endpoints = {rtt: (stack.enter_context(latency_proxy.start(server.endpoint, rtt))
                               if rtt else server.endpoint) for rtt in modes}
            for rtt, ep in endpoints.items():
                if rtt:
                    meta.setdefault("measured_rtt_ms", {})[str(rtt)] = round(
                        1000 * latency_proxy.measure_rtt(ep), 1)
            for run in range(args.runs):
                base = {"dataset": ds, "run": run}
                for rtt, ep in endpoints.items():  # the references first: always in the table
                    for k in range(args.pulls if not args.no_limit else 0):
                        bench.limit_runs(ds, nbytes, ep, limit_bucket,
                                         {**base, "rtt_ms": rtt, "pull": k})
                order = tools[run % len(tools):] + tools[: run % len(tools)]
                for tool in order:  # rotate so no tool always runs first/last
                    _log(f"{ds} run {run + 1}/{args.runs}: {tool.name}")
                    bench.tool_run(tool, pieces, ds, reference, endpoints, base)
        _drop_bucket(server, limit_bucket)
        shutil.rmtree(ref_root)  # kept until here: the floor copies it


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        print(report.render(data["records"], data["meta"], peers={TOOLS[p]().name for p in PEERS}))
        return 0
    sys.path.insert(0, str(REPO))
    from tests.support.s3servers import seaweedfs_server

    tools = [TOOLS[n.strip()](args.parallel) for n in args.tools.split(",") if n.strip()]
    missing = [t.name for t in tools if not t.available()]
    if missing:
        _log(f"skipping tools not installed: {', '.join(missing)}")
    tools = [t for t in tools if t.available()]
    modes = {"none": [0.0], "20ms": [args.rtt_ms], "both": [0.0, args.rtt_ms]}[args.latency]
    started = datetime.datetime.now(datetime.timezone.utc)
    pieces = datasets.build_pieces(args.data_dir, args.size)
    # Per-invocation scratch (never a fixed path: two benches at once must not share one).
    weed_dir = Path(tempfile.mkdtemp(prefix="weed-", dir=args.data_dir))
    meta = {"started": started.isoformat(timespec="seconds"), "size": args.size,
            "runs": args.runs, "pulls": args.pulls, "machine": report.machine(),
            "python": platform.python_version(),
            "tuning": {t.name: t.tuning() for t in tools}, "rtt_ms": modes}
    try:
        with seaweedfs_server(str(weed_dir)) as server:
            bench = Bench(args, server)
            try:
                _run_all(args, server, bench, pieces, tools, modes, meta)
            except BaseException:  # keep what was measured before a failure or Ctrl-C
                args.results.mkdir(parents=True, exist_ok=True)
                (args.results / f"{started:%Y%m%dT%H%M%SZ}-{args.size}-partial.json").write_text(
                    json.dumps({"meta": meta, "records": bench.records}, indent=1))
                raise
            finally:
                shutil.rmtree(bench.work, ignore_errors=True)
    finally:
        shutil.rmtree(weed_dir, ignore_errors=True)
    meta["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    table = report.render(bench.records, meta, peers={TOOLS[p]().name for p in PEERS})
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (args.results / f"{stamp}-{args.size}.json").write_text(
        json.dumps({"meta": meta, "records": bench.records}, indent=1))
    (args.results / f"{stamp}-{args.size}.md").write_text(table)
    _log(f"results: {args.results}/{stamp}-{args.size}.{{json,md}}")
    failed = [r for r in bench.records if r["returncode"] or not r.get("fidelity", {"ok": 1})["ok"]]
    return 1 if any(r["tool"] == "cache-sync" for r in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
