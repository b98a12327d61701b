"""The worker's log (stderr, which RunPod keeps): where details that a reply must not carry go.

Replies say what is wrong in terms the caller controls; the log says where and why, with the
job id (set per job in a context variable, which ``asyncio.to_thread`` carries into threads).
"""

from __future__ import annotations

import contextvars
import sys

JOB_ID: contextvars.ContextVar[str] = contextvars.ContextVar("handler_job_id", default="-")


def log(message: str) -> None:
    # stderr escapes what it cannot encode (lone surrogates from a job): never raises on text.
    job = JOB_ID.get()
    # bench/ready.py reads "^handler: "
    prefix = "handler: " if job == "-" else f"handler: [{job}] "
    print(prefix + message, file=sys.stderr, flush=True)
