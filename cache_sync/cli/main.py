"""Entry point: parse global options, build Settings once, dispatch to ``cli/<command>.py``,
and turn errors into one-line messages and exit codes (the only place that does).

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args, settings, out) -> int``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from cache_sync import __version__
from cache_sync.cli.output import Output
from cache_sync.config import Settings, check_areas
from cache_sync.errors import CacheSyncError

# Command modules, in the order `--help` lists them.
COMMANDS = ("pull", "push", "status", "log", "verify", "gc", "doctor", "env", "install", "run")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as argparse does, plus a hint
        self.exit(EXIT_USAGE, f"cache-sync: error: {message} (see 'cache-sync --help')\n")


def _load(name: str) -> Any:
    return importlib.import_module(f"cache_sync.cli.cmd_{name}")


# Global options that take a value (the command is the first word that is not one of these
# values): ``_command_in`` must skip them to find the command without parsing.
_VALUE_OPTIONS = ("--root", "--remote", "--endpoint-url", "--region", "--profile", "--areas",
                  "--transfers", "--progress")


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``, found without importing any command module, or None
    (no command, or a word that is none: the full parser then says what is valid)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--":
            return None
        elif word.startswith("-"):
            skip = word in _VALUE_OPTIONS
        else:
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The parser; with ``only``, with that one command's module imported (an up-to-date
    pull must not pay for importing install, run and doctor: docs/design.md "The read
    path")."""
    parser = _Parser(
        prog="cache-sync",
        description="Keep a serverless worker's cache (packages, models) in an S3 bucket.",
    )
    parser.add_argument("--version", action="version", version=f"cache-sync {__version__}")
    _global_options(parser.add_argument_group("global options (env var in brackets)"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = {}
    for name in (only,) if only else COMMANDS:
        try:
            mod = _load(name)
        except ModuleNotFoundError as exc:  # a command whose module is not built yet
            if exc.name != f"cache_sync.cli.cmd_{name}":
                raise
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        # Global options are accepted after the command too (`cache-sync pull --root X`, as
        # awscli and rclone do); given there, they override the ones before it.
        _global_options(p.add_argument_group("global options"), after_command=True)
        mod.add_arguments(p)
        modules[mod.NAME] = mod
    return parser, modules


def _global_options(g: argparse._ArgumentGroup, after_command: bool = False) -> None:
    # After the command, an option not given must not reset what was given before it.
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    g.add_argument("--root", help="local cache root [CACHE_SYNC_ROOT]", **kw)
    g.add_argument("--remote", help="s3://bucket/prefix or file:///path [CACHE_SYNC_REMOTE]",
                   **kw)
    g.add_argument("--endpoint-url", help="S3 endpoint [CACHE_SYNC_ENDPOINT_URL, AWS_ENDPOINT_URL]",
                   **kw)
    g.add_argument("--region", help="S3 region [CACHE_SYNC_REGION, AWS_REGION, B2_REGION]", **kw)
    g.add_argument("--profile", help="AWS profile [CACHE_SYNC_PROFILE, AWS_PROFILE]", **kw)
    g.add_argument("--areas", dest="areas_opt", help="comma-separated areas [CACHE_SYNC_AREAS]",
                   **kw)
    g.add_argument("--transfers", type=int, help="parallel requests [CACHE_SYNC_TRANSFERS]", **kw)
    g.add_argument("--json", action="store_true", help="machine output",
                   **(kw or {"default": None}))
    g.add_argument("-v", "--verbose", action="count", help="more detail",
                   **(kw or {"default": None}))
    g.add_argument("-q", "--quiet", action="store_true", help="errors only", **kw)
    g.add_argument(
        "--progress", choices=("auto", "on", "off"), help="progress bars [CACHE_SYNC_PROGRESS]",
        **kw)


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena and keeps freed memory in it; with 16
    transfer threads that alone cost ~30-60 MB of RSS on a cold pull. Two arenas are plenty
    (the threads spend their time in syscalls, hashing and zstd, which release the GIL).
    And big buffers go back to the system when freed (below)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        # A fixed mmap threshold: buffers of 4 MiB and more (a push's 16 MiB packs) are
        # mapped and unmapped, never left in the heap (glibc's sliding threshold would keep
        # them there after the first is freed, as RSS the heap rarely gives back).
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: Sequence[str] | None = None) -> int:
    _limit_malloc_arenas()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, modules = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = Output(json_mode=bool(args.json), quiet=args.quiet, verbose=args.verbose or 0)
    try:
        settings = Settings.from_env(
            os.environ,
            root=args.root,
            remote=args.remote,
            endpoint_url=args.endpoint_url,
            region=args.region,
            profile=args.profile,
            areas=args.areas_opt,
            transfers=args.transfers,
            json=args.json,
            verbose=args.verbose,
            progress=args.progress,
        )
        out.secrets = settings.secrets()
        out.json_mode = settings.json
        if getattr(args, "areas", None):
            check_areas(args.areas, settings.areas)
        _setup_logging(settings.verbose, args.quiet, out)
        return int(modules[args.command].run(args, settings, out) or 0)
    except CacheSyncError as exc:
        out.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error_text("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # disk or permission trouble outside the store: say which path
        out.error_text(f"{exc.strerror or exc} : {exc.filename or ''}".rstrip(" :"))
        return EXIT_ERROR


def _setup_logging(verbose: int, quiet: bool, out: Output) -> None:
    level = logging.WARNING
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(out.redact_filter())
    handler.setFormatter(logging.Formatter("cache-sync: %(message)s"))
    root = logging.getLogger("cache_sync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # botocore logs request headers at DEBUG; keep it out even at -vv.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
