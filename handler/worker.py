"""The worker: warm load once, then answer jobs (validate, synthesize in a thread, deliver).

A worker that cannot load its model does not exit: RunPod would restart it in a loop and the
caller would only see timeouts. It stays up and answers every job with the load error, which
names the missing file (relative to the cache root) and the fix.

Nothing blocks the event loop: validation (which may download and decode a reference clip),
inference, encoding and delivery run in threads, so a health job or a second job is answered
while a slow one runs. Replies never carry a traceback, an absolute path, the cache root or
the bucket: the details go to the worker's log (``handler.logs``), and every reply is made
JSON-safe last (``handler.jsonsafe``) so runpod can always post it.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from cache_sync import readiness
from handler.asr import AsrModelMissingError, Transcriber, resolve_model_dir
from handler.audio import Audio, encode_wav
from handler.config import HandlerConfig
from handler.engine import (
    Engine,
    EngineError,
    ModelMissingError,
    SynthesisRequest,
    cache_relative,
    make_engine,
)
from handler.jsonsafe import clean, json_safe
from handler.logs import JOB_ID, log
from handler.outputs import OutputWriter
from handler.validate import InputError, JobInput, check_output_length, validate

HANDLER_VERSION = "0.2.0"


def _log_exception(what: str) -> None:
    log(f"{what}:\n{traceback.format_exc()}")


def _on_runpod() -> bool:
    """True under RunPod's job loop (progress updates have somewhere to go)."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))


class Worker:
    def __init__(self, config: HandlerConfig | None, startup_error: str | None = None) -> None:
        self.config = config
        self.engine: Engine | None = make_engine(config) if config else None
        self.writer = OutputWriter(config) if config else None
        self.transcriber = self._make_transcriber()
        self.load_error: str | None = startup_error  # for the log: may name paths
        self.public_error: str | None = startup_error  # for replies: no absolute paths
        self.loaded: dict[str, Any] = {}
        self.load_seconds: float | None = None
        self.jobs_done = 0

    # --- start-up ----------------------------------------------------------------------
    def warm_load(self) -> bool:
        """Load the engine before the first job. Never raises: a failure is remembered."""
        if self.engine is None:
            log(f"not loading: {self.load_error}")
            return False
        start = time.perf_counter()
        name = self.engine.name
        try:
            # Under `cache-sync run`, models/ may still be pulling: import the engine's
            # libraries meanwhile, then wait for the area. Otherwise check the model files
            # first, so a missing model fails fast, before seconds of imports.
            overlapping = readiness.pending("models")
            if not overlapping:
                self.engine.check_files()
            self.engine.import_modules()
            log(f"imported engine {self.engine.name} in {time.perf_counter() - start:.2f}s")
            if overlapping:
                waited = readiness.wait(["models"])
                log(f"waited {waited:.1f}s for the models area")
            self.loaded = self.engine.load()
        except ModelMissingError as err:  # the message says it all
            self.load_error, self.public_error = str(err), err.public
        except readiness.AreaNotReady as err:  # the pull's error may name the store: log only
            self.load_error = str(err)
            self.public_error = ("the models area did not arrive from the store; the worker's "
                                 "log has the details")
        except ImportError as err:
            self.load_error = self.public_error = (
                f"engine {name!r} cannot import {err.name or 'a module it needs'}: install its "
                "packages into the cache with `cache-sync install` (see docs/handler.md)")
            if not err.name:
                self.load_error += f" ({err})"
        except Exception as err:  # noqa: BLE001 (corrupt checkpoint, OOM, ...: never crash-loop)
            _log_exception("warm load failed")
            self.load_error = f"engine {name!r} failed to load: {type(err).__name__}: {err}"
            self.public_error = f"engine {name!r} failed to load ({type(err).__name__}); " \
                                "the worker's log has the details"
        self.load_seconds = round(time.perf_counter() - start, 3)
        if self.load_error:
            log(f"NOT READY: {self.load_error}")
            return False
        assert self.config is not None
        try:
            free = f"{shutil.disk_usage(self.config.cache_root).free} bytes free"
        except OSError as err:
            free = f"free space unknown: {err}"
        log(f"ready: engine {name} loaded in {self.load_seconds}s from {self.config.cache_root} "
            f"({free})")
        return True

    def _make_transcriber(self) -> Transcriber | None:
        config, engine = self.config, self.engine
        if config is None or engine is None:
            return None
        # (replies name a path model relative to the cache: _asr_status)
        return Transcriber(lambda: engine.asr_backend(resolve_model_dir(config)),
                           config.asr_keep_seconds, config.asr_model)

    def concurrency(self, current: int) -> int:
        return self.config.concurrency if self.config else 1

    # --- jobs --------------------------------------------------------------------------
    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """runpod's handler: one job in, one JSON-safe reply out, whatever happens inside."""
        job_id = clean(str(job.get("id", "job")))[:100] if isinstance(job, dict) else "job"
        JOB_ID.set(job_id)  # this job's task only; to_thread carries it into threads
        try:
            reply = await self._handle(job, job_id)
        except Exception:  # noqa: BLE001 (the last guard: a reply, never a traceback)
            _log_exception("unexpected error")
            reply = {"error": f"internal error in job {job_id}; the worker's log has the "
                              "details"}
        return json_safe(reply)  # type: ignore[no-any-return]

    async def _handle(self, job: dict[str, Any], job_id: str) -> dict[str, Any]:
        raw = job.get("input")
        if isinstance(raw, dict) and raw.get("health") is True:
            return self.health()
        if self.load_error or self.engine is None or self.config is None:
            return {"error": f"worker not ready: {self.public_error}"}
        try:
            # Off the event loop: it may download and decode a reference clip.
            inp = await asyncio.to_thread(validate, raw, self.config)
        except InputError as err:
            return {"error": str(err), "fields": err.fields}

        tp = time.perf_counter()
        try:
            req, prep = await asyncio.to_thread(self._prepare, inp)
        except InputError as err:
            return {"error": str(err), "fields": err.fields}
        except _JobFailed as err:
            return {"error": str(err)}
        self._progress(job, "synthesizing")
        t0 = time.perf_counter()
        try:
            # Inference blocks for seconds: run it in a thread so the event loop keeps
            # heart-beating and taking jobs up to the concurrency limit.
            result = await asyncio.to_thread(self.engine.synthesize, req)
        except EngineError as err:  # written for the caller
            _log_exception("synthesis failed")
            return {"error": f"synthesis failed: {err}"}
        except Exception as err:  # noqa: BLE001 (reported as the job's error, details logged)
            _log_exception("synthesis failed")
            return {"error": f"synthesis failed ({type(err).__name__}); the worker's log has "
                             "the details"}
        t1 = time.perf_counter()
        wav = await asyncio.to_thread(encode_wav, result.samples, result.sample_rate)
        t2 = time.perf_counter()
        try:
            assert self.writer is not None
            delivered = await asyncio.to_thread(self.writer.deliver, wav, inp.output, job_id)
        except Exception as err:  # noqa: BLE001 (reported as the job's error, details logged)
            target = self.config.output_url if inp.output == "s3" else "the reply"
            _log_exception(f"delivery ({inp.output}, to {target}) failed")
            return {"error": f"could not deliver the audio ({inp.output}: "
                             f"{type(err).__name__}); the worker's log has the details"}
        t3 = time.perf_counter()
        self.jobs_done += 1
        return {
            **delivered,
            "format": "wav",
            "sample_rate": result.sample_rate,
            "duration_seconds": round(len(result.samples) / result.sample_rate, 3),
            "bytes": len(wav),
            "engine": self.engine.name,
            "engine_info": result.info,
            **prep["output"],
            "timings": {
                "load_seconds": self.load_seconds,  # once, at start-up (warm)
                "preprocess_seconds": round(t0 - tp - prep["asr_total"], 4),
                **prep["timings"],
                "inference_seconds": round(t1 - t0, 4),
                "encode_seconds": round(t2 - t1, 4),
                "output_seconds": round(t3 - t2, 4),
            },
        }

    def _prepare(self, inp: JobInput) -> tuple[SynthesisRequest, dict[str, Any]]:
        """Upstream's reference preprocessing, the transcript when ref_text is empty, and the
        text chunks (in a thread: numpy, and the transcriber's load and run, block)."""
        import numpy as np

        from handler import refprep

        audio = inp.ref_audio
        try:
            prepared = refprep.preprocess(np.frombuffer(audio.samples, dtype=np.float32),
                                          audio.sample_rate)
        except refprep.SilentReferenceError as err:
            raise InputError({"ref_audio": str(err)}) from None
        ref_text = inp.ref_text
        out: dict[str, Any] = {}
        timings: dict[str, Any] = {}
        asr_total = 0.0
        if not ref_text:
            assert self.transcriber is not None
            t0 = time.perf_counter()
            try:
                got = self.transcriber.transcribe(prepared.samples, prepared.sample_rate)
            except AsrModelMissingError as err:
                log(f"transcriber unavailable: {err}")
                assert self.config is not None
                public = str(err).replace(str(self.config.cache_root), "<cache root>")
                raise _JobFailed("ref_text is empty and the transcriber is unavailable: "
                                 f"{public}") from None
            except Exception as err:  # noqa: BLE001 (the job's error; the worker goes on)
                _log_exception("transcription failed")
                raise _JobFailed(f"transcription failed ({type(err).__name__}); the worker's "
                                 "log has the details") from None
            asr_total = time.perf_counter() - t0
            ref_text = got.text
            out["transcript"] = got.text
            out["asr"] = {**self._asr_status(), "device": got.device}
            timings = {"asr_load_seconds": got.load_seconds, "asr_seconds": got.seconds}
        ref_text = refprep.finish_ref_text(ref_text)
        assert self.config is not None
        check_output_length(inp.text, ref_text, prepared.seconds, inp.speed, self.config)
        chunk_chars = refprep.max_chars(ref_text, prepared.seconds, inp.speed)
        chunks = refprep.chunk_text(inp.text, chunk_chars)
        out["reference"] = {**prepared.report(), "chunk_chars": chunk_chars}
        req = SynthesisRequest(inp.text, Audio(prepared.to_array(), prepared.sample_rate),
                               ref_text, chunks, inp.speed, inp.nfe_step, inp.seed)
        return req, {"output": out, "timings": timings, "asr_total": asr_total}

    def _progress(self, job: dict[str, Any], message: str) -> None:
        if not _on_runpod():
            return
        try:
            import runpod

            runpod.serverless.progress_update(job, message)
        except Exception as err:  # noqa: BLE001 (progress is best-effort, never a job failure)
            log(f"progress update failed: {err}")

    # --- health ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Ready or not and why, what is loaded, versions: no paths, sizes or bucket names."""
        return {
            "ready": self.load_error is None,
            # not "error": runpod would turn a health answer into a failed job
            "not_ready_reason": self.public_error,
            "engine": self.engine.describe() if self.engine else None,
            "loaded": self.loaded,
            "load_seconds": self.load_seconds,
            "jobs_done": self.jobs_done,
            "concurrency": self.config.concurrency if self.config else None,
            "url_ref_audio": self.config.allow_url_ref_audio if self.config else None,
            "asr": self._asr_status() if self.transcriber else None,
            "versions": _versions(),
            "gpu": _gpu_memory(),
        }


    def _asr_status(self) -> dict[str, Any]:
        """The transcriber's status for a reply: a model given as a path is named relative to
        the cache root (``HANDLER_ASR_MODEL`` may be an absolute directory)."""
        assert self.transcriber is not None and self.config is not None
        status = self.transcriber.status()
        model = str(status.get("model", ""))
        if os.path.isabs(model):
            status["model"] = cache_relative(Path(model), self.config.cache_root)
        return status


class _JobFailed(RuntimeError):
    """A job-level failure whose message is the job's error (not an input error)."""


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version(), "handler": HANDLER_VERSION}
    for dist in ("runpod", "cache-sync", "torch", "torchaudio", "f5-tts", "vocos",
                 "transformers"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def _gpu_memory() -> list[dict[str, Any]] | None:
    torch = sys.modules.get("torch")  # only if the engine imported it: health stays cheap
    if torch is None or not torch.cuda.is_available():
        return None
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "free_bytes": free,
                     "total_bytes": total, "allocated_bytes": torch.cuda.memory_allocated(i)})
    return gpus
