"""Never push into the void: a RunPod worker with no store configured refuses to start.

Without ``CACHE_SYNC_REMOTE`` (or ``B2_BUCKET``) the store is the embedded default, a directory
under the user's home. On a dev box that is a fine store; inside a RunPod container it is the
container's own disk, thrown away with the container, so every install and every model a
worker pushes would be lost without a word. ``run`` therefore refuses to start inside RunPod
(``RUNPOD_POD_ID`` or ``RUNPOD_ENDPOINT_ID`` set) when no remote is configured, unless

- the cache root is on the network volume (``/runpod-volume``, ``CACHE_SYNC_RUNPOD_VOLUME``):
  the root itself outlives the container, so nothing is lost; or
- the user opts in with ``CACHE_SYNC_ALLOW_LOCAL=1`` (e.g. a throwaway test endpoint).
"""

from __future__ import annotations

import os

from cache_sync.config import Settings
from cache_sync.errors import ConfigError


def on_volume(root: os.PathLike[str] | str, volume: str) -> bool:
    """Whether ``root`` lies on (under) the network volume's mount point."""
    if not os.path.isdir(volume):
        return False
    vol = os.path.realpath(volume)
    real = os.path.realpath(root)
    return real == vol or real.startswith(vol.rstrip("/") + "/")


def check_worker_store(settings: Settings) -> None:
    """Raise ConfigError (exit 2) for a RunPod worker whose pushes would be lost."""
    if not settings.runpod_var or not settings.remote_is_default or settings.allow_local:
        return
    if on_volume(settings.root, settings.runpod_volume):
        return
    raise ConfigError(
        f"{settings.runpod_var} is set (a RunPod worker) but no store is configured: pushes "
        f"would go to {settings.remote} inside this container and be lost with it",
        hint="set CACHE_SYNC_REMOTE (or B2_BUCKET with the B2 keys), or put the cache root on "
        f"the network volume {settings.runpod_volume}, or set CACHE_SYNC_ALLOW_LOCAL=1 to "
        "accept a store that dies with the container",
    )
