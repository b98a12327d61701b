"""pip's configuration, resolved exactly as pip resolves it, turned into uv flags.

uv reads neither pip.conf nor ``PIP_*`` variables, so ``install`` hands uv the index
configuration pip would use. The precedence is pip's own (pip 23, ``configuration.py`` and
``cli/parser.py``):

1. Files, later overriding earlier for the same ``section.key``: global
   (``$XDG_CONFIG_DIRS/pip/pip.conf``, default ``/etc/xdg``, then ``/etc/pip.conf``), user
   (``~/.pip/pip.conf`` then ``$XDG_CONFIG_HOME/pip/pip.conf``; skipped when
   ``PIP_CONFIG_FILE`` names an existing file), site (``sys.prefix/pip.conf``), then the file
   ``PIP_CONFIG_FILE`` names. ``PIP_CONFIG_FILE=/dev/null`` loads no file at all.
2. Sections: ``[global]``, then ``[install]`` over it, then the ``PIP_*`` variables over both
   (an environment variable always beats every file). The last value of an option wins: a
   list option (``extra-index-url``, ``find-links``) from the environment *replaces* the files'
   list, it does not extend it.
3. The command line (here: the options of a requirements file) over all of that, as pip
   applies them: ``--no-index`` empties the index list, ``--index-url`` replaces it (extra
   indexes from the configuration included), ``--extra-index-url`` and ``--find-links``
   append.

pip takes the best version across every index and find-links location; uv by default stops at
the first index that has the package. With more than one location, uv is therefore run with
``--index-strategy unsafe-best-match``, which is pip's rule, so both installers resolve the
same versions from the same configuration.
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cache_sync.errors import ConfigError

PYPI = "https://pypi.org/simple"
# option names pip accepts in config (long names, and aliases) -> our key
_KEYS = {"index-url": "index-url", "pypi-url": "index-url",
         "extra-index-url": "extra-index-url", "find-links": "find-links",
         "no-index": "no-index", "trusted-host": "trusted-host", "constraint": "constraint",
         "pre": "pre"}
_LISTS = ("extra-index-url", "find-links", "trusted-host", "constraint")
_BOOLS = ("no-index", "pre")
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


def config_files(env: Mapping[str, str], prefix: str = sys.prefix) -> list[str]:
    """pip's config files in override order (later wins), for the environment ``env``."""
    named = env.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    home = env.get("HOME") or os.path.expanduser("~")
    xdg_dirs = env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    global_files = [os.path.join(d, "pip", "pip.conf") for d in xdg_dirs.split(os.pathsep)
                    if d] + ["/etc/pip.conf"]
    user_files = [os.path.join(home, ".pip", "pip.conf"),
                  os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                               "pip", "pip.conf")]
    files = list(global_files)
    if not (named and os.path.exists(named)):
        files += user_files
    files.append(os.path.join(prefix, "pip.conf"))
    if named:
        files.append(named)
    return files


def _as_bool(key: str, raw: str, origin: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{origin}: {key}={raw!r} is not a boolean (pip refuses it too)",
                      hint="use yes/no, true/false or 1/0")


def resolved(env: Mapping[str, str], prefix: str = sys.prefix) -> dict[str, str]:
    """``key -> raw value`` after pip's precedence over files, sections and ``PIP_*``."""
    merged: dict[str, str] = {}  # "section.key" -> value, later files overriding
    for path in config_files(env, prefix):
        if not os.path.exists(path):
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"pip configuration {path} cannot be read: {exc}",
                              hint="fix the file; pip refuses it too") from None
        for section in parser.sections():
            for name, value in parser.items(section):
                merged[f"{section}.{_norm(name)}"] = value
    for var, value in env.items():
        if var.startswith("PIP_"):
            merged[f":env:.{_norm(var[4:])}"] = value
    out: dict[str, str] = {}
    for section in ("global", "install", ":env:"):
        for skey, value in merged.items():
            sec, _, name = skey.partition(".")
            if sec == section and value and name in _KEYS:
                out[_KEYS[name]] = value
    return out


def _norm(name: str) -> str:
    name = name.lower().replace("_", "-")
    return name.removeprefix("--")


@dataclass
class Sources:
    """Where an install looks for packages, as pip would after config and command line."""

    no_index: bool = False
    index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    trusted_hosts: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    pre: bool = False


def sources(env: Mapping[str, str], command_line: Sequence[str] = (),
            prefix: str = sys.prefix) -> Sources:
    """pip's configuration plus the requirements files' options (``command_line``)."""
    conf = resolved(env, prefix)
    origin = "pip configuration"
    src = Sources(
        no_index=_as_bool("no-index", conf["no-index"], origin) if "no-index" in conf
        else False,
        pre=_as_bool("pre", conf["pre"], origin) if "pre" in conf else False,
        find_links=conf.get("find-links", "").split(),
        trusted_hosts=conf.get("trusted-host", "").split(),
        constraints=conf.get("constraint", "").split(),
    )
    if not src.no_index:
        src.index_urls = [conf.get("index-url") or PYPI, *conf.get("extra-index-url",
                                                                    "").split()]
    args = list(command_line)
    i = 0
    while i < len(args):
        flag = args[i]
        value = args[i + 1] if i + 1 < len(args) else ""
        takes_value = flag not in ("--no-index", "--pre")
        if flag == "--no-index":
            src.no_index, src.index_urls = True, []
        elif flag == "--pre":
            src.pre = True
        elif flag in ("--index-url", "-i"):
            if not src.no_index:
                src.index_urls = [value]
        elif flag == "--extra-index-url":
            if not src.no_index:
                src.index_urls.append(value)
        elif flag in ("--find-links", "-f"):
            src.find_links.append(value)
        elif flag in ("--constraint", "-c"):
            src.constraints.append(value)
        elif flag == "--trusted-host":
            src.trusted_hosts.append(value)
        i += 2 if takes_value else 1
    return src


def uv_flags(src: Sources) -> list[str]:
    """The uv command-line flags that make uv search exactly where pip would."""
    flags: list[str] = []
    if src.no_index:
        flags.append("--no-index")
    elif src.index_urls:
        flags += ["--index-url", src.index_urls[0]]
        for url in src.index_urls[1:]:
            flags += ["--extra-index-url", url]
    for location in src.find_links:
        if "://" not in location and not os.path.exists(location):
            continue  # pip skips a missing find-links dir with a warning; uv would fail
        flags += ["--find-links", location]
    for host in src.trusted_hosts:
        flags += ["--allow-insecure-host", host]
    for path in src.constraints:
        flags += ["--constraint", path]
    if src.pre:
        flags += ["--prerelease", "allow"]
    if len(src.index_urls) + len([f for f in flags if f == "--find-links"]) > 1:
        # pip's meaning of several sources: the best match from any of them. uv's default
        # (the first index holding the package wins) fails an exact pin that only the default
        # index has when an extra index, such as PyTorch's CUDA index, carries old copies of
        # common packages.
        flags += ["--index-strategy", "unsafe-best-match"]
    return flags
