"""A fake Hugging Face Hub for tests (this machine cannot reach the real one): an HTTP server
implementing just what ``huggingface_hub.snapshot_download`` calls, serving repos the test
builds in memory, and counting every file download. Point ``HF_ENDPOINT`` at ``hub.url``.

Endpoints (as the Hub answers them):
  GET  /api/models/<repo>/revision/<rev>           model info: ``sha`` and ``siblings``
  GET  /api/models/<repo>/tree/<rev>[/<dir>]       recursive listing: type, path, size, oid
                                                   (git blob sha1) and ``lfs`` (sha256)
  HEAD /<repo>/resolve/<rev>/<path>                ETag, X-Repo-Commit, X-Linked-Etag/Size
  GET  /<repo>/resolve/<rev>/<path>                the bytes (Range honoured)
Unknown repos answer 404 with ``X-Error-Code: RepoNotFound``, unknown revisions 404
``RevisionNotFound``, unknown files 404 ``EntryNotFound``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> None:
        self.repo_id = repo_id
        self.files = dict(files)
        listing = json.dumps(sorted((p, hashlib.sha256(d).hexdigest())
                                    for p, d in files.items())).encode()
        self.commit = hashlib.sha1(repo_id.encode() + listing).hexdigest()
        self.refs = {branch: self.commit, self.commit: self.commit}


class FakeHub:
    def __init__(self, *repos: Repo, rate: int | None = None) -> None:
        self.repos = {r.repo_id: r for r in repos}
        self.rate = rate  # bytes per second for file GETs (a slow download), None: unthrottled
        self.downloads: Counter[tuple[str, str]] = Counter()  # (repo, path) -> full GETs
        self.api_calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def total_downloads(self) -> int:
        return sum(self.downloads.values())


_API = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/(?P<kind>revision|tree)/"
                  r"(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        m = _API.match(path)
        if m:
            self._api(m.group("repo"), m.group("kind"), m.group("rev"), m.group("path") or "")
            return
        m = _RESOLVE.match(path)
        if m:
            self._resolve(m.group("repo"), m.group("rev"), m.group("path"), head)
            return
        self._error(404, "EntryNotFound", f"no route for {path}")

    def _lookup(self, repo_id: str, rev: str) -> Repo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
            return None
        if rev not in repo.refs:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    def _api(self, repo_id: str, kind: str, rev: str, sub: str) -> None:
        with self.server_hub.lock:
            self.server_hub.api_calls[kind] += 1
        repo = self._lookup(repo_id, rev)
        if repo is None:
            return
        if kind == "revision":
            body = {"id": repo_id, "modelId": repo_id, "sha": repo.refs[rev], "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
        else:
            prefix = sub.rstrip("/") + "/" if sub else ""
            body = []
            for p, data in sorted(repo.files.items()):
                if not p.startswith(prefix):
                    continue
                body.append({"type": "file", "path": p, "size": len(data),
                             "oid": git_blob_sha1(data),
                             "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                     "pointerSize": 134}})
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, rev: str, path: str, head: bool) -> None:
        repo = self._lookup(repo_id, rev)
        if repo is None:
            return
        data = repo.files.get(path)
        if data is None:
            self._error(404, "EntryNotFound", f"{path} not found")
            return
        etag = hashlib.sha256(data).hexdigest()
        headers = {"ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"',
                   "X-Linked-Size": str(len(data)), "X-Repo-Commit": repo.refs[rev],
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start = 0
        rng = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if rng and not head:
            start = int(rng.group(1))
        if head:
            headers["Content-Length"] = str(len(data))
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        with self.server_hub.lock:
            if start == 0:
                self.server_hub.downloads[(repo_id, path)] += 1
        part = data[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(status, part, headers, throttled=True)

    def _send(self, status: int, body: bytes, headers: dict[str, str],
              throttled: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        rate = self.server_hub.rate if throttled else None
        try:
            if not rate:
                self.wfile.write(body)
                return
            step = max(1, rate // 10)
            for i in range(0, len(body), step):
                if self.server_hub.stopped.is_set():
                    return
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                  "X-Error-Message": message})
