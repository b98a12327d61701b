"""Settings: the one place environment variables are read.

``Settings.from_env(environ, **flags)`` is called once by the CLI and the result is passed
down; nothing below reads ``os.environ`` for cache-sync settings. Precedence: an explicit flag
beats a ``CACHE_SYNC_*`` variable, which beats a standard variable (``AWS_*``, ``B2_*``), which
beats the default. Secrets are kept out of ``repr`` and ``explain()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_sync.errors import ConfigError

DEFAULT_AREAS = ("packages", "pip", "models", "deps")
EPHEMERAL_DIRS = ("tmp", "build")
STATE_DIR = ".cache-sync"
RUNPOD_VOLUME = "/runpod-volume"
MiB = 1024 * 1024


def _parse_int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw, 0)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number", hint=f"set {name} to e.g. 8")
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    return value


def _parse_float(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", hint=f"set {name} to e.g. 30")
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean", hint="use 1/0, true/false, yes/no")


def _parse_size(name: str, raw: str) -> int:
    """Parse '64M', '1G', '512k' or a plain byte count."""
    text = raw.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, factor in (("K", 1024), ("M", MiB), ("G", 1024 * MiB), ("T", 1024**4)):
        if text.endswith(suffix):
            text, mult = text[:-1], factor
            break
    try:
        return int(float(text) * mult)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a size", hint="use bytes or a suffix: 64M, 1G")


def _parse_choice(name: str, raw: str, *, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} is invalid", hint="use " + "|".join(choices))
    return value


@dataclass(frozen=True)
class Knob:
    """How ``CACHE_SYNC_<NAME>`` (or the flag of that name) is read: the kind of value and
    its bounds. Its default is the ``Settings`` field's, written once, in the dataclass."""

    kind: str  # int | float | size | bool | choice | text
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def read(self, name: str, raw: str) -> Any:
        if self.kind == "text":
            return raw
        if self.kind == "bool":
            return _parse_bool(name, raw)
        if self.kind == "choice":
            return _parse_choice(name, raw, choices=self.choices)
        value: int | float
        if self.kind == "size":
            value = _parse_size(name, raw)
        elif self.kind == "int":
            value = _parse_int(name, raw)
        else:
            value = _parse_float(name, raw)
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{name}={value} is below the minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{name}={raw} is above the maximum {self.maximum:g}",
                              hint=f"set {name} to at most {self.maximum:g}")
        return value


# Packed members at most this big: a larger single blob is a chunk, a whole object at offset 0
# (docs/design.md 3.2, ``snapshot.SMALL_BLOB``; a test keeps the two equal).
MAX_SMALL_FILE = 8 * MiB
# Every plain setting: ``Settings.<name>`` <- ``CACHE_SYNC_<NAME>`` or the ``<name>`` flag.
# Settings read from several places (root, remote, endpoint, region, keys, areas, worker,
# models, ...) are built by hand in ``from_env``.
KNOBS: dict[str, Knob] = {
    "transfers": Knob("int", minimum=1),
    "retries": Knob("int", minimum=1),
    "retry_base": Knob("float", minimum=0),
    "retry_max": Knob("float", minimum=0),
    "connect_timeout": Knob("float", minimum=0.1),
    "read_timeout": Knob("float", minimum=0.1),
    "pack_size": Knob("size", minimum=1),
    "chunk_size": Knob("size", minimum=1),
    "direct_io": Knob("choice", choices=("auto", "on", "off")),
    "small_file": Knob("size", minimum=0, maximum=MAX_SMALL_FILE),
    "keep": Knob("int", minimum=1),
    "gc_grace": Knob("float", minimum=0),
    "gc_window": Knob("float", minimum=1.0),
    "progress": Knob("choice", choices=("auto", "on", "off")),
    "json": Knob("bool"),
    "verbose": Knob("int", minimum=0),
    "lock_timeout": Knob("float", minimum=0),
    "installer": Knob("choice", choices=("auto", "uv", "pip")),
    "install_attempts": Knob("int", minimum=1),
    "install_timeout": Knob("float", minimum=1.0),
    "install_big_timeout": Knob("float", minimum=1.0),
    "install_backoff": Knob("float", minimum=0),
    "min_free": Knob("size", minimum=0),
    "min_free_os": Knob("size", minimum=0),
    "os_disk": Knob("text"),
    "push_pip": Knob("bool"),
    "bytecode": Knob("bool"),
    "flash_attn_base_url": Knob("text"),
    "worker_grace": Knob("float", minimum=1.0),
    "allow_local": Knob("bool"),
    "overlap": Knob("bool"),
    "unit_start": Knob("bool"),
    "requirements": Knob("text"),
    "hf_models_hook": Knob("text"),
    "flash_attn": Knob("text"),
    "lease_expiry": Knob("float", minimum=1.0),
    "lease_settle": Knob("float", minimum=0),
    "lease_wait": Knob("float", minimum=0),
}


def default_root(environ: Mapping[str, str]) -> str:
    """``/runpod-volume/cache`` where a RunPod network volume is mounted, else
    ``/tmp/runpod-cache``."""
    volume = environ.get("CACHE_SYNC_RUNPOD_VOLUME", RUNPOD_VOLUME)
    if os.path.isdir(volume):
        return os.path.join(volume, "cache")
    return "/tmp/runpod-cache"


def default_remote(environ: Mapping[str, str]) -> str:
    """The embedded default: a local directory store under the user's cache dir."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".cache"
    )
    return "file://" + os.path.join(os.path.abspath(base), "cache-sync", "store")


def b2_endpoint(region: str) -> str:
    return f"https://s3.{region}.backblazeb2.com"


def _b2_remote(env: Mapping[str, str], sources: dict[str, str]) -> str | None:
    """``s3://$B2_BUCKET/$B2_PREFIX`` (prefix default ``cache-sync``, as
    scripts/setup-backblaze-storage.sh uses) when ``CACHE_SYNC_REMOTE`` is unset: a worker
    configured with the B2 variables alone must push to its bucket, not into its container."""
    bucket = env.get("B2_BUCKET", "").strip().strip("/")
    if not bucket:
        return None
    if "/" in bucket:
        raise ConfigError(f"B2_BUCKET={bucket!r} is not a bucket name",
                          hint="put the path inside the bucket in B2_PREFIX")
    prefix = env.get("B2_PREFIX", "cache-sync").strip("/")
    sources["remote"] = "B2_BUCKET"
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def _b2_endpoint(env: Mapping[str, str], sources: dict[str, str]) -> str | None:
    if env.get("B2_ENDPOINT"):
        sources["endpoint_url"] = "B2_ENDPOINT"
        raw = env["B2_ENDPOINT"].strip().rstrip("/")
        # Backblaze's console shows the endpoint without a scheme
        return raw if raw.startswith(("http://", "https://")) else "https://" + raw
    if env.get("B2_REGION"):
        sources["endpoint_url"] = "B2_REGION"
        return b2_endpoint(env["B2_REGION"])
    return None


@dataclass(frozen=True)
class Settings:
    root: Path
    remote: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    s3_dialect: str = "auto"  # aws | b2 | compat (from_env resolves auto); storage/dialect.py
    # lite | boto3: which client reads an S3 store (from_env resolves auto; a hand-made
    # Settings left at auto gets boto3); storage/s3common.py choose_client
    s3_client: str = "auto"
    ca_bundle: str | None = None  # AWS_CA_BUNDLE / REQUESTS_CA_BUNDLE, as boto3 reads them
    areas: tuple[str, ...] = DEFAULT_AREAS
    transfers: int = 16
    retries: int = 5
    retry_base: float = 0.2
    retry_max: float = 20.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    pack_size: int = 16 * MiB
    chunk_size: int = 32 * MiB
    # a pull writes files with compressed chunks with O_DIRECT: auto (block filesystems),
    # on, off
    direct_io: str = "auto"
    small_file: int = 4 * MiB
    keep: int = 5
    gc_grace: float = 24 * 3600.0
    gc_window: float = 300.0
    progress: str = "auto"
    json: bool = False
    verbose: int = 0
    lock_timeout: float = 600.0
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # install / run (issue 3): see docs/install.md
    installer: str = "auto"
    install_attempts: int = 3
    install_timeout: float = 300.0
    install_big_timeout: float = 600.0
    install_backoff: float = 1.0
    min_free: int = 512 * MiB
    min_free_os: int = 256 * MiB
    os_disk: str = "/"
    push_pip: bool = True
    bytecode: bool = True
    flash_attn_base_url: str = (
        "https://github.com/Dao-AILab/flash-attention/releases/download")
    # fleet (issue 11): see docs/design.md "Workers sharing a root"
    worker: str = "local"
    worker_grace: float = 900.0
    runpod_volume: str = RUNPOD_VOLUME
    runpod_var: str = ""  # RUNPOD_POD_ID or RUNPOD_ENDPOINT_ID when running inside RunPod
    allow_local: bool = False
    overlap: bool = False  # run: start CMD before models/ is pulled (docs/design.md)
    unit_start: bool = False  # run: and before packages/ is whole (design 5.4)
    # bootstrap (issue 11): `run --requirements`, Hub models, the lease (docs/design.md 8)
    requirements: str | None = None
    hf_models: tuple[str, ...] = ()
    hf_models_hook: str | None = None
    flash_attn: str | None = None  # a flash-attn version the bootstrap installs last
    lease_expiry: float = 60.0
    lease_settle: float = 2.0
    lease_wait: float = 1800.0
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    # --- derived paths -------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def area_path(self, area: str) -> Path:
        return self.root / area

    @property
    def remote_is_default(self) -> bool:
        """No remote was configured: the embedded store in the user's (container's) home."""
        return "remote" not in self.sources

    def secrets(self) -> list[str]:
        """Values that must never be printed."""
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Build settings from flags (None = not given) over ``environ`` over defaults."""
        env = dict(os.environ if environ is None else environ)
        sources: dict[str, str] = {}

        def pick(key: str, flag_name: str, *fallback_vars: str) -> str | None:
            flag = flags.get(flag_name)
            if flag is not None:
                sources[key] = "flag"
                return str(flag)
            for var in (f"CACHE_SYNC_{key.upper()}", *fallback_vars):
                if env.get(var):
                    sources[key] = var
                    return env[var]
            return None

        root = pick("root", "root") or default_root(env)
        remote = pick("remote", "remote") or _b2_remote(env, sources) or default_remote(env)
        if not (remote.startswith("s3://") or remote.startswith("file://")):
            if remote.startswith("/"):
                remote = "file://" + remote
            else:
                raise ConfigError(
                    f"remote {remote!r} is not a supported URL",
                    hint="use s3://bucket/prefix or file:///absolute/path",
                )
        check_remote(remote)
        region = pick("region", "region", "AWS_REGION", "AWS_DEFAULT_REGION", "B2_REGION")
        endpoint = pick("endpoint_url", "endpoint_url", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        if endpoint is None and remote.startswith("s3://"):
            endpoint = _b2_endpoint(env, sources)
        if endpoint is None and sources.get("remote") == "B2_BUCKET":
            raise ConfigError(
                "B2_BUCKET is set but the Backblaze endpoint is unknown",
                hint="set B2_REGION (e.g. us-west-004) or B2_ENDPOINT, or CACHE_SYNC_REMOTE "
                "with CACHE_SYNC_ENDPOINT_URL",
            )
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"endpoint URL {endpoint!r} has no scheme",
                hint="write it as https://host[:port]",
            )

        dialect = _s3_dialect(pick, env, endpoint, sources)
        key_id = env.get("AWS_ACCESS_KEY_ID") or env.get("B2_APPLICATION_KEY_ID")
        secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("B2_APPLICATION_KEY")
        if bool(env.get("B2_APPLICATION_KEY_ID")) != bool(env.get("B2_APPLICATION_KEY")):
            missing = "B2_APPLICATION_KEY" if env.get("B2_APPLICATION_KEY_ID") else (
                "B2_APPLICATION_KEY_ID")
            raise ConfigError(f"{missing} is not set", hint="set both B2 key variables, or neither")

        if remote.startswith("s3://") and bool(env.get("AWS_ACCESS_KEY_ID")) != bool(
                env.get("AWS_SECRET_ACCESS_KEY")):
            missing = ("AWS_SECRET_ACCESS_KEY" if env.get("AWS_ACCESS_KEY_ID")
                       else "AWS_ACCESS_KEY_ID")
            raise ConfigError(f"{missing} is not set", hint="set both AWS key variables, or "
                              "neither (to use a profile or an instance role)")

        areas_raw = pick("areas", "areas")
        areas: tuple[str, ...] = DEFAULT_AREAS
        if areas_raw:
            areas = tuple(a.strip() for a in areas_raw.split(",") if a.strip())
            for area in areas:
                validate_area_name(area)

        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        plain: dict[str, Any] = {}
        for key, knob in KNOBS.items():
            raw = pick(key, key)
            plain[key] = defaults[key] if raw is None else knob.read(
                f"CACHE_SYNC_{key.upper()}", raw)
        plain["flash_attn_base_url"] = plain["flash_attn_base_url"].rstrip("/")

        return cls(
            root=Path(os.path.abspath(os.path.expanduser(root))),
            remote=remote,
            endpoint_url=endpoint,
            region=region,
            profile=pick("profile", "profile", "AWS_PROFILE"),
            s3_dialect=dialect,
            s3_client=_s3_client(pick, env, remote, endpoint, region, key_id and secret,
                                 sources),
            ca_bundle=env.get("AWS_CA_BUNDLE") or env.get("REQUESTS_CA_BUNDLE") or None,
            areas=areas,
            access_key_id=key_id,
            secret_access_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN"),
            **plain,
            **_fleet_settings(pick, env),
            hf_models=tuple(m for m in (pick("hf_models", "hf_models") or "").replace(
                ",", " ").split() if m),
            sources=sources,
        )

    def explain(self) -> list[tuple[str, str, str]]:
        """(setting, value, where it came from) for every setting; secrets redacted."""
        rows = []
        for f in dataclasses.fields(self):
            if f.name in ("sources",):
                continue
            value = getattr(self, f.name)
            if f.name in ("access_key_id", "secret_access_key", "session_token"):
                value = "<set>" if value else "<unset>"
            elif isinstance(value, tuple):
                value = ",".join(value)
            rows.append((f.name, str(value), self.sources.get(f.name, "default")))
        return rows


def _s3_dialect(pick: Any, env: Mapping[str, str], endpoint: str | None,
                sources: dict[str, str]) -> str:
    """``CACHE_SYNC_S3_DIALECT`` (aws|b2|compat), or derived when unset or ``auto``."""
    from cache_sync.storage.dialect import CHOICES, derive

    chosen = (pick("s3_dialect", "s3_dialect") or "auto").strip().lower()
    if chosen not in CHOICES:
        raise ConfigError(f"CACHE_SYNC_S3_DIALECT={chosen!r} is invalid",
                          hint="use " + "|".join(CHOICES))
    if chosen != "auto":
        return chosen
    b2_vars = any(env.get(v) for v in ("B2_REGION", "B2_ENDPOINT", "B2_BUCKET")) or bool(
        env.get("B2_APPLICATION_KEY_ID") and not env.get("AWS_ACCESS_KEY_ID"))
    dialect, why = derive(endpoint, b2_vars)
    sources["s3_dialect"] = f"auto: {why}"
    return dialect


def _s3_client(pick: Any, env: Mapping[str, str], remote: str, endpoint: str | None,
               region: str | None, static_keys: str | None, sources: dict[str, str]) -> str:
    """``CACHE_SYNC_S3_CLIENT`` (auto|lite|boto3) resolved to the client that reads the store:
    ``lite`` (boto3-free) or ``boto3``."""
    from cache_sync.storage.s3common import CLIENTS, choose_client, parse_remote

    chosen = (pick("s3_client", "s3_client") or "auto").strip().lower()
    if chosen not in CLIENTS:
        raise ConfigError(f"CACHE_SYNC_S3_CLIENT={chosen!r} is invalid",
                          hint="use " + "|".join(CLIENTS))
    if not remote.startswith("s3://"):
        return chosen
    client, why = choose_client(
        chosen, env, endpoint=endpoint, region=region,
        profile=pick("profile", "profile", "AWS_PROFILE"), bucket=parse_remote(remote)[0],
        static_keys=bool(static_keys))
    sources["s3_client"] = why
    return client


def sanitize_worker(worker: str) -> str:
    """A worker id usable as a directory name."""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", worker).lstrip(".") or "worker")[:100]


def process_worker_id() -> str:
    """The worker id when nothing names one: ``<host>-<pid>`` of this process."""
    return sanitize_worker(f"{socket.gethostname()}-{os.getpid()}")


_BUCKET_RE = re.compile(r"^[a-zA-Z0-9._-]{1,255}$")  # what botocore itself accepts


def check_remote(remote: str) -> None:
    """A file:// remote names an absolute path; an s3:// one a bucket S3 can name."""
    if remote.startswith("file://"):
        path = remote[len("file://"):]
        if not path.startswith("/"):
            raise ConfigError(
                f"remote {remote!r} has {'no' if not path else 'a relative'} path",
                hint="write file:///absolute/path (three slashes)")
    elif remote.startswith("s3://"):
        bucket = remote[len("s3://"):].partition("/")[0]
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(
                f"remote {remote!r}: {bucket!r} is not a valid bucket name",
                hint="bucket names use lowercase letters, digits, '.' and '-' (3-63 characters)")


def check_areas(chosen: Sequence[str], configured: Sequence[str]) -> None:
    """Areas named on the command line must be configured ones: a misspelled name would
    otherwise pull nothing and exit 0, or push a new area nobody syncs."""
    for area in chosen:
        validate_area_name(area)
        if area not in configured:
            close = difflib.get_close_matches(area, configured, n=1)
            raise ConfigError(
                f"{area!r} is not one of the areas ({', '.join(configured)})",
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + "set CACHE_SYNC_AREAS to sync other directories")


def _fleet_settings(pick: Any, env: Mapping[str, str]) -> dict[str, Any]:
    """Who this worker is on a shared root, and whether it runs inside RunPod."""
    worker = pick("worker", "worker") or env.get("RUNPOD_POD_ID") or process_worker_id()
    runpod_var = next((v for v in ("RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID") if env.get(v)), "")
    return {
        "worker": sanitize_worker(worker),
        "runpod_volume": env.get("CACHE_SYNC_RUNPOD_VOLUME") or RUNPOD_VOLUME,
        "runpod_var": runpod_var,
    }


def validate_area_name(area: str) -> None:
    if (
        not area
        or area in (".", "..", STATE_DIR, *EPHEMERAL_DIRS)
        or "/" in area
        or "\\" in area
        or area.startswith(".")
    ):
        raise ConfigError(
            f"{area!r} is not a valid area name",
            hint="an area is a plain directory name under the cache root, e.g. packages",
        )
