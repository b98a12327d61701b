"""``cache-sync env``: print the exports for ``eval "$(cache-sync env)"``, one value, or the
settings behind them (``--explain``)."""

from __future__ import annotations

import argparse
import os
import socket

from cache_sync import workers
from cache_sync.cli.output import Output
from cache_sync.config import Settings, sanitize_worker
from cache_sync.envs import SHELLS, cache_env, describe, ensure_layout, render
from cache_sync.errors import ConfigError

NAME = "env"
HELP = "print shell exports that point TMPDIR, pip, HF and torch caches into the cache root"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shell", choices=SHELLS, default=None, help="output syntax (default bash)")
    p.add_argument(
        "--explain", action="store_true", help="show settings and derived values with sources"
    )
    p.add_argument("var", nargs="?", metavar="VAR", help="print only this variable's value")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    if workers.owns_its_id(settings):
        # No worker named: the exports belong to the shell that evaluates them, our parent
        # (`eval "$(cache-sync env)"` execs us straight from it), alive as long as it is.
        settings = settings.with_overrides(
            worker=sanitize_worker(f"{socket.gethostname()}-{os.getppid()}"))
    env = cache_env(settings, os.environ)
    # The directories must exist: tempfile silently falls back to /tmp (the OS disk) when
    # TMPDIR points at a missing directory, which is the very failure this prevents.
    ensure_layout(settings)
    workers.touch_marker(settings)
    if args.var:
        if args.var not in env:
            raise ConfigError(
                f"{args.var} is not a variable cache-sync sets",
                hint="one of: " + ", ".join(env),
            )
        out.result({args.var: env[args.var]}, env[args.var])
        return 0
    if args.explain:
        return _explain(settings, env, out)
    # --json (global) without --shell means JSON too: machine output stays machine output.
    shell = args.shell or ("json" if settings.json else "bash")
    out.json_mode = False  # render() already produced the requested syntax
    out.result(env, render(env, shell))
    return 0


def _explain(settings: Settings, env: dict[str, str], out: Output) -> int:
    user_set = {k: v for k, v in sorted(os.environ.items()) if k.startswith("CACHE_SYNC_")}
    settings_rows = [list(r) for r in settings.explain()]
    data = {
        "user_set": {k: _redacted(k, v) for k, v in user_set.items()},
        "settings": {name: {"value": v, "source": src} for name, v, src in settings_rows},
        "derived": {k: {"value": v, "why": describe(k)} for k, v in env.items()},
    }
    text = "\n".join(
        [
            "user-set CACHE_SYNC_* variables:",
            *(f"  {k}={_redacted(k, v)}" for k, v in user_set.items()),
            *([] if user_set else ["  (none)"]),
            "",
            "settings:",
            out.table(["setting", "value", "source"], settings_rows),
            "",
            "derived exports:",
            out.table(["variable", "value", "why"], [[k, v, describe(k)] for k, v in env.items()]),
        ]
    )
    out.result(data, text)
    return 0


def _redacted(name: str, value: str) -> str:
    # Any variable that looks like a credential is shown as set/unset only; Output.redact also
    # masks the known secrets, this catches ones Settings does not know about.
    if any(word in name for word in ("SECRET", "KEY", "TOKEN", "PASSWORD")):
        return "<set>" if value else "<unset>"
    return value
