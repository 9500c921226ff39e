"""Ad-hoc commissioning without a config: ``nixlog read``, ``nixlog write`` (no I/O of its own).

What a technician types first on a new bus (``mbpoll -a 1 -r 100 -c 4 -t 4 /dev/ttyUSB0``):
read a few registers as a type and byte order, once or every few seconds, and write one
register or coil. The link is the poller's own ``ModbusLink`` (same timeouts, retries and
answer checks), the decoding is ``registers.decode_words``; errors are the poller's too, so
``read`` exits like ``poll`` (69 when the unit never answered, 1 for an exception answer).
The daemon never writes; ``write`` exists for commissioning only and the CLI asks for --yes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from nixlog.config import (
    BIT_KINDS,
    REGISTER_KINDS,
    REGISTERS_PER_TYPE,
    VALUE_TYPES,
    ModbusConfig,
    check_port,
)
from nixlog.errors import DeviceError, NixlogError, UsageError
from nixlog.modbus_client import DeviceException, ModbusReadError, ReadLink
from nixlog.registers import apply_scale, decode_words, encode_value

WRITABLE_KINDS: Final = ("holding", "coil")
MAX_READ_WORDS: Final = 125
MAX_READ_BITS: Final = 2000


@dataclass(frozen=True)
class ReadSpec:
    """What to read: ``count`` values of ``type`` from ``address`` (registers or bits)."""

    unit_id: int
    kind: str
    address: int
    count: int = 1
    type: str = "uint16"
    byte_order: str = "ABCD"
    scale: float = 1.0

    @property
    def width(self) -> int:
        """Registers per value (the whole ``count`` registers for one string)."""
        if self.kind in BIT_KINDS:
            return 1
        if self.type == "string":
            return self.count
        return REGISTERS_PER_TYPE[self.type]

    @property
    def values(self) -> int:
        """How many values one read gives."""
        return 1 if self.type == "string" and self.kind not in BIT_KINDS else self.count

    @property
    def registers(self) -> int:
        """Registers (or bits) to read."""
        return self.width * self.values


@dataclass(frozen=True)
class ReadValue:
    """One value: its first address, the raw words (or bit) and the decoded value."""

    address: int
    raw: list[int] | list[bool]
    value: int | float | str | bool | None


@dataclass
class ReadResult:
    """One read of a ``ReadSpec``: values, or the short error reason."""

    timestamp: str
    spec: ReadSpec
    values: list[ReadValue] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None
    exception_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as one JSON-ready record (NaN and infinity become null)."""
        record: dict[str, Any] = {
            "timestamp": self.timestamp,
            "unit": self.spec.unit_id,
            "kind": self.spec.kind,
            "type": "bool" if self.spec.kind in BIT_KINDS else self.spec.type,
            "values": [
                {"address": item.address, "raw": list(item.raw), "value": item.value}
                for item in self.values
            ],
        }
        if self.spec.kind not in BIT_KINDS:
            record["byte_order"] = self.spec.byte_order
        if self.error is not None:
            record["error"] = self.error
        return record


def check_spec(
    unit_id: int,
    kind: str,
    address: int,
    count: int,
    value_type: str,
    byte_order: str,
    scale: float = 1.0,
) -> ReadSpec:
    """Validate the options of ``nixlog read`` into a ``ReadSpec``; ``UsageError`` otherwise."""
    kind = kind.strip().lower()
    if kind not in REGISTER_KINDS:
        raise UsageError(f'--kind: expected one of {", ".join(REGISTER_KINDS)}, got "{kind}"')
    if not 0 <= unit_id <= 255:
        raise UsageError(f"--unit: must be 0-255, got {unit_id}")
    value_type = value_type.strip().lower()
    if value_type not in VALUE_TYPES or value_type == "bool":
        choices = ", ".join(t for t in VALUE_TYPES if t != "bool")
        raise UsageError(f'--type: expected one of {choices}, got "{value_type}"')
    byte_order = byte_order.strip().upper()
    if byte_order not in ("ABCD", "CDAB", "BADC", "DCBA"):
        raise UsageError(f'--byte-order: expected ABCD, CDAB, BADC or DCBA, got "{byte_order}"')
    sixteen_bit = kind not in BIT_KINDS and REGISTERS_PER_TYPE.get(value_type, 2) == 1
    if sixteen_bit and byte_order not in ("ABCD", "BADC"):
        raise UsageError(f"--byte-order: a 16-bit {value_type} is ABCD or BADC")
    if value_type == "string" and byte_order not in ("ABCD", "BADC"):
        raise UsageError("--byte-order: a string is ABCD or BADC")
    if not math.isfinite(scale) or scale == 0:
        raise UsageError(f"--scale: must be a non-zero number, got {scale:g}")
    spec = ReadSpec(unit_id, kind, address, count, value_type, byte_order, scale)
    limit = MAX_READ_BITS if kind in BIT_KINDS else MAX_READ_WORDS
    if spec.registers > limit:
        raise UsageError(
            f"--count: {spec.registers} {'bits' if kind in BIT_KINDS else 'registers'} "
            f"do not fit in one request (at most {limit})"
        )
    if not address >= 0 or address + spec.registers > 65536:
        raise UsageError(f"--address {address}: the read must stay within addresses 0-65535")
    return spec


def link_settings(
    base: ModbusConfig | None,
    *,
    port: str | None,
    baudrate: int | None = None,
    parity: str | None = None,
    stopbits: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
) -> ModbusConfig:
    """The bus for an ad-hoc read or write: the config's (if any), each option overriding.

    Without a config: 9600 8N1, 1 s timeout, one retry (the poller's defaults).
    """
    if port is None and base is None:
        raise UsageError("no port: pass --port /dev/ttyUSB0 or --port tcp://host:502")
    settings = base if base is not None else ModbusConfig(port=port or "", registers=())
    changes: dict[str, Any] = {"registers": ()}
    if port is not None:
        try:
            check_port(port)
        except ValueError as exc:
            raise UsageError(f"--port: {exc}") from None
        changes["port"] = port
    if baudrate is not None:
        if not 50 <= baudrate <= 4_000_000:
            raise UsageError(f"--baudrate: must be between 50 and 4000000, got {baudrate}")
        changes["baudrate"] = baudrate
    if parity is not None:
        if parity.upper() not in ("N", "E", "O"):
            raise UsageError(f'--parity: expected N, E or O, got "{parity}"')
        changes["parity"] = parity.upper()
    if stopbits is not None:
        if stopbits not in (1, 2):
            raise UsageError(f"--stopbits: expected 1 or 2, got {stopbits}")
        changes["stopbits"] = stopbits
    if timeout is not None:
        if not (math.isfinite(timeout) and 0 < timeout <= 60):
            raise UsageError(f"--timeout: must be > 0 and <= 60 seconds, got {timeout:g}")
        changes["timeout_sec"] = timeout
    if retries is not None:
        if not 0 <= retries <= 10:
            raise UsageError(f"--retries: must be 0-10, got {retries}")
        changes["retries"] = retries
    return replace(settings, **changes)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_spec(spec: ReadSpec, raw: list[int] | list[bool]) -> list[ReadValue]:
    """Cut the raw words (or bits) into values and decode each (pure)."""
    if spec.kind in BIT_KINDS:
        return [ReadValue(spec.address + i, [bool(bit)], bool(bit)) for i, bit in enumerate(raw)]
    words = [int(word) for word in raw]
    values: list[ReadValue] = []
    for index in range(spec.values):
        chunk = words[index * spec.width : (index + 1) * spec.width]
        decoded = decode_words(spec.type, spec.byte_order, chunk)
        value: int | float | str | None
        if isinstance(decoded, str):
            value = decoded
        elif isinstance(decoded, float) and not math.isfinite(decoded):
            value = None
        else:
            value = apply_scale(decoded, spec.scale, 0.0)
        values.append(ReadValue(spec.address + index * spec.width, chunk, value))
    return values


def read_once(link: ReadLink, spec: ReadSpec) -> ReadResult:
    """One read; a failure the device or line can cause is kept in ``error``, not raised
    (except a port that cannot be opened at all: ``LinkDown``, a ``DeviceError``)."""
    result = ReadResult(_now(), spec)
    try:
        raw = link.read(spec.unit_id, spec.kind, spec.address, spec.registers)
    except ModbusReadError as exc:
        result.error = exc.reason
        result.detail = exc.message
        result.exception_code = exc.code if isinstance(exc, DeviceException) else None
        return result
    result.values = decode_spec(spec, raw)
    return result


@dataclass
class WatchOutcome:
    """How a series of reads went: cycles, answered ones, the last error."""

    cycles: int = 0
    answered: int = 0
    exceptions: int = 0
    last: ReadResult | None = None


def read_series(
    link: ReadLink,
    spec: ReadSpec,
    *,
    cycles: int | None = 1,
    interval: float = 1.0,
    on_result: Callable[[ReadResult], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> WatchOutcome:
    """Read ``cycles`` times (None: until interrupted), ``interval`` seconds apart.

    Each result goes to ``on_result`` as it comes. The port is opened first, so a port
    that does not exist fails at once (``DeviceError``, exit 69).
    """
    outcome = WatchOutcome()
    link.connect()
    started = clock()
    while cycles is None or outcome.cycles < cycles:
        result = read_once(link, spec)
        outcome.cycles += 1
        outcome.last = result
        if result.error is None:
            outcome.answered += 1
        elif result.exception_code is not None:
            outcome.exceptions += 1
        if on_result is not None:
            on_result(result)
        if cycles is not None and outcome.cycles >= cycles:
            break
        # A fixed schedule (start + n × interval): a slow answer does not drift the series.
        delay = started + outcome.cycles * interval - clock()
        if delay > 0:
            sleep(delay)
    return outcome


def series_error(
    outcome: WatchOutcome, description: str, modbus: ModbusConfig
) -> NixlogError | None:
    """The error a series ends with, as ``poll``: 69 when the unit never answered at all
    (timeouts, a lost line), 1 when some reads failed; None when every read answered."""
    last = outcome.last
    if last is None or outcome.answered == outcome.cycles:
        return None
    spec = last.spec
    if outcome.answered == 0 and outcome.exceptions == 0:
        reason = last.error or "no answer"
        if reason == "timeout":
            tries = modbus.retries + 1
            reason = (
                f"timeout ({modbus.timeout_sec:g} s × {tries} {'try' if tries == 1 else 'tries'})"
            )
        return DeviceError(f"no answer from unit {spec.unit_id} on {description}: {reason}")
    failed = outcome.cycles - outcome.answered
    where = f"unit {spec.unit_id} {spec.kind} {spec.address}"
    if outcome.cycles == 1:
        return NixlogError(f"{where}: {last.error}")
    return NixlogError(f"{where}: {failed} of {outcome.cycles} reads failed (last: {last.error})")


# ----------------------------------------------------------------------------- write


@dataclass(frozen=True)
class WriteSpec:
    """One value to write: a coil, or one register (or the registers of one 32/64-bit value)."""

    unit_id: int
    kind: str
    address: int
    words: list[int] | list[bool]
    shown: str
    type: str = "uint16"
    byte_order: str = "ABCD"


_TRUE: Final = frozenset({"1", "on", "true", "yes"})
_FALSE: Final = frozenset({"0", "off", "false", "no"})


def check_write(
    unit_id: int, kind: str, address: int, value: str, value_type: str, byte_order: str
) -> WriteSpec:
    """Validate ``nixlog write`` options and encode the value; ``UsageError`` otherwise."""
    kind = kind.strip().lower()
    if kind not in WRITABLE_KINDS:
        raise UsageError(f'--kind: only holding registers and coils can be written, got "{kind}"')
    if not 0 <= unit_id <= 255:
        raise UsageError(f"--unit: must be 0-255, got {unit_id}")
    if not 0 <= address <= 65535:
        raise UsageError(f"--address: must be 0-65535, got {address}")
    text = value.strip().lower()
    if kind == "coil":
        if text not in _TRUE | _FALSE:
            raise UsageError(f'--value: a coil is 1/0, on/off or true/false, got "{value}"')
        state = text in _TRUE
        return WriteSpec(unit_id, kind, address, [state], "1 (on)" if state else "0 (off)")
    value_type = value_type.strip().lower()
    if value_type not in REGISTERS_PER_TYPE or value_type == "bool":
        choices = ", ".join(t for t in REGISTERS_PER_TYPE if t != "bool")
        raise UsageError(f'--type: expected one of {choices}, got "{value_type}"')
    byte_order = byte_order.strip().upper()
    number: int | float
    try:
        number = float(value) if value_type.startswith("float") else int(value, 0)
    except ValueError:
        raise UsageError(f'--value: "{value}" is not a {value_type}') from None
    try:
        words = encode_value(value_type, byte_order, number)
    except ValueError as exc:
        raise UsageError(f"--value: {exc}") from None
    if address + len(words) > 65536:
        raise UsageError(f"--address {address}: the value runs past address 65535")
    return WriteSpec(unit_id, kind, address, words, value, value_type, byte_order)


@dataclass(frozen=True)
class WriteResult:
    """A write done, and what the register reads back now (None when it could not be read)."""

    spec: WriteSpec
    read_back: int | float | bool | None
    read_back_error: str | None = None


def write_value(link: Any, spec: WriteSpec) -> WriteResult:
    """Write once (never retried), then read the value back to show what the device holds.

    Raises ``DeviceError`` (69) when the unit does not answer and ``NixlogError`` (1) when it
    refuses (an exception answer: read-only register, value out of range...).
    """
    link.connect()
    where = f"unit {spec.unit_id} {spec.kind} {spec.address}"
    try:
        link.write(spec.unit_id, spec.kind, spec.address, spec.words)
    except DeviceException as exc:
        raise NixlogError(f"{where}: the device refused the write: {exc.reason}") from exc
    except ModbusReadError as exc:
        raise DeviceError(
            f"{where}: write not confirmed ({exc.reason}); it may or may not have been done"
        ) from exc
    try:
        raw = link.read(spec.unit_id, spec.kind, spec.address, len(spec.words))
    except ModbusReadError as exc:
        return WriteResult(spec, None, exc.reason)
    if spec.kind in BIT_KINDS:
        return WriteResult(spec, bool(raw[0]))
    decoded = decode_words(spec.type, spec.byte_order, [int(word) for word in raw])
    assert not isinstance(decoded, str)
    return WriteResult(spec, decoded)
