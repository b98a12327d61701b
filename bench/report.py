"""Turn the raw records into the markdown table the README shows, plus a check against the
issue's targets. Every number is a median of the successful runs with min-max beside it."""

from __future__ import annotations

import os
import platform
import statistics
from collections import defaultdict

from bench.datasets import DATASET_TITLES

MB = 1e6
OP_TITLES = {"upload": "first upload", "noop_push": "no-op push",
             "incr_push": "incremental push (+1 pkg)", "cold_pull": "cold pull",
             "warm_pull": "pull, up to date"}
CS = "cache-sync"
FLOOR = "floor: cp -a of the tree (disk only)"
PUSH_OPS = ("upload", "noop_push", "incr_push")
HEADER = ("| operation | tool | median s | min-max | vs best peer | vs limit | peak RSS MB "
          "| peak extra disk MB | push read MB | notes |")


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model or platform.machine()}), {mem:.0f} GiB RAM, " \
           f"Linux {platform.release()}"


def _group(records: list[dict]) -> dict:
    groups: dict = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["rtt_ms"], r["op"], r["tool"])].append(r)
    return groups


def _stats(rows: list[dict]) -> dict | None:
    good = [r for r in rows if r["returncode"] == 0]
    if not good:
        return None
    secs = [r["seconds"] for r in good]
    fids = [r["fidelity"] for r in good if "fidelity" in r]
    bad = [f for f in fids if not f["ok"]]
    return {
        "median": statistics.median(secs), "min": min(secs), "max": max(secs), "n": len(secs),
        "failed": len(rows) - len(good),
        "rss": max(r["peak_rss"] for r in good),
        "extra_disk": max(r["peak_extra_disk"] for r in good),
        "read": statistics.median(r["read_bytes"] for r in good),
        "fidelity": (bad or fids or [None])[0],
        "stored": statistics.median([r["stored_bytes"] for r in good if "stored_bytes" in r]
                                    or [0]),
        "uploaded": statistics.median([r["uploaded_bytes"] for r in good
                                       if "uploaded_bytes" in r] or [0]),
        "new": good[0].get("new_bytes", 0),
    }


def summarize(records: list[dict], peers: set[str]) -> dict:
    """Per (dataset, rtt, op): stats per tool, best peer median and limit median."""
    out: dict = {}
    for (ds, rtt, op, tool), rows in _group(records).items():
        st = _stats(rows)
        if st is None:
            st = {"failed": len(rows)}
        out.setdefault((ds, rtt, op), {})[tool] = st
    for tools in out.values():
        peer_times = [s["median"] for t, s in tools.items() if t in peers and "median" in s
                      and (s["fidelity"] is None or s["fidelity"]["ok"])]
        limit_times = [s["median"] for t, s in tools.items() if t.startswith("limit") and
                       "median" in s]
        floor = tools.get(FLOOR, {}).get("median")
        tools["_best_peer"] = min(peer_times) if peer_times else None
        tools["_limit"] = min(limit_times) if limit_times else None
        tools["_floor"] = floor
    return out


def _note(op: str, st: dict) -> str:
    if op == "upload" and st["stored"]:
        return f"stored {st['stored'] / MB:,.0f} MB"
    if op == "incr_push":
        return f"uploaded {st['uploaded'] / MB:.2f} MB for {st['new'] / MB:.2f} MB new"
    if op == "cold_pull" and st["fidelity"]:
        f = st["fidelity"]
        disk = f" ({f['disk_bytes'] / MB:,.0f} MB on disk)" if f.get("disk_bytes") else ""
        return f["summary"] + disk
    return ""


def render(records: list[dict], meta: dict, peers: set[str]) -> str:
    summ = summarize(records, peers)
    intro = (f"Run {meta['started']} to {meta.get('finished', '?')} UTC on {meta['machine']}; "
             "SeaweedFS on 127.0.0.1. Times are median seconds (min-max). "
             "'vs best peer' = best peer's median / this tool's (>1: faster than every peer); "
             "'vs limit' = this tool's median / the one-object ranged-GET limit's.")
    runs = f"{meta['runs']} runs" + (f" x {meta['pulls']} pulls" if meta.get("pulls", 1) > 1
                                      else "")
    lines = [f"# cache-sync benchmark ({meta['size']} datasets, {runs})", "",
             intro, ""]
    for ds in sorted({k[0] for k in summ}):
        info = meta.get("datasets", {}).get(ds, {})
        for rtt in sorted({k[1] for k in summ if k[0] == ds}):
            lat = f"+{rtt:g} ms RTT (proxy)" if rtt else "no added latency"
            title = (f"## ({ds}) {DATASET_TITLES[ds]}: {info.get('files', '?'):,} files, "
                     f"{info.get('links', 0)} symlinks, {info.get('bytes', 0) / MB:,.0f} MB; "
                     f"{lat}")
            lines += [title, "", HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
            for op, op_title in OP_TITLES.items():
                tools = summ.get((ds, rtt, op))
                if not tools:
                    continue
                names = sorted((t for t in tools if not t.startswith("_")),
                               key=lambda t: (t != CS, t.startswith(("limit", "floor")), t))
                for t in names:
                    st = tools[t]
                    if "median" not in st:
                        lines.append(f"| {op_title} | {t} | FAILED | | | | | | | |")
                        continue
                    best, lim = tools["_best_peer"], tools["_limit"]
                    vs_peer = f"x{best / st['median']:.2f}" if best and not t.startswith(
                        ("limit", "floor")) else ""
                    vs_lim = (f"{st['median'] / lim:.2f}" if lim and op == "cold_pull"
                              and t != FLOOR else "")
                    fail = f" ({st['failed']} failed)" if st["failed"] else ""
                    # rchar counts socket read()s of Go tools too: only pushes are comparable.
                    read = f"{st['read'] / MB:,.1f}" if op in PUSH_OPS else ""
                    lines.append(
                        f"| {op_title} | {t} | {st['median']:.2f} | {st['min']:.2f}-"
                        f"{st['max']:.2f} | {vs_peer} | {vs_lim} | {st['rss'] / MB:,.0f} | "
                        f"{st['extra_disk'] / MB:,.0f} | {read} | "
                        f"{_note(op, st)}{fail} |")
            lines.append("")
    lines += ["## Tuning", ""] + [f"- {k}: {v}" for k, v in meta.get("tuning", {}).items()]
    if meta.get("measured_rtt_ms"):
        lines.append("- latency proxy: TCP connect + one HTTP request (2 round trips) took "
                     f"{meta['measured_rtt_ms']} ms (by RTT setting)")
    lines += ["", "## Targets (issue 5)", ""] + targets(summ, meta) + [""]
    return "\n".join(lines)


def targets(summ: dict, meta: dict) -> list[str]:
    out = []

    def cs(ds: str, rtt: float, op: str) -> tuple[dict | None, dict]:
        tools = summ.get((ds, rtt, op), {})
        st = tools.get(CS)
        return (st if st and "median" in st else None), tools

    for rtt in sorted({k[1] for k in summ}):
        st, tools = cs("c", rtt, "cold_pull")
        want = 10 if rtt else 4
        if st and tools["_best_peer"]:
            x = tools["_best_peer"] / st["median"]
            out.append(f"- cold pull (c), rtt {rtt:g} ms: x{x:.1f} vs best peer "
                       f"(target >= {want}x): {'MET' if x >= want else 'NOT MET'}")
        if st and tools["_limit"]:
            r = st["median"] / tools["_limit"]
            out.append(f"- cold pull (c), rtt {rtt:g} ms: {r:.2f}x the limit (target <= 1.5): "
                       f"{'MET' if r <= 1.5 else 'NOT MET'}")
        if st and tools["_limit"] and tools["_floor"]:
            bound = max(tools["_limit"], tools["_floor"])
            out.append(f"- cold pull (c), rtt {rtt:g} ms: {st['median'] / bound:.2f}x "
                       f"max(limit, disk floor) = max({tools['_limit']:.2f}, "
                       f"{tools['_floor']:.2f}) s: what network and disk allow any tool here")
        st, tools = cs("b", rtt, "cold_pull")
        if st and tools["_limit"]:
            r = st["median"] / tools["_limit"]
            ok = r <= 1.25 and st["fidelity"] and st["fidelity"].get("faithful")
            out.append(f"- cold pull (b), rtt {rtt:g} ms: {r:.2f}x the limit, "
                       f"{st['fidelity']['summary'] if st['fidelity'] else '?'} "
                       f"(target <= 1.25, links intact): {'MET' if ok else 'NOT MET'}")
        st, _ = cs("c", rtt, "noop_push")
        if st:
            out.append(f"- no-op push (c), rtt {rtt:g} ms: {st['median']:.2f} s, read "
                       f"{st['read'] / MB:.1f} MB via read() incl. interpreter start-up "
                       f"(target < 1 s, no file contents): "
                       f"{'MET' if st['median'] < 1 else 'NOT MET'}")
    incs = [(k, v[CS]) for k, v in summ.items() if k[2] == "incr_push" and "median" in
            v.get(CS, {})]
    for (ds, rtt, _), st in incs:
        if st["new"]:
            r = st["uploaded"] / st["new"]
            out.append(f"- incremental push ({ds}), rtt {rtt:g} ms: uploaded {r:.2f}x the new "
                       f"package's bytes (target <= 1.2): {'MET' if r <= 1.2 else 'NOT MET'}")
    rss = [v[CS]["rss"] for v in summ.values() if "median" in v.get(CS, {})]
    if rss:
        out.append(f"- peak RSS of cache-sync, any operation: {max(rss) / MB:.0f} MB "
                   f"(target < 300): {'MET' if max(rss) < 300 * MB else 'NOT MET'}")
    for (ds, rtt, op), v in summ.items():
        st = v.get(CS)
        if op == "cold_pull" and st and "median" in st and meta.get("datasets", {}).get(ds):
            pulled = meta["datasets"][ds]["bytes"]
            r = st["extra_disk"] / pulled if pulled else 0
            out.append(f"- peak extra disk, cold pull ({ds}) rtt {rtt:g} ms: "
                       f"{st['extra_disk'] / MB:.0f} MB = {100 * r:.1f}% of pulled bytes "
                       f"(target < 10%): {'MET' if r < 0.10 else 'NOT MET'}")
    return out or ["- (cache-sync not measured in this run)"]
