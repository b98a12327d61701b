"""The read path, boto3 vs the boto3-free client (issue 14), on one SeaweedFS:

``python -m bench uptodate [--files 22000] [--runs 5] [--rtt-ms 20] [--big 512M]``

1. An up-to-date pull (the warm start: the local state already matches the store's heads) of
   a root of ``--files`` small files, in a subprocess as a worker runs it, with
   ``CACHE_SYNC_S3_CLIENT=boto3`` and ``=lite``, direct and through the latency proxy: the
   median wall of ``--runs``.
2. A cold pull of one ``--big`` file (``--big 0`` skips it): cache-sync with each client, and
   s5cmd fetching the same bytes as one object; wall and CPU (user+sys of the child, from
   ``wait4``), ratios to s5cmd.

Every process it starts (SeaweedFS, latency proxies) is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import latency_proxy

REPO = Path(__file__).resolve().parent.parent
CLIENTS = ("boto3", "lite")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench uptodate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=22000, help="files in the synced root")
    p.add_argument("--runs", type=int, default=5, help="up-to-date pulls per cell (median)")
    p.add_argument("--rtt-ms", type=float, default=20.0, help="added round-trip time")
    p.add_argument("--big", default="512M", help="size of the cold-pull file (0: skip)")
    p.add_argument("--big-runs", type=int, default=1, help="cold pulls of the big file per tool")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()))
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the child (user+sys), return code, stderr tail) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (wall, usage.ru_utime + usage.ru_stime, proc.returncode,
            err.decode(errors="replace")[-600:])


def make_tree(root: Path, files: int) -> None:
    """``files`` small files of distinct bytes, 100 per directory (a site-packages shape)."""
    for i in range(files):
        d = root / f"pkg{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i % 100:03d}.py").write_bytes(b"# %d\n" % i + os.urandom(200 + i % 700))


def _cli(root: Path) -> list[str]:
    return [sys.executable, "-m", "cache_sync", "--root", str(root), "pull"]


def _env(server, remote: str, endpoint: str, client: str) -> dict[str, str]:
    # Bytecode is written (an installed package has it: pip compiles at install), so the
    # first pull compiles and the timed ones load .pyc files as a worker would.
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("CACHE_SYNC_", "AWS_", "B2_", "PYTHONDONTWRITEBYTECODE"))}
    return {**base, **server.env(), "PYTHONPATH": str(REPO), "CACHE_SYNC_REMOTE": remote,
            "CACHE_SYNC_ENDPOINT_URL": endpoint, "CACHE_SYNC_S3_CLIENT": client,
            "CACHE_SYNC_PROGRESS": "off"}


@contextlib.contextmanager
def endpoints(server, rtt_ms: float) -> Iterator[dict[float, str]]:
    with latency_proxy.start(server.endpoint, rtt_ms) as slow:
        yield {0.0: server.endpoint, rtt_ms: slow}


Cell = list[tuple[float, float]]  # (wall, CPU) per run


def up_to_date(server, work: Path, eps: dict[float, str], files: int, runs: int
               ) -> dict[tuple[str, float], Cell]:
    bucket = server.make_bucket()
    remote = f"s3://{bucket}/uptodate"
    src, dst = work / "src", work / "dst"
    _log(f"building {files} files")
    make_tree(src / "packages", files)
    env = _env(server, remote, server.endpoint, "lite")
    for root, what in ((src, "push"), (dst, "pull")):
        _log(f"first {what}")
        subprocess.run([sys.executable, "-m", "cache_sync", "--root", str(root), what], env=env,
                       check=True, stdout=subprocess.DEVNULL)
    times: dict[tuple[str, float], Cell] = {}
    floor = [sys.executable, "-c", "pass"]
    for rtt, endpoint in eps.items():
        for client in (*CLIENTS, "floor"):
            e = _env(server, remote, endpoint, client if client != "floor" else "auto")
            cell = times[(client, rtt)] = []
            for _ in range(runs):  # interleaved would be fairer; the median absorbs noise
                wall, cpu, rc, err = timed(_cli(dst) if client != "floor" else floor, e)
                if rc:
                    raise RuntimeError(f"up-to-date pull ({client}) exited {rc}: {err}")
                cell.append((wall, cpu))
            _log(f"up to date, {client}, +{rtt:g} ms: "
                 f"{statistics.median(w for w, _ in cell):.3f} s")
    return times


def big_file(server, work: Path, eps: dict[float, str], size: int, runs: int
             ) -> dict[str, list[tuple[float, float]]]:
    bucket = server.make_bucket()
    remote = f"s3://{bucket}/big"
    src = work / "bigsrc"
    (src / "models").mkdir(parents=True)
    blob = src / "models" / "weights.bin"
    _log(f"writing a {size >> 20} MiB file")
    with open(blob, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(size >> 20):
            f.write(block[:-8] + i.to_bytes(8, "big"))
    env = _env(server, remote, server.endpoint, "lite")
    subprocess.run([sys.executable, "-m", "cache_sync", "--root", str(src), "push", "models"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    server.client().upload_file(str(blob), bucket, "one/weights.bin")
    out: dict[str, list[tuple[float, float]]] = {}
    for _ in range(runs):
        for tool in (*CLIENTS, "s5cmd"):
            dst = work / f"big-{tool}"
            shutil.rmtree(dst, ignore_errors=True)
            if tool == "s5cmd":
                cmd = ["s5cmd", "--endpoint-url", server.endpoint, "--log", "error", "cp",
                       f"s3://{bucket}/one/weights.bin", str(dst / "weights.bin")]
                dst.mkdir(parents=True)
            else:
                cmd = [*_cli(dst), "models"]
            subprocess.run(["sync"], check=False)
            wall, cpu, rc, err = timed(cmd, _env(server, remote, server.endpoint, tool)
                                       if tool != "s5cmd" else {**os.environ, **server.env()})
            if rc:
                raise RuntimeError(f"cold pull with {tool} exited {rc}: {err}")
            out.setdefault(tool, []).append((wall, cpu))
            _log(f"cold pull of {size >> 20} MiB, {tool}: {wall:.2f} s wall, {cpu:.2f} s CPU")
            shutil.rmtree(dst, ignore_errors=True)
    return out


def render(times: dict[tuple[str, float], Cell], big: dict[str, Cell],
           files: int, size: int, runs: int) -> str:
    rtts = sorted({r for _, r in times})
    lines = [f"Up-to-date `cache-sync pull` of a {files:,}-file root (4 areas, one with "
             f"snapshots), median of {runs}: wall (min-max) / CPU user+sys:", "",
             "| reads through | " + " | ".join(f"+{r:g} ms RTT" for r in rtts) + " |",
             "|---|" + "---:|" * len(rtts)]
    names = {"boto3": "boto3", "lite": "lite (boto3-free)",
             "floor": "`python -c pass` (interpreter + site: the floor)"}
    for client in (*CLIENTS, "floor"):
        cells = []
        for r in rtts:
            walls = [w for w, _ in times[(client, r)]]
            cpu = statistics.median(c for _, c in times[(client, r)])
            cells.append(f"{statistics.median(walls):.3f} s ({min(walls):.3f}-"
                         f"{max(walls):.3f}) / {cpu:.2f} s")
        lines.append(f"| {names[client]} | " + " | ".join(cells) + " |")
    if big:
        base = statistics.median(c for _, c in big["s5cmd"])
        lines += ["", f"Cold pull of one {size >> 20} MiB file (no added latency; s5cmd: the "
                  "same bytes as one object), median:", "",
                  "| tool | wall | CPU (user+sys) | CPU vs s5cmd |", "|---|---:|---:|---:|"]
        for tool in (*CLIENTS, "s5cmd"):
            wall = statistics.median(w for w, _ in big[tool])
            cpu = statistics.median(c for _, c in big[tool])
            name = f"cache-sync ({tool})" if tool != "s5cmd" else "s5cmd cp"
            lines.append(f"| {name} | {wall:.2f} s | {cpu:.2f} s | {cpu / base:.2f}x |")
    return "\n".join(lines)


def _size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(float(text.rstrip("KMGkmg")) * mult)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    sys.path.insert(0, str(REPO))
    from tests.support.s3servers import seaweedfs_server

    work = Path(tempfile.mkdtemp(prefix="bench-readpath-", dir=args.data_dir))
    size = _size(args.big)
    try:
        (work / "weed").mkdir()
        with seaweedfs_server(str(work / "weed")) as server, \
                endpoints(server, args.rtt_ms) as eps:
            times = up_to_date(server, work, eps, args.files, args.runs)
            big = big_file(server, work, eps, size, args.big_runs) if size else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(times, big, args.files, size, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
