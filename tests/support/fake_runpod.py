"""A small fake of RunPod's job API on 127.0.0.1, speaking what runpod 1.12's worker loop
speaks (read from its source: rp_job.get_job / get_stop_signals, rp_http.send_result,
rp_ping.Heartbeat):

- GET  {RUNPOD_WEBHOOK_GET_JOB, $ID -> worker id}&job_in_progress=0|1 -> 200 JSON job or 204
  (the job-take template uses $ID for the worker id; the job-done one uses $RUNPOD_POD_ID
  for the worker and $ID for the job)
- GET  .../job-take-batch/...&batch_size=N (when concurrency > 1) -> 200 JSON list or 204
- GET  .../job-stop/... (derived from the job-take URL)  -> 204 (long-poll: we hold briefly)
- POST {RUNPOD_WEBHOOK_POST_OUTPUT with $ID}&isStream=false, body = JSON result, sent as
  form-encoded; progress updates use the same URL with {"status": "IN_PROGRESS"}
- GET  {RUNPOD_WEBHOOK_PING}?job_id=...&runpod_version=... (needs RUNPOD_AI_API_KEY and
  RUNPOD_POD_ID set, or the SDK sends no pings)
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

POD_ID = "pod-test-1"
API_KEY = "fake-runpod-key"


@dataclass
class Post:
    job_id: str
    body: dict[str, Any]
    at: float  # time.monotonic()
    wall: float  # time.time(), to compare with file mtimes
    query: dict[str, list[str]]


@dataclass
class FakeRunPod:
    jobs: deque = field(default_factory=deque)
    taken: list[tuple[str, float]] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    pings: list[dict[str, list[str]]] = field(default_factory=list)
    bad_auth: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def env(self) -> dict[str, str]:
        base = f"http://127.0.0.1:{self.port}"
        return {
            "RUNPOD_POD_ID": POD_ID,
            "RUNPOD_AI_API_KEY": API_KEY,
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/v2/test-ep/job-take/$ID?gpu=CPU",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/v2/test-ep/job-done/$RUNPOD_POD_ID/$ID?gpu=CPU",
            "RUNPOD_WEBHOOK_PING": f"{base}/v2/test-ep/ping/$RUNPOD_POD_ID?gpu=CPU",
            "RUNPOD_PING_INTERVAL": "1000",
        }

    def add_job(self, job_id: str, job_input: dict[str, Any]) -> None:
        with self.lock:
            self.jobs.append({"id": job_id, "input": job_input})

    def results(self, job_id: str) -> list[Post]:
        """Final results for a job (progress updates excluded)."""
        with self.lock:
            return [p for p in self.posts
                    if p.job_id == job_id and p.body.get("status") != "IN_PROGRESS"]

    def progress(self, job_id: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts
                    if p.job_id == job_id and p.body.get("status") == "IN_PROGRESS"]

    def wait_for(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return False

    # --- server -------------------------------------------------------------------------
    def start(self) -> FakeRunPod:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, code: int, body: bytes = b"", ctype: str = "application/json"):
                self.send_response(code)
                if body:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _check_auth(self) -> None:
                if self.headers.get("Authorization") != API_KEY:
                    fake.bad_auth.append(self.path)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                self._check_auth()
                batch = f"/job-take-batch/{POD_ID}" in url.path  # concurrency > 1
                if batch or f"/job-take/{POD_ID}" in url.path:
                    want = int(query.get("batch_size", ["1"])[0]) if batch else 1
                    with fake.lock:
                        jobs = [fake.jobs.popleft() for _ in range(min(want, len(fake.jobs)))]
                        fake.taken.extend((j["id"], time.monotonic()) for j in jobs)
                    if jobs:
                        body = jobs if batch else jobs[0]
                        return self._reply(200, json.dumps(body).encode())
                    time.sleep(0.2)  # a real long-poll holds; don't let the worker spin
                    return self._reply(204)
                if f"/job-stop/{POD_ID}" in url.path:
                    time.sleep(0.3)
                    return self._reply(204)
                if f"/ping/{POD_ID}" in url.path:
                    with fake.lock:
                        fake.pings.append(query)
                    return self._reply(200, b"{}")
                return self._reply(404, b"{}")

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                self._check_auth()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                parts = url.path.split("/")
                if "job-done" in parts and parts[-2] == POD_ID:
                    with fake.lock:
                        fake.posts.append(Post(parts[-1], json.loads(raw), time.monotonic(),
                                               time.time(), urllib.parse.parse_qs(url.query)))
                    return self._reply(200, b"{}")
                return self._reply(404, b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
