"""``cache-sync run -- CMD...``: pull, run CMD with the cache's env, push on the way out.
Exits with CMD's status (128+N when CMD was killed by signal N)."""

from __future__ import annotations

import argparse

from cache_sync import flashattn
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.errors import ConfigError
from cache_sync.lifecycle import RunOptions
from cache_sync.lifecycle import run as run_worker

NAME = "run"
HELP = "run a worker command: pull, env, start, forward signals, push within a budget"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--push-timeout", type=float, default=60.0, metavar="S",
                   help="budget for the shutdown: the final push ends at most S seconds "
                   "after the first SIGTERM/SIGINT/SIGHUP (CMD's own shutdown counts), or "
                   "after CMD's exit when no signal came (default 60)")
    p.add_argument("--push-interval", type=float, default=None, metavar="S",
                   help="also push every S seconds while CMD runs")
    p.add_argument("--kill-timeout", type=float, default=30.0, metavar="S",
                   help="after forwarding a signal, SIGKILL CMD if still running after S "
                   "seconds (default 30)")
    p.add_argument("--requirements", default=None, metavar="FILE",
                   help="bootstrap: after the pull, if packages/ does not satisfy FILE, one "
                   "worker of the fleet installs it (the others wait and pull) "
                   "[CACHE_SYNC_REQUIREMENTS]")
    p.add_argument("--hf-model", action="append", default=[], metavar="REPO[@REV][:GLOBS]",
                   help="bootstrap: a Hub model downloaded into HF_HUB_CACHE when missing "
                   "(repeatable) [CACHE_SYNC_HF_MODELS]")
    p.add_argument("--flash-attn", nargs="?", const=flashattn.DEFAULT_VERSION, default=None,
                   metavar="VERSION", help="bootstrap: after the requirements, optionally, the "
                   "prebuilt flash-attn wheel matching the installed torch [CACHE_SYNC_FLASH_ATTN]")
    p.add_argument("--no-pull", action="store_true", help="skip the pull before CMD")
    p.add_argument("--no-push", action="store_true", help="skip pushes")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="start CMD once packages/ and deps/ are in place while models/ keeps "
                   "pulling; CMD must wait for it with cache_sync.readiness.wait, as the "
                   "handler does [CACHE_SYNC_OVERLAP, default off]")
    p.add_argument("--unit-start", action=argparse.BooleanOptionalAction, default=None,
                   help="on a cold start, also start CMD before packages/ is whole: the pull "
                   "places it distribution by distribution and an import in CMD waits for "
                   "its own (implies --overlap) [CACHE_SYNC_UNIT_START, default off]")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...",
                   help="the command and its arguments")


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    for name in ("push_timeout", "push_interval", "kill_timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    if args.requirements:
        settings = settings.with_overrides(requirements=args.requirements)
    if args.flash_attn:
        settings = settings.with_overrides(flash_attn=args.flash_attn)
    if args.hf_model:
        settings = settings.with_overrides(hf_models=(*settings.hf_models, *args.hf_model))
    opts = RunOptions(cmd=cmd, pull=not args.no_pull, push=not args.no_push,
                      push_timeout=args.push_timeout, push_interval=args.push_interval,
                      kill_timeout=args.kill_timeout,
                      overlap=settings.overlap if args.overlap is None else args.overlap,
                      unit_start=(settings.unit_start if args.unit_start is None
                                  else args.unit_start))
    result = run_worker(settings, opts, lambda line: out.info(f"run: {line}"))
    if out.json_mode:
        out.result(result.to_dict())
    return result.exit_code
