"""A local package index for install tests: tiny wheels built by the test, laid out as a
PEP 503 simple index in a directory, and served over HTTP by a server thread that can fail the
first N requests (flaky) or trickle bytes forever (hanging)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import os
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tests.support import REPO


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def make_wheel(out: Path, name: str, version: str, files: dict[str, str | bytes],
               requires: tuple[str, ...] = ()) -> Path:
    """A valid pure-python wheel with a correct RECORD (pip and uv both accept it)."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    content: dict[str, bytes] = {
        p: (c.encode() if isinstance(c, str) else c) for p, c in files.items()}
    content[f"{info}/METADATA"] = meta.encode()
    content[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: cache-sync-tests\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = []
    for path, data in content.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    content[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    whl = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in content.items():
            z.writestr(path, data)
    return whl


def build_index(root: Path, wheels: list[Path]) -> Path:
    """``root/simple/<project>/index.html`` linking to ``root/files/*.whl``."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[Path]] = {}
    for whl in wheels:
        dest = files / whl.name
        if whl != dest:
            dest.write_bytes(whl.read_bytes())
        projects.setdefault(_norm(whl.name.split("-")[0]), []).append(dest)
    simple = root / "simple"
    for project, whls in projects.items():
        d = simple / project
        d.mkdir(parents=True, exist_ok=True)
        links = []
        for w in whls:
            sha = hashlib.sha256(w.read_bytes()).hexdigest()
            links.append(f'<a href="../../files/{w.name}#sha256={sha}">{w.name}</a><br/>')
        d.joinpath("index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    simple.mkdir(exist_ok=True)
    simple.joinpath("index.html").write_text("<html><body>" + "".join(
        f'<a href="{p}/">{p}</a>' for p in projects) + "</body></html>")
    return root


class IndexServer:
    """Serves ``root`` over HTTP. ``fail_first``: the first N requests get 503. ``hang``:
    requests under /simple/ get headers, then one byte every 0.2 s until the server stops.
    ``rate``: wheels under /files/ are sent at that many bytes per second."""

    def __init__(self, root: Path, *, fail_first: int = 0, hang: bool = False,
                 rate: int | None = None) -> None:
        self.root = root
        self.rate = rate  # bytes per second for /files/ (a slow download)
        self.fail_first = fail_first
        self.hang = hang
        self.requests: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(server.root), **kw)

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                with server._lock:
                    failing = len(server.requests) < server.fail_first
                    server.requests.append((self.path, 503 if failing else 200))
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.hang and self.path.startswith("/simple/"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not server._stop.wait(0.2):
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                if server.rate and self.path.startswith("/files/"):
                    self._slow_file()
                    return
                super().do_GET()

            def _slow_file(self):
                data = (server.root / self.path.lstrip("/").split("#")[0]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = max(1, server.rate // 10)
                for i in range(0, len(data), step):
                    if server._stop.is_set():
                        return
                    try:
                        self.wfile.write(data[i:i + step])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> IndexServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def serve(root: Path, **kw) -> Iterator[IndexServer]:
    with IndexServer(root, **kw) as s:
        yield s


def hermetic_env(tmp: Path, index_url: str | None = None) -> dict[str, str]:
    """The test process's environment without this machine's pip/uv configuration, with HOME
    and caches in ``tmp`` and cache-sync's floors lowered."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "CACHE_SYNC_", "AWS_", "B2_"))}
    env.update({
        "PIP_CONFIG_FILE": os.devnull,  # pip: no config file at all
        "HOME": str(tmp / "home"), "XDG_CACHE_HOME": str(tmp / "home" / ".cache"),
        "CACHE_SYNC_ROOT": str(tmp / "cache"), "CACHE_SYNC_REMOTE": f"file://{tmp}/store",
        "CACHE_SYNC_MIN_FREE": "1M", "CACHE_SYNC_MIN_FREE_OS": "1M",
        "CACHE_SYNC_INSTALL_BACKOFF": "0.1",
        "PYTHONPATH": str(REPO),
    })
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    if index_url:
        env["PIP_INDEX_URL"] = index_url
    return env


