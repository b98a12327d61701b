"""Requirement specs for ``cache-sync install``: parsing (command line and ``-r`` files) and
the fast "already satisfied in packages/" check.

The satisfied check reads ``*.dist-info`` metadata in ``packages/`` with ``importlib.metadata``
and walks each requirement's dependencies (markers and extras evaluated), so a warm start with
everything present never starts pip or uv: no resolver, no index request.

Per-spec options ride in a trailing comment of a requirements file line, so one curated file
says everything (pip ignores the comment)::

    f5-tts==1.1.22          # cache-sync: no-deps
    torch==2.6.0            # cache-sync: timeout=900
    whisperx                # cache-sync: optional
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from cache_sync.errors import ConfigError

# Packages whose download/install routinely needs more than the default budget.
BIG_PACKAGES = frozenset(
    {"torch", "torchvision", "torchaudio", "tensorflow", "jax", "jaxlib", "flash-attn",
     "xformers", "triton", "vllm", "bitsandbytes", "deepspeed", "onnxruntime-gpu", "cupy"}
)
# Installer options a requirements file may carry; they apply to every spec of the install.
FILE_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--no-index",
                "--pre", "--constraint", "-c")
_ANNOTATION = re.compile(r"#\s*cache-sync:\s*(?P<opts>.*)$")


@dataclass
class Spec:
    text: str  # what is handed to the installer
    optional: bool = False
    no_deps: bool = False
    timeout: float | None = None  # None: the default for its size
    origin: str = "command line"
    requirement: Requirement | None = None
    wheel: tuple[str, str] | None = None  # (name, version) when the spec is a wheel file/URL

    @property
    def name(self) -> str:
        if self.requirement is not None:
            return canonicalize_name(self.requirement.name)
        if self.wheel is not None:
            return self.wheel[0]
        return self.text

    def budget(self, default: float, big: float) -> float:
        if self.timeout is not None:
            return self.timeout
        big_name = self.name in BIG_PACKAGES or self.name.startswith("nvidia-")
        return big if big_name else default


@dataclass
class SpecSet:
    specs: list[Spec] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # installer options from -r files


def parse_spec(text: str, *, optional: bool = False, no_deps: bool = False,
               timeout: float | None = None, origin: str = "command line") -> Spec:
    text = text.strip()
    spec = Spec(text=text, optional=optional, no_deps=no_deps, timeout=timeout, origin=origin)
    base = text.split("#", 1)[0].split(";", 1)[0].strip()
    if base.endswith(".whl"):  # a wheel path or URL: the name and version are in the filename
        try:
            name, version, _, _ = parse_wheel_filename(base.rsplit("/", 1)[-1])
        except ValueError as exc:
            raise ConfigError(
                f"{origin}: {text!r} is not a valid wheel file name ({exc})") from None
        spec.wheel = (canonicalize_name(name), str(version))
        return spec
    try:
        spec.requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ConfigError(
            f"{origin}: {text!r} is not a valid requirement",
            hint=str(exc).splitlines()[0],
        ) from None
    return spec


def parse_file(path: str | Path, into: SpecSet | None = None, _depth: int = 0) -> SpecSet:
    """Read a requirements file (with nested ``-r``, installer options and annotations)."""
    into = into or SpecSet()
    path = Path(path)
    if _depth > 10:
        raise ConfigError(f"{path}: requirements files include each other too deeply")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read requirements file {path}: {exc.strerror}") from None
    for number, raw in enumerate(_join_continuations(lines), 1):
        origin = f"{path}:{number}"
        annotation = _ANNOTATION.search(raw)
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            _file_option(line, path, into, origin, _depth)
            continue
        opts = _annotation_options(annotation.group("opts") if annotation else "", origin)
        into.specs.append(parse_spec(line, origin=origin, **opts))
    return into


def _join_continuations(lines: list[str]) -> Iterable[str]:
    buf = ""
    for line in lines:
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        yield buf + line
        buf = ""
    if buf:
        yield buf


def _file_option(line: str, path: Path, into: SpecSet, origin: str, depth: int) -> None:
    match = re.match(r"(-[-\w]+)(?:[=\s]+(.*))?$", line)
    flag = match.group(1) if match else line
    values = shlex.split(match.group(2)) if match and match.group(2) else []
    if flag in ("-r", "--requirement") and values:
        parse_file(path.parent / values[0], into, depth + 1)
    elif flag in FILE_OPTIONS:
        if flag in ("-c", "--constraint", "-f", "--find-links") and values:
            # Relative paths are relative to the file, as pip reads them.
            target = values[0]
            if "://" not in target and not Path(target).is_absolute():
                values = [str(path.parent / target)]
        into.options.extend([flag, *values])
    else:
        raise ConfigError(f"{origin}: option {flag!r} is not supported in a requirements file",
                          hint="supported: -r, " + ", ".join(FILE_OPTIONS))


def _annotation_options(text: str, origin: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for word in text.replace(",", " ").split():
        if word == "optional":
            opts["optional"] = True
        elif word == "no-deps":
            opts["no_deps"] = True
        elif word.startswith("timeout="):
            try:
                opts["timeout"] = float(word.split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"{origin}: {word!r} is not a number of seconds") from None
        else:
            raise ConfigError(f"{origin}: unknown cache-sync option {word!r}",
                              hint="use optional, no-deps, timeout=SECONDS")
    return opts


class Installed:
    """The distributions present in ``packages/`` (read once; call ``refresh`` after installs)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.refresh()

    def refresh(self) -> None:
        self.dists: dict[str, metadata.Distribution] = {}
        if self.target.is_dir():
            for dist in metadata.distributions(path=[str(self.target)]):
                name = dist.metadata["Name"]
                if name:
                    self.dists.setdefault(canonicalize_name(name), dist)

    def versions(self) -> dict[str, str]:
        return {name: d.version for name, d in self.dists.items()}

    def applies(self, spec: Spec) -> bool:
        """False when the spec's environment marker excludes this interpreter."""
        req = spec.requirement
        return req is None or req.marker is None or req.marker.evaluate()

    def satisfied(self, spec: Spec) -> bool:
        if spec.wheel is not None:
            dist = self.dists.get(spec.wheel[0])
            return dist is not None and _same_version(dist.version, spec.wheel[1])
        req = spec.requirement
        if req is None or req.url:  # a direct URL cannot be checked without fetching it
            return False
        return self._satisfied(req, follow=not spec.no_deps, seen=set())

    def _satisfied(self, req: Requirement, *, follow: bool, seen: set[str]) -> bool:
        name = canonicalize_name(req.name)
        dist = self.dists.get(name)
        if dist is None or not req.specifier.contains(dist.version, prereleases=True):
            return False
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if not follow or key in seen:
            return True
        seen.add(key)
        env: dict[str, Any] = dict(default_environment())
        for raw in dist.requires or []:
            dep = Requirement(raw)
            if dep.marker is not None:
                extras = req.extras or {""}
                if not any(dep.marker.evaluate({**env, "extra": e}) for e in extras):
                    continue
            if not self._satisfied(dep, follow=True, seen=seen):
                return False
        return True


def _same_version(a: str, b: str) -> bool:
    try:  # local labels like +cu12torch2.6cxx11abiFALSE compare case-insensitively
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def top_level_modules(dist: metadata.Distribution) -> list[str]:
    """Importable top-level names a distribution installs (for the import check)."""
    names: list[str] = []
    text = dist.read_text("top_level.txt")
    if text:
        names = [n.strip() for n in text.split() if n.strip()]
    else:
        for f in dist.files or []:
            parts = f.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
                continue
            top = parts[0]
            if len(parts) == 1:
                if not top.endswith(".py") and ".cpython-" not in top and not top.endswith(".so"):
                    continue
                top = top.split(".", 1)[0]
            names.append(top)
    seen: list[str] = []
    for n in names:
        if n.isidentifier() and not n.startswith("_") and n not in ("bin", "tests", "test"):
            if n not in seen:
                seen.append(n)
    return seen
