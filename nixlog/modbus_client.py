"""The only module that talks to a Modbus device: connect, one transaction, map every failure.

``ModbusLink`` owns the whole read transaction on both transports, on top of pyserial (RTU)
and a plain socket (Modbus TCP): it writes the request frame built by ``nixlog.frames``, reads
exactly as many bytes as the answer must have within one deadline, checks them, and does its
own retries. Owning it is what makes the answer-to-request pairing provable on RTU, where
frames carry no transaction id (see ``ModbusLink._rtu_transaction``). Every failure becomes a
``ModbusReadError`` subclass whose ``reason`` is the short text stored in a reading's
``errors`` ("timeout", "crc error", "answer from unit 255 (asked 1)", ...). pymodbus is not
used here at all (the simulator still serves with it); pyserial is imported on first use.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Protocol

from nixlog.config import ModbusConfig
from nixlog.errors import DeviceError
from nixlog.frames import (
    MBAP_HEADER,
    MBAP_LENGTH,
    RTU_HEADER_LENGTH,
    WRITE_MULTIPLE_REGISTERS,
    WRITE_SINGLE_COIL,
    WRITE_SINGLE_REGISTER,
    DeviceIdentity,
    FrameError,
    answer_pdu_length,
    check_answer,
    crc_ok,
    device_id_pdu,
    longest_answer_pdu,
    parse_device_id,
    read_answer_values,
    read_pdu,
    rtu_frame,
    rtu_frame_length,
    tcp_frame,
    write_pdu,
)
from nixlog.registers import FUNCTION_CODES, ReadRequest

log = logging.getLogger(__name__)

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# A gateway answering 10/11 means the unit behind it is silent: back it off like a timeout.
SILENT_EXCEPTION_CODES: Final = frozenset({10, 11})
RTU_SETTLE_MAX_SEC: Final = 1.0
"""The default quiet time after a failure: one more timeout, at most this."""
RTU_SETTLE_CAP_SEC: Final = 5.0
"""The longest a settle may last, however late or chatty the line has been."""
RTU_QUIET_CHARS: Final = 4
"""Character times of silence that end any frame (RTU needs 3.5)."""
RECENT_ANSWERS: Final = 8
TCP_RECV_BYTES: Final = 4096
"""One receive takes up to this much: a whole answer (at most 260 bytes) and anything behind it."""
SUMMARY_INTERVAL_SEC: Final = 300.0

# Failure categories of a request, used by the poller to decide what to back off.
FAILURE_TIMEOUT: Final = "timeout"
FAILURE_EXCEPTION: Final = "exception"
FAILURE_DISCONNECTED: Final = "disconnected"
FAILURE_INVALID: Final = "invalid"

# Diagnoses (the ``reason`` of an error, and the kinds of fault logged once).
LATE_ANSWER: Final = "late answer discarded"
ANSWERED_TWICE: Final = "answered twice"
CRC_ERROR: Final = "crc error"


class ModbusReadError(DeviceError):
    """A read that failed; ``reason`` is the short text stored in a reading's ``errors``."""

    failure: str = FAILURE_INVALID

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ReadTimeout(ModbusReadError):
    """The unit did not answer within timeout × (retries + 1) (or only after its deadline)."""

    failure = FAILURE_TIMEOUT


class DeviceException(ModbusReadError):
    """The unit answered with a Modbus exception code (e.g. 2, illegal data address)."""

    failure = FAILURE_EXCEPTION

    def __init__(self, code: int) -> None:
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        reason = f"exception {code} ({name})"
        super().__init__(reason, reason)
        self.code = code
        if code in SILENT_EXCEPTION_CODES:
            self.failure = FAILURE_TIMEOUT


class LinkDown(ModbusReadError):
    """The port cannot be opened or the connection was lost (USB unplugged, TCP reset)."""

    failure = FAILURE_DISCONNECTED

    def __init__(self, message: str) -> None:
        super().__init__(message, "disconnected")


class BadResponse(ModbusReadError):
    """An answer that does not fit the request (CRC, unit, function, length): never trusted.

    ``reason`` names what was wrong: "crc error", "answer from unit 255 (asked 1)", ...
    ``complete`` marks a whole, intact frame that is simply not the answer asked for (wrong
    unit, function or length): the device did answer, so it is neither retried nor waited
    out like a transmission error.
    """

    failure = FAILURE_INVALID

    def __init__(self, reason: str, *, complete: bool = False) -> None:
        super().__init__(f"invalid response ({reason})", reason)
        self.complete = complete


class FaultLog:
    """Log a repeating condition once, then one summary per interval while it goes on.

    ``note(key, message)`` logs the first occurrence of ``key`` at WARNING and counts the
    rest; once ``interval`` seconds have passed since the last line for that key, the next
    occurrence logs "... (N times in the last 5 min)". ``clear(key)`` forgets it (the next
    occurrence is news again). ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = SUMMARY_INTERVAL_SEC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._seen: dict[object, tuple[float, int]] = {}

    def note(self, key: object, message: str) -> bool:
        """Record one occurrence; True when a line was logged for it."""
        now = self.clock()
        last = self._seen.get(key)
        if last is None:
            self._seen[key] = (now, 0)
            self.logger.warning("%s", message)
            return True
        logged_at, count = last
        count += 1
        if now - logged_at < self.interval:
            self._seen[key] = (logged_at, count)
            return False
        minutes = (now - logged_at) / 60
        self.logger.warning("%s (%d times in the last %.0f min)", message, count, minutes)
        self._seen[key] = (now, 0)
        return True

    def active(self, key: object) -> bool:
        """True while ``key`` has been noted and not cleared."""
        return key in self._seen

    def clear(self, key: object) -> bool:
        """Forget ``key``; True when it had been noted."""
        return self._seen.pop(key, None) is not None


def describe_port(modbus: ModbusConfig) -> str:
    """``tcp://host:port`` or ``/dev/ttyUSB0 (9600 8N1)`` for messages."""
    if modbus.is_rtu_over_tcp:
        host, port = modbus.tcp_address
        return f"rtu+tcp://{host}:{port}"
    if modbus.is_tcp:
        host, port = modbus.tcp_address
        return f"tcp://{host}:{port}"
    return f"{modbus.port} ({modbus.baudrate} {modbus.bytesize}{modbus.parity}{modbus.stopbits})"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias of it
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if not isinstance(text, str):
        text = str(exc)
    return text[:1].lower() + text[1:]


def _serial_errors() -> tuple[type[BaseException], ...]:
    """Everything pyserial raises when the port goes away (termios.error is no OSError)."""
    errors: list[type[BaseException]] = [OSError]
    with suppress(ImportError):
        import termios

        errors.append(termios.error)
    return tuple(errors)


_SERIAL_ERRORS: Final = _serial_errors()


@dataclass(frozen=True)
class _Unseen:
    """A request that timed out and whose late answer was not seen (yet)."""

    shape: tuple[int, int, int]  # unit, function, count
    start: int
    sent: float


class ModbusLink:
    """One Modbus connection (RTU or TCP) with our timeouts, retries, checks and error mapping.

    ``read(unit_id, kind, start, count)`` returns the words (or bits) or raises a
    ``ModbusReadError``. A lost link is closed; the next ``read`` or ``connect`` opens it
    again. Not thread-safe: one link belongs to one thread.
    """

    def __init__(self, modbus: ModbusConfig) -> None:
        self.modbus = modbus
        self.description = describe_port(modbus)
        self.timeout = modbus.timeout_sec
        self.retries = modbus.retries
        self.faults = FaultLog(log)
        self._tcp = modbus.is_tcp  # asked several times per transaction: worked out once
        self._gap = modbus.request_gap_ms / 1000.0
        self._last_io = 0.0
        self._serial: Any = None
        self._sock: socket.socket | None = None
        self._transaction = 0
        self._tcp_last = b""  # the last answer frame taken on TCP (to recognise a copy)
        self._rx = bytearray()  # TCP bytes received and not yet taken (one connection's)
        self._poll = select.poll()  # readiness of the TCP socket (registered on connect)
        # RTU line state: one character is start + data + parity + stop bits.
        bits = 1 + modbus.bytesize + (0 if modbus.parity == "N" else 1) + modbus.stopbits
        self._char_sec = bits / modbus.baudrate
        self._late_sec = 0.0  # the latest answer seen on this line, from its request
        self._asked: set[int] = set()  # units addressed on this line (their strays are known)
        # unit -> its answers since its last failure, and when each came (a copy of one of
        # them arriving later is a second answer; anything else is a late one)
        self._answers: dict[int, deque[tuple[bytes, float]]] = {}
        self._twice: dict[int, float] = {}  # unit seen answering twice -> delay of the copy
        # The last request that timed out without its late answer being seen (it may still
        # come, and look like the answer to a later request of the same shape).
        self._unseen: _Unseen | None = None

    @property
    def is_tcp(self) -> bool:
        """True for Modbus TCP, False for RTU on a serial line."""
        return self._tcp

    @property
    def connected(self) -> bool:
        """True while the socket or serial port is open."""
        return (self._sock if self._tcp else self._serial) is not None

    @property
    def tcp_socket(self) -> socket.socket | None:
        """The TCP socket while connected (None on RTU)."""
        return self._sock

    def connect(self) -> None:
        """Open the port now; raise ``LinkDown`` with the reason (refused, no such device...)."""
        if self.connected:
            return
        if self.is_tcp:
            self._connect_tcp()
        else:
            self._connect_serial()
        self._last_io = time.monotonic()

    def _connect_tcp(self) -> None:
        host, port = self.modbus.tcp_address
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as exc:
            raise LinkDown(f"cannot connect to {self.description}: {_os_reason(exc)}") from exc
        # Requests are tiny and strictly request/response: Nagle would only add latency.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Non-blocking, waited on with our own poll: a socket timeout would cost a mode switch
        # per call and a poll before every send as well as every receive.
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._rx.clear()
        self._sock = sock

    def _connect_serial(self) -> None:
        import serial  # type: ignore[import-untyped]

        path = self.modbus.port
        url = path
        if self.modbus.is_rtu_over_tcp:
            # RTU frames through a TCP serial server: pyserial's socket:// port is a serial
            # port over TCP, so the RTU transaction (and its pairing rules) stays the same.
            host, tcp_port = self.modbus.tcp_address
            url = f"socket://{host}:{tcp_port}"
        elif not os.path.exists(path):
            raise LinkDown(f"cannot open serial port {path}: no such device")
        try:
            port = serial.serial_for_url(
                url,
                timeout=self.timeout,
                write_timeout=self.timeout,
                bytesize=self.modbus.bytesize,
                stopbits=self.modbus.stopbits,
                baudrate=self.modbus.baudrate,
                parity=self.modbus.parity,
                exclusive=True,
            )
        except (OSError, ValueError) as exc:
            reason = _os_reason(exc) if isinstance(exc, OSError) else str(exc)
            if isinstance(exc, OSError) and exc.errno == 13:
                reason += " (is the user in the dialout group?)"
            elif isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EBUSY):
                reason += (
                    " (the port is in use by another program: if the nixlog service runs, "
                    "stop it first with `sudo systemctl stop nixlog`)"
                )
            raise LinkDown(f"cannot open serial port {path}: {reason}") from exc
        self._serial = port

    def close(self) -> None:
        """Close the port; safe to call twice, never raises (the port may be gone)."""
        sock, self._sock = self._sock, None
        self._rx.clear()  # what the old connection sent never counts on the next one
        port, self._serial = self._serial, None
        if sock is not None:
            with suppress(OSError):
                sock.close()
        if port is not None:
            with suppress(*_SERIAL_ERRORS):
                port.close()

    def read(
        self,
        unit_id: int,
        kind: str,
        start: int,
        count: int,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        settle_sec: float | None = None,
    ) -> list[int] | list[bool]:
        """Read ``count`` registers (or bits) of ``kind`` from ``start`` on ``unit_id``.

        ``timeout``/``retries`` override the config for this call only (the commissioning
        scanner probes absent units with a short timeout and no retry). ``settle_sec``
        overrides how long an RTU line must stay quiet after a failure (default: one more
        timeout, at most ``RTU_SETTLE_MAX_SEC``); a unit sweep uses a short one. Raises
        ``ReadTimeout``, ``DeviceException``, ``LinkDown`` or ``BadResponse``.
        """
        function = FUNCTION_CODES.get(kind)
        if function is None:
            raise ValueError(f"unknown register kind {kind!r}")
        answer = self.transact(
            unit_id,
            read_pdu(function, start, count),
            timeout=timeout,
            retries=retries,
            settle_sec=settle_sec,
        )
        # ``transact`` has checked the answer against the request: only unpacking is left.
        return read_answer_values(answer, function, count)

    def write(
        self, unit_id: int, kind: str, address: int, values: Sequence[int] | Sequence[bool]
    ) -> None:
        """Write one coil (FC 5), one register (FC 6) or consecutive registers (FC 16).

        Never retried: a write whose answer was lost may have been done, and commissioning
        wants to know that rather than have it done twice. Raises like ``read``.
        """
        if kind == "coil":
            function = WRITE_SINGLE_COIL
        elif kind == "holding":
            function = WRITE_SINGLE_REGISTER if len(values) == 1 else WRITE_MULTIPLE_REGISTERS
        else:
            raise ValueError(f"{kind} registers cannot be written")
        self.transact(unit_id, write_pdu(function, address, values), retries=0)

    def identify(self, unit_id: int, *, timeout: float | None = None) -> DeviceIdentity:
        """Read Device Identification (FC 43/14): the basic objects, following "more"."""
        objects: dict[int, str] = {}
        next_object = 0
        identity: DeviceIdentity | None = None
        for _ in range(8):  # a device that always says "more" must not hold us forever
            answer = self.transact(unit_id, device_id_pdu(1, next_object), timeout=timeout)
            identity = parse_device_id(answer)
            objects.update(identity.objects)
            if not identity.more_follows or identity.next_object <= next_object:
                break
            next_object = identity.next_object
        assert identity is not None
        return DeviceIdentity(objects, identity.conformity, False, 0)

    def transact(
        self,
        unit_id: int,
        request: bytes,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        settle_sec: float | None = None,
    ) -> bytes:
        """Send one request PDU to ``unit_id`` and return the checked answer PDU.

        The transaction of every function (see ``read`` for the options); an exception
        answer raises ``DeviceException``.
        """
        call_timeout = self.timeout if timeout is None else timeout
        tries = 1 + (self.retries if retries is None else retries)
        settle = min(call_timeout, RTU_SETTLE_MAX_SEC) if settle_sec is None else settle_sec
        failure: ModbusReadError | None = None
        late = False
        try:
            for _ in range(tries):
                if not self.connected:
                    self.connect()
                if self._gap > 0:
                    self._wait_request_gap()
                try:
                    if self._tcp:
                        return self._tcp_transaction(unit_id, request, call_timeout)
                    return self._rtu_transaction(unit_id, request, call_timeout, settle)
                except (ReadTimeout, BadResponse) as exc:
                    failure = exc
                    late = late or exc.reason == LATE_ANSWER
                    if isinstance(exc, BadResponse) and exc.complete:
                        break  # it will answer the same again: no retry
                finally:
                    self._last_io = time.monotonic()
        except LinkDown:
            self.close()
            raise
        assert failure is not None
        if late and isinstance(failure, ReadTimeout):
            raise ReadTimeout(str(failure), LATE_ANSWER) from failure
        raise failure

    def _wait_request_gap(self) -> None:
        remaining = self._last_io + self._gap - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    # ------------------------------------------------------------------ RTU

    def _rtu_transaction(self, unit: int, request: bytes, timeout: float, settle: float) -> bytes:
        """One request on the serial line and its answer, or a failure after the line settled.

        How an answer is paired with its request without a transaction id:
        - bytes waiting before we send belong to an earlier request (a late or second answer):
          they are diagnosed, logged and discarded, never read as this answer;
        - after any failure the line must stay quiet for ``settle`` (and past the latest
          answer ever seen late on this line, capped) before anything else is sent, so a
          device that queues requests has answered all of them before the next one goes out;
        - the answer is read by its exact length (from the request) within one deadline and
          checked: CRC, unit, function or exception, byte count; a complete, valid frame from
          another unit asked on this line is a stray (skipped, we keep waiting for ours);
        - after an answer from a unit seen answering twice, its second copy is waited for
          and dropped before the next request (only that unit pays for it).
        """
        port = self._serial
        self._discard_stale(port)
        function = request[0]
        # Reads and writes carry (address, count or value) next; device identification does
        # not, and its shape is then the function alone.
        start, count = struct.unpack(">HH", request[1:5]) if len(request) >= 5 else (0, 0)
        frame = rtu_frame(unit, request)
        self._asked.add(unit)
        expected = 3 + longest_answer_pdu(request)
        sent = time.monotonic()
        self._serial_io(port.write, frame)
        # The deadline counts the wire time of both frames on top of the device's time.
        deadline = sent + timeout + (len(frame) + expected) * self._char_sec
        try:
            answer = self._rtu_answer(port, unit, request, deadline)
        except (ReadTimeout, BadResponse) as exc:
            self._answers.pop(unit, None)
            if isinstance(exc, BadResponse) and exc.complete:
                # An intact frame came: only the end of the line's traffic is waited for.
                quiet = RTU_QUIET_CHARS * self._char_sec
                self._drain(port, time.monotonic() + quiet, quiet)
                raise
            seen = self._settle(port, unit, sent, settle)
            if seen:
                self._unseen = None
                if isinstance(exc, ReadTimeout):
                    raise ReadTimeout(str(exc), LATE_ANSWER) from exc
            elif isinstance(exc, ReadTimeout):
                self._unseen = _Unseen((unit, function, count), start, sent)
            raise
        answered = time.monotonic()
        self._answers.setdefault(unit, deque(maxlen=RECENT_ANSWERS)).append((answer, answered))
        unseen = self._unseen
        if unseen is not None and unseen.shape == (unit, function, count):
            self._unseen = None
            self._check_not_late(port, unseen, start, sent, answered, settle)
        echo = self._twice.get(unit)
        if echo is not None:
            self._await_copy(port, answer, answered + 1.5 * echo + len(answer) * self._char_sec)
        code = check_answer(request, answer[1:-2])
        if code is not None:
            raise DeviceException(code)
        return answer[1:-2]

    def _rtu_answer(self, port: Any, unit: int, request: bytes, deadline: float) -> bytes:
        """The complete, checked answer frame for the request just sent."""
        function = request[0]
        while True:
            header = self._read_until(port, RTU_HEADER_LENGTH, deadline)
            if not header:
                raise ReadTimeout(f"no answer from unit {unit} on {self.description}", "timeout")
            if len(header) < RTU_HEADER_LENGTH:
                raise BadResponse("incomplete answer")
            length = rtu_frame_length(header)
            frame = header
            if length is None and header[0] == unit and header[1] & 0x7F == function:
                # Ours but no read answer (a write's echo, device identification): its length
                # follows from the request and, for answers of variable length, from what has
                # arrived so far. A read answer is framed by its own byte count instead, so a
                # late answer of another shape is read whole and recognised as a stray.
                while len(frame) < (length := 3 + answer_pdu_length(request, frame[1:])):
                    frame += self._read_until(port, length - len(frame), deadline)
                    if len(frame) < length:
                        raise BadResponse("incomplete answer")
            elif length is None:
                raise BadResponse("not a read answer")
            else:
                frame = header + self._read_until(port, length - RTU_HEADER_LENGTH, deadline)
                if len(frame) < length:
                    raise BadResponse("incomplete answer")
            if not crc_ok(frame):
                self.faults.note((CRC_ERROR, unit), f"{self.description}: crc error (unit {unit})")
                raise BadResponse(CRC_ERROR)
            if frame[0] != unit:
                if frame[0] in self._asked:
                    self._stray(frame, time.monotonic())
                    continue
                raise BadResponse(f"answer from unit {frame[0]} (asked {unit})", complete=True)
            try:
                check_answer(request, frame[1:-2])
            except FrameError as exc:
                if self._unseen is not None:
                    # Intact but of another shape, with a late answer still possible: that
                    # is what it is. Ours may yet come.
                    self._late_seen(time.monotonic())
                    self._stray(frame, time.monotonic(), late=True)
                    continue
                raise BadResponse(exc.reason, complete=True) from exc
            return frame

    def _check_not_late(
        self, port: Any, unseen: _Unseen, start: int, sent: float, answered: float, settle: float
    ) -> None:
        """Make sure the answer just taken was not the late answer of ``unseen``.

        ``unseen`` timed out and nothing came during its settle; now a request of the same
        shape (unit, function, count) got an answer, which may be that late answer. If it
        was, this request's own answer comes about as late again: wait that long. Nothing
        comes: the answer was this request's. Something comes: the answer taken was the
        earlier one's, so it is refused (unless both asked for the same addresses: a retry)
        and the line learns how late this device answers.
        """
        lateness = answered - unseen.sent
        if lateness > RTU_SETTLE_CAP_SEC:
            return
        quiet = max(settle, RTU_QUIET_CHARS * self._char_sec)
        first = self._drain(port, answered + 1.25 * lateness + quiet, quiet, late=True)
        if first is None:
            return
        self._late_sec = min(RTU_SETTLE_CAP_SEC, max(self._late_sec, lateness, first - sent))
        if unseen.start != start:
            raise ReadTimeout(f"answer of unit {unseen.shape[0]} came late", LATE_ANSWER)

    def _late_seen(self, at: float) -> None:
        """Bytes came that may be the unseen late answer: learn how late (at most) it was."""
        unseen, self._unseen = self._unseen, None
        if unseen is not None:
            lateness = min(RTU_SETTLE_CAP_SEC, at - unseen.sent)
            self._late_sec = max(self._late_sec, lateness)

    def _stray(self, frame: bytes, at: float, late: bool = False) -> None:
        """Diagnose a valid frame that answers no request in flight (and log it once).

        A copy of an answer its unit gave since its last failure is a second answer (and
        ``at`` minus that answer's time bounds how long to wait for copies from now on);
        anything else (and anything when ``late``) is the late answer to a failed request.
        """
        unit = frame[0]
        given = [t for answer, t in self._answers.get(unit, ()) if answer == frame]
        if not late and given:
            delay = max(0.0, min(at - given[-1], RTU_SETTLE_MAX_SEC))
            self._twice[unit] = min(self._twice.get(unit, delay), delay)
            kind = ANSWERED_TWICE
        else:
            kind = LATE_ANSWER
        self.faults.note((kind, unit), f"{self.description}: unit {unit} {kind}")

    def _await_copy(self, port: Any, answer: bytes, until: float) -> None:
        """Wait (until ``until`` at most) for the second copy of ``answer``, and drop it."""
        copy = self._read_until(port, len(answer), until)
        if copy:
            self._diagnose(copy + self._drop_waiting(port), time.monotonic())

    def _drop_waiting(self, port: Any) -> bytes:
        waiting = self._serial_io(lambda: port.in_waiting)
        data = bytes(self._serial_io(port.read, waiting)) if waiting else b""
        self._serial_io(port.reset_input_buffer)
        return data

    def _discard_stale(self, port: Any) -> None:
        """Drop whatever arrived since the last transaction, diagnosing it first."""
        waiting = self._serial_io(lambda: port.in_waiting)
        if waiting:
            data = self._serial_io(port.read, waiting)
            self._serial_io(port.reset_input_buffer)
            self._late_seen(time.monotonic())
            self._diagnose(bytes(data), time.monotonic())

    def _diagnose(self, data: bytes, at: float, late: bool = False) -> bool:
        """Name stray bytes (second or late answers, or noise); True if any frame was found."""
        found = False
        while len(data) >= RTU_HEADER_LENGTH:
            length = rtu_frame_length(data[:RTU_HEADER_LENGTH])
            if length is None or len(data) < length or not crc_ok(data[:length]):
                break
            self._stray(data[:length], at, late)
            found = True
            data = data[length:]
        if data and not found:
            self.faults.note(("noise", 0), f"{self.description}: stray bytes discarded")
        return found

    def _settle(self, port: Any, unit: int, sent: float, settle: float) -> bool:
        """After a failure: wait for the line to stay quiet, then drop what arrived.

        Quiet means no byte for ``settle`` (at least a few character times), and not before
        the latest answer ever seen late on this line would have arrived again. Each byte
        that arrives restarts the quiet time, up to ``RTU_SETTLE_CAP_SEC`` in all. True when
        something arrived (the late answer, usually).
        """
        quiet = max(settle, RTU_QUIET_CHARS * self._char_sec)
        now = time.monotonic()
        first = self._drain(port, max(now + quiet, sent + 1.25 * self._late_sec + quiet), quiet)
        if first is None:
            return False
        # Later answers make later settles: the next failure waits past this lateness.
        self._late_sec = min(RTU_SETTLE_CAP_SEC, max(self._late_sec, first - sent))
        return True

    def _drain(self, port: Any, until: float, quiet: float, late: bool = False) -> float | None:
        """Read and drop bytes until ``until`` and ``quiet`` seconds after the last one.

        Capped at ``RTU_SETTLE_CAP_SEC`` from now (a chattering line must not stall the
        poller). Frames that arrive are diagnosed; returns when the first byte arrived.
        """
        cap = time.monotonic() + RTU_SETTLE_CAP_SEC
        until = min(until, cap)
        arrived = bytearray()
        first: float | None = None
        while time.monotonic() < until:
            chunk = self._read_until(port, 1, until)
            if not chunk:
                break
            at = time.monotonic()
            first = at if first is None else first
            waiting = self._serial_io(lambda: port.in_waiting)
            arrived += chunk + (self._serial_io(port.read, waiting) if waiting else b"")
            until = min(cap, max(until, at + quiet))
        self._serial_io(port.reset_input_buffer)
        if first is not None and not self._diagnose(bytes(arrived), first, late):
            self.faults.note(("noise", 0), f"{self.description}: stray bytes discarded")
        return first

    def _read_until(self, port: Any, size: int, deadline: float) -> bytes:
        """Up to ``size`` bytes, returning early only at ``deadline`` (pyserial's timeout)."""
        if size <= 0:
            return b""
        port.timeout = max(0.0, deadline - time.monotonic())
        return bytes(self._serial_io(port.read, size))

    def _serial_io(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run one pyserial call; a vanished port (any of its errors) becomes ``LinkDown``."""
        try:
            return call(*args)
        except _SERIAL_ERRORS as exc:
            self.close()
            raise LinkDown(f"lost serial port {self.description}: {_os_reason(exc)}") from exc

    # ------------------------------------------------------------------ TCP

    def _tcp_transaction(self, unit: int, request: bytes, timeout: float) -> bytes:
        """One request over Modbus TCP and its answer, matched by transaction id.

        A timed-out transaction replaces the connection: some servers (pymodbus 3.16's own,
        some gateways) label a late answer with the id of the request that follows, so the
        id alone cannot keep a late answer out; with the old socket it dies.
        """
        sock = self._sock
        assert sock is not None
        self._transaction = (self._transaction + 1) & 0xFFFF
        transaction = self._transaction
        deadline = time.monotonic() + timeout
        self._send(sock, tcp_frame(transaction, unit, request), deadline)
        while True:
            frame = self._recv_frame(sock, deadline, unit)
            answered, _, _, answer_unit = MBAP_HEADER.unpack_from(frame)
            if answered == transaction:
                break
            if 0 < (transaction - answered) & 0xFFFF <= RECENT_ANSWERS:
                # An earlier transaction's answer: a copy of the last one, or a late one.
                kind = ANSWERED_TWICE if frame == self._tcp_last else LATE_ANSWER
                self.faults.note(
                    (kind, answer_unit), f"{self.description}: unit {answer_unit} {kind}"
                )
                continue
            self.close()
            raise BadResponse(f"answer to transaction {answered} (sent {transaction})")
        self._tcp_last = frame
        if answer_unit != unit:
            raise BadResponse(f"answer from unit {answer_unit} (asked {unit})", complete=True)
        pdu = frame[MBAP_LENGTH:]
        try:
            code = check_answer(request, pdu)
        except FrameError as exc:
            raise BadResponse(exc.reason, complete=True) from exc
        if code is not None:
            raise DeviceException(code)
        return pdu

    def _send(self, sock: socket.socket, frame: bytes, deadline: float) -> None:
        """All of ``frame`` before ``deadline`` (one send, unless the peer stopped reading)."""
        view = memoryview(frame)
        while view:
            try:
                view = view[sock.send(view) :]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                raise LinkDown(f"lost connection to {self.description}: {_os_reason(exc)}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # What a blocking send with the socket's timeout reported before.
                raise LinkDown(f"lost connection to {self.description}: timed out")
            writable = select.poll()
            writable.register(sock, select.POLLOUT)
            writable.poll(math.ceil(remaining * 1000))

    def _recv_frame(self, sock: socket.socket, deadline: float, unit: int) -> bytes:
        """The next whole Modbus TCP frame (MBAP header and PDU) before ``deadline``.

        A header that cannot start a Modbus TCP frame closes the connection: nothing after
        it on this stream can be framed any more. Bytes behind the frame stay for the next.
        """
        self._fill(sock, MBAP_LENGTH, deadline, unit)
        _, protocol, length, _ = MBAP_HEADER.unpack_from(self._rx)
        if protocol != 0 or not 2 <= length <= 254:
            self.close()
            raise BadResponse("not a Modbus TCP frame")
        size = MBAP_LENGTH - 1 + length  # ``length`` counts the unit byte, part of the header
        if len(self._rx) < size:  # usually the whole answer came with its header
            self._fill(sock, size, deadline, unit, held=MBAP_LENGTH)
        frame = bytes(self._rx[:size])
        del self._rx[:size]
        return frame

    def _fill(
        self, sock: socket.socket, size: int, deadline: float, unit: int, held: int = 0
    ) -> None:
        """Receive until ``size`` bytes are buffered, before ``deadline``; a timeout replaces
        the connection.

        Reads whatever has arrived (up to a whole frame's worth and more), so a whole answer
        usually costs one receive, not one per MBAP part. ``held``: buffered bytes already
        accounted for (a header): a timeout with no more than those is silence, not an
        incomplete answer.
        """
        data = self._rx
        while len(data) < size:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                # Milliseconds rounded up: rounding down would wake early and spin.
                if not self._poll.poll(math.ceil(remaining * 1000)):
                    continue
                chunk = sock.recv(TCP_RECV_BYTES)
            except BlockingIOError:
                continue  # woken without data after all: wait again
            except TimeoutError as exc:
                partial = len(data) > held
                self.close()
                if partial:
                    raise BadResponse("incomplete answer") from exc
                raise ReadTimeout(
                    f"no answer from unit {unit} on {self.description}", "timeout"
                ) from exc
            except OSError as exc:
                raise LinkDown(f"lost connection to {self.description}: {_os_reason(exc)}") from exc
            if not chunk:
                raise LinkDown(f"lost connection to {self.description}: closed by the peer")
            data += chunk


def create_client(modbus: ModbusConfig) -> ModbusLink:
    """A ``ModbusLink`` for ``modbus.port`` (serial path → RTU, ``tcp://`` → TCP); not opened."""
    return ModbusLink(modbus)


@dataclass(frozen=True)
class RequestResult:
    """The outcome of one ``ReadRequest``: raw values, or an error and its category."""

    request: ReadRequest
    values: list[int] | list[bool] | None = None
    error: str | None = None
    failure: str | None = None
    exception_code: int | None = None
    detail: str | None = None  # the whole message, for logs ("lost serial port ...: ...")

    @property
    def ok(self) -> bool:
        """True when the request returned values."""
        return self.values is not None


class ReadLink(Protocol):
    """What the poller needs of a link; ``ModbusLink`` is the real one, tests may fake it."""

    description: str

    @property
    def connected(self) -> bool:
        """True while the port is open."""

    def connect(self) -> None:
        """Open the port or raise ``LinkDown``."""

    def close(self) -> None:
        """Close the port."""

    def read(
        self,
        unit_id: int,
        kind: str,
        start: int,
        count: int,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        settle_sec: float | None = None,
    ) -> list[int] | list[bool]:
        """Read words or bits, or raise a ``ModbusReadError``."""


def read_request(
    link: ReadLink, request: ReadRequest, *, retries: int | None = None
) -> RequestResult:
    """Execute one planned request; every failure becomes a ``RequestResult`` with an error.

    ``retries`` overrides the configured retries (0 for a probe of a backed-off request).
    """
    try:
        if retries is None:
            values = link.read(request.unit_id, request.kind, request.start, request.count)
        else:
            values = link.read(
                request.unit_id, request.kind, request.start, request.count, retries=retries
            )
    except ModbusReadError as exc:
        return failed_result(request, exc)
    return RequestResult(request, values=values)


def failed_result(request: ReadRequest, exc: ModbusReadError) -> RequestResult:
    """The result of ``request`` whose read raised ``exc``."""
    code = exc.code if isinstance(exc, DeviceException) else None
    return RequestResult(
        request, error=exc.reason, failure=exc.failure, exception_code=code, detail=exc.message
    )


def read_plan(link: ReadLink, plan: Sequence[ReadRequest]) -> list[RequestResult]:
    """Execute a plan in order; after a lost link the rest fail as "disconnected" untried."""
    results: list[RequestResult] = []
    for request in plan:
        if results and results[-1].failure == FAILURE_DISCONNECTED:
            results.append(
                RequestResult(request, error="disconnected", failure=FAILURE_DISCONNECTED)
            )
            continue
        results.append(read_request(link, request))
    return results
