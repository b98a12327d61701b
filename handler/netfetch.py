"""Fetch a reference clip from a URL without letting a job reach inside the worker's network.

A job's ``ref_audio`` URL is attacker-controlled. ``urllib.request.urlopen`` would fetch
``http://2130706433/`` (loopback), cloud metadata at 169.254.169.254, follow a redirect to
``ftp://``, and hold a job for as long as a server drips bytes. Here, on every hop:

1. the scheme must be http or https, with no credentials in the URL;
2. the host is resolved once (``getaddrinfo``, so every spelling -- ``localhost``,
   ``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]`` -- ends up as the address it really
   means) and EVERY address it resolves to must be public (:func:`blocked_reason`), unless the
   host or the address is on the operator's allow-list;
3. the connection goes to that checked address (the Host header and TLS name stay the URL's
   host), so a DNS answer that changes between check and connect (rebinding) is never used;
4. redirects are followed by hand, at most ``MAX_REDIRECTS``, each one re-checked from step 1.

One deadline bounds the whole fetch: name resolution runs in a helper thread that is given up
on at the deadline, and a watchdog shuts the socket down when it passes, so a server that
drips one byte at a time, even inside the headers, is cut at the deadline, not after
``timeout`` per read.

Every failure is a :class:`FetchError` whose message is for the worker's log only; the caller
gets one generic message (see ``validate``) so the worker cannot be used to scan ports.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_REDIRECTS = 3
READ_SIZE = 64 * 1024
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """Why a URL could not be used. For the worker's log: never shown to the caller."""


@dataclass(frozen=True)
class UrlPolicy:
    max_bytes: int
    deadline: float  # seconds for the whole fetch, all hops and every byte
    allow_hosts: frozenset[str] = frozenset()  # lower-case host names, exempt from the checks
    allow_nets: tuple[IPNetwork, ...] = field(default=())  # addresses exempt from the checks

    def allows(self, host: str, ip: IPAddress) -> bool:
        return host in self.allow_hosts or any(ip in net for net in self.allow_nets)


def parse_allowlist(text: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """``"audio.internal, 10.1.0.0/16, 127.0.0.1"`` -> (host names, networks).

    ValueError names the first entry that is neither an address/CIDR nor a host name."""
    hosts: set[str] = set()
    nets: list[IPNetwork] = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        try:
            nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if not name or not all(part and all(c.isalnum() or c == "-" for c in part)
                               for part in name.split(".")) or not name.isascii():
            raise ValueError(f"{entry!r} is neither a host name nor an address/CIDR")
        hosts.add(name)
    return frozenset(hosts), tuple(nets)


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a job may not reach this address (None: a public unicast address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour  # ::ffff:127.0.0.1, 2002:7f00:1::
        if embedded is not None:
            inner = blocked_reason(embedded)
            if inner:
                return f"{inner}: {embedded} embedded"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:  # 100.64.0.0/10 (carrier-grade NAT) and friends
        return "not globally routable"
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as the C library sees it."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass
class _Target:
    scheme: str
    host: str  # as in the URL, lower case, no brackets
    port: int
    path: str  # path and query, what goes on the request line


def _parse(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise FetchError(f"malformed URL: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"scheme {scheme!r} is not http or https")
    if parts.username is not None or parts.password is not None:
        raise FetchError("credentials in the URL are not accepted")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError("no host in the URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c in path for c in "\r\n\x00 ") or not path.isascii():
        raise FetchError("the URL's path has characters that must be percent-encoded")
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _resolve_within(resolve: Callable[[str, int], Iterable[str]], host: str, port: int,
                    seconds: float) -> list[str]:
    """``resolve(host, port)``, given up on after ``seconds`` (getaddrinfo has no timeout of
    its own; the abandoned thread ends when the resolver does)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["addresses"] = list(resolve(host, port))
        except BaseException as err:  # noqa: BLE001 (handed to the caller below)
            box["error"] = err

    thread = threading.Thread(target=run, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    if thread.is_alive():
        raise FetchError(f"resolving {host!r} took longer than the deadline")
    if "error" in box:
        raise box["error"]
    return box["addresses"]  # type: ignore[no-any-return]


def _checked_address(target: _Target, policy: UrlPolicy,
                     resolve: Callable[[str, int], Iterable[str]], deadline: float) -> str:
    """The address to connect to: every address the host resolves to must pass."""
    try:
        found = _resolve_within(resolve, target.host, target.port, deadline - time.monotonic())
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    except (OSError, UnicodeError, ValueError) as err:
        raise FetchError(f"cannot resolve {target.host!r}: {err}") from None
    if not addresses:
        raise FetchError(f"{target.host!r} resolves to no address")
    for ip in addresses:
        if policy.allows(target.host, ip):
            continue
        reason = blocked_reason(ip)
        if reason:
            raise FetchError(f"{target.host!r} resolves to {ip} ({reason}), which is not on "
                             "HANDLER_URL_ALLOWLIST")
    return str(addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a fixed, already checked address (no second DNS lookup)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def connect(self) -> None:
        super().connect()
        context = ssl.create_default_context()  # certificate checked against the URL's host
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)


class _Watchdog:
    """Shuts the current connection down when the deadline passes, whatever it is doing."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conn = conn
            if self.expired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def fetch(url: str, policy: UrlPolicy,
          resolve: Callable[[str, int], Iterable[str]] = system_resolve) -> bytes:
    """The body of ``url`` (at most ``policy.max_bytes``), or FetchError saying why not."""
    deadline = time.monotonic() + policy.deadline
    watchdog = _Watchdog(policy.deadline)
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            target = _parse(url)
            address = _checked_address(target, policy, resolve, deadline)
            status, location, body = _get(target, address, policy, deadline, watchdog)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise FetchError(f"HTTP {status} without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            if status != 200:
                raise FetchError(f"HTTP {status} from {target.host}")
            return body
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")
    finally:
        watchdog.cancel()


def _get(target: _Target, address: str, policy: UrlPolicy, deadline: float,
         watchdog: _Watchdog) -> tuple[int, str | None, bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(f"deadline of {policy.deadline:g} s passed")
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target.host, target.port, address, timeout=remaining)
    watchdog.watch(conn)
    try:
        conn.putrequest("GET", target.path, skip_accept_encoding=True)
        conn.putheader("User-Agent", "cache-sync-handler")
        conn.putheader("Accept", "audio/wav, audio/x-wav, */*;q=0.1")
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, resp.getheader("Location"), b""
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
            raise FetchError(f"Content-Length {declared} is over {policy.max_bytes} bytes")
        chunks, size = [], 0
        while True:
            if time.monotonic() >= deadline:
                raise FetchError(f"deadline of {policy.deadline:g} s passed after {size} bytes")
            piece = resp.read1(READ_SIZE)  # one recv at most: the deadline is checked often
            if not piece:
                break
            size += len(piece)
            if size > policy.max_bytes:
                raise FetchError(f"body is over {policy.max_bytes} bytes")
            chunks.append(piece)
        if watchdog.expired:  # the socket was shut under a read: the body is truncated
            raise FetchError(f"deadline of {policy.deadline:g} s passed after {size} bytes")
        return 200, None, b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError) as err:
        if watchdog.expired:
            raise FetchError(f"deadline of {policy.deadline:g} s passed") from None
        raise FetchError(f"{type(err).__name__}: {err}") from None
    finally:
        conn.close()
