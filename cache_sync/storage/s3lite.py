"""A boto3-free S3 store for the read path: ``http.client`` with SigV4 (``sigv4.py``) and a
pool of keep-alive connections. Importing boto3 and building a client costs ~0.5 s of CPU,
more than an up-to-date pull needs in all, and botocore/urllib3 copy every byte of a download
several times; this client sends the same GET, HEAD and ListObjectsV2 requests boto3 sends
(path-style with a custom endpoint, virtual-hosted on AWS) and reads bodies straight from the
socket.

Writes (PUT, DeleteObjects) go to the boto3 store (``s3.py``), imported only when the first
write happens: its dialect hooks stay the one place that shapes write requests. Reads carry
no checksum header of any kind, so every dialect (``dialect.py``) accepts them as they are.

Which configurations use this client is decided once by ``s3common.choose_client``; a reply
only boto3 follows faithfully (a region redirect) switches this store to boto3 for good.
Errors translate through ``s3common.error_from_reply``, exactly as boto3's do in ``s3.py``.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import unquote_plus, urlsplit

from cache_sync.errors import ObjectNotFound, StorageError, TransientStorageError
from cache_sync.storage.base import ObjectInfo, Readable, Store
from cache_sync.storage.options import S3Options
from cache_sync.storage.s3common import error_from_reply, parse_remote
from cache_sync.storage.sigv4 import Signer, canonical_query, uri_encode
from cache_sync.versions import VersionInfo

log = logging.getLogger("cache_sync.s3lite")
T = TypeVar("T")

# Replies boto3 answers by re-sending elsewhere (its S3RegionRedirector): the bucket lives in
# another region than the one signed for.
REDIRECT_CODES = {"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed",
                  "IllegalLocationConstraintException"}
ERROR_BODY_MAX = 64 << 10
_DEFAULT_PORTS = {"http": 80, "https": 443}


class NeedsBoto3(Exception):
    """The store answered something only boto3 handles faithfully (a region redirect)."""


def _network_error(exc: BaseException, what: str) -> StorageError:
    """A failure below HTTP: transient (reset, refused, timeout, a broken reply), except a TLS
    failure, which boto3 reports as a permanent SSLError too."""
    if type(exc).__module__ == "ssl" and not isinstance(exc, TimeoutError):
        return StorageError(f"SSLError on {what}")  # as botocore's SSLError reads in s3.py
    return TransientStorageError(f"network error on {what}: {type(exc).__name__}")


class _HTTP(http.client.HTTPConnection):
    read_timeout = 60.0

    def connect(self) -> None:
        # The host as bytes when it is ASCII: a str host makes the socket module load the
        # idna codec (~7 ms of an up-to-date pull's start) to encode "127.0.0.1".
        host: str | bytes = self.host
        if self.host.isascii():
            host = self.host.encode("ascii")
        self.sock = socket.create_connection((host, self.port),  # type: ignore[arg-type]
                                             self.timeout, getattr(self, "source_address", None))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.read_timeout)  # after the connect timeout, per read


class _HTTPS(http.client.HTTPSConnection):
    read_timeout = 60.0

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self.read_timeout)


def _tls_context(ca_file: str | None) -> Any:
    """TLS verified like boto3: the configured bundle, else certifi's (botocore's default)."""
    import ssl

    if ca_file is None:
        try:
            import certifi

            ca_file = certifi.where()
        except ImportError:
            pass
    return ssl.create_default_context(cafile=ca_file)


class Pool:
    """Idle keep-alive connections to one host, shared by every thread: a request takes one
    (or opens one), its response gives it back once read to the end. A connection the server
    closed while idle (readable with nothing asked) is dropped before it is used, so a
    request is never sent into a dead socket."""

    def __init__(self, scheme: str, host: str, port: int, connect_timeout: float,
                 read_timeout: float, ca_file: str | None, size: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ca_file = ca_file
        self.size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls: Any = None

    def take(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()
        conn = self._new()
        return conn

    def _new(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = _tls_context(self.ca_file)
            conn = _HTTPS(self.host, self.port, timeout=self.connect_timeout,
                          context=self._tls)
        else:
            conn = _HTTP(self.host, self.port, timeout=self.connect_timeout)
        conn.read_timeout = self.read_timeout
        return conn

    def give(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is not None:
            with self._lock:
                if len(self._idle) < self.size:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _local(tag: Any) -> str:
    return str(tag).rpartition("}")[2]


def parse_error(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; empty strings when there is none."""
    if not body:
        return "", ""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    fields = {_local(child.tag): (child.text or "") for child in root}
    return fields.get("Code", ""), fields.get("Message", "")


def parse_listing(body: bytes, strip: int) -> tuple[list[ObjectInfo], str | None]:
    """The objects of one ListObjectsV2 page (keys without the first ``strip`` characters)
    and the continuation token, None on the last page. Keys are URL-decoded when the reply
    says ``EncodingType=url`` (S3 encodes them as a form would: '+' is a space), as botocore
    decodes them."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(body)
    raw: list[tuple[str, int, float]] = []
    top: dict[str, str] = {}
    for child in root:
        name = _local(child.tag)
        if name == "Contents":
            item = {_local(c.tag): (c.text or "") for c in child}
            raw.append((item.get("Key", ""), int(item.get("Size", "0")),
                        _iso_time(item.get("LastModified", ""))))
        else:
            top[name] = child.text or ""
    decode = top.get("EncodingType", "").lower() == "url"
    infos = [ObjectInfo((unquote_plus(k) if decode else k)[strip:], size, mtime)
             for k, size, mtime in raw]
    truncated = top.get("IsTruncated", "false").lower() == "true"
    return infos, (top.get("NextContinuationToken") or None) if truncated else None


def _iso_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


class Client:
    """Signed requests to one bucket: path-style under a custom endpoint, virtual-hosted
    (``<bucket>.s3.<region>.amazonaws.com``) on AWS, as ``s3.py`` configures boto3."""

    def __init__(self, settings: S3Options) -> None:
        self.bucket, _ = parse_remote(settings.remote)
        if not (settings.access_key_id and settings.secret_access_key):
            raise StorageError("the boto3-free S3 client needs a key id and secret")
        region = settings.region or "us-east-1"
        if settings.endpoint_url:
            parts = urlsplit(settings.endpoint_url)
            scheme, host = parts.scheme, parts.hostname or ""
            port = parts.port or _DEFAULT_PORTS[scheme]
            self.base = "/" + uri_encode(self.bucket)
        else:
            scheme, host, port = "https", f"{self.bucket}.s3.{region}.amazonaws.com", 443
            self.base = ""
        host_part = f"[{host}]" if ":" in host else host
        self.host = host_part if port == _DEFAULT_PORTS[scheme] else f"{host_part}:{port}"
        self.signer = Signer(settings.access_key_id, settings.secret_access_key, region,
                             settings.session_token)
        self.pool = Pool(scheme, host, port, settings.connect_timeout, settings.read_timeout,
                         settings.ca_bundle, max(10, settings.transfers * 2))

    def __repr__(self) -> str:
        return f"Client(host={self.host!r}, bucket={self.bucket!r})"

    def send(self, method: str, key: str | None, what: str, *,
             query: dict[str, str] | None = None, headers: dict[str, str] | None = None
             ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        """One request (never re-sent here: retries are the store's policy). A reply of 300
        or more raises its translated error; NeedsBoto3 for a region redirect."""
        path = (self.base + "/" + uri_encode(key, slash=True) if key is not None
                else self.base or "/")
        qs = canonical_query(query) if query else ""
        signed = self.signer.sign(method, self.host, path, qs, headers or {})
        conn = self.pool.take()
        try:
            conn.request(method, path + ("?" + qs if qs else ""), headers=signed)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _network_error(exc, what) from None
        if resp.status >= 300:
            self._refused(resp, conn, what)
        return resp, conn

    def _refused(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 what: str) -> None:
        try:
            body = resp.read(ERROR_BODY_MAX) if resp.status != 304 else b""
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _network_error(exc, what) from None
        self.finish(resp, conn)
        code, message = parse_error(body)
        if resp.status in (301, 307) or code in REDIRECT_CODES:
            raise NeedsBoto3(f"{code or resp.status} on {what}")
        headers = {k.lower(): v for k, v in resp.getheaders()}
        raise error_from_reply(code, str(resp.status), message, headers, what)

    def finish(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> None:
        """A response read to the end: its connection goes back to the pool."""
        resp.close()
        if resp.will_close:
            conn.close()
        else:
            self.pool.give(conn)

    def read_all(self, method: str, key: str | None, what: str, **kw: Any) -> bytes:
        resp, conn = self.send(method, key, what, **kw)
        body = Body(self, resp, conn, what)
        try:
            return body.read()
        finally:
            body.close()


_pipes = threading.local()
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not named by Python before 3.10
_splice_files = hasattr(os, "splice")  # False once a file system refused splice(2)


def _pipe() -> tuple[int, int]:
    """This thread's pipe for splice(2), 1 MiB when the system allows (fewer calls)."""
    pipe: tuple[int, int] | None = getattr(_pipes, "pipe", None)
    if pipe is None:
        import fcntl

        pipe = os.pipe()
        for size in (1 << 20, 256 << 10):
            try:
                fcntl.fcntl(pipe[1], F_SETPIPE_SZ, size)
                break
            except OSError:
                continue
        _pipes.pipe = pipe
    return pipe


def _drop_pipe() -> None:
    """A pipe that may still hold bytes of a failed transfer is never used again."""
    pipe = getattr(_pipes, "pipe", None)
    if pipe is not None:
        _pipes.pipe = None
        for fd in pipe:
            os.close(fd)


class Body:
    """A response body read straight from the socket. ``readinto`` fills the caller's buffer
    (no allocation per read); a body that ends before its Content-Length, a reset or a read
    timeout raises TransientStorageError. Closed before its end, the connection is dropped
    (its unread bytes would poison the next request); read to the end, it is reused."""

    def __init__(self, client: Client, resp: http.client.HTTPResponse,
                 conn: http.client.HTTPConnection, what: str) -> None:
        self._client = client
        self._resp: http.client.HTTPResponse | None = resp
        self._conn = conn
        self._what = what
        self._left = resp.length  # None: no Content-Length (read to EOF, never reused)
        self._got = 0

    def _broken(self, why: str) -> TransientStorageError:
        self._drop()
        return TransientStorageError(f"connection broken while reading {self._what}: {why}")

    def _count(self, n: int, asked: int) -> None:
        if n == 0 and asked:
            if self._left is None:
                self._done()
                return
            raise self._broken(f"ended after {self._got} bytes, {self._left} short")
        self._got += n
        if self._left is not None:
            self._left -= n
            if self._left == 0:
                self._done()

    def readinto(self, buf: Any) -> int:
        resp = self._resp
        if resp is None or self._left == 0:
            return 0
        view = memoryview(buf).cast("B")
        if self._left is not None and len(view) > self._left:
            view = view[:self._left]
        try:
            n = resp.readinto(view)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._broken(type(exc).__name__) from None
        self._count(n, len(view))
        return n

    def splice_into(self, fd: int, offset: int, n: int) -> bool:
        """Move the next ``n`` bytes of the body into file ``fd`` at ``offset`` without
        copying them through Python: splice(2) from the socket into a pipe (no copy) and
        from the pipe into the file (the page cache's one copy), where ``recv_into`` and
        ``pwrite`` copy every byte twice. False (nothing read) where it cannot be used: TLS,
        no Content-Length, no splice(2), a file system that refuses it; the caller then
        reads with ``readinto``. A broken stream raises TransientStorageError as ``read``
        does; an error writing the file raises OSError."""
        global _splice_files
        resp, conn = self._resp, self._conn
        if (not _splice_files or resp is None or self._left is None or self._left < n
                or type(conn) is not _HTTP or conn.sock is None or resp.chunked):
            return False
        sock = conn.sock
        pos, left = offset, n
        try:
            # What http.client's reader already holds comes first (at most its 8 KiB).
            try:
                buffered = resp.fp.peek(1)[:left] if left else b""
                data = resp.fp.read(len(buffered)) if buffered else b""
            except (OSError, ValueError) as exc:
                raise self._broken(type(exc).__name__) from None
            if data:
                os.pwrite(fd, data, pos)
                pos += len(data)
                left -= len(data)
                self._count(len(data), len(data))
            r, w = _pipe()
            while left:
                try:
                    got = os.splice(sock.fileno(), w, min(left, 1 << 20),
                                    flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    try:
                        ready = select.select([sock], [], [], sock.gettimeout())[0]
                    except (OSError, ValueError) as exc:
                        raise self._broken(type(exc).__name__) from None
                    if not ready:
                        raise self._broken("TimeoutError") from None
                    continue
                except OSError as exc:
                    raise self._broken(type(exc).__name__) from None
                if not got:
                    self._count(0, left)  # raises: the body ended early
                self._to_file(r, fd, pos, got)
                pos += got
                left -= got
                self._count(got, got)
        except BaseException:
            _drop_pipe()  # it may hold bytes of this body
            self._drop()
            raise
        return True

    @staticmethod
    def _to_file(r: int, fd: int, pos: int, n: int) -> None:
        """Move ``n`` bytes from the pipe ``r`` into ``fd`` at ``pos``; an OSError here is
        the file's (disk full), for the caller to report."""
        global _splice_files
        moved = 0
        while moved < n:
            if _splice_files:
                try:
                    moved += os.splice(r, fd, n - moved, offset_dst=pos + moved,
                                       flags=os.SPLICE_F_MOVE)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    _splice_files = False  # this file system: copy through Python
            data = os.read(r, n - moved)
            view = memoryview(data)
            while view:
                k = os.pwrite(fd, view, pos + moved)
                view = view[k:]
                moved += k

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while piece := self.read(1 << 20):
                parts.append(piece)
            return b"".join(parts)
        resp = self._resp
        if resp is None or self._left == 0 or n == 0:
            return b""
        want = n if self._left is None else min(n, self._left)
        try:
            data = resp.read(want)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._broken(type(exc).__name__) from None
        self._count(len(data), want)
        return data

    def _done(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            if self._left is None:
                resp.close()
                self._conn.close()
            else:
                self._client.finish(resp, self._conn)

    def _drop(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
        self._conn.close()

    def close(self) -> None:
        if self._left == 0:
            self._done()
        else:
            self._drop()


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""

    def readinto(self, buf: Any) -> int:
        return 0

    def close(self) -> None:
        pass


class S3LiteStore(Store):
    """The S3 store with the boto3-free client for reads and the boto3 store for writes."""

    def __init__(self, settings: S3Options) -> None:
        self.settings = settings
        self.bucket, self.prefix = parse_remote(settings.remote)
        self.url = settings.remote
        self.page_size = 1000  # keys per LIST request (S3's maximum)
        self.client = Client(settings)
        self._boto: Store | None = None
        self._boto_reads = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3LiteStore({self.url!r})"

    @property
    def boto3(self) -> Store:
        """The boto3 store (``s3.py``), built at its first use: a write, or a read after a
        region redirect."""
        with self._lock:
            if self._boto is None:
                from cache_sync.storage.s3 import S3Store

                self._boto = S3Store(self.settings)
            self._boto.page_size = self.page_size  # type: ignore[attr-defined]
            return self._boto

    @property
    def reads_with_boto3(self) -> bool:
        return self._boto_reads

    def _read(self, lite: Callable[[], T], boto: Callable[[Store], T]) -> T:
        if not self._boto_reads:
            try:
                return lite()
            except NeedsBoto3 as exc:
                log.info("the store answered %s: boto3 serves this store's reads from now "
                         "on (it follows region redirects)", exc)
                self._boto_reads = True
        return boto(self.boto3)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _what(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def get(self, key: str) -> bytes:
        return self._read(lambda: self.client.read_all("GET", self._k(key), self._what(key)),
                          lambda b: b.get(key))

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        if length == 0:
            return _Empty()
        return self._read(lambda: self._open(key, start, length),
                          lambda b: b.open_range(key, start, length))

    def _open(self, key: str, start: int, length: int | None) -> Readable:
        headers = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            headers["Range"] = f"bytes={start}-{end}"
        resp, conn = self.client.send("GET", self._k(key), self._what(key), headers=headers)
        return Body(self.client, resp, conn, self._what(key))

    def head(self, key: str) -> ObjectInfo | None:
        return self._read(lambda: self._head(key), lambda b: b.head(key))

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            resp, conn = self.client.send("HEAD", self._k(key), self._what(key))
        except ObjectNotFound:
            return None
        self.client.finish(resp, conn)
        from email.utils import parsedate_to_datetime

        size = int(resp.getheader("Content-Length") or 0)
        modified = resp.getheader("Last-Modified")
        mtime = parsedate_to_datetime(modified).timestamp() if modified else 0.0
        return ObjectInfo(key, size, mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        first = True
        while True:
            query = {"list-type": "2", "prefix": self._k(prefix),
                     "max-keys": str(self.page_size), "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            what = f"listing {self._what(prefix)}"
            if self._boto_reads and first:
                yield from self.boto3.list(prefix)
                return
            try:
                body = self.client.read_all("GET", None, what, query=query)
            except NeedsBoto3 as exc:
                if not first:  # keys were given out already: no second listing mixed in
                    raise StorageError(f"{exc} in the middle of a listing") from None
                log.info("the store answered %s: boto3 serves this store's reads from now "
                         "on", exc)
                self._boto_reads = True
                yield from self.boto3.list(prefix)
                return
            first = False
            try:
                infos, token = parse_listing(body, len(self.prefix))
            except Exception as exc:  # ParseError, a bad number or date: as botocore's
                raise StorageError(  # ResponseParserError, not retried
                    f"unreadable listing reply on {what}: {type(exc).__name__}") from None
            yield from infos
            if token is None:
                return

    def put(self, key: str, data: bytes) -> None:
        self.boto3.put(key, data)

    def delete(self, keys: Sequence[str]) -> None:
        self.boto3.delete(keys)

    def list_versions(self, prefix: str) -> Iterator[VersionInfo]:  # gc only: boto3's
        return self.boto3.list_versions(prefix)

    def delete_versions(self, versions: Sequence[VersionInfo]) -> None:
        self.boto3.delete_versions(versions)

    def close(self) -> None:
        self.client.pool.close()
        if self._boto is not None:
            self._boto.close()
