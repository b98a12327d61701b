"""A fault-injecting HTTP proxy between an S3 client and a real S3 server (moto, SeaweedFS).

It listens on 127.0.0.1, forwards every request unchanged (the Host header included, so SigV4
signatures made for the proxy's address still verify upstream) and, where a rule matches,
injects one fault instead:

  status       return an S3 error (500 InternalError by default) without forwarding, or after
               forwarding (``forward=True``: the upstream did the work, the client sees a 5xx)
  slowdown     503 SlowDown with a Retry-After header
  reset        forward, send the headers and part of the body, then RST the connection
  truncate     forward, send the headers (true Content-Length) and part of the body, then FIN
  delay        sleep, then forward normally
  stall        send nothing (or, with ``after_headers=True``, headers and part of the body)
               until ``seconds`` pass or the proxy stops: the client's read timeout must fire
  corrupt      forward with the same length but flipped bytes (by default only ranged GETs)
  reject_conditional  501 NotImplemented for any request carrying If-Match/If-None-Match, as
               on a store without conditional writes (Backblaze B2)

With ``b2=B2Mode(...)`` the proxy also behaves as Backblaze B2's S3-compatible API is
documented to (see ``B2Mode``): it refuses unsupported headers, conditional writes and a
DeleteObjects without Content-MD5 the way B2 does, answers bursts with 503 SlowDown +
Retry-After, and can play a key that lacks a capability (403 AccessDenied).

Rules match on method, a key substring, presence of a Range header, the request ordinal among
matching requests (``skip``/``times``) and a seeded probability. ``on_request(n, method,
path)`` sees every request first; if it returns true the request is dropped (RST). The proxy stops by itself
after ``max_seconds`` or ``max_requests`` and counts injected faults per kind in ``injected``.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("status", "slowdown", "reset", "truncate", "delay", "stall", "corrupt",
         "reject_conditional")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "expect"}
CONDITIONAL = ("if-match", "if-none-match")


@dataclass
class Rule:
    kind: str
    method: str | None = None          # "GET", "PUT", ... (None: any)
    key: str | None = None             # substring of the request path
    range: bool | None = None          # True: only ranged requests, False: only unranged
    skip: int = 0                      # let this many matching requests through first
    times: int | None = None           # inject at most this many times (None: unbounded)
    prob: float = 1.0                  # chance per matching request (seeded rng)
    status: int = 500                  # for kind=status
    forward: bool = False              # status: forward first, then lie about the outcome
    seconds: float = 0.0               # delay / stall length, Retry-After for slowdown
    fraction: float = 0.5              # reset / truncate / stall(after_headers): body share sent
    after_headers: bool = False        # stall: send headers and part of the body first
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.kind == "corrupt" and self.range is None:
            self.range = True

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.method and method != self.method.upper():
            return False
        if self.key and self.key not in path:
            return False
        if self.range is not None and ("range" in headers) != self.range:
            return False
        # reject_conditional only concerns requests that carry a conditional header
        return self.kind != "reject_conditional" or any(h in headers for h in CONDITIONAL)


# Backblaze's "Unsupported Features" of its S3-compatible API: every flexible-checksum header.
B2_UNSUPPORTED_HEADERS = ("x-amz-checksum-crc32", "x-amz-checksum-crc32c",
                          "x-amz-checksum-crc64nvme", "x-amz-checksum-sha1",
                          "x-amz-checksum-sha256", "x-amz-checksum-algorithm",
                          "x-amz-sdk-checksum-algorithm", "x-amz-checksum-mode")
# What B2's refusals look like to a client, and which of them mean "the client broke the
# dialect" (as opposed to weather: a burst, or a key the test chose to cripple).
B2_PROTOCOL_REFUSALS = ("b2_unsupported_header", "b2_conditional", "b2_missing_md5")
CAPABILITIES = ("list", "read", "write", "delete")


@dataclass
class B2Mode:
    """Backblaze B2's S3-compatible API, as far as its published documentation and observed
    replies go:

    - any header from B2_UNSUPPORTED_HEADERS (or another ``x-amz-checksum-*``): 400
      InvalidArgument ``Unsupported header '<name>' received for this API call.``
    - If-Match / If-None-Match on a write (PUT, POST): 501 NotImplemented ``A header you
      provided implies functionality that is not implemented`` (no conditional writes);
    - DeleteObjects (POST ?delete) without Content-MD5: 400 InvalidRequest;
    - more than ``burst`` requests in flight at once: 503 SlowDown with ``Retry-After``
      (``burst_times`` bounds how many; B2 sends this when a storage node is busy);
    - ``deny``: capabilities the application key lacks (list, read, write, delete -- B2's
      listFiles, readFiles, writeFiles, deleteFiles): 403 AccessDenied ``not entitled``.
    """

    burst: int = 0                      # 0: no burst limit
    burst_times: int | None = None      # at most this many 503s (None: unbounded)
    retry_after: int = 1
    deny: frozenset[str] = frozenset()
    in_flight: int = field(default=0, init=False)
    bursts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.deny = frozenset(self.deny)
        unknown = self.deny - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}")

    def refusal(self, method: str, path: str, headers: dict[str, str]
                ) -> tuple[str, int, str, str, dict[str, str]] | None:
        """(kind, status, code, message, extra headers) when B2 would refuse, else None.
        Called under the proxy's lock with the request already counted in ``in_flight``."""
        for name in headers:
            if name in B2_UNSUPPORTED_HEADERS or name.startswith("x-amz-checksum-"):
                return ("b2_unsupported_header", 400, "InvalidArgument",
                        f"Unsupported header '{name}' received for this API call.", {})
        if method in ("PUT", "POST") and any(h in headers for h in CONDITIONAL):
            return ("b2_conditional", 501, "NotImplemented",
                    "A header you provided implies functionality that is not implemented", {})
        capability = _capability(method, path)
        if capability in self.deny:
            return ("b2_denied", 403, "AccessDenied", "not entitled", {})
        if capability == "delete" and method == "POST" and "content-md5" not in headers:
            return ("b2_missing_md5", 400, "InvalidRequest",
                    "Missing required header for this request: Content-MD5", {})
        if self.burst and self.in_flight > self.burst and (
                self.burst_times is None or self.bursts < self.burst_times):
            self.bursts += 1
            return ("b2_burst", 503, "SlowDown", "Please reduce your request rate.",
                    {"Retry-After": str(self.retry_after)})
        return None


def _capability(method: str, path: str) -> str:
    """Which B2 key capability a request needs (path-style addressing)."""
    route, _, query = path.partition("?")
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    object_level = "/" in route.strip("/")
    if method == "DELETE" or (method == "POST" and "delete" in params):
        return "delete"
    if method in ("PUT", "POST"):
        return "write"
    if method == "GET" and not object_level:
        return "list"
    return "read"


@dataclass
class Seen:
    """One request as the proxy saw it (for assertions: which headers did the client send?)."""

    n: int
    method: str
    path: str
    headers: dict[str, str]
    fault: str | None


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0, max_seconds: float = 300.0,
                 max_requests: int = 100_000,
                 on_request: Callable[[int, str, str], object] | None = None,
                 b2: B2Mode | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.rng = random.Random(seed)
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.on_request = on_request
        self.b2 = b2
        self.injected: Counter[str] = Counter()
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # --- scripting ------------------------------------------------------------------------
    def add(self, kind: str, **kw) -> Rule:
        rule = Rule(kind, **kw)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def conditional_requests(self) -> list[Seen]:
        return [s for s in self.requests if any(h in s.headers for h in CONDITIONAL)]

    def b2_refusals(self, kinds: tuple[str, ...] = B2_PROTOCOL_REFUSALS) -> list[Seen]:
        """Requests the B2 mode refused for one of ``kinds`` (default: dialect violations)."""
        return [s for s in self.requests if s.fault in kinds]

    def _pick(self, method: str, path: str, headers: dict[str, str]
              ) -> tuple[int, Rule | None, tuple | None]:
        """Record the request; B2's own refusals come first, then at most one rule (first
        match wins)."""
        with self.lock:
            n = len(self.requests) + 1
            if self.b2 is not None:
                refusal = self.b2.refusal(method, path, headers)
                if refusal is not None:
                    self.injected[refusal[0]] += 1
                    self.requests.append(Seen(n, method, path, headers, refusal[0]))
                    return n, None, refusal
            chosen = None
            for rule in self.rules:
                if not rule.matches(method, path, headers):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.prob < 1.0 and self.rng.random() >= rule.prob:
                    continue
                rule.fired += 1
                self.injected[rule.kind] += 1
                chosen = rule
                break
            self.requests.append(Seen(n, method, path, headers, chosen.kind if chosen else None))
        return n, chosen, None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True, name="faultproxy")
        serve.start()
        # The time bound: whatever the test does, the proxy is gone after max_seconds.
        timer = threading.Timer(self.max_seconds, self.stop)
        timer.daemon = True
        timer.start()
        self._threads = [serve]
        self._timer = timer
        return self

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self._timer.cancel()
        if self._server is not None:
            # shutdown() blocks until serve_forever returns: never call it on that thread.
            t = threading.Thread(target=self._server.shutdown, daemon=True)
            t.start()
            t.join(5)
            self._server.server_close()

    def __enter__(self) -> FaultProxy:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up (timeouts, kills) are part of the game, not errors


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, and answers Expect: 100-continue itself

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _any(self) -> None:
        p = self.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self._read_body(headers)
        if p.stopped.is_set():
            self._reset()
            return
        b2 = p.b2
        if b2 is not None:
            with p.lock:
                b2.in_flight += 1
        try:
            self._serve(p, headers, body)
        finally:
            if b2 is not None:
                with p.lock:
                    b2.in_flight -= 1

    def _serve(self, p: FaultProxy, headers: dict[str, str], body: bytes) -> None:
        n, rule, refusal = p._pick(self.command, self.path, headers)
        if refusal is not None:
            _, status, code, message, extra = refusal
            self._error(status, code, message, extra)
            return
        hook = p.on_request
        if hook is not None and hook(n, self.command, self.path):
            self._reset()  # the hook asked to drop this request (e.g. its client was killed)
            return
        if n >= p.max_requests:
            threading.Thread(target=p.stop, daemon=True).start()
        kind = rule.kind if rule else None
        if kind == "delay":
            p.stopped.wait(rule.seconds)
        if kind == "stall" and not rule.after_headers:
            p.stopped.wait(rule.seconds or p.max_seconds)
            self._reset()
            return
        if kind == "slowdown":
            self._error(503, "SlowDown", "Please reduce your request rate.",
                        {"Retry-After": str(max(0, int(rule.seconds)))})
            return
        if kind == "reject_conditional":
            self._error(501, "NotImplemented", "Conditional writes are not supported.")
            return
        if kind == "status" and not rule.forward:
            self._error(rule.status, _code(rule.status), "Injected fault.")
            return
        try:
            status, reason, up_headers, up_body = self._forward(headers, body)
        except OSError as exc:
            self._error(502, "BadGateway", f"upstream failed: {exc}")
            return
        if kind == "status":  # forwarded: the upstream did it, the client is told otherwise
            self._error(rule.status, _code(rule.status), "Injected fault after forwarding.")
            return
        if kind == "corrupt" and up_body and 200 <= status < 300:
            flip = bytearray(up_body)
            for i in range(0, len(flip), max(1, len(flip) // 8)):
                flip[i] ^= 0xFF
            up_body = bytes(flip)
        self.send_response(status, reason)
        for k, v in up_headers:
            if k.lower() not in HOP_BY_HOP | {"content-length", "date", "server"}:
                self.send_header(k, v)
        length = len(up_body) if self.command != "HEAD" else int(
            {k.lower(): v for k, v in up_headers}.get("content-length", 0))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind in ("reset", "truncate", "stall") and len(up_body) > 0:
            cut = int(len(up_body) * rule.fraction)
            self.wfile.write(up_body[:cut])
            self.wfile.flush()
            if kind == "stall":
                p.stopped.wait(rule.seconds or p.max_seconds)
            if kind == "reset":
                self._reset()
            else:
                self.close_connection = True
            return
        if kind in ("reset", "truncate", "stall"):  # empty body: break the connection anyway
            self._reset()
            return
        self.wfile.write(up_body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, headers: dict[str, str], body: bytes):
        p = self.owner
        conn = http.client.HTTPConnection(p.upstream_host, p.upstream_port, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _error(self, status: int, code: str, message: str,
               extra: dict[str, str] | None = None) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0), not FIN, so the client sees 'connection reset'."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            fd = self.connection.detach()
            socket.close(fd)


def _code(status: int) -> str:
    return {500: "InternalError", 503: "ServiceUnavailable", 403: "AccessDenied",
            404: "NoSuchKey", 400: "BadRequest", 501: "NotImplemented"}.get(status, "Error")


@contextlib.contextmanager
def fault_proxy(upstream: str, **kw) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, **kw)
    with proxy:
        yield proxy


