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
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

CHUNK = 256 * 1024
MAX_INFLIGHT = 8 * 1024 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=MAX_INFLIGHT // CHUNK)
    loop = asyncio.get_running_loop()

    async def read_side() -> None:
        while data := await reader.read(CHUNK):
            await queue.put((loop.time() + delay, data))
        await queue.put((loop.time() + delay, b""))

    async def write_side() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read_side(), write_side())
    except (ConnectionError, OSError):
        pass


async def _handle(client_r, client_w, host: str, port: int, delay: float) -> None:
    try:
        await asyncio.sleep(2 * delay)  # the handshake's round trip
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay))
    finally:
        for w in (client_w, server_w):
            w.close()


async def serve(listen_port: int, host: str, port: int, rtt_ms: float) -> None:
    delay = rtt_ms / 2000.0
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, host, port, delay), "127.0.0.1", listen_port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    host, port = args.target.rsplit(":", 1)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, host, int(port), args.rtt_ms))


@contextlib.contextmanager
def start(target_endpoint: str, rtt_ms: float) -> Iterator[str]:
    """Run the proxy in front of ``http://host:port``; yields the proxied endpoint URL."""
    from tests.s3servers import _wait_port, free_port  # reuse the servers' helpers

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
