"""Misbehaving Modbus devices written for the tests: RTU on a pty, raw-socket Modbus TCP.

Each device holds a value for every address of every unit (``value_of``), distinct per unit
and address, so a value stored under the wrong register is always visible. A device answers
through ``behaviour(request) -> list of (delay, frame)``: the frames it sends for one request
and how long after the request (or, for a queueing device, after it finished the previous
one) each goes out. The default behaviour answers at once and correctly. Devices count
requests per (unit, start) and keep nothing else per request (long runs stay flat).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from nixlog.frames import (
    FrameError,
    encode_answer_pdu,
    parse_rtu_request,
    rtu_answer,
    rtu_exception,
)


def value_of(unit: int, address: int) -> int:
    """The word unit ``unit`` holds at ``address``: different for every (unit, address)."""
    return (unit * 7919 + address * 31 + 17) & 0xFFFF


@dataclass(frozen=True)
class Request:
    """One read request as the device received it."""

    unit: int
    function: int
    start: int
    count: int

    def values(self) -> list[int]:
        """The words this request reads."""
        return [value_of(self.unit, a) for a in range(self.start, self.start + self.count)]


Send = tuple[float, bytes | None]
"""(delay in seconds, frame); a None frame on TCP closes the connection."""
Behaviour = Callable[[Request], list[Send]]


def rtu_correct(request: Request) -> list[Send]:
    """The right answer, at once."""
    return [(0.0, rtu_answer(request.unit, request.function, request.values()))]


class RtuDevice:
    """Units on the server end of a pty pair, answering RTU read requests.

    ``queue=True`` serves requests one after the other (a slave that queues requests: an
    answer's delay counts from when the previous request was done); otherwise each request
    is answered on its own schedule. ``units`` lists who answers at all; ``requests`` counts
    every request received per (unit, start).
    """

    def __init__(
        self,
        path: str,
        units: set[int],
        behaviour: Behaviour = rtu_correct,
        *,
        queue: bool = False,
    ) -> None:
        self.path = path
        self.units = units
        self.behaviour = behaviour
        self.queue = queue
        self.requests: Counter[tuple[int, int]] = Counter()  # (unit, start) -> requests
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[float, bytes]] = []
        self._busy_until = 0.0
        self._wake = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="rtu-device", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="rtu-writer", daemon=True)

    def start(self) -> RtuDevice:
        """Start serving."""
        self._reader.start()
        self._writer.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the pty end."""
        self._stop.set()
        self._wake.set()
        self._reader.join(5)
        self._writer.join(5)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def count(self, unit: int, start: int | None = None) -> int:
        """Requests received for ``unit`` (and ``start``)."""
        return sum(n for (u, s), n in self.requests.items() if u == unit and start in (None, s))

    def _read_loop(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.05)
                if not ready:
                    continue
                buffer += os.read(self._fd, 256)
            except OSError:
                return  # the pty went away (the test removed the port)
            while len(buffer) >= 8:
                try:
                    unit, function, start, count = parse_rtu_request(buffer[:8])
                except FrameError:
                    buffer = buffer[1:]  # resynchronise on the next byte
                    continue
                buffer = buffer[8:]
                self._received(Request(unit, function, start, count))

    def _received(self, request: Request) -> None:
        now = time.monotonic()
        self.requests[request.unit, request.start] += 1
        if request.unit not in self.units:
            return
        sends = self.behaviour(request)
        with self._lock:
            base = max(now, self._busy_until) if self.queue else now
            for delay, frame in sends:
                if frame is not None:
                    self._pending.append((base + delay, frame))
            if self.queue and sends:
                self._busy_until = base + max(delay for delay, _ in sends)
        self._wake.set()

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._pending.sort()
                due = self._pending[0][0] if self._pending else None
            now = time.monotonic()
            if due is None or due > now:
                self._wake.wait(0.05 if due is None else min(0.05, due - now))
                self._wake.clear()
                continue
            with self._lock:
                _, frame = self._pending.pop(0)
            try:
                os.write(self._fd, frame)
            except OSError:
                return


def exception_answer(request: Request, code: int) -> list[Send]:
    """An RTU exception frame for ``request``."""
    return [(0.0, rtu_exception(request.unit, request.function, code))]


# --------------------------------------------------------------------------- Modbus TCP


def tcp_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP frame (MBAP header + PDU)."""
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


TcpBehaviour = Callable[[int, Request], list[Send]]


def tcp_correct(transaction: int, request: Request) -> list[Send]:
    """The right answer with the right transaction id, at once."""
    pdu = encode_answer_pdu(request.function, request.values())
    return [(0.0, tcp_frame(transaction, request.unit, pdu))]


class TcpDevice:
    """A raw-socket Modbus TCP server (a gateway with units behind it) on 127.0.0.1.

    ``behaviour(transaction, request)`` returns the frames to send; a ``None`` frame closes
    the connection (a gateway dropping it). ``connections`` counts accepted connections.
    """

    def __init__(self, behaviour: TcpBehaviour = tcp_correct) -> None:
        self.behaviour = behaviour
        self.requests: Counter[tuple[int, int]] = Counter()  # (unit, start) -> requests
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.address = f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="tcp-device", daemon=True)

    def start(self) -> TcpDevice:
        """Start serving."""
        self._accept.start()
        return self

    def stop(self) -> None:
        """Stop serving; every connection is closed."""
        self._stop.set()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)
        self._server.close()

    def count(self, unit: int, start: int | None = None) -> int:
        """Requests received for ``unit`` (and ``start``)."""
        return sum(n for (u, s), n in self.requests.items() if u == unit and start in (None, s))

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        # Answers sent in two writes (a copy) must not wait for an ACK: no Nagle here either.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(256)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 12:
                    transaction, _, length, unit = struct.unpack(">HHHB", buffer[:7])
                    pdu, buffer = buffer[7 : 6 + length], buffer[6 + length :]
                    function, start, count = struct.unpack(">BHH", pdu[:5])
                    request = Request(unit, function, start, count)
                    self.requests[request.unit, request.start] += 1
                    for delay, frame in self.behaviour(transaction, request):
                        if delay:
                            time.sleep(delay)
                        if frame is None:
                            conn.shutdown(socket.SHUT_RDWR)
                            return
                        try:
                            conn.sendall(frame)
                        except OSError:
                            return
