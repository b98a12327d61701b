"""A latency-injecting TCP proxy: ``python -m bench.latency_proxy --target HOST:PORT --rtt-ms 20``.

The kernel here has no ``netem`` qdisc, so round-trip latency is added in user space: every chunk
read from one side is written to the other side ``rtt/2`` later (order kept, bandwidth not
limited), and a new connection waits one RTT before its first byte moves, like a TCP handshake.
Each direction buffers at most ``MAX_INFLIGHT`` bytes, so a fast sender is throttled by the
slow side like a real window instead of filling memory.

It runs as its own process (own GIL) so its CPU shows up separately from the tools'; the harness
starts it with ``start()`` and always stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

CHUNK = 1024 * 1024
MAX_INFLIGHT = 16 * 1024 * 1024


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy src -> dst, each chunk sent ``delay`` after it arrived, order kept. A reader and a
    writer thread per direction; the queue bounds the bytes in flight (like a TCP window)."""
    q: queue.Queue[tuple[float, bytes]] = queue.Queue(maxsize=MAX_INFLIGHT // CHUNK)

    def reader() -> None:
        try:
            while data := src.recv(CHUNK):
                q.put((time.monotonic() + delay, data))
        except OSError:
            pass
        q.put((time.monotonic() + delay, b""))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                break
            dst.sendall(data)
    except OSError:
        with contextlib.suppress(OSError):
            src.shutdown(socket.SHUT_RD)  # the other side is gone: stop reading too
    t.join()


def _handle(client: socket.socket, host: str, port: int, delay: float) -> None:
    try:
        time.sleep(2 * delay)  # the handshake's round trip
        upstream = socket.create_connection((host, port))
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True)
    back.start()
    _pump(client, upstream, delay)
    back.join()
    client.close()
    upstream.close()


def serve(listen_port: int, host: str, port: int, rtt_ms: float) -> None:
    """Threads, not asyncio: an asyncio proxy topped out near 250 MB/s here, below what the
    server and the tools move, so it would have measured itself. Socket calls release the GIL."""
    delay = rtt_ms / 2000.0
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(1024)
    while True:
        client, _ = lsock.accept()
        threading.Thread(target=_handle, args=(client, host, port, delay), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    host, port = args.target.rsplit(":", 1)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.listen, host, int(port), args.rtt_ms)


@contextlib.contextmanager
def start(target_endpoint: str, rtt_ms: float) -> Iterator[str]:
    """Run the proxy in front of ``http://host:port``; yields the proxied endpoint URL."""
    from tests.support.s3servers import _wait_port, free_port  # reuse the servers' helpers

    hostport = target_endpoint.split("://", 1)[1].rstrip("/")
    listen = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.latency_proxy", "--listen", str(listen),
         "--target", hostport, "--rtt-ms", str(rtt_ms)],
        start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        _wait_port(listen, proc, 15)
        yield f"http://127.0.0.1:{listen}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def measure_rtt(endpoint: str, n: int = 5) -> float:
    """Median seconds for a fresh TCP connect + one tiny HTTP request through ``endpoint``."""
    hostport = endpoint.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection((host, int(port)), 5) as s:
            s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.recv(1)
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2]


if __name__ == "__main__":
    main()
