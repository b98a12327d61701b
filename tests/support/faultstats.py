"""Sum the counts the fault suite appends to $FAULTS_STATS (one JSON line per test) into the
totals docs/faults.md reports: ``python tests/support/faultstats.py stats.jsonl [...]``."""

from __future__ import annotations

import json
import sys
from collections import Counter


def totals(paths: list[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for path in paths:
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                rec.pop("test", None)
                for k, v in rec.items():
                    if isinstance(v, int):
                        out[k] += v
    return out


if __name__ == "__main__":
    t = totals(sys.argv[1:])
    for key in sorted(t):
        print(f"{key:32} {t[key]}")
