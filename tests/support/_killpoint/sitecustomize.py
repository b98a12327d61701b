"""Kill- or pause-at-a-checkpoint injector, loaded by a CLI subprocess through PYTHONPATH.

- ``FAULTS_KILL_AT=<checkpoint name>#<n>``: the process SIGKILLs itself the n-th time it
  reaches that ``cache_sync.checkpoints`` point (for example ``pull:final-op#3``: in the
  middle of a pull's final phase, after two of its operations).
- ``FAULTS_PAUSE_AT=<name>#<n>`` with ``FAULTS_PAUSE_FILE=<path>``: there it creates
  ``<path>.reached`` and waits until ``<path>`` exists (the test's release), so the test can
  act (send a signal, run another actor) while the process is exactly at that step.

A kill or a pause at an exact protocol step, not after a guessed delay."""

from __future__ import annotations

import os
import signal
import time


def _parse(spec: str) -> tuple[str, int]:
    name, _, nth = spec.partition("#")
    return name, int(nth or 1)


_KILL = os.environ.get("FAULTS_KILL_AT")
_PAUSE = os.environ.get("FAULTS_PAUSE_AT")
if _KILL or _PAUSE:
    _seen: dict[str, int] = {}

    def _hook(label: str) -> None:
        _seen[label] = _seen.get(label, 0) + 1
        if _KILL and (label, _seen[label]) == _parse(_KILL):
            os.kill(os.getpid(), signal.SIGKILL)
        if _PAUSE and (label, _seen[label]) == _parse(_PAUSE):
            release = os.environ["FAULTS_PAUSE_FILE"]
            open(release + ".reached", "w").close()
            while not os.path.exists(release):  # a poll: the test releases it
                time.sleep(0.01)

    from cache_sync import checkpoints

    checkpoints.install(_hook)
