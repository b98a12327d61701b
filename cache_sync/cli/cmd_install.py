"""``cache-sync install``: install packages into the cache's ``packages/`` (see
``cache_sync/install.py``), print a table of what happened and an import-check table."""

from __future__ import annotations

import argparse
import os

from cache_sync import flashattn, workers
from cache_sync.cli.output import Output
from cache_sync.config import Settings
from cache_sync.errors import CacheSyncError, ConfigError
from cache_sync.install import (
    InstallError,
    InstallOptions,
    InstallReport,
    describe_failure,
    install,
)
from cache_sync.reqs import SpecSet, parse_file, parse_spec

NAME = "install"
HELP = "install packages into the cache (retries, timeouts, import check, push)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="*", metavar="SPEC", help="requirement, e.g. rich==13.7.1")
    p.add_argument("-r", "--requirement", action="append", default=[], metavar="FILE",
                   help="requirements file (per-line '# cache-sync: optional no-deps "
                   "timeout=S')")
    p.add_argument("--optional", action="extend", nargs="+", default=[], metavar="SPEC",
                   help="specs that may fail without failing the install")
    p.add_argument("--no-deps", action="extend", nargs="+", default=[], metavar="SPEC",
                   help="specs installed without their dependencies")
    p.add_argument("--installer", choices=("auto", "uv", "pip"), default=None,
                   help="auto: uv when available [CACHE_SYNC_INSTALLER]")
    p.add_argument("--check-imports", action="extend", nargs="+", default=[], metavar="MOD",
                   help="modules that must import afterwards (e.g. f5_tts.api)")
    p.add_argument("--no-import-check", action="store_true", help="skip the import check")
    p.add_argument("--no-push", action="store_true", help="do not push packages/ afterwards")
    p.add_argument("--timeout", action="append", default=[], metavar="[NAME=]SECONDS",
                   help="per-package budget: default for all, or NAME=SECONDS for one "
                   "[CACHE_SYNC_INSTALL_TIMEOUT]")
    p.add_argument("--attempts", type=int, default=None,
                   help="attempts per package [CACHE_SYNC_INSTALL_ATTEMPTS, 3]")
    p.add_argument("--flash-attn", nargs="?", const=flashattn.DEFAULT_VERSION, default=None,
                   metavar="VERSION", help="last, optionally: the prebuilt flash-attn wheel "
                   "matching the installed torch/CUDA/ABI/Python")
    p.add_argument("--flash-attn-url", default=None, help="use this wheel instead of choosing")


def _timeouts(values: list[str]) -> tuple[float | None, dict[str, float]]:
    default: float | None = None
    per: dict[str, float] = {}
    for value in values:
        name, _, secs = value.rpartition("=")
        try:
            seconds = float(secs)
        except ValueError:
            raise ConfigError(f"--timeout {value!r}: not a number of seconds",
                              hint="use --timeout 300 or --timeout torch=900") from None
        if seconds <= 0:
            raise ConfigError(f"--timeout {value!r}: must be positive")
        if name:
            from packaging.utils import canonicalize_name

            per[str(canonicalize_name(name))] = seconds
        else:
            default = seconds
    return default, per


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    specset = SpecSet()
    for path in args.requirement:
        parse_file(path, specset)
    specset.specs += [parse_spec(s) for s in args.specs]
    specset.specs += [parse_spec(s, optional=True) for s in args.optional]
    specset.specs += [parse_spec(s, no_deps=True) for s in args.no_deps]
    if not specset.specs and not args.flash_attn and not args.flash_attn_url:
        raise ConfigError("nothing to install", hint="give SPEC..., -r FILE or --flash-attn")
    if args.attempts is not None and args.attempts < 1:
        raise ConfigError("--attempts must be at least 1")
    default_timeout, per = _timeouts(args.timeout)
    opts = InstallOptions(
        installer=args.installer or settings.installer, attempts=args.attempts,
        default_timeout=default_timeout, timeouts=per, check_imports=args.check_imports,
        import_check=not args.no_import_check, push=not args.no_push)
    notes: list[str] = []

    flash = flashattn.last_spec(settings, args.flash_attn, args.flash_attn_url, os.environ,
                                notes)
    # Its own scratch dirs on a shared root; under `run` (CACHE_SYNC_WORKER inherited) the
    # dirs are run's, and run cleans them.
    with workers.session(settings, owner=workers.owns_its_id(settings)):
        report = install(settings, specset, opts, os.environ, log=out.info, extra=flash)
    report.notes += notes
    error: CacheSyncError | None = None
    if report.failed_required:
        error = InstallError("install failed: " + describe_failure(report),
                             hint="optional packages may fail, required ones may not")
    elif report.push_error is not None:
        error = report.push_error
        error.message = f"installed, but the push of packages failed: {error.message}"
    _print(report, out, error)
    if error is not None:
        # One JSON document on stdout (the report, with the error in it); the one-line
        # error on stderr as for every other failure.
        out.stderr.write(out.redact(f"cache-sync: error: {error}") + "\n")
        return error.exit_code
    return 0


def _print(report: InstallReport, out: Output, error: CacheSyncError | None) -> None:
    rows = [[u.name, "optional" if u.optional else "required", u.status, u.attempts,
             f"{u.seconds:.1f}s", (u.error[-1] if u.error else ", ".join(
                 f"{k}=={v}" for k, v in sorted(u.new.items())))[:100]]
            for u in report.units]
    text = [out.table(["package", "kind", "status", "tries", "time", "detail"], rows)]
    if report.imports:
        text.append("")
        text.append(out.table(
            ["module", "version", "import", "error"],
            [[r.module, r.version, "ok" if r.ok else ("FAILED" if r.required else "failed "
              "(optional)"), r.error] for r in report.imports]))
    for note in report.notes:
        text.append(f"note: {note}")
    for p in report.pushed:
        text.append(f"pushed {p.get('area')}: {p.get('action', '')} {p.get('snapshot', '')}")
    text.append(f"{report.installer}: {report.seconds:.1f}s")
    data = report.to_dict()
    if error is not None:
        data["error"] = str(error)
    out.result(data, "\n".join(text))
