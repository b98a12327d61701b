"""HTTP servers for the hostile-job tests: a "public" site on 127.0.0.2 (the worker
allow-lists it) and "internal" ones on 127.0.0.1 and ::1 at the same port, each counting the
requests it gets, with routes that redirect, fail, drip bytes or serve a WAV."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.worker_helpers import tone_wav

URL_DEADLINE = 5.0  # HANDLER_URL_TIMEOUT for these workers
WAV = tone_wav(0.5)


class Site:
    """A tiny HTTP server on one address that counts every request it gets."""

    def __init__(self, host: str, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
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
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.host = host
        self.scheme = "https" if tls else "http"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{path}"

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


def make_tls(directory: Path, names: list[str], addresses: list[str]) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA (its PEM path, for the worker's SSL_CERT_FILE) and a server context
    whose certificate covers ``names`` and ``addresses``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def cert(subject: str, key, issuer: str, signer, ca: bool, sans: list) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - day).not_valid_after(now + day)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("hostile-test-ca", ca_key, "hostile-test-ca", ca_key, True, [])
    sans = [x509.DNSName(n) for n in names] + \
        [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = cert(names[0], key, "hostile-test-ca", ca_key, False, sans)
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context
