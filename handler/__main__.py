"""``python -m handler``: warm-load the engine, then hand over to runpod's worker loop.

runpod's own flags (``--rp_serve_api --rp_api_port N`` ...) pass straight through.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: models come from local files only, never a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# runpod logs every handler output at DEBUG (its default): megabytes of base64 audio per job.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

from handler.config import HandlerConfig, HandlerConfigError
from handler.logs import log
from handler.worker import Worker


def main() -> None:
    try:
        worker = Worker(HandlerConfig.from_env())
    except HandlerConfigError as err:
        # Stay up and answer every job with the reason, rather than crash-looping. The value
        # goes to the log only: replies name the variable.
        log(f"configuration error: {err}")
        worker = Worker(None, startup_error=f"configuration error in {err.variable}; the "
                                            "worker's log has the details")
    worker.warm_load()  # before runpod takes the first job
    import runpod

    runpod.serverless.start({
        "handler": worker.handle,
        "concurrency_modifier": worker.concurrency,
    })


if __name__ == "__main__":
    main()
