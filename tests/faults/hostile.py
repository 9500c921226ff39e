"""Hostile HTTP servers on 127.0.0.1, written at the socket level to misbehave on purpose.

Each reads a request (headers and a ``Content-Length`` body) and answers in one bad way: a
huge body, a gzip bomb, a body trickled a byte at a time, no answer at all, or a
``Retry-After`` header of any shape. Real sockets, no HTTP library on the server side, so
nothing is cleaned up for the client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable
from functools import cache
from types import TracebackType

Answer = Callable[[socket.socket, "HostileServer"], None]


@cache
def gzip_bomb() -> bytes:
    """About 1 MiB of gzip that inflates to 1 GiB of zeros (made once per test session)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(1024)]
    parts.append(packer.flush())
    return b"".join(parts)


class HostileServer:
    """Accepts connections and answers each request with ``answer(sock, server)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        """The endpoint URL (any path is answered the same)."""
        return f"http://127.0.0.1:{self.port}/v1/data"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        self._listener.close()
        self._thread.join(2)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError), conn:
            while not self.stopping.is_set():
                if not read_request(conn):
                    return
                with self.lock:
                    self.requests += 1
                self.answer(conn, self)


def read_request(conn: socket.socket) -> bool:
    """Read one request (headers, then ``Content-Length`` bytes); False at end of stream."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        rest += chunk
    return True


def huge_body(size: int = 50 * 1000 * 1000, status: int = 200) -> Answer:
    """``status`` with a ``size``-byte body, sent as fast as the client reads."""

    def answer(conn: socket.socket, server: HostileServer) -> None:
        conn.sendall(
            f"HTTP/1.1 {status} Whatever\r\nContent-Length: {size}\r\n"
            "Content-Type: text/plain\r\n\r\n".encode()
        )
        block = b"x" * 65536
        sent = 0
        while sent < size and not server.stopping.is_set():
            conn.sendall(block[: size - sent])
            sent += len(block)

    return answer


def bomb(status: int = 500) -> Answer:
    """``status`` with a gzip body of ~1 MiB that inflates to 1 GiB."""

    def answer(conn: socket.socket, server: HostileServer) -> None:
        body = gzip_bomb()
        conn.sendall(
            f"HTTP/1.1 {status} Bomb\r\nContent-Length: {len(body)}\r\n"
            "Content-Encoding: gzip\r\nContent-Type: text/plain\r\n\r\n".encode()
        )
        conn.sendall(body)

    return answer


def trickle(interval_sec: float = 2.0, size: int = 1000, status: int = 200) -> Answer:
    """``status`` at once, then one body byte every ``interval_sec`` (each read "on time")."""

    def answer(conn: socket.socket, server: HostileServer) -> None:
        conn.sendall(f"HTTP/1.1 {status} Slow\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size):
            if server.stopping.wait(interval_sec):
                return
            conn.sendall(b"x")

    return answer


def trickle_head(interval_sec: float = 2.0) -> Answer:
    """The status line and headers themselves, one byte every ``interval_sec``."""

    def answer(conn: socket.socket, server: HostileServer) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"x" * 1000 + b"\r\n\r\n"
        for byte in head:
            if server.stopping.wait(interval_sec):
                return
            conn.sendall(bytes([byte]))

    return answer


def hang() -> Answer:
    """Read the request, never answer (until the server stops)."""

    def answer(conn: socket.socket, server: HostileServer) -> None:
        server.stopping.wait(60)

    return answer


def retry_after(value: bytes, status: int = 503) -> Answer:
    """``status`` with ``Retry-After: value`` (any bytes, sent as they are)."""

    def answer(conn: socket.socket, server: HostileServer) -> None:
        conn.sendall(
            f"HTTP/1.1 {status} Busy\r\nContent-Length: 0\r\n".encode()
            + b"Retry-After: "
            + value
            + b"\r\n\r\n"
        )

    return answer


def wait_for_requests(server: HostileServer, count: int, timeout: float) -> None:
    """Wait until ``server`` has read ``count`` requests."""
    deadline = time.monotonic() + timeout
    while server.requests < count:
        assert time.monotonic() < deadline, f"only {server.requests} requests arrived"
        time.sleep(0.02)
