"""A simulated Modbus device: pymodbus' server serving a register map with changing values.

Values move plausibly (sine waves for voltages, currents and temperatures, a rising energy
counter, toggling coils) and are encoded with our own ``registers.encode``, so the poller
decodes exactly what the simulator meant. Like a real RS-485 bus, a unit id that is not in the
map stays silent. Tests (and the demo) start it in-process on a background thread and can make
a unit answer with an exception, go silent, answer slowly, pin a value, or count the requests
it received.

The default map, served when no config is given, is ``EXAMPLE_REGISTERS``: the map of
``examples/config.toml`` built in Python so that an installed package has it too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from pymodbus import ModbusDeviceIdentification
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from nixlog.config import (
    BIT_KINDS,
    BusConfig,
    Config,
    ModbusConfig,
    RegisterConfig,
    parse_tcp_address,
)
from nixlog.errors import DeviceError, UsageError
from nixlog.model import Value
from nixlog.registers import KIND_OF_FUNCTION_CODE, encode, value_range

log = logging.getLogger(__name__)

DEFAULT_SIMULATOR_PORT: Final = "tcp://127.0.0.1:5020"

EXAMPLE_REGISTERS: Final[tuple[RegisterConfig, ...]] = (
    RegisterConfig("voltage_l1", 0, kind="input", type="float32", units="V"),
    RegisterConfig("voltage_l2", 2, kind="input", type="float32", units="V"),
    RegisterConfig("voltage_l3", 4, kind="input", type="float32", units="V"),
    RegisterConfig("current_l1", 6, kind="input", type="float32", units="A"),
    RegisterConfig("power_total", 12, kind="input", type="int32", byte_order="CDAB", units="W"),
    RegisterConfig("frequency", 20, kind="input", type="uint16", scale=0.01, units="Hz"),
    RegisterConfig("energy_total", 100, kind="holding", type="uint64", scale=0.001, units="kWh"),
    RegisterConfig("temperature", 110, kind="holding", type="int16", scale=0.1, units="°C"),
    RegisterConfig("status_word", 111, kind="holding", type="uint16"),
    RegisterConfig("alarm_active", 111, kind="holding", type="bool", bit=3),
    RegisterConfig("breaker_closed", 0, kind="coil", type="bool"),
    RegisterConfig("door_open", 0, kind="discrete", type="bool"),
)
"""The register map of ``examples/config.toml`` (a test keeps the two identical)."""

_WRITE_KINDS: Final = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
HANDLED_KEPT: Final = 100_000
"""Requests whose timing the simulator keeps (a long ``nixlog simulate`` must not grow)."""
_STATUS_CYCLE: Final = (0x0001, 0x0001, 0x0101, 0x0001, 0x0011)


def _fingerprint(register: RegisterConfig) -> int:
    # Unit 1 keeps the name's own phase; other units (two meters of one profile) differ.
    suffix = "" if register.unit_id == 1 else f"@{register.unit_id}"
    return zlib.crc32(f"{register.name}{suffix}".encode())


def _fit(register: RegisterConfig, value: float) -> Value:
    """Clamp a wanted engineering value into what the register's raw type can carry."""
    limits = value_range(register)
    if limits is None:
        return value
    low, high = (limit * register.scale + register.offset for limit in limits)
    low, high = min(low, high), max(low, high)
    value = min(max(value, low), high)
    if register.scale == 1.0 and register.offset == 0.0:
        return round(value)
    return value


def simulated_value(register: RegisterConfig, elapsed: float) -> Value:
    """A plausible value for ``register`` ``elapsed`` seconds after the simulator started.

    Chosen from the engineering units: volts swing around 230, amps around 12, hertz around
    50, kWh count up, °C drift around 24; bits toggle every few seconds; strings are fixed.
    Each register gets its own phase (from its name) so that three phases do not move as one.
    """
    print_ = _fingerprint(register)
    if register.kind in BIT_KINDS or register.type == "bool":
        period = 3.0 + print_ % 5
        return (int(elapsed / period) + print_) % 2 == 1
    if register.type == "string":
        assert register.length is not None
        return "NIXLOG-SIM"[: 2 * register.length]
    phase = (print_ % 360) * math.pi / 180
    wave = math.sin(2 * math.pi * elapsed / 30.0 + phase)
    units = (register.units or "").strip().lower()
    name = register.name.lower()
    value: float
    if units == "v":
        value = 230.0 + 4.0 * wave
    elif units == "a":
        value = 12.0 + 5.0 * wave
    elif units == "w":
        value = 8000.0 + 2500.0 * wave
    elif units == "kw":
        value = 8.0 + 2.5 * wave
    elif units == "hz":
        value = 50.0 + 0.05 * wave
    elif units in ("kwh", "wh", "mwh"):
        per_second = {"kwh": 8.0 / 3600, "wh": 8000.0 / 3600, "mwh": 0.008 / 3600}[units]
        value = 12345.678 * (1000.0 if units == "wh" else 1.0) + per_second * elapsed
    elif units in ("°c", "c", "degc", "°f", "f"):
        value = 24.0 + 3.0 * wave
    elif "status" in name:
        value = _STATUS_CYCLE[int(elapsed / 5.0) % len(_STATUS_CYCLE)]
    else:
        value = 100.0 + 50.0 * wave
    if register.type in ("float32", "float64"):
        value = round(value, 2)  # a meter shows 230.17 V, not 230.1712934
    return _fit(register, value)


@dataclass(frozen=True)
class _Fault:
    """What a unit does instead of answering normally."""

    silent: bool = False
    delay_sec: float = 0.0
    exception_code: int | None = None
    kind: str | None = None  # the exception applies to this kind only (None: all kinds)


class SimulatorContext(ModbusServerContext):
    """The simulated devices' memory, computed on each request from the map and the clock.

    Handed to pymodbus' server as its datastore (the "old simulator" protocol: the server
    calls ``async_getValues`` with the unit id, so unknown units can stay silent).
    Fault injection and request counting are thread-safe: tests call them while the server
    runs on its own thread.
    """

    def __init__(
        self,
        registers: Sequence[RegisterConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        extra_units: Iterable[int] = (),
        refuse_unmapped: bool = False,
        writable: bool = False,
        identity: dict[str, str] | None = None,
    ) -> None:
        # ModbusServerContext.__init__ builds pymodbus' own device model (and logs a
        # deprecation warning); this class replaces that model entirely.
        self.old_simulator = True
        self.simdevices = []
        self.registers = tuple(registers)
        self.clock = clock
        self.started = clock()
        self.units = frozenset({r.unit_id for r in self.registers} | set(extra_units))
        self.refuse_unmapped = refuse_unmapped
        # Commissioning tests write registers and read device identification (FC 43/14,
        # pymodbus answers it from ``identity``: VendorName, ProductCode, MajorMinorRevision...;
        # pymodbus keeps one identity per process, the last server started sets it).
        self.writable = writable
        self.identity = identity
        self._written: dict[tuple[int, str, int], int | bool] = {}
        self._by_unit_kind: dict[tuple[int, str], list[RegisterConfig]] = {}
        for register in sorted(self.registers, key=lambda r: r.bit is not None):
            # Whole words first, bits after: a flag register then overrides its bit.
            self._by_unit_kind.setdefault((register.unit_id, register.kind), []).append(register)
        self._lock = threading.Lock()
        self._pinned: dict[str, Value] = {}
        self._pinned_unit: dict[tuple[int, str], Value] = {}
        self._faults: dict[int, _Fault] = {}
        self.requests: list[tuple[int, int, int, int]] = []
        self.handled: deque[tuple[int, float, float]] = deque(maxlen=HANDLED_KEPT)
        """(unit, monotonic time a request arrived, time its answer was ready) per request,
        the latest ``HANDLED_KEPT``: a test proves from it that no two requests were ever
        outstanding at once."""

    # ----------------------------------------------------------------- test controls

    def pin(self, name: str, value: Value, unit_id: int | None = None) -> None:
        """Serve ``value`` for register ``name`` (of ``unit_id``, or of every unit) from now on
        instead of the waveform."""
        if not any(r.name == name and unit_id in (None, r.unit_id) for r in self.registers):
            raise KeyError(name)
        with self._lock:
            if unit_id is None:
                self._pinned[name] = value
            else:
                self._pinned_unit[(unit_id, name)] = value

    def overlaps(self) -> int:
        """How many requests arrived while an earlier one was still unanswered."""
        with self._lock:
            handled = sorted(self.handled, key=lambda item: item[1])
        count = 0
        busy_until = -1.0
        for _unit, arrived, answered in handled:
            if arrived < busy_until:
                count += 1
            busy_until = max(busy_until, answered)
        return count

    def silence(self, unit_id: int) -> None:
        """Make ``unit_id`` stop answering (as if unplugged from the bus)."""
        with self._lock:
            self._faults[unit_id] = _Fault(silent=True)

    def delay(self, unit_id: int, seconds: float) -> None:
        """Make ``unit_id`` answer ``seconds`` late."""
        with self._lock:
            self._faults[unit_id] = _Fault(delay_sec=seconds)

    def fail(self, unit_id: int, code: int = 4, kind: str | None = None) -> None:
        """Make ``unit_id`` answer every read (of ``kind``, or all) with exception ``code``."""
        with self._lock:
            self._faults[unit_id] = _Fault(exception_code=code, kind=kind)

    def heal(self, unit_id: int | None = None) -> None:
        """Undo faults for ``unit_id`` (or every unit)."""
        with self._lock:
            if unit_id is None:
                self._faults.clear()
            else:
                self._faults.pop(unit_id, None)

    def request_count(self, unit_id: int | None = None) -> int:
        """Requests received so far (for ``unit_id``, or all), answered or not."""
        with self._lock:
            return sum(1 for r in self.requests if unit_id is None or r[0] == unit_id)

    def reset_requests(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self.requests.clear()

    # ----------------------------------------------------------------- values

    def value_of(self, register: RegisterConfig) -> Value:
        """The value the simulator serves for ``register`` right now."""
        with self._lock:
            pinned = self._pinned_unit.get((register.unit_id, register.name))
            if pinned is None:
                pinned = self._pinned.get(register.name)
        if pinned is not None:
            return pinned
        return simulated_value(register, self.clock() - self.started)

    def image(self, unit_id: int, kind: str, start: int, count: int) -> list[int] | list[bool]:
        """The words (or bits) a read of ``count`` from ``start`` returns now."""
        members = self._by_unit_kind.get((unit_id, kind), [])
        if kind in BIT_KINDS:
            bits = [False] * count
            for register in members:
                if start <= register.address < start + count:
                    bits[register.address - start] = bool(self.value_of(register))
            for (unit, written_kind, address), bit in self._written.items():
                if (unit, written_kind) == (unit_id, kind) and start <= address < start + count:
                    bits[address - start] = bool(bit)
            return bits
        words = [0] * count
        for register in members:
            if register.end <= start or register.address >= start + count:
                continue
            encoded = [int(w) for w in encode(register, self.value_of(register))]
            if register.bit is not None:
                index = register.address - start
                mask = 1 << register.bit
                words[index] = (words[index] & ~mask) | (encoded[0] & mask)
                continue
            for offset, word in enumerate(encoded):
                index = register.address + offset - start
                if 0 <= index < count:
                    words[index] = word
        for (unit, written_kind, address), word in self._written.items():
            if (unit, written_kind) == (unit_id, kind) and start <= address < start + count:
                words[address - start] = int(word)
        return words

    def _all_mapped(self, unit_id: int, kind: str, start: int, count: int) -> bool:
        """True when every address read belongs to a register (strict devices need that)."""
        used: set[int] = set()
        for register in self._by_unit_kind.get((unit_id, kind), []):
            used.update(range(register.address, register.end))
        return all(address in used for address in range(start, start + count))

    def _valid_end(self, unit_id: int, kind: str) -> int:
        members = self._by_unit_kind.get((unit_id, kind), [])
        return max((r.end for r in members), default=0)

    # ----------------------------------------------------------------- pymodbus datastore

    def device_ids(self) -> list[int]:
        """Unit ids this simulator answers for."""
        return sorted(self.units)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Answer a read; raising ``NoSuchIdException`` makes the server stay silent."""
        arrived = time.monotonic()
        try:
            return await self._answer(device_id, func_code, address, count)
        finally:
            with self._lock:
                self.handled.append((device_id, arrived, time.monotonic()))

    async def _answer(
        self, device_id: int, func_code: int, address: int, count: int
    ) -> list[int] | list[bool] | ExcCodes:
        with self._lock:
            self.requests.append((device_id, func_code, address, count))
            fault = self._faults.get(device_id)
        if device_id not in self.units or (fault is not None and fault.silent):
            raise NoSuchIdException(f"unit {device_id} is not on this bus")
        kind = KIND_OF_FUNCTION_CODE.get(func_code, _WRITE_KINDS.get(func_code))
        if kind is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if fault is not None and fault.delay_sec > 0:
            await asyncio.sleep(fault.delay_sec)
        if fault is not None and fault.exception_code is not None and fault.kind in (None, kind):
            return ExcCodes(fault.exception_code)
        # Like most meters: addresses past the last mapped value do not exist.
        if address + count > self._valid_end(device_id, kind):
            return ExcCodes.ILLEGAL_ADDRESS
        if self.refuse_unmapped and not self._all_mapped(device_id, kind, address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        return self.image(device_id, kind, address, count)

    async def async_setValues(
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        """Read-only like a meter's measurements, unless built ``writable``: then the written
        words (or coils) are served from now on, over the map's values."""
        with self._lock:
            self.requests.append((device_id, func_code, address, len(values)))
        if device_id not in self.units:
            raise NoSuchIdException(f"unit {device_id} is not on this bus")
        kind = _WRITE_KINDS.get(func_code)
        if not self.writable or kind is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address + len(values) > self._valid_end(device_id, kind):
            return ExcCodes.ILLEGAL_ADDRESS
        with self._lock:
            for offset, value in enumerate(values):
                self._written[(device_id, kind, address + offset)] = value
        return None


def build_simulator_context(
    registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS,
    *,
    clock: Callable[[], float] = time.monotonic,
    extra_units: Iterable[int] = (),
    refuse_unmapped: bool = False,
    writable: bool = False,
    identity: dict[str, str] | None = None,
) -> SimulatorContext:
    """The simulated devices for a register map (the example map by default).

    ``extra_units`` answer too (with zeros and exception 2); ``refuse_unmapped`` makes reads
    that include unused addresses fail with exception 2, as some real devices do;
    ``writable`` accepts writes of holding registers and coils; ``identity`` is served to
    Read Device Identification (FC 43/14), e.g. ``{"VendorName": "ACME"}``.
    """
    return SimulatorContext(
        registers,
        clock=clock,
        extra_units=extra_units,
        refuse_unmapped=refuse_unmapped,
        writable=writable,
        identity=identity,
    )


def _identity(context: SimulatorContext) -> ModbusDeviceIdentification | None:
    if context.identity is None:
        return None
    return ModbusDeviceIdentification(info_name=dict(context.identity))  # type: ignore[no-untyped-call]


def _context(registers: Sequence[RegisterConfig] | SimulatorContext) -> SimulatorContext:
    if isinstance(registers, SimulatorContext):
        return registers
    return build_simulator_context(registers)


async def _serve(
    server: Any, stop: threading.Event, where: str, on_ready: Callable[[str], None] | None
) -> None:
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise DeviceError(f"cannot serve on {where}: {exc}") from None
    actual = where
    transport = getattr(server, "transport", None)
    sockets = getattr(transport, "sockets", None)
    if sockets:
        host, port = sockets[0].getsockname()[:2]
        actual = f"tcp://{host}:{port}"
    if on_ready is not None:
        on_ready(actual)
    try:
        while not stop.is_set():
            await asyncio.sleep(0.02)
    finally:
        await server.shutdown()


def serve_tcp(
    host: str,
    port: int,
    registers: Sequence[RegisterConfig] | SimulatorContext,
    stop: threading.Event,
    on_ready: Callable[[str], None] | None = None,
    *,
    rtu_frames: bool = False,
) -> None:
    """Serve Modbus TCP on ``host:port`` (0: any free port) until ``stop`` is set.

    Blocks; run it on a thread. ``on_ready`` gets the actual ``tcp://host:port`` once
    listening. ``rtu_frames``: speak RTU frames over TCP (a TCP serial server). Raises
    ``DeviceError`` when the address cannot be used.
    """
    context = _context(registers)

    async def main() -> None:
        server = ModbusTcpServer(
            context,
            address=(host, port),
            ignore_missing_devices=True,
            framer=FramerType.RTU if rtu_frames else FramerType.SOCKET,
            identity=_identity(context),
        )
        await _serve(server, stop, f"tcp://{host}:{port}", on_ready)

    asyncio.run(main())


def serve_serial(
    path: str,
    registers: Sequence[RegisterConfig] | SimulatorContext,
    stop: threading.Event,
    on_ready: Callable[[str], None] | None = None,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    bytesize: int = 8,
) -> None:
    """Serve Modbus RTU on the serial device ``path`` (e.g. a socat pty) until ``stop`` is set.

    Blocks; run it on a thread. Raises ``DeviceError`` when the port cannot be opened.
    """
    context = _context(registers)

    async def main() -> None:
        server = ModbusSerialServer(
            context,
            framer=FramerType.RTU,
            port=path,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            ignore_missing_devices=True,
            identity=_identity(context),
        )
        await _serve(server, stop, path, on_ready)

    asyncio.run(main())


class SimulatorServer:
    """A simulator running on a background thread: ``with SimulatorServer(...) as sim:``.

    ``port`` is ``tcp://host:port`` (port 0 picks a free one; see ``address``) or a serial
    path. ``start()`` returns once the server listens, or raises what stopped it.
    """

    def __init__(
        self,
        port: str,
        context: SimulatorContext | None = None,
        modbus: ModbusConfig | None = None,
    ) -> None:
        self.port = port
        self.context = context if context is not None else build_simulator_context()
        self.modbus = modbus
        self.address = port
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _on_ready(self, address: str) -> None:
        self.address = address
        self._ready.set()

    def _run(self) -> None:
        try:
            run_server(self.port, self.context, self._stop, self._on_ready, self.modbus)
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        """Start serving on a daemon thread and wait until it listens."""
        self._thread = threading.Thread(target=self._run, name="nixlog-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DeviceError(f"simulator on {self.port} did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread (its connections are closed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_server(
    port: str,
    registers: Sequence[RegisterConfig] | SimulatorContext,
    stop: threading.Event,
    on_ready: Callable[[str], None] | None = None,
    modbus: ModbusConfig | None = None,
) -> None:
    """Serve on ``port`` (``tcp://host:port`` or a serial path) until ``stop`` is set; blocks.

    Serial line settings come from ``modbus`` when given (the configured bus), else 9600 8N1.
    """
    if port.startswith("tcp://") or "://" in port:
        try:
            host, tcp_port = parse_tcp_address(port)
        except ValueError as exc:
            raise DeviceError(str(exc)) from None
        if urlsplit(port).port == 0:  # "any free port" (parse_tcp_address reads 0 as unset)
            tcp_port = 0
        rtu_frames = port.startswith("rtu+tcp://")

        def ready(address: str) -> None:
            if on_ready is not None:
                on_ready(address.replace("tcp://", "rtu+tcp://", 1) if rtu_frames else address)

        serve_tcp(host, tcp_port, registers, stop, ready, rtu_frames=rtu_frames)
        return
    settings: dict[str, Any] = {}
    if modbus is not None:
        settings = {
            "baudrate": modbus.baudrate,
            "parity": modbus.parity,
            "stopbits": modbus.stopbits,
            "bytesize": modbus.bytesize,
        }
    serve_serial(port, registers, stop, on_ready, **settings)


def run_simulator(
    port: str,
    registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS,
    modbus: ModbusConfig | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """``nixlog simulate``: serve until ``stop`` is set or Ctrl-C, then shut down cleanly.

    The server runs on a thread while this thread waits, so Ctrl-C (KeyboardInterrupt in the
    main thread) stops the server before it propagates.
    """
    stop = stop if stop is not None else threading.Event()
    server = SimulatorServer(port, build_simulator_context(registers), modbus)
    server.start()
    if on_ready is not None:
        on_ready(server.address)
    try:
        while not stop.wait(0.2):
            if server._thread is not None and not server._thread.is_alive():
                if server._error is not None:
                    raise server._error
                break
    finally:
        server.stop()


def bus_registers(bus: BusConfig) -> tuple[RegisterConfig, ...]:
    """Every register of every device on ``bus`` (each already on its device's unit id)."""
    return tuple(register for device in bus.devices for register in device.registers)


def find_bus(config: Config, name: str | None) -> BusConfig:
    """The bus called ``name`` (None: the first); ``UsageError`` naming the known ones."""
    if name is None:
        return config.buses[0]
    for bus in config.buses:
        if bus.name == name:
            return bus
    known = ", ".join(bus.name for bus in config.buses)
    raise UsageError(f'--bus: no bus "{name}" in {config.path} (buses: {known})')


def serve_plant(
    config: Config, ports: dict[str, str], contexts: dict[str, SimulatorContext] | None = None
) -> list[SimulatorServer]:
    """Start one simulator per bus in ``ports`` (bus name → where to serve); started servers.

    ``contexts`` may give a bus its own prepared context (pinned values, faults); otherwise
    each bus serves its devices' registers. On failure the servers started so far stop.
    """
    servers: list[SimulatorServer] = []
    try:
        for bus in config.buses:
            if bus.name not in ports:
                continue
            context = (contexts or {}).get(bus.name) or build_simulator_context(
                bus_registers(bus)
            )
            servers.append(SimulatorServer(ports[bus.name], context, bus.link).start())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
