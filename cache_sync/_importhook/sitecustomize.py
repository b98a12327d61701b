"""cache-sync's import hook for ``cache-sync run --unit-start`` (docs/design.md section 5.4).

``run`` starts CMD while ``packages/`` is still arriving, distribution by distribution, and
puts this directory first on CMD's ``PYTHONPATH``; Python imports this file at start-up. While
the readiness file (``CACHE_SYNC_READY_FILE``) lists modules of ``packages/`` as missing, a
finder first on ``sys.meta_path`` holds an ``import`` of one of them, and an
``importlib.metadata`` lookup of a missing distribution, until it is in place. When the pull
fails, or ``run`` is gone, the held import fails with an ImportError that says so. Once the
area is whole the finder removes itself. With ``CACHE_SYNC_PROFILE_FILE`` set, another finder
records what CMD imports, first use first: the access profile of section 5.5. Then the
user's own ``sitecustomize`` (if any) runs.

Standard library only: CMD's interpreter need not have cache-sync installed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
from typing import Any, Callable, Iterator

_AREA = "packages"
_POLL = 0.02
_CANON = re.compile(r"[-_.]+")


class _Status:
    """The readiness file, read again only when it was replaced (each write is a rename)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.key: tuple[int, int] | None = None
        self.doc: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except OSError:  # removed by run on its way out: nothing more will arrive
            self.key, self.doc = None, {}
            return self.doc
        key = (st.st_ino, st.st_mtime_ns)
        if key != self.key:
            try:
                with open(self.path, "rb") as f:
                    doc = json.loads(f.read())
            except (OSError, ValueError):  # replaced meanwhile: the next poll reads it
                return self.doc
            self.key, self.doc = key, doc if isinstance(doc, dict) else {}
        return self.doc


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"  # a zombie is gone
    except (OSError, IndexError):
        return True


class UnitWait:
    """The meta path finder: it finds nothing itself, it only waits."""

    def __init__(self, status: _Status) -> None:
        self.status = status
        self.seen: tuple[int, int] | None = None

    def _missing(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        units = doc.get("units")
        pending = doc.get("pending") or []
        if isinstance(units, dict) and _AREA in pending:
            return units
        return None

    def _wait(self, blocked: Callable[[dict[str, Any]], bool], what: str) -> None:
        start = 0.0
        checked = 0.0
        while True:
            doc = self.status.read()
            failed = doc.get("failed") or {}
            units = self._missing(doc)
            last = doc.get("units")  # kept on failure: what never arrived
            if isinstance(failed, dict) and _AREA in failed and isinstance(last, dict) \
                    and blocked(last):
                raise ImportError(f"cache-sync: {what}: packages/ did not arrive (its pull "
                                  f"failed: {failed[_AREA]}); cache-sync run exits non-zero")
            if units is None or not blocked(units):
                break
            now = time.monotonic()
            if not start:
                start = now
            if now - checked > 0.5:
                checked = now
                if not _alive(doc.get("pid")):
                    raise ImportError(f"cache-sync: {what}: `cache-sync run` (pid "
                                      f"{doc.get('pid')}) is gone while packages/ was still "
                                      "arriving; start the worker again")
            time.sleep(_POLL)
        if start:
            print(f"cache-sync: {what} waited {time.monotonic() - start:.2f}s for packages/",
                  file=sys.stderr, flush=True)
        if self.status.key != self.seen:  # something was placed: directory listings moved
            self.seen = self.status.key
            importlib.invalidate_caches()
        if units is None and _AREA not in (doc.get("failed") or {}):
            self.remove()  # the area is whole (or no longer ours to wait for)

    def remove(self) -> None:
        """Leave ``sys.meta_path`` by rebinding it, never by mutating it: the import system
        (and importlib.metadata's discovery) is iterating over that very list while this
        finder runs, and removing an element under an iterator skips the next finder (the
        profile's recorder, or BuiltinImporter: a builtin import would fail)."""
        if self in sys.meta_path:
            sys.meta_path = [f for f in sys.meta_path if f is not self]

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if path is None and "." not in name:  # a submodule's top-level module was waited for
            self._wait(lambda u: name in (u.get("modules") or ()), f"import {name}")
        return None

    def find_distributions(self, context: Any = None) -> Iterator[Any]:
        name = getattr(context, "name", None)
        if name is None:  # every distribution: wait for all of them
            self._wait(lambda u: bool(u.get("dists")), "listing the installed distributions")
        else:
            canon = _CANON.sub("-", str(name)).lower()
            self._wait(lambda u: canon in (u.get("dists") or ()), f"metadata of {name}")
        return iter(())

    def invalidate_caches(self) -> None:
        return None


class Record:
    """The access profile's recorder (design 5.5): a finder that finds nothing and appends
    each first use to ``CACHE_SYNC_PROFILE_FILE``, ``m NAME`` for an import of a top-level
    module outside the standard library, ``d NAME`` for a metadata lookup of a distribution.
    One ``write`` of one line per name to a file opened ``O_APPEND``, so the processes CMD
    starts (they inherit the variable and this hook) append whole lines beside it. A failed
    write stops the recording, never the import."""

    LIMIT = 4096  # names per process (accessprofile.MAX_NAMES)
    MAX_BYTES = 256 << 10  # of the whole record, every process's (accessprofile.MAX_BYTES)

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.seen: set[str] = set()
        self.off = False
        self.skip = (set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
                     | {"sitecustomize", "usercustomize"})  # site's own lookups

    def _add(self, line: str) -> None:
        if self.off or line in self.seen or len(self.seen) >= self.LIMIT:
            return
        self.seen.add(line)
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                  | getattr(os, "O_CLOEXEC", 0), 0o600)
            if os.fstat(self.fd).st_size >= self.MAX_BYTES:  # many processes: what run reads
                self.off = True
                return
            os.write(self.fd, (line + "\n").encode())
        except OSError:
            self.off = True

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if path is None and "." not in name and name not in self.skip:
            self._add("m " + name)
        return None

    def find_distributions(self, context: Any = None) -> Iterator[Any]:
        name = getattr(context, "name", None)
        if name is not None:
            self._add("d " + _CANON.sub("-", str(name)).lower())
        return iter(())

    def invalidate_caches(self) -> None:
        return None


def _install() -> None:
    record = os.environ.get("CACHE_SYNC_PROFILE_FILE")
    if record:
        sys.meta_path.insert(0, Record(record))
    path = os.environ.get("CACHE_SYNC_READY_FILE")
    if not path:
        return
    status = _Status(path)
    doc = status.read()
    if isinstance(doc.get("units"), dict) and (_AREA in (doc.get("pending") or [])
                                                or _AREA in (doc.get("failed") or {})):
        sys.meta_path.insert(0, UnitWait(status))


def _chain() -> None:
    """The ``sitecustomize`` this one hides (the next one on ``sys.path``), run as usual."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_install()
_chain()
