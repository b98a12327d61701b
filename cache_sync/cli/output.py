"""Human and machine output. Every string printed passes through ``redact`` so that no
credential can reach stdout, stderr or logs, even inside an error from a library."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from cache_sync.errors import CacheSyncError


class Output:
    def __init__(
        self,
        *,
        json_mode: bool = False,
        quiet: bool = False,
        verbose: int = 0,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.secrets: list[str] = []

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def redact_filter(self) -> logging.Filter:
        out = self

        class _Redact(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                record.msg = out.redact(record.getMessage())
                record.args = ()
                return True

        return _Redact()

    # --- results ---------------------------------------------------------------------------
    def result(self, data: Any, text: str | None = None) -> None:
        """The command's result: JSON on stdout in --json mode, else ``text`` (if any)."""
        if self.json_mode:
            self.stdout.write(self.redact(json.dumps(data, indent=2, default=str)) + "\n")
        elif text is not None and not self.quiet:
            self.stdout.write(self.redact(text) + ("" if text.endswith("\n") else "\n"))
        self.stdout.flush()

    def info(self, text: str) -> None:
        """A human line on stderr (kept off stdout so --json and eval stay clean)."""
        if not self.quiet:
            self.stderr.write(self.redact(text) + "\n")
            self.stderr.flush()

    def table(self, headers: list[str], rows: list[list[Any]]) -> str:
        cells = [[str(c) for c in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in cells:
            for i, c in enumerate(row):
                widths[i] = max(widths[i], len(c))
        lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
        for row in cells:
            lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        return "\n".join(lines)

    # --- errors ----------------------------------------------------------------------------
    def error(self, exc: CacheSyncError) -> None:
        self.error_text(str(exc), kind=type(exc).__name__)

    def error_text(self, text: str, kind: str = "Error") -> None:
        text = self.redact(" ".join(text.split()))  # always one line
        if self.json_mode:
            self.stdout.write(json.dumps({"error": text, "type": kind}) + "\n")
            self.stdout.flush()
        self.stderr.write(f"cache-sync: error: {text}\n")
        self.stderr.flush()


