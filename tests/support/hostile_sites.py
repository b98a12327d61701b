"""HTTP servers for the hostile-job tests: a "public" site on 127.0.0.2 (the worker
allow-lists it) and "internal" ones on 127.0.0.1 and ::1 at the same port, each counting the
requests it gets, with routes that redirect, fail, drip bytes or serve a WAV."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator

from tests.support.worker_helpers import tone_wav

URL_DEADLINE = 5.0  # HANDLER_URL_TIMEOUT for these workers
WAV = tone_wav(0.5)


class Site:
    """A tiny HTTP server on one address that counts every request it gets."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                site.hits.append(self.path)
                route = ROUTES.get(self.path.split("?")[0])
                if route is None:
                    self._send(404, b"not found")
                else:
                    route(self, site)

            def _send(self, code: int, body: bytes, **headers: str) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("S", (http.server.ThreadingHTTPServer,), {"address_family": family,
                                                                    "daemon_threads": True})
        self.server = server_cls((host, port), Handler)
        self.port = self.server.server_address[1]
        self.host = host
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _redirect(target: str):
    def route(h, site: Site) -> None:
        h._send(302, b"", Location=target.replace("PORT", str(site.port)))
    return route


def _drip(h, site: Site) -> None:
    """A valid start, then one byte every 0.5 s: the body would take ~14 hours."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(WAV)))
    h.end_headers()
    with contextlib.suppress(OSError):
        for b in WAV:
            h.wfile.write(bytes([b]))
            h.wfile.flush()
            time.sleep(0.5)


def _drip_headers(h, site: Site) -> None:
    """Even the status line comes one byte every 0.5 s."""
    with contextlib.suppress(OSError):
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n":
            h.wfile.write(bytes([b]))
            h.wfile.flush()
            time.sleep(0.5)
    h.close_connection = True


ROUTES = {
    "/ref.wav": lambda h, s: h._send(200, WAV, **{"Content-Type": "audio/wav"}),
    "/500": lambda h, s: h._send(500, b"internal server error: db password is hunter2"),
    "/notwav": lambda h, s: h._send(200, b"<html>admin console</html>"),
    "/to-ref": _redirect("/ref.wav"),
    "/to-loopback": _redirect("http://127.0.0.1:PORT/ref.wav"),
    "/to-localhost": _redirect("http://localhost:PORT/ref.wav"),
    "/to-ftp": _redirect("ftp://127.0.0.2/ref.wav"),
    "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
    "/loop": _redirect("/loop"),
    "/slow": _drip,
    "/slow-headers": _drip_headers,
}


@contextlib.contextmanager
def open_sites() -> Iterator[dict[str, Site]]:
    """`public` on 127.0.0.2 (allow-listed), `internal` on 127.0.0.1 and ::1, same port, so a
    URL that names the internal address differs from an allowed one only in the host."""
    for _ in range(20):
        public = Site("127.0.0.2")
        try:
            internal = Site("127.0.0.1", public.port)
            internal6 = Site("::1", public.port)
            break
        except OSError:
            public.close()
            with contextlib.suppress(NameError):
                internal.close()
    else:
        raise RuntimeError("no port free on 127.0.0.1, 127.0.0.2 and ::1 at once")
    all_sites = {"public": public, "internal": internal, "internal6": internal6}
    try:
        yield all_sites
    finally:
        for site in all_sites.values():
            site.close()
