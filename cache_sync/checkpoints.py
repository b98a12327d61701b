"""Named points of the push, pull and gc protocols.

``reached(name)`` does nothing unless a test has installed a hook; the fault tests use it to
interleave other actors (another push, a gc run, a kill) at exactly these points instead of
guessing with sleeps. Names: ``push:scanned`` (the tree listed, no file read yet),
``push:uploaded``, ``push:claim``, ``push:claimed``,
``push:wait``, ``push:recheck``, ``push:commit``, ``gc:claims``, ``gc:snapshots``,
``gc:delete``, ``gc:mark``, ``gc:versions``, ``gc:versions-markers`` (hidden versions
deleted, the latest delete markers not yet), ``pull:staged`` (every file verified in the
stage, the area untouched), ``pull:final-op`` (before each operation of a pull's final phase),
``pull:final-done`` (all operations done, the state not yet promoted), ``pull:unit-placed``
(a cold pull put one more distribution in place, design 5.4).
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def reached(name: str) -> None:
    if _hook is not None:
        _hook(name)


def install(hook: Callable[[str], None] | None) -> None:
    global _hook
    _hook = hook
