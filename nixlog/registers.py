"""The register map as the wire sees it: pure decode/encode and request planning (no I/O).

Decoding turns the raw 16-bit words (or bits) of one value into a Python value for every type
of the configuration in the four byte orders, then applies ``raw * scale + offset``. Encoding is the
exact inverse; the simulator serves values through it and the property tests prove the pair.

Planning groups the register map per (unit id, kind) and merges near addresses into as few
read requests as the protocol allows (see ``plan_requests`` for the gap-bridging rule).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property, lru_cache
from typing import Final

from nixlog.config import (
    BIT_KINDS,
    MAX_REGISTERS_PER_REQUEST,
    REGISTER_KINDS,
    REGISTERS_PER_TYPE,
    Config,
    RegisterConfig,
)
from nixlog.errors import ConfigError
from nixlog.model import Value

MAX_BITS_PER_REQUEST: Final = 2000  # Modbus limit for function codes 1 and 2
DEFAULT_MAX_GAP: Final = 10
"""Unused registers a request may bridge to save a request (see ``plan_requests``)."""
DEFAULT_MAX_BIT_GAP: Final = 160
"""Unused coils/discrete inputs a request may bridge: the same wire bytes as 10 registers."""

FUNCTION_CODES: Final = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
KIND_OF_FUNCTION_CODE: Final = {code: kind for kind, code in FUNCTION_CODES.items()}

# struct format of each numeric type, read big-endian once the words are in ABCD order.
_STRUCT_FORMATS: Final = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_WORD_FORMATS: Final = {count: f">{count}H" for count in (1, 2, 4)}
# Every float32 value of every poll goes through shortest_float32: its formats are built once.
_FLOAT32: Final = struct.Struct(">f")
_SHORTEST_SPECS: Final = tuple(f".{digits}g" for digits in range(6, 10))
_INTEGER_TYPES: Final = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_FLOAT_TYPES: Final = frozenset({"float32", "float64"})

Words = Sequence[int] | Sequence[bool]


# --------------------------------------------------------------------------- byte orders


def _to_abcd(byte_order: str, words: Sequence[int]) -> list[int]:
    """Reorder words as they came off the wire into big-endian (ABCD) order.

    The letters name the bytes of the value, most significant first, in the order the device
    sends them: CDAB swaps the words (low word first), BADC swaps the bytes inside each word,
    DCBA does both. For 64-bit values "swap the words" means reversing all four words. The
    transformation is its own inverse, so encoding uses it too.
    """
    if byte_order not in ("ABCD", "CDAB", "BADC", "DCBA"):
        raise ValueError(f"unknown byte order {byte_order!r}")
    result = list(words)
    if byte_order in ("CDAB", "DCBA"):
        result.reverse()
    if byte_order in ("BADC", "DCBA"):
        result = [((word & 0xFF) << 8) | (word >> 8) for word in result]
    return result


def _words_to_bytes(words: Sequence[int]) -> bytes:
    return b"".join(word.to_bytes(2, "big") for word in words)


def _bytes_to_words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _check_words(words: Sequence[int], expected: int | None, value_type: str) -> None:
    if expected is not None and len(words) != expected:
        raise ValueError(f"{value_type} needs {expected} registers, got {len(words)}")
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register word out of range: {word}")


# --------------------------------------------------------------------------- raw values


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32, as a Python float.

    A float32 230.1 is 230.10000610351562 as a double; storing and shipping that noise helps
    nobody, while ``230.1`` converts back to exactly the same float32 (no information lost).
    """
    if not math.isfinite(value):
        return value
    packed = _FLOAT32.pack(value)
    for spec in _SHORTEST_SPECS:
        candidate = float(format(value, spec))
        try:
            if _FLOAT32.pack(candidate) == packed:
                return candidate
        except OverflowError:  # rounding up past the float32 maximum
            continue
    return value


def decode_words(value_type: str, byte_order: str, words: Sequence[int]) -> int | float | str:
    """Decode raw register words into the type's raw value (no scale or offset applied).

    ``words`` must hold exactly the type's register count (any count for ``string``). Strings
    lose trailing NULs and spaces; float32 comes back as its shortest exact decimal.
    Raises ``ValueError`` for a wrong word count, a word outside 0..65535 or an unknown type.
    """
    if value_type == "string":
        _check_words(words, None, value_type)
        if byte_order not in ("ABCD", "BADC"):
            raise ValueError(f"string byte order must be ABCD or BADC, got {byte_order!r}")
        data = _words_to_bytes(_to_abcd(byte_order, words)).rstrip(b"\x00 ")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            # Devices put anything in text registers; latin-1 shows every byte as something.
            return data.decode("latin-1")
    fmt = _STRUCT_FORMATS.get(value_type)
    if fmt is None:
        raise ValueError(f"type {value_type!r} has no word encoding")
    expected = REGISTERS_PER_TYPE[value_type]
    if len(words) != expected:
        raise ValueError(f"{value_type} needs {expected} registers, got {len(words)}")
    if value_type in ("int16", "uint16") and byte_order not in ("ABCD", "BADC"):
        raise ValueError(f"{value_type} byte order must be ABCD or BADC, got {byte_order!r}")
    # One pack does the range check of every word too: this runs for each value of each poll.
    ordered = words if byte_order == "ABCD" else _to_abcd(byte_order, words)
    try:
        data = struct.pack(_WORD_FORMATS[expected], *ordered)
    except struct.error:
        _check_words(words, expected, value_type)  # names the offending word
        raise ValueError(f"register words out of range: {list(words)}") from None
    raw: int | float = struct.unpack(fmt, data)[0]
    if value_type == "float32":
        raw = shortest_float32(raw)
    return raw


def encode_value(
    value_type: str, byte_order: str, value: int | float | str, length: int | None = None
) -> list[int]:
    """Encode a raw value (before scale/offset) into register words; inverse of ``decode_words``.

    Strings are UTF-8, NUL-padded to ``length`` registers (required for strings). Raises
    ``ValueError`` when the value does not fit the type.
    """
    if value_type == "string":
        if length is None:
            raise ValueError("a string needs a length in registers")
        data = str(value).encode("utf-8")
        if len(data) > 2 * length:
            raise ValueError(f"string of {len(data)} bytes does not fit in {length} registers")
        data = data.ljust(2 * length, b"\x00")
        return _to_abcd(byte_order, _bytes_to_words(data))
    fmt = _STRUCT_FORMATS.get(value_type)
    if fmt is None:
        raise ValueError(f"type {value_type!r} has no word encoding")
    if value_type in ("int16", "uint16") and byte_order not in ("ABCD", "BADC"):
        raise ValueError(f"{value_type} byte order must be ABCD or BADC, got {byte_order!r}")
    if value_type in _INTEGER_TYPES:
        if isinstance(value, str) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value_type} needs a whole number, got {value!r}")
        number: int | float = int(value)
    else:
        if isinstance(value, str):
            raise ValueError(f"{value_type} needs a number, got {value!r}")
        number = float(value)
    try:
        data = struct.pack(fmt, number)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} does not fit in {value_type}") from exc
    return _to_abcd(byte_order, _bytes_to_words(data))


# --------------------------------------------------------------------------- scaled values


@lru_cache(maxsize=256)
def _decimals(scale: float, offset: float) -> int:
    """Decimal places of ``int * scale + offset`` as the config wrote them (0.01 → 2)."""
    places = 0
    for number in (scale, offset):
        exponent = Decimal(repr(number)).as_tuple().exponent
        if isinstance(exponent, int) and exponent < 0:
            places = max(places, -exponent)
    return min(places, 15)


def _is_whole(number: float) -> bool:
    return float(number).is_integer()


def apply_scale(raw: int | float, scale: float, offset: float) -> int | float:
    """``raw * scale + offset``; integers stay integers when scale and offset are whole.

    An integer times 0.1 is rounded to the decimals the config gave (23 * 0.1 is 2.3, not
    2.3000000000000003): the device's resolution is exactly that, the rest is float noise.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        if _is_whole(scale) and _is_whole(offset):
            return raw * int(scale) + int(offset)
        return round(raw * scale + offset, _decimals(scale, offset))
    if scale == 1.0 and offset == 0.0:
        return raw
    return raw * scale + offset


def decode(register: RegisterConfig, words: Words) -> Value:
    """Decode one register's raw words (or bits) into its value, scale and offset applied.

    ``words`` is exactly this register's slice: its ``count`` words, or one bit for a coil or
    discrete input. ``bit = N`` on a 16-bit register gives that bit as a bool. Raises
    ``ValueError`` when the slice does not fit the register.
    """
    if register.kind in BIT_KINDS:
        if len(words) != 1:
            raise ValueError(f"{register.kind} needs 1 bit, got {len(words)}")
        return bool(words[0])
    int_words = list(map(int, words))
    if register.type == "bool":
        _check_words(int_words, 1, "bool")
        assert register.bit is not None
        return bool((int_words[0] >> register.bit) & 1)
    raw = decode_words(register.type, register.byte_order, int_words)
    if isinstance(raw, str):
        return raw
    return apply_scale(raw, register.scale, register.offset)


Decoder = Callable[[Words], Value]
"""``decode`` of one register, with all that depends on the register alone worked out once."""

_WORD_ORDER: Final = {
    # byte order -> (words reversed, struct byte order of each word); the bytes packed
    # this way are the value's bytes in ABCD order, the same as ``_to_abcd`` gives.
    "ABCD": (False, ">"),
    "CDAB": (True, ">"),
    "BADC": (False, "<"),
    "DCBA": (True, "<"),
}


def compile_decoder(register: RegisterConfig) -> Decoder:
    """``decode(register, words)`` for the poll path, specialised once per register.

    Returns exactly what ``decode`` returns for every ``words``. The checks and table look-ups
    that depend on the register alone (kind, type, byte order, scale) are done here, once;
    what depends on the words is left. Words the fast path cannot take (a wrong count, a word
    out of range, not an integer) go to ``decode`` itself, which raises its own ``ValueError``.
    Strings and combinations ``decode`` refuses always go there.
    """

    def generic(words: Words) -> Value:
        return decode(register, words)

    if register.kind in BIT_KINDS:

        def bit_value(words: Words) -> Value:
            if len(words) != 1:
                return decode(register, words)
            return bool(words[0])

        return bit_value
    if register.type == "bool":
        shift = register.bit
        assert shift is not None

        def flag(words: Words) -> Value:
            if len(words) == 1 and type(word := words[0]) is int and 0 <= word <= 0xFFFF:
                return bool((word >> shift) & 1)
            return decode(register, words)

        return flag
    value_type, byte_order = register.type, register.byte_order
    fmt = _STRUCT_FORMATS.get(value_type)
    order = _WORD_ORDER.get(byte_order)
    if fmt is None or order is None:
        return generic  # a string, or something decode refuses with its own message
    if value_type in ("int16", "uint16") and byte_order not in ("ABCD", "BADC"):
        return generic
    reverse, endian = order
    # Packing the words checks their count and range too: struct.error sends them to decode.
    pack = struct.Struct(f"{endian}{REGISTERS_PER_TYPE[value_type]}H").pack
    unpack = struct.Struct(fmt).unpack
    shortest = value_type == "float32"
    scale, offset = register.scale, register.offset
    # apply_scale's branches, chosen once: the value type fixes whether the raw value is an int.
    integer = value_type in _INTEGER_TYPES
    whole = integer and _is_whole(scale) and _is_whole(offset)  # integers stay integers
    int_scale, int_offset = (int(scale), int(offset)) if whole else (1, 0)
    digits = _decimals(scale, offset) if integer and not whole else 0
    unscaled = scale == 1.0 and offset == 0.0

    def number(words: Words) -> Value:
        try:
            data = pack(*(reversed(words) if reverse else words))
        except struct.error:
            return decode(register, words)
        raw: int | float = unpack(data)[0]
        if shortest:
            raw = shortest_float32(raw)
        if whole:
            return raw * int_scale + int_offset
        if integer:
            return round(raw * scale + offset, digits)
        if unscaled:
            return raw
        return raw * scale + offset

    return number


def encode(register: RegisterConfig, value: Value) -> list[int] | list[bool]:
    """Encode a value into this register's raw words or bits; the inverse of ``decode``.

    Scale and offset are undone first (integer types round to the nearest raw step). A
    ``bit`` register gives the word with only that bit set or clear: callers that share the
    word with other values merge it. Raises ``ValueError`` when the value does not fit.
    """
    if register.kind in BIT_KINDS:
        return [bool(value)]
    if register.type == "bool":
        assert register.bit is not None
        return [(1 << register.bit) if value else 0]
    if register.type == "string":
        return encode_value("string", register.byte_order, str(value), register.length)
    if isinstance(value, str):
        raise ValueError(f"{register.name}: {register.type} needs a number, got {value!r}")
    raw: int | float = value
    if register.scale != 1.0 or register.offset != 0.0:
        raw = (float(value) - register.offset) / register.scale
    if register.type in _INTEGER_TYPES:
        raw = round(raw)
    return encode_value(register.type, register.byte_order, raw)


def value_range(register: RegisterConfig) -> tuple[float, float] | None:
    """Smallest and largest raw value of an integer register; None for other types."""
    if register.type not in _INTEGER_TYPES:
        return None
    bits = 16 * REGISTERS_PER_TYPE[register.type]
    if register.type.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read: ``count`` registers (or bits) of ``kind`` from ``start`` on one unit.

    ``registers`` are the values it carries, each wholly inside ``[start, start + count)``.
    """

    unit_id: int
    kind: str
    start: int
    count: int
    registers: tuple[RegisterConfig, ...] = ()

    @property
    def function_code(self) -> int:
        """The Modbus function code that reads this kind (1, 2, 3 or 4)."""
        return FUNCTION_CODES[self.kind]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count

    @property
    def bridged(self) -> int:
        """Addresses read that no register of the map uses (gaps bridged to save requests)."""
        used: set[int] = set()
        for register in self.registers:
            used.update(range(register.address, register.end))
        return self.count - len(used)

    @cached_property
    def decoders(self) -> tuple[tuple[str, int, int, Decoder], ...]:
        """Per register: its name, its slice of the values read, and its decoder.

        Worked out on first use and kept: a planned request is read every poll cycle.
        """
        return tuple(
            (
                register.name,
                register.address - self.start,
                register.address - self.start + register.count,
                compile_decoder(register),
            )
            for register in self.registers
        )

    def slice_for(self, register: RegisterConfig, values: Words) -> Words:
        """The part of this request's raw ``values`` that belongs to ``register``."""
        first = register.address - self.start
        return values[first : first + register.count]

    def describe(self) -> str:
        """``unit 1 input 0-20 (21 registers)`` for logs and the plan table."""
        noun = "bits" if self.kind in BIT_KINDS else "registers"
        if self.count == 1:
            noun = noun[:-1]
        return f"unit {self.unit_id} {self.kind} {self.start}-{self.end - 1} ({self.count} {noun})"


def plan_requests(
    registers: Iterable[RegisterConfig],
    max_registers_per_request: int = MAX_REGISTERS_PER_REQUEST,
    max_bits: int = MAX_BITS_PER_REQUEST,
    max_gap: int = DEFAULT_MAX_GAP,
    max_bit_gap: int = DEFAULT_MAX_BIT_GAP,
) -> list[ReadRequest]:
    """Group the map per (unit id, kind) and merge near addresses into as few reads as possible.

    Gap-bridging rule: within one unit and kind, registers sorted by address join the current
    request while (a) the unused addresses between the request's end and the register are at
    most ``max_gap`` registers (``max_bit_gap`` bits for coils and discrete inputs), and (b) the
    request stays within ``max_registers_per_request`` registers (``max_bits`` bits).
    Otherwise a new request starts. Overlapping registers (a status word and its ``bit``
    flags) always share a request. The default of 10 registers comes from the wire: on RS-485
    every request costs ~13 bytes of framing plus two silent intervals and the device's
    turnaround (~20-50 ms at 9600 baud) while a bridged register costs 2 bytes (~2 ms), so
    reading up to ~10 unused registers is cheaper than a second request. A device that refuses
    reads of unmapped addresses answers exception 2; the poller then splits that request at
    its gaps (``split_at_gaps``) and keeps polling. ``max_gap = 0`` merges only contiguous
    addresses. Greedy merging in address order gives the fewest requests under these limits.

    Requests come out ordered by unit id, then kind (holding, input, coil, discrete), then
    address. Raises ``ValueError`` when one value alone is larger than the request limit.
    """
    groups: dict[tuple[int, str], list[RegisterConfig]] = {}
    for register in registers:
        groups.setdefault((register.unit_id, register.kind), []).append(register)
    plan: list[ReadRequest] = []
    for unit_id, kind in sorted(groups, key=lambda key: (key[0], REGISTER_KINDS.index(key[1]))):
        is_bits = kind in BIT_KINDS
        limit = max_bits if is_bits else max_registers_per_request
        gap_limit = max_bit_gap if is_bits else max_gap
        members = sorted(groups[(unit_id, kind)], key=lambda r: (r.address, r.end))
        current: list[RegisterConfig] = []
        start = end = 0
        for register in members:
            if register.count > limit:
                raise ValueError(
                    f'"{register.name}" needs {register.count} registers, more than the '
                    f"{limit} a request may read"
                )
            if (
                current
                and register.address - end <= gap_limit
                and max(end, register.end) - start <= limit
            ):
                current.append(register)
                end = max(end, register.end)
                continue
            if current:
                plan.append(ReadRequest(unit_id, kind, start, end - start, tuple(current)))
            current, start, end = [register], register.address, register.end
        if current:
            plan.append(ReadRequest(unit_id, kind, start, end - start, tuple(current)))
    return plan


def split_at_gaps(request: ReadRequest) -> list[ReadRequest]:
    """The same registers read without bridging any unused address (for refusing devices)."""
    return plan_requests(
        request.registers,
        max_registers_per_request=request.count,
        max_bits=request.count,
        max_gap=0,
        max_bit_gap=0,
    )


def plan_for_config(config: Config) -> list[ReadRequest]:
    """The request plan of a loaded config; ``ConfigError`` (78) naming the key if impossible."""
    modbus = config.modbus
    try:
        return plan_requests(modbus.registers, modbus.max_registers_per_request)
    except ValueError as exc:
        raise ConfigError(f"{config.path}: modbus.max_registers_per_request: {exc}") from None
