"""pip vs uv through `cache-sync install`, cold and warm, on a small real requirement set from
PyPI (network). Not a test: `python tests/support/bench_install.py [--reps N]` prints a markdown table
for docs/install.md.

cold        empty pip/ cache and empty packages/ (first worker ever)
warm cache  pip/ cache kept, packages/ emptied (e.g. after a version change)
warm start  everything in packages/ already (what every later worker does): no installer runs
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

REPO = Path(__file__).resolve().parents[2]  # run as a script: no package imports
SPECS = ["requests", "rich", "pyyaml", "jinja2"]


def once(env: dict, installer: str) -> float:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "cache_sync", "install", "--no-push",
                        "--no-import-check", "--installer", installer, *SPECS],
                       env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(p.stdout + p.stderr)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for installer in ("pip", "uv"):
        times: dict[str, list[float]] = {"cold": [], "warm cache": [], "warm start": []}
        for _ in range(a.reps):
            with tempfile.TemporaryDirectory() as d:
                env = {k: v for k, v in os.environ.items()
                       if not k.startswith(("PIP_", "UV_", "CACHE_SYNC_"))}
                env.update({"PIP_CONFIG_FILE": os.devnull,
                            "PIP_INDEX_URL": "https://pypi.org/simple",
                            "PYTHONPATH": str(REPO), "CACHE_SYNC_ROOT": f"{d}/cache",
                            "CACHE_SYNC_REMOTE": f"file://{d}/store", "HOME": d})
                times["cold"].append(once(env, installer))
                shutil.rmtree(f"{d}/cache/packages")
                times["warm cache"].append(once(env, installer))
                times["warm start"].append(once(env, installer))
        rows.append((installer, {k: statistics.median(v) for k, v in times.items()}))
    print(f"| installer | cold | warm cache | warm start |  (median of {a.reps}, "
          f"{', '.join(SPECS)} + deps)")
    print("|---|---|---|---|")
    for installer, t in rows:
        print(f"| {installer} | {t['cold']:.2f} s | {t['warm cache']:.2f} s | "
              f"{t['warm start']:.2f} s |")


if __name__ == "__main__":
    main()
