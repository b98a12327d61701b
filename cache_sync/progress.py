"""Sizes and progress for humans: ``human_bytes``, and files, bytes, rate, ETA on one redrawn
stderr line. Thread-safe; redraws at most ten times a second; silent when not enabled (the CLI
prints one summary line per area instead)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f}"


class Progress:
    def __init__(self, label: str, files: int, total_bytes: int, *, enabled: bool,
                 stream: TextIO | None = None) -> None:
        self.label = label
        self.total_files = files
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.files = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.files += files
            self.bytes += nbytes
            if not self.enabled:
                return
            now = time.monotonic()
            if now - self._last < 0.1:
                return
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = self.bytes / elapsed
        left = max(self.total_bytes - self.bytes, 0)
        eta = f"{left / rate:4.0f}s" if rate > 0 and self.total_bytes else "   ?"
        pct = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        self.stream.write(
            f"\r{self.label}: {self.files}/{self.total_files} files  "
            f"{_mib(self.bytes)}/{_mib(self.total_bytes)} MiB ({pct:3.0f}%)  "
            f"{_mib(rate)} MiB/s  ETA {eta} "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            with self._lock:
                self._draw(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()


def enabled(mode: str, json_mode: bool, stream: TextIO | None = None) -> bool:
    if mode == "off" or json_mode:
        return False
    if mode == "on":
        return True
    s = stream or sys.stderr
    return bool(getattr(s, "isatty", lambda: False)())
