"""The only module that talks to the pymodbus client API: connect, read, map every failure.

``ModbusLink`` wraps one pymodbus sync client (RTU on a serial path, or Modbus TCP) and turns
each pymodbus failure channel (an ``ExceptionResponse`` returned, ``ModbusIOException`` on
silence, ``ConnectionException`` on a lost link, ``OSError``/``ValueError`` underneath) into
our ``ModbusReadError`` subclasses, whose ``reason`` is the short text that lands in a
reading's ``errors``. pymodbus itself is imported on first use, so importing this module (as
``core`` does) costs nothing for commands that never touch a device.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from nixlog.config import BIT_KINDS, ModbusConfig
from nixlog.errors import DeviceError
from nixlog.registers import FUNCTION_CODES, ReadRequest

if TYPE_CHECKING:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

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

# Failure categories of a request, used by the poller to decide what to back off.
FAILURE_TIMEOUT: Final = "timeout"
FAILURE_EXCEPTION: Final = "exception"
FAILURE_DISCONNECTED: Final = "disconnected"
FAILURE_INVALID: Final = "invalid"


class ModbusReadError(DeviceError):
    """A read that failed; ``reason`` is the short text stored in a reading's ``errors``."""

    failure: str = FAILURE_INVALID

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ReadTimeout(ModbusReadError):
    """The unit did not answer within timeout × (retries + 1)."""

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
    """An answer that does not fit the request (wrong length or function): never trusted."""

    failure = FAILURE_INVALID

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid response ({detail})")


def _quiet_pymodbus() -> None:
    # pymodbus logs every failure at ERROR on its own logger; with no handler anywhere Python's
    # last-resort handler would print those lines next to our one-line error. We report
    # failures ourselves, so its log only reaches handlers an application configured.
    logger = logging.getLogger("pymodbus")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def describe_port(modbus: ModbusConfig) -> str:
    """``tcp://host:port`` or ``/dev/ttyUSB0 (9600 8N1)`` for messages."""
    if modbus.is_tcp:
        host, port = modbus.tcp_address
        return f"tcp://{host}:{port}"
    return f"{modbus.port} ({modbus.baudrate} {modbus.bytesize}{modbus.parity}{modbus.stopbits})"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias of it
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


class ModbusLink:
    """One Modbus connection (RTU or TCP) with our timeouts, retries and error mapping.

    ``read(unit_id, kind, start, count)`` returns the words (or bits) or raises a
    ``ModbusReadError``. A lost link is closed; the next ``read`` or ``connect`` opens it
    again. Not thread-safe: one link belongs to one thread.
    """

    def __init__(self, modbus: ModbusConfig) -> None:
        _quiet_pymodbus()
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        self.modbus = modbus
        self.description = describe_port(modbus)
        self.timeout = modbus.timeout_sec
        self.retries = modbus.retries
        self._gap = modbus.request_gap_ms / 1000.0
        self._call_timeout = modbus.timeout_sec
        self._call_settle: float | None = None
        self._last_io = 0.0
        self._client: ModbusTcpClient | ModbusSerialClient
        if modbus.is_tcp:
            host, port = modbus.tcp_address
            self._client = ModbusTcpClient(
                host, port=port, timeout=modbus.timeout_sec, retries=modbus.retries
            )
        else:
            self._client = ModbusSerialClient(
                modbus.port,
                baudrate=modbus.baudrate,
                parity=modbus.parity,
                stopbits=modbus.stopbits,
                bytesize=modbus.bytesize,
                timeout=modbus.timeout_sec,
                retries=modbus.retries,
            )

    @property
    def is_tcp(self) -> bool:
        """True for Modbus TCP, False for RTU on a serial line."""
        return self.modbus.is_tcp

    @property
    def connected(self) -> bool:
        """True while the socket or serial port is open."""
        return self._client.socket is not None

    def connect(self) -> None:
        """Open the port now; raise ``LinkDown`` with the reason (refused, no such device...).

        We open the socket or serial port ourselves rather than through pymodbus' ``connect``,
        which swallows the reason into its log: a technician needs "connection refused" or
        "permission denied", not "failed".
        """
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
        self._client.socket = sock

    def _connect_serial(self) -> None:
        import serial  # type: ignore[import-untyped]

        path = self.modbus.port
        if not os.path.exists(path):
            raise LinkDown(f"cannot open serial port {path}: no such device")
        try:
            port = serial.serial_for_url(
                path,
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
            raise LinkDown(f"cannot open serial port {path}: {reason}") from exc
        from pymodbus.client import ModbusSerialClient

        client = self._client
        assert isinstance(client, ModbusSerialClient)
        port.inter_byte_timeout = client.inter_byte_timeout
        client.socket = port

    def close(self) -> None:
        """Close the port; safe to call twice."""
        self._client.close()  # type: ignore[no-untyped-call]

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
        overrides how long an RTU line is left to go quiet after a failure (default: one
        more timeout); a unit sweep uses a short one, since an answer from another unit is
        refused by its unit id anyway. Raises ``ReadTimeout``, ``DeviceException``,
        ``LinkDown`` or ``BadResponse``.
        """
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        if kind not in FUNCTION_CODES:
            raise ValueError(f"unknown register kind {kind!r}")
        if not self.connected:
            self.connect()
        self._wait_request_gap()
        client = self._client
        params = client.comm_params
        self._call_timeout = self.timeout if timeout is None else timeout
        self._call_settle = settle_sec
        params.timeout_connect = self._call_timeout
        client.transaction.retries = self.retries if retries is None else retries
        try:
            response = self._execute(kind, start, count, unit_id)
        except ModbusIOException as exc:
            self._settle_after_failure()
            raise ReadTimeout(
                f"no answer from unit {unit_id} on {self.description}", "timeout"
            ) from exc
        except ConnectionException as exc:
            self.close()
            raise LinkDown(f"lost connection to {self.description}") from exc
        except OSError as exc:
            self.close()
            raise LinkDown(f"lost connection to {self.description}: {_os_reason(exc)}") from exc
        except (ModbusException, ValueError) as exc:
            self._settle_after_failure()
            raise BadResponse(str(exc) or type(exc).__name__) from exc
        finally:
            self._last_io = time.monotonic()
            params.timeout_connect = self.timeout
            client.transaction.retries = self.retries
        return self._check_response(response, kind, count, unit_id)

    def _execute(self, kind: str, start: int, count: int, unit_id: int) -> Any:
        client = self._client
        if kind == "holding":
            return client.read_holding_registers(start, count=count, device_id=unit_id)
        if kind == "input":
            return client.read_input_registers(start, count=count, device_id=unit_id)
        if kind == "coil":
            return client.read_coils(start, count=count, device_id=unit_id)
        return client.read_discrete_inputs(start, count=count, device_id=unit_id)

    def _check_response(
        self, response: Any, kind: str, count: int, unit_id: int
    ) -> list[int] | list[bool]:
        """Trust an answer only if it is for this unit, function and length."""
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceException(code)
        if response.dev_id != unit_id:
            self._settle_after_failure()
            raise BadResponse(f"from unit {response.dev_id}, expected {unit_id}")
        if response.function_code != FUNCTION_CODES[kind]:
            self._settle_after_failure()
            raise BadResponse(f"function {response.function_code}, expected {FUNCTION_CODES[kind]}")
        if kind in BIT_KINDS:
            bits = list(response.bits)
            # Bits come padded to a whole byte; fewer than asked is a stale or cut answer.
            if len(bits) < count or len(bits) > count + 7:
                self._settle_after_failure()
                raise BadResponse(f"{len(bits)} bits, expected {count}")
            return [bool(bit) for bit in bits[:count]]
        words = list(response.registers)
        if len(words) != count:
            self._settle_after_failure()
            raise BadResponse(f"{len(words)} registers, expected {count}")
        return [int(word) for word in words]

    def _wait_request_gap(self) -> None:
        if self._gap <= 0:
            return
        remaining = self._last_io + self._gap - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _settle_after_failure(self) -> None:
        """Make sure a late answer to this request cannot be read as the next one's.

        RTU frames carry no transaction id: we let the line go quiet for one more timeout
        (at most ``RTU_SETTLE_MAX_SEC``; an answer later than that is beyond any guard, and a
        unit that fails is backed off anyway), then drop what arrived. TCP frames carry one,
        but it cannot be trusted: pymodbus 3.16's own server and some gateways label a late
        answer with the id of the request that follows. So on TCP the connection is replaced
        at once: a late answer dies with the old socket, and a new one costs a handshake.
        """
        if self.is_tcp:
            self.close()
            with suppress(ModbusReadError):
                self.connect()  # if this fails, the next read reports the lost link
            return
        port: Any = self._client.socket
        if port is None:
            return
        settle = self._call_settle
        time.sleep(min(self._call_timeout, RTU_SETTLE_MAX_SEC) if settle is None else settle)
        try:
            port.reset_input_buffer()
        except OSError:
            self.close()


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


def read_request(link: ReadLink, request: ReadRequest) -> RequestResult:
    """Execute one planned request; every failure becomes a ``RequestResult`` with an error."""
    try:
        values = link.read(request.unit_id, request.kind, request.start, request.count)
    except ModbusReadError as exc:
        code = exc.code if isinstance(exc, DeviceException) else None
        return RequestResult(request, error=exc.reason, failure=exc.failure, exception_code=code)
    return RequestResult(request, values=values)


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
