"""Which areas move when: areas by the role of the command.

- A **serving** worker (`run`) reads `packages/` (imports), `models/` (weights) and `deps/`
  (other tools' caches), and may add to them; it never reads `pip/`, the installers' download
  cache (gigabytes of wheels). So `run` pulls and pushes `packages`, `models`, `deps` only.
- An **install** reads `pip/` (a warm download cache turns a torch install from a download
  into a copy) and writes `packages/` and `pip/`. So `install` pulls `pip/` right before its
  first installer run (never when every spec is already satisfied) and pushes `packages` and
  `pip` afterwards (`CACHE_SYNC_PUSH_PIP=0` keeps `pip/` local).
- `pull`, `push`, `status` and the rest, run by hand, act on every configured area.

An explicit `--areas`/`CACHE_SYNC_AREAS` is the user's choice and wins over the role.
"""

from __future__ import annotations

from cache_sync.config import Settings

INSTALLER_CACHE = "pip"


def serving_areas(settings: Settings) -> list[str]:
    """The areas `run` pulls and pushes."""
    if "areas" in settings.sources:
        return list(settings.areas)
    return [a for a in settings.areas if a != INSTALLER_CACHE]


def install_cache_area(settings: Settings) -> str | None:
    """The area `install` pulls before installing and pushes after, if it is synced."""
    return INSTALLER_CACHE if INSTALLER_CACHE in settings.areas else None
