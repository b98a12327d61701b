"""Kill-at-a-checkpoint injector, loaded by a CLI subprocess through PYTHONPATH: with
``FAULTS_KILL_AT=<checkpoint name>#<n>`` the process SIGKILLs itself the n-th time it reaches
that ``cache_sync.checkpoints`` point (for example ``pull:final-op#3``: in the middle of a pull's
final phase, after two of its operations). A kill at an exact protocol step, not after a guessed
delay."""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("FAULTS_KILL_AT")
if _SPEC:
    _name, _, _nth = _SPEC.partition("#")
    _seen = [0]

    def _hook(label: str) -> None:
        if label == _name:
            _seen[0] += 1
            if _seen[0] >= int(_nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    from cache_sync import checkpoints

    checkpoints.install(_hook)
