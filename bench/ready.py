"""``python -m bench ready``: time from container start to the first answered job.

From an empty cache root to ``{"input": {"health": true}}`` answered by the real worker process
(``python -m handler`` behind runpod's local API server) with the model loaded, for each way a
worker can get its stack (see bench/ready_stack.py), on one SeaweedFS, in one run, median of
``--runs``, with and without ~20 ms of added RTT:

- ``cache-sync``: ``cache-sync run -- python -m handler`` on an empty root (the store holds the
  stack's snapshots);
- ``cache-sync-units``: the same with ``--unit-start`` (design 5.4): the worker starts once the
  metadata is in, and each import waits for its own distribution; ``waited`` sums the waits
  the import hook reports; the store holds no access profile (the need order is the source
  scan's);
- ``cache-sync-learned``: the same after a recorded start (design 5.5): one untimed cold
  start that pushes at its SIGTERM records the access profile, then the timed start (on a
  fresh root) fetches in its order; the profile is deleted afterwards;
- ``pip`` / ``uv``: the design notes' way: ``pip install --target`` (``uv pip install``) of the
  requirements at start from a local package index over HTTP, with a warm cache (as on a
  volume), then the worker; the models already in place (the notes keep them on the volume);
- ``s5cmd``: ``s5cmd cp`` of the same trees stored one object per file, then the worker;
- ``floor``: the trees already in place (a warm network volume): only the worker's own start;
- ``--code DIR`` adds ``cache-sync-units-before``: the unit start with the ``cache_sync`` of
  another checkout (``DIR`` holds a ``cache_sync`` package), in the same invocation as the
  others: a before/after on one machine state.

Each time is broken down from the worker's own log lines: fetch (pull / install / copy, until
the worker process starts), import, model load, first job. ``limit`` is the same bytes fetched
as one object with parallel ranged GETs: no tool can fetch the trees faster.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import latency_proxy, limit
from bench.datasets import tree_bytes
from bench.measure import server_files, settle
from bench.ready_stack import REPO, STACKS, Stack, build, plain_requirements

MODES = ("cache-sync", "cache-sync-units", "cache-sync-learned", "pip", "uv", "s5cmd", "floor")
BEFORE = "cache-sync-units-before"  # the unit start with ``--code``'s cache_sync
CACHE_SYNC_MODES = ("cache-sync", "cache-sync-units", "cache-sync-learned", BEFORE)
WAITED = re.compile(r"^cache-sync: .* waited ([0-9.]+)s for packages/")
PHASES = ("fetch", "import", "load", "first_job")
# Log lines that end a phase: (phase, pattern). Times are when the line reached us.
MARKS = (
    ("fetch", re.compile(r"\bpulled: |\bpackages ready\b")),
    ("import", re.compile(r"^handler: imported engine ")),
    ("load", re.compile(r"^handler: ready: ")),
)
BASE_ENV = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true",
            "PYTHONUNBUFFERED": "1", "RUNPOD_LOG_LEVEL": "INFO"}


def _log(msg: str) -> None:
    print(f"[bench ready {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench ready", description=__doc__.splitlines()[0])
    ap.add_argument("--stack", choices=STACKS, default="f5")
    ap.add_argument("--requirements", type=Path, default=None,
                    help="requirements for the f5 stack (default requirements/runpod-cpu.txt)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency", choices=("none", "20ms", "both"), default="both")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/cache-sync-bench"))
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--timeout", type=float, default=1800, help="per worker start")
    ap.add_argument("--code", type=Path, default=None,
                    help=f"another checkout (a dir holding cache_sync/): adds the way {BEFORE}")
    ap.add_argument("--fresh-store", action="store_true",
                    help="seed the stores again (the f5 stack keeps its seeded SeaweedFS data "
                         "and warm installer caches under DATA_DIR/ready/f5/store)")
    return ap.parse_args(argv)


# --- one worker start ----------------------------------------------------------------------
class Start:
    """One timed start: ``prelude`` commands (install / copy), then a process that ends up
    serving runpod's API on ``port``; we poll until the health job answers."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}
        self.lines: list[str] = []
        self.waited: float | None = None  # the import hook's waits, summed

    def mark(self, phase: str) -> None:
        self.marks.setdefault(phase, time.monotonic() - self.t0)

    def prelude(self, cmd: list[str], timeout: float) -> None:
        proc = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
        self.lines.extend(proc.stdout.decode(errors="replace").splitlines()[-40:])
        if proc.returncode:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: " + "\n".join(self.lines[-10:]))

    def serve(self, cmd: list[str], port: int, timeout: float, shutdown: bool = False
              ) -> dict[str, Any]:
        """``shutdown``: once the job is answered, SIGTERM the process and let it exit (a
        `run` pushes); else SIGKILL its group (the measurement is over: no push)."""
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        reader.start()
        try:
            answer = self._health(proc, port, timeout)
            self.mark("first_job")
            if shutdown:
                proc.terminate()
                proc.wait(timeout)
            return answer
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(5)
            self.log_path.write_text("\n".join(self.lines))

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            # the start's log gives each line its arrival, in seconds since the start
            self.lines.append(f"{time.monotonic() - self.t0:7.2f} {line}")
            for phase, pattern in MARKS:
                if pattern.search(line):
                    self.mark(phase)
            m = WAITED.search(line)
            if m:
                self.waited = (self.waited or 0.0) + float(m.group(1))

    def _health(self, proc: subprocess.Popen, port: int, timeout: float) -> dict[str, Any]:
        deadline = self.t0 + timeout
        body = json.dumps({"input": {"health": True}}).encode()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n" +
                                   "\n".join(self.lines[-20:]))
            req = urllib.request.Request(f"http://127.0.0.1:{port}/runsync", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    answer = json.load(resp)
            except OSError:
                time.sleep(0.05)
                continue
            out = answer.get("output") or {}
            if not out.get("ready"):
                raise RuntimeError(f"worker answered but is not ready: {answer}")
            return answer
        raise RuntimeError(f"no answer within {timeout}s:\n" + "\n".join(self.lines[-20:]))

    def result(self) -> dict[str, float]:
        """Phase durations; a phase the log did not mark is folded into the next one."""
        out, prev = {}, 0.0
        for phase in PHASES:
            if phase in self.marks:
                out[phase] = round(self.marks[phase] - prev, 3)
                prev = self.marks[phase]
        out["total"] = round(self.marks["first_job"], 3)
        if self.waited is not None:
            out["waited"] = round(self.waited, 3)
        return out


def _handler_cmd(port: int) -> list[str]:
    return [sys.executable, "-m", "handler", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
            "--rp_api_port", str(port)]


def _free_port() -> int:
    from tests.support.s3servers import free_port
    return free_port()


# --- the modes -----------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, server: Any, scratch: Path,
                 keep: Path) -> None:
        self.args, self.stack, self.server, self.scratch = args, stack, server, scratch
        self.keep = keep  # what may outlive the run: installer caches
        self.label = "0ms"
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("PIP_", "UV_", "CACHE_SYNC_", "AWS_", "HANDLER_",
                                              "RUNPOD_", "HF_"))}
        self.base_env.update(BASE_ENV)
        self.base_env.update(stack.engine_env)
        self.base_env["HOME"] = str(scratch / "home")
        (scratch / "home").mkdir(exist_ok=True)

    def s3_env(self, endpoint: str) -> dict[str, str]:
        env = self.server.env()
        env["AWS_ENDPOINT_URL"] = endpoint
        env.pop("CACHE_SYNC_ENDPOINT_URL", None)
        return env

    # Stores, filled once (untimed); a kept store (``state``) remembers what it holds.
    def seed(self, state_file: Path) -> None:
        client = self.server.client()
        state: dict[str, Any] = {}
        if state_file.exists():
            state = json.loads(state_file.read_text())

        def bucket(name: str) -> str:
            if name not in state:
                state[name] = self.server.make_bucket()
            return str(state[name])

        def done(what: str) -> None:
            state.setdefault("seeded", []).append(what)
            state_file.write_text(json.dumps(state))

        self.cs_bucket, self.copy_bucket = bucket("cs_bucket"), bucket("copy_bucket")
        self.limit_bucket = bucket("limit_bucket")
        seeded = set(state.get("seeded", []))
        env = {**self.base_env, **self.server.env(), "PYTHONPATH": str(REPO),
               "CACHE_SYNC_ROOT": str(self.stack.root),
               "CACHE_SYNC_REMOTE": f"s3://{self.cs_bucket}/cache"}
        if set(CACHE_SYNC_MODES) & set(self.modes) and "cache-sync" not in seeded:
            _log("seeding the cache-sync store")
            subprocess.run([sys.executable, "-m", "cache_sync", "push", *self.stack.areas],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            done("cache-sync")
        if "s5cmd" in self.modes and "s5cmd" not in seeded:
            for area in self.stack.areas:
                _log(f"seeding the copy tool's bucket with {area} (one object per file)")
                subprocess.run(["s5cmd", "--endpoint-url", self.server.endpoint, "--log",
                                "error", "sync", f"{self.stack.root / area}/",
                                f"s3://{self.copy_bucket}/{area}/"],
                               env={**self.base_env, **self.server.env()}, check=True)
            done("s5cmd")
        self.bytes = sum(tree_bytes(self.stack.root / a) for a in self.stack.areas)
        if state.get("limit_bytes") != self.bytes:
            limit.upload(client, self.limit_bucket, self.bytes)
            state["limit_bytes"] = self.bytes
            done("limit")
        # Warm installer caches, as on a volume: one untimed install each.
        self.index = self.scratch / "index"
        from tests.support.pkgindex import build_index
        build_index(self.index, sorted(self.stack.wheels.glob("*.whl")))
        self.pip_cache, self.uv_cache = self.keep / "pip-cache", self.keep / "uv-cache"

    def warm_installers(self, index_url: str) -> None:
        for mode in ("pip", "uv"):
            stamp = self.keep / f"warm-{mode}.done"
            if mode in self.modes and not stamp.exists():
                _log(f"warming {mode}'s cache (untimed)")
                root = self.scratch / f"warm-{mode}"
                shutil.rmtree(root, ignore_errors=True)
                start = Start(self._install_env(index_url), self.scratch / f"warm-{mode}.log")
                for cmd in self._install_cmds(mode, root / "packages"):
                    start.prelude(cmd, self.args.timeout)
                shutil.rmtree(root, ignore_errors=True)
                stamp.touch()

    @property
    def modes(self) -> list[str]:
        modes = [m.strip() for m in self.args.modes.split(",") if m.strip()]
        if self.args.code is not None and BEFORE not in modes:
            modes.append(BEFORE)
        return modes

    def _install_env(self, index_url: str) -> dict[str, str]:
        return {**self.base_env, "PIP_INDEX_URL": index_url, "UV_INDEX_URL": index_url,
                "PIP_CACHE_DIR": str(self.pip_cache), "UV_CACHE_DIR": str(self.uv_cache),
                "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                # On a worker the cache (volume) and the target (container disk) are two
                # filesystems: uv copies. Here they share one, where uv would hard-link.
                "UV_NO_CONFIG": "1", "UV_LINK_MODE": "copy"}

    def _install_cmds(self, mode: str, target: Path) -> list[list[str]]:
        deps, nodeps = plain_requirements(self.stack.reqs)
        if mode == "pip":
            base = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
        else:
            base = ["uv", "pip", "install", "--quiet", "--python", sys.executable,
                    "--target", str(target)]
        cmds = [base + deps] if deps else []
        if nodeps:
            cmds.append(base + ["--no-deps"] + nodeps)
        return cmds

    def start(self, mode: str, s3: str, index_url: str, run: int) -> dict[str, float]:
        port = _free_port()  # one for the recorded start too: CMD's argv keys its profile
        if mode in CACHE_SYNC_MODES:
            self._forget_profiles()
        if mode == "cache-sync-learned":
            self._record_profile(s3, port, run)
        root = self.scratch / f"root-{mode}-{run}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        settle(self._inputs(mode))
        env = {**self.base_env, "CACHE_SYNC_ROOT": str(root),
               "PYTHONPATH": os.pathsep.join([str(root / "packages"), str(REPO)])}
        log = self.args.results / "logs" / f"{mode}-{run}-{self.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if mode in CACHE_SYNC_MODES:
            st = Start(self._cs_env(env, s3, self.args.code if mode == BEFORE else REPO), log)
            how = ["--overlap"] if mode == "cache-sync" else ["--unit-start"]
            st.serve([sys.executable, "-m", "cache_sync", "run", "--no-push", *how, "--",
                      *_handler_cmd(port)], port, self.args.timeout)
            if mode == "cache-sync-learned":
                self._forget_profiles()
        elif mode in ("pip", "uv"):
            # the start's own PYTHONPATH and root win over the bench's environment (a bench
            # run with PYTHONPATH set left the handler without the installed target)
            st = Start({**self._install_env(index_url), **env}, log)
            for cmd in self._install_cmds(mode, root / "packages"):
                st.prelude(cmd, self.args.timeout)
            _link_tree(self.stack.root / "models", root / "models")  # on the volume already
            st.mark("fetch")
            st.serve(_handler_cmd(port), port, self.args.timeout)
        elif mode == "s5cmd":
            st = Start({**env, **self.s3_env(s3)}, log)
            st.prelude(["s5cmd", "--endpoint-url", s3, "--log", "error", "cp",
                        f"s3://{self.copy_bucket}/*", f"{root}/"], self.args.timeout)
            st.mark("fetch")
            st.serve(_handler_cmd(port), port, self.args.timeout)
        else:  # floor
            for area in self.stack.areas:
                _link_tree(self.stack.root / area, root / area)
            st = Start(env, log)
            st.mark("fetch")
            st.serve(_handler_cmd(port), port, self.args.timeout)
        shutil.rmtree(root, ignore_errors=True)
        return st.result()

    def _cs_env(self, env: dict[str, str], s3: str, code: Path = REPO) -> dict[str, str]:
        return {**env, **self.s3_env(s3), "CACHE_SYNC_REMOTE": f"s3://{self.cs_bucket}/cache",
                "PYTHONPATH": str(code)}  # `run` puts packages/ on the child's path

    def _record_profile(self, s3: str, port: int, run: int) -> None:
        """Untimed: a cold `run --unit-start` that serves one job, then is stopped with
        SIGTERM and pushes (its areas are up to date; its access profile is new)."""
        root = self.scratch / f"root-record-{run}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        log = self.args.results / "logs" / f"record-{run}-{self.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        st = Start(self._cs_env({**self.base_env, "CACHE_SYNC_ROOT": str(root)}, s3), log)
        st.serve([sys.executable, "-m", "cache_sync", "run", "--unit-start", "--",
                  *_handler_cmd(port)], port, self.args.timeout, shutdown=True)
        shutil.rmtree(root, ignore_errors=True)
        if not any("pushed the access profile" in line for line in st.lines):
            raise RuntimeError("the recorded start pushed no access profile:\n"
                               + "\n".join(st.lines[-20:]))

    def _forget_profiles(self) -> None:
        client = self.server.client()
        listed = client.list_objects_v2(Bucket=self.cs_bucket, Prefix="cache/profiles/")
        for obj in listed.get("Contents", []):
            client.delete_object(Bucket=self.cs_bucket, Key=obj["Key"])

    def _inputs(self, mode: str) -> list[Path | str]:
        """What a way reads and would find in the page cache on a warm machine: the server's
        bytes it fetches, or the trees and caches on its volume."""
        if mode in CACHE_SYNC_MODES:
            return list(server_files(self.server.data_dir, self.cs_bucket))
        if mode == "s5cmd":
            return list(server_files(self.server.data_dir, self.copy_bucket))
        if mode in ("pip", "uv"):
            return [self.pip_cache if mode == "pip" else self.uv_cache, self.index,
                    self.stack.root / "models"]
        return [self.stack.root / a for a in self.stack.areas]  # floor

    def limit_seconds(self, s3: str) -> float:
        out = self.scratch / "limit.bin"
        env = {**self.base_env, **self.s3_env(s3), "PYTHONPATH": str(REPO)}
        settle(server_files(self.server.data_dir, self.limit_bucket))
        t = time.monotonic()
        subprocess.run(limit.python_reader_cmd(s3, self.limit_bucket, out, self.bytes, 16),
                       env=env, check=True)
        seconds = time.monotonic() - t
        out.unlink()
        return round(seconds, 3)


def _link_tree(src: Path, dest: Path) -> None:
    subprocess.run(["cp", "-al", str(src), str(dest)], check=True)


@contextlib.contextmanager
def _endpoints(server_endpoint: str, index_url: str, rtt_ms: float) -> Iterator[tuple[str, str]]:
    if not rtt_ms:
        yield server_endpoint, index_url
        return
    index_root = index_url.split("/simple", 1)[0]
    with latency_proxy.start(server_endpoint, rtt_ms) as s3, \
            latency_proxy.start(index_root, rtt_ms) as idx:
        yield s3, idx + "/simple"


# --- report --------------------------------------------------------------------------------
def _median(rows: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return round(statistics.median(vals), 2) if vals else None


def render(results: dict[str, Any]) -> str:
    title = (f"Time to a serving worker, stack `{results['stack']}` "
             f"({results['bytes'] / 2**20:,.0f} MiB in {results['files']:,} files), "
             f"{results['date']}, {results['machine']}; median of {results['n']} "
             "(min-max), seconds")
    header = ("| latency | way | total (min-max) | fetch | import | load | first job | "
              "CMD waited on the pull | vs floor | vs max(limit, floor) | load avg |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lat, per_mode in results["runs"].items():
        floor = _median(per_mode.get("floor", []), "total")
        lim = results["limit"].get(lat)
        bound = max(lim or 0.0, floor or 0.0)
        for mode, rows in per_mode.items():
            if not rows:
                continue
            tot = [r["total"] for r in rows]
            med = _median(rows, "total") or 0.0
            cells = [_fmt(_median(rows, p)) for p in PHASES]
            ratio = f"{med / floor:.2f}x" if floor else "-"
            ratio_b = f"{med / bound:.2f}x" if bound else "-"
            lines.append(f"| {lat} | {mode} | {med:.2f} ({min(tot):.2f}-{max(tot):.2f}) | "
                         + " | ".join(cells) + f" | {_fmt(_median(rows, 'waited'))}"
                         + f" | {ratio} | {ratio_b} | "
                         + f"{_fmt(_median(rows, 'load_avg'))} |")
        lines.append(f"| {lat} | limit: same bytes as one object | {_fmt(lim)} "
                     "| | | | | | | | |")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _measure(args: argparse.Namespace, stack: Stack, server: Any, scratch: Path, keep: Path,
             results: dict[str, Any], save: Any) -> None:
    from tests.support.pkgindex import serve

    bench = Bench(args, stack, server, scratch, keep)
    bench.seed(keep / "seed.json")
    results["bytes"] = bench.bytes
    results["files"] = sum(len(f) for a in stack.areas for _, _, f in os.walk(stack.root / a))
    modes = [m for m in bench.modes if m not in ("uv", "s5cmd") or shutil.which(m)]
    latencies = {"none": [0.0], "20ms": [args.rtt_ms], "both": [0.0, args.rtt_ms]}[args.latency]
    with serve(bench.index) as index:
        index_url = index.url + "/simple"
        bench.warm_installers(index_url)
        for rtt in latencies:
            label = f"+{rtt:g} ms" if rtt else "0 ms"
            bench.label = "0ms" if not rtt else f"{rtt:g}ms"
            with _endpoints(server.endpoint, index_url, rtt) as (s3, idx):
                results["limit"][label] = bench.limit_seconds(s3)
                per_mode: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
                results["runs"][label] = per_mode
                for run in range(args.runs):
                    k = run % len(modes)
                    for mode in modes[k:] + modes[:k]:  # rotate the order between runs
                        r = bench.start(mode, s3, idx, run)
                        r["load_avg"] = round(os.getloadavg()[0], 1)
                        _log(f"{label} {mode} run {run + 1}: {r}")
                        per_mode[mode].append(r)
                        save()  # a cut-off run still leaves what it measured


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.code is not None and not (args.code / "cache_sync" / "__init__.py").is_file():
        print(f"bench ready: --code {args.code} holds no cache_sync package; give a checkout "
              "(e.g. git worktree add DIR REV)", file=sys.stderr)
        return 2
    if BEFORE in (m.strip() for m in args.modes.split(",")) and args.code is None:
        print(f"bench ready: the way {BEFORE} needs --code DIR", file=sys.stderr)
        return 2
    from tests.support.s3servers import seaweedfs_server

    args.data_dir.mkdir(parents=True, exist_ok=True)
    stack = build(args.data_dir, args.stack, args.requirements)
    results: dict[str, Any] = {
        "stack": stack.name, "n": args.runs, "runs": {}, "limit": {},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}"}
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    out = args.results / f"{stamp}-ready-{stack.name}"

    def save() -> None:
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        if results.get("bytes"):
            out.with_suffix(".md").write_text(render(results) + "\n")

    # The f5 stack's seeded store (8.9 GB, ~15 min to seed) and warm installer caches are kept
    # for the next run; the tiny stack's are rebuilt in seconds.
    keep = stack.root.parent / "store"
    if args.fresh_store or stack.name != "f5":
        shutil.rmtree(keep, ignore_errors=True)
    (keep / "weed").mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=args.data_dir, prefix="ready-") as tmp, \
                seaweedfs_server(str(keep / "weed")) as server:
            _measure(args, stack, server, Path(tmp), keep, results, save)
    finally:
        if stack.name != "f5":
            shutil.rmtree(keep, ignore_errors=True)
    save()
    print(render(results))
    return 0
