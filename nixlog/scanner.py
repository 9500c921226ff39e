"""Commissioning: find which unit ids answer, which registers exist, and what they probably mean.

``nixlog scan-registers`` drives this module. The pure parts (unit-range parsing, block
planning and bisection, interpretation and plausibility scoring, the draft builder) carry no
I/O; ``Scanner`` drives a ``ReadLink`` through them and reports progress through a callback,
so the CLI owns the progress bar and the library owns nothing on screen.

How a scan spends the bus:

* **Units**: one single-register read per unit id, short timeout, no retry. Silence is
  absence; any answer, even an exception response, is a device (a gateway's exception 10/11
  means the unit behind it is silent, so it counts as absent).
* **Registers**: the range is read in blocks as large as the protocol and the config allow
  (``max_registers_per_request``, 2000 bits for coils and discrete inputs). A block that
  answers "illegal data address" (exception 2; also 3 and 4, which some meters send for the
  same reason) is narrowed down by halving instead of given up, and blocks grow again after
  an answer (``BlockWalk``): runs of present registers cost a few requests each, and only
  the missing addresses cost one request each, which is the floor for a complete scan.
"""

from __future__ import annotations

import math
import os
import struct
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import tomli_w

from nixlog.config import (
    BIT_KINDS,
    MAX_REGISTERS_PER_REQUEST,
    REGISTER_KINDS,
    REGISTERS_PER_TYPE,
    ModbusConfig,
)
from nixlog.errors import DeviceError, NixlogError, UsageError
from nixlog.modbus_client import (
    BadResponse,
    DeviceException,
    LinkDown,
    ModbusReadError,
    ReadLink,
    ReadTimeout,
    describe_port,
)
from nixlog.registers import MAX_BITS_PER_REQUEST, decode_words, shortest_float32

DEFAULT_UNITS: Final = "1-247"
DEFAULT_SCAN_TIMEOUT_SEC: Final = 0.3
"""Per-answer timeout unless ``--timeout`` gives one. A config's ``timeout_sec`` is not used:
it is tuned for polling (often 1 s with retries), and a 1-247 sweep at 1 s takes minutes.

A healthy RS-485 device answers a one-register read within ~10-50 ms at 9600 baud; 0.3 s
leaves room for slow meters. Measured 1-247 sweep: 74 s on TCP; 148 s on RTU, where the link
lets the line settle one more timeout after each silent id.
"""
READ_RETRIES: Final = 1
PROBE_SETTLE_SEC: Final = 0.05
"""RTU quiet time after a silent unit probe: longer than 3.5 characters at 1200 baud. A late
answer from one unit cannot pass for another's: its unit id is checked."""
"""Retries of a register block that timed out (a lost frame must not hide a block)."""
KIND_CHOICES: Final = (*REGISTER_KINDS, "all")
MAX_UNIT_ID: Final = 255
BYTE_ORDERS_32: Final = ("ABCD", "CDAB", "BADC", "DCBA")
TYPES_32: Final = ("int32", "uint32", "float32")
NAME_PREFIXES: Final = {"holding": "hr", "input": "ir", "coil": "coil", "discrete": "di"}
# Exception codes a device may send for a read that touches an address it does not have.
NARROWING_CODES: Final = frozenset({2, 3, 4})
ILLEGAL_FUNCTION: Final = 1
GATEWAY_SILENT_CODES: Final = frozenset({10, 11})
IDENTITY_NAMES: Final = {
    0: "vendor",
    1: "product_code",
    2: "revision",
    3: "vendor_url",
    4: "product_name",
    5: "model_name",
    6: "application_name",
}
"""Names of the standard Read Device Identification objects (FC 43/14)."""

# Plausibility thresholds for 32-bit interpretations (see ``score_pair``).
FLOAT_MIN_MAGNITUDE: Final = 1e-3
FLOAT_MAX_MAGNITUDE: Final = 1e9
INT_MAX_MAGNITUDE: Final = 100_000_000
SCORE_16BIT: Final = 1.0
"""What one 16-bit register is worth in the draft; a 32-bit reading must beat two of them."""
SCORE_NEAT_FLOAT: Final = 3.0
SCORE_FAIR_FLOAT: Final = 1.5
SCORE_ROUGH_FLOAT: Final = 1.0
SCORE_DIGIT_BONUS: Final = 0.25
SCORE_ZERO_WORD_FLOAT: Final = 1.35
"""A float with a zero word (230.0 is 0x4366 0x0000) beats a 16-bit value and a zero
register (1.25), but not a 32-bit counter next to a zero register."""
SCORE_SEVEN_DIGIT_FLOAT: Final = 2.3
"""Seven digits (123456.7 kWh): beats two busy 16-bit words, not a neat float."""
SCORE_SIGN_EXTENDED: Final = 2.5
SCORE_SMALL_INT: Final = 1.0
SMALL_NEGATIVE_INT16: Final = 0xF000
"""Words from here up read as small negative numbers (-4096..-1) (see ``looks_like_small_int``)."""
NEGATIVE_INT16: Final = 0xC000
"""Words from here up are drafted as int16 (-16384..-1): a meter rarely shows a uint16 that big,
while negative temperatures, power factors and powers are common."""
SCORE_ZERO_WORD: Final = 0.25
"""A register reading 0 says little: a pair or counter that includes it needs less to win."""
SCORE_COUNTER_32: Final = 2.4
"""A 32-bit counter: a high word that is small next to a busy low word (see ``score_int``)."""
SCORE_COUNTER_64: Final = 4.0
SCORE_SIGN_EXTENDED_64: Final = 5.0
SCORE_STRING_WORD: Final = 1.5
STRING_MIN_CHARS: Final = 4
STRING_MAX_WORDS: Final = 32
BYTE_SWAPPED_FACTOR: Final = 0.9
"""A small negative int64 with swapped bytes (BADC, DCBA) is rarer than a word swap."""


# ============================================================================ pure: options


def parse_units(text: str) -> tuple[int, ...]:
    """Parse ``1-5,10,20-22`` into sorted unique unit ids (0-255).

    Raises ``UsageError`` (exit 2) with one line naming what is wrong.
    """
    units: set[int] = set()
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise UsageError(f'--units: expected ids or ranges like "1-5,10", got "{text}"')
    for part in parts:
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise UsageError(f'--units: "{part}" is not a unit id or a range like "1-5"') from None
        for number in (low, high):
            if not 0 <= number <= MAX_UNIT_ID:
                raise UsageError(f"--units: unit id {number} is outside 0-{MAX_UNIT_ID}")
        if high < low:
            raise UsageError(f'--units: range "{part}" runs backwards (write {high}-{low})')
        units.update(range(low, high + 1))
    return tuple(sorted(units))


def parse_kinds(text: str) -> tuple[str, ...]:
    """``holding``/``input``/``coil``/``discrete`` → that kind; ``all`` → all four."""
    kind = text.strip().lower()
    if kind not in KIND_CHOICES:
        raise UsageError(f'--kind: expected one of {", ".join(KIND_CHOICES)}, got "{text}"')
    return REGISTER_KINDS if kind == "all" else (kind,)


def bus_settings(
    base: ModbusConfig | None,
    *,
    port: str | None = None,
    baudrate: int | None = None,
    parity: str | None = None,
    stopbits: int | None = None,
    timeout: float | None = None,
) -> ModbusConfig:
    """The bus to scan: the config's port and line settings (if any), each option overriding.

    Without a config, defaults are 9600 8N1. The timeout is ``DEFAULT_SCAN_TIMEOUT_SEC`` unless
    ``timeout`` is given, never the config's. The result has no registers and ``retries = 0``
    (the scanner chooses retries per request). Raises ``UsageError`` for an option that cannot
    work.
    """
    if port is None and base is None:
        raise UsageError(
            "no port to scan: pass --port /dev/ttyUSB0 or --port tcp://host:502 "
            "(or --config with a [modbus] port)"
        )
    settings = (
        base
        if base is not None
        else ModbusConfig(port=port or "", registers=(), timeout_sec=DEFAULT_SCAN_TIMEOUT_SEC)
    )
    from nixlog.adhoc import link_settings

    # The same option checks as `nixlog read`; the scan's own retries and timeout on top.
    checked = link_settings(
        settings, port=port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout=timeout
    )
    scan_timeout = DEFAULT_SCAN_TIMEOUT_SEC if timeout is None else checked.timeout_sec
    return replace(checked, retries=0, timeout_sec=scan_timeout)


# ============================================================================ pure: blocks


Block = tuple[int, int]
"""``(start, count)`` of one read request."""


class BlockWalk:
    """Which block to read next in one address range, learning from each answer (pure).

    Reads start as large as allowed. A refused block (exception 2) is asked again from the
    same address at half the size, down to a single address, which a refusal then rules out;
    after an answered block the size doubles again (galloping), so a run of ``r`` present
    registers costs about log2(r) requests and the walk adapts within a few requests when a
    gap starts or ends.

    Why not bisect each refused block into two halves: a refusal only says that *some*
    address in the block is missing, so bisecting an empty stretch of ``m`` addresses costs
    2m - 1 requests, while walking it costs m. And m is the floor for any complete scan: an
    address is proven absent only by a refused read of that address alone.
    """

    def __init__(self, start: int, count: int, limit: int) -> None:
        if count < 1 or limit < 1:
            raise ValueError("count and limit must be >= 1")
        self.start = start
        self.end = start + count
        self.limit = limit
        self.position = start
        self._size = limit

    @property
    def done(self) -> bool:
        """True once every address has been read, ruled out or skipped."""
        return self.position >= self.end

    def next_block(self) -> Block | None:
        """The block to read now, or None when the range is finished."""
        if self.done:
            return None
        return self.position, min(self._size, self.end - self.position, self.limit)

    def answered(self) -> None:
        """The current block was read: move past it and try a block twice as large."""
        block = self.next_block()
        assert block is not None
        self.position += block[1]
        self._size = min(self.limit, 2 * block[1])

    def refused(self) -> bool:
        """The current block was refused; True when that ruled out a single address."""
        block = self.next_block()
        assert block is not None
        if block[1] == 1:
            self.position += 1
            return True
        self._size = block[1] // 2
        return False

    def skipped(self) -> Block:
        """The current block failed for another reason (timeout...): pass over it."""
        block = self.next_block()
        assert block is not None
        self.position += block[1]
        return block

    def rest(self) -> Block | None:
        """Everything not yet visited, as one block (for giving up on the range)."""
        if self.done:
            return None
        return self.position, self.end - self.position


def answer_timeout(modbus: ModbusConfig, kind: str, count: int, base: float) -> float:
    """``base`` plus the time the request and answer take on a serial line at its baud rate.

    A 125-register answer is 255 bytes: ~0.27 s at 9600 baud, so a timeout tuned for one
    register would cut it off. TCP has no such wire time.
    """
    if modbus.is_tcp:
        return base
    bits_per_char = 1 + modbus.bytesize + (0 if modbus.parity == "N" else 1) + modbus.stopbits
    payload = math.ceil(count / 8) if kind in BIT_KINDS else 2 * count
    request_bytes, answer_bytes = 8, 5 + payload
    return base + (request_bytes + answer_bytes) * bits_per_char / modbus.baudrate


# ============================================================================ pure: meaning


@dataclass(frozen=True)
class Interpretation:
    """One reading of a pair of registers as ``type`` in ``byte_order``, with its score.

    ``value`` is None when the float is NaN or infinite. ``score`` > 0 means plausible; the
    draft takes the highest score (see ``score_pair``).
    """

    type: str
    byte_order: str
    value: int | float | str | None
    score: float

    @property
    def plausible(self) -> bool:
        """Finite, not denormal and of a reasonable magnitude."""
        return self.score > 0


def _significant_digits(value: float) -> int:
    digits = f"{abs(value):.9e}".split("e")[0].replace(".", "").rstrip("0")
    return max(len(digits), 1)


def score_float(
    value: float, small_words: bool = False, zero_word: bool = False, mixed_small: bool = False
) -> float:
    """How plausible a float32 reading is: 0 for NaN/inf, denormals, zero and absurd sizes.

    Real measurements come out of a float32 with few significant digits (230.5, 49.98); the
    same bytes read in the wrong order need seven to nine, so digit count is the tiebreaker,
    and fewer digits score higher. ``small_words``: both words read as small 16-bit integers
    (see ``looks_like_small_int``). ``zero_word``: one word is 0, which leaves few mantissa
    bits, so any such float looks neat: plausible, but the digits prove nothing.
    ``mixed_small``: a small positive and a small negative word (21.5 °C next to a power
    factor of -0.95): only a neat float beats that story.
    """
    if not math.isfinite(value) or value == 0:
        return 0.0
    magnitude = abs(value)
    if magnitude < FLOAT_MIN_MAGNITUDE or magnitude > FLOAT_MAX_MAGNITUDE:
        return 0.0
    digits = _significant_digits(shortest_float32(value))
    if small_words:
        # Two words that each read as a small integer make "neat" floats by accident
        # (0x0000 0x00BC in DCBA is -0.0078125): two 16-bit values are the likelier story.
        return SCORE_ROUGH_FLOAT
    if zero_word:
        return SCORE_ZERO_WORD_FLOAT
    if digits <= 6:
        return SCORE_NEAT_FLOAT + SCORE_DIGIT_BONUS * (6 - digits)
    if digits == 7 and not mixed_small:
        return SCORE_SEVEN_DIGIT_FLOAT
    return SCORE_ROUGH_FLOAT


def small_pair(first: int, second: int) -> bool:
    """Two words that read as small integers of one sign (or a zero and a small one)."""
    if first == 0 or second == 0:
        return looks_like_small_int(first) and looks_like_small_int(second)
    return (first < 0x1000 and second < 0x1000) or (
        first >= SMALL_NEGATIVE_INT16 and second >= SMALL_NEGATIVE_INT16
    )


def looks_like_small_int(word: int) -> bool:
    """A word under 0x1000 or from 0xF000 up: a small positive or negative 16-bit number.

    A float32 of plausible size always has a word outside this range in ABCD or CDAB order
    (its exponent byte is 0x38-0x4E or 0xB8-0xCE), so a pair of such words is no float.
    """
    return word < 0x1000 or word >= SMALL_NEGATIVE_INT16


def score_int(value_type: str, value: int) -> float:
    """How plausible a 32-bit integer reading is.

    A small negative int32 (-32768..-2) whose high word is 0xFFFF is the strongest sign of a
    32-bit value: read as two 16-bit registers it would be a number and a lone -1. A counter
    (energy, hours, pulses) has a high word that is small next to a busy low word (12345678 is
    0x00BC 0x614E); two 16-bit measurements side by side are of like size (2301 and 2298 V/10)
    or small (not busy). Other non-zero values under 10^8 are plausible but not preferred.
    """
    if value == 0:
        return 0.0
    if value_type == "int32" and -32768 <= value <= -2:
        return SCORE_SIGN_EXTENDED
    if value_type == "uint32" and looks_like_counter(value >> 16, value & 0xFFFF):
        return SCORE_COUNTER_32
    if abs(value) >= INT_MAX_MAGNITUDE:
        return 0.0
    return SCORE_SMALL_INT


def looks_like_counter(high: int, low: int) -> bool:
    """A non-zero high word at most an eighth of a busy low word (0x1000 up, but not a small
    negative number, which a 16-bit reading next door explains better)."""
    return high > 0 and 0x1000 <= low < SMALL_NEGATIVE_INT16 and 8 * high <= low


def interpret_pair(first: int, second: int) -> list[Interpretation]:
    """Every int32/uint32/float32 reading of two consecutive words in all four byte orders."""
    words = (first, second)
    small_words = small_pair(first, second)
    zero_word = 0 in (first, second)
    mixed_small = looks_like_small_int(first) and looks_like_small_int(second)
    result: list[Interpretation] = []
    for order in BYTE_ORDERS_32:
        for value_type in TYPES_32:
            raw = decode_words(value_type, order, words)
            assert not isinstance(raw, str)
            if value_type == "float32":
                number = float(raw)
                finite = math.isfinite(number)
                result.append(
                    Interpretation(
                        value_type,
                        order,
                        number if finite else None,
                        score_float(number, small_words, zero_word, mixed_small),
                    )
                )
            else:
                integer = int(raw)
                score = score_int(value_type, integer)
                if order in ("BADC", "DCBA") and score == SCORE_COUNTER_32:
                    # Counters with swapped bytes are rare; busy pairs of 16-bit values that
                    # look like one once swapped are not.
                    score = SCORE_SMALL_INT if integer < INT_MAX_MAGNITUDE else 0.0
                result.append(Interpretation(value_type, order, integer, score))
    return result


def best_quad(words: Sequence[int]) -> Interpretation | None:
    """The 64-bit reading of four words when it is clearly one: a counter (top word 0, the
    next one small, the rest busy) or a small negative int64 (sign-extended); else None."""
    order_rank = {order: rank for rank, order in enumerate(BYTE_ORDERS_32)}
    found: list[Interpretation] = []
    for order in BYTE_ORDERS_32:
        value = decode_words("uint64", order, words)
        assert isinstance(value, int)
        top, second = value >> 48, (value >> 32) & 0xFFFF
        factor = BYTE_SWAPPED_FACTOR if order in ("BADC", "DCBA") else 1.0
        if value >= 0xFFFF_FFFF_FF00_0000 and value != 0xFFFF_FFFF_FFFF_FFFF:
            signed = decode_words("int64", order, words)
            assert isinstance(signed, int)
            found.append(
                Interpretation("int64", order, signed, SCORE_SIGN_EXTENDED_64 * factor)
            )
        elif order in ("ABCD", "CDAB") and top == 0 and second < 0x1000 and value >= 0x10000:
            low = value & 0xFFFF
            upper = (value >> 16) & 0xFFFF if second == 0 else second
            if 0x1000 <= low < SMALL_NEGATIVE_INT16 and (second or 8 * upper <= low):
                found.append(Interpretation("uint64", order, value, SCORE_COUNTER_64 * factor))
    if not found:
        return None
    return min(found, key=lambda item: (-item.score, order_rank[item.byte_order]))


def string_length(words: Sequence[int]) -> int:
    """How many of ``words`` (consecutive registers) read as one text; 0 when they do not.

    A text starts with a letter or digit, holds at least ``STRING_MIN_CHARS`` printable
    ASCII characters with a letter among them, then only NUL (or space) padding to the end
    of a register; the zero registers that follow are taken as more padding (fixed-length
    text fields), up to ``STRING_MAX_WORDS``. Without a NUL it needs three registers: two
    busy words are printable by chance too often.
    """
    if not words or not chr(words[0] >> 8).isalnum():
        return 0
    chars = 0
    letters = 0
    length = 0
    ended = False
    for word in words[:STRING_MAX_WORDS]:
        pair = (word >> 8, word & 0xFF)
        if ended:
            if word != 0:
                break
            length += 1
            continue
        for byte in pair:
            if ended:
                if byte not in (0, 0x20):
                    return _string_end(chars, letters, length)
            elif 0x20 <= byte <= 0x7E:
                chars += 1
                letters += chr(byte).isalpha()
            elif byte == 0 and chars:
                ended = True
            else:
                return _string_end(chars, letters, length)
        length += 1
    return _string_end(chars, letters, length)


def _string_end(chars: int, letters: int, length: int) -> int:
    enough = chars >= STRING_MIN_CHARS and letters >= 1 and length >= 2
    return length if enough and (length > (chars + 1) // 2 or length >= 3) else 0


def best_pair(first: int, second: int) -> Interpretation | None:
    """The most plausible 32-bit reading of a pair, or None when none is plausible.

    Ties go to the earlier entry: byte order ABCD, CDAB, BADC, DCBA; float before integers
    only by score, and between integers to the smaller magnitude (bytes in the wrong order
    usually make a number bigger), a byte-swapped one only when 8 times smaller.
    """
    candidates = [i for i in interpret_pair(first, second) if i.plausible]
    if not candidates:
        return None
    order_rank = {order: rank for rank, order in enumerate(BYTE_ORDERS_32)}

    def key(item: Interpretation) -> tuple[float, float, int]:
        size = abs(item.value) if isinstance(item.value, int) else 0.0
        if item.byte_order in ("BADC", "DCBA"):
            size *= 8  # swapped bytes are rarer: they must make a much smaller number
        return (-item.score, size, order_rank[item.byte_order])

    return min(candidates, key=key)


def word_type(word: int) -> str:
    """``int16`` for words that read as negative numbers a meter shows, else ``uint16``."""
    return "int16" if word >= NEGATIVE_INT16 else "uint16"


def to_int16(word: int) -> int:
    """A 16-bit word as a signed number."""
    return int(struct.unpack(">h", word.to_bytes(2, "big"))[0])


@dataclass(frozen=True)
class DraftRegister:
    """One register of the config draft and the value the scan read for it."""

    name: str
    unit_id: int
    kind: str
    address: int
    type: str
    byte_order: str
    value: int | float | bool | str
    length: int | None = None

    @property
    def width(self) -> int:
        """Registers this value covers."""
        if self.length is not None:
            return self.length
        return 1 if self.kind in BIT_KINDS else REGISTERS_PER_TYPE[self.type]

    def as_toml(self, default_unit: int) -> dict[str, Any]:
        """The ``[[modbus.registers_to_read]]`` table for this register."""
        table: dict[str, Any] = {"name": self.name, "address": self.address, "kind": self.kind}
        if self.kind not in BIT_KINDS:
            table["type"] = self.type
            table["byte_order"] = self.byte_order
        if self.length is not None:
            table["length"] = self.length
        if self.unit_id != default_unit:
            table["unit_id"] = self.unit_id
        return table


def register_name(kind: str, address: int, unit_id: int | None = None) -> str:
    """``hr_40``, ``ir_3``, ``coil_0``, ``di_5``; prefixed ``u2_`` when several units answered."""
    name = f"{NAME_PREFIXES[kind]}_{address}"
    return name if unit_id is None else f"u{unit_id}_{name}"


def choose_registers(
    unit_id: int,
    kind: str,
    values: dict[int, int] | dict[int, bool],
    *,
    prefix_unit: bool = False,
    skip_zeros: bool = False,
) -> list[DraftRegister]:
    """Cover every responding address exactly once with its most plausible type.

    Bits become ``bool``. Words are segmented by dynamic programming over runs of consecutive
    addresses: each address is a 16-bit register (worth ``SCORE_16BIT``, a zero one less),
    the first of a 32-bit pair (its best plausible interpretation's score), of a 64-bit
    counter, or of a text. The segmentation with the highest total wins; a tie keeps 16-bit
    registers, the simpler choice. ``skip_zeros`` leaves 16-bit registers that read 0 out of
    the draft (reserved registers, mostly; ``ScanResult.skipped`` lists them).
    """
    unit = unit_id if prefix_unit else None
    if kind in BIT_KINDS:
        return [
            DraftRegister(register_name(kind, a, unit), unit_id, kind, a, "bool", "ABCD", bool(v))
            for a, v in sorted(values.items())
        ]
    words = {address: int(word) for address, word in values.items()}
    addresses = sorted(words)
    # best[i]: (score, width, choice) for addresses[i:]; width 1 = 16-bit, else the reading.
    best: list[tuple[float, int, Interpretation | None]] = [(0.0, 1, None)] * (
        len(addresses) + 1
    )
    for i in range(len(addresses) - 1, -1, -1):
        address = addresses[i]
        run = 1
        while i + run < len(addresses) and addresses[i + run] == address + run:
            run += 1
        single = SCORE_ZERO_WORD if words[address] == 0 else SCORE_16BIT
        choice: tuple[float, int, Interpretation | None] = (best[i + 1][0] + single, 1, None)
        if run >= 2:
            pair = best_pair(words[address], words[address + 1])
            if pair is not None and best[i + 2][0] + pair.score > choice[0]:
                choice = (best[i + 2][0] + pair.score, 2, pair)
        if run >= 4:
            quad = best_quad([words[address + k] for k in range(4)])
            if quad is not None and best[i + 4][0] + quad.score > choice[0]:
                choice = (best[i + 4][0] + quad.score, 4, quad)
        text = string_length([words[address + k] for k in range(run)])
        if text:
            content = decode_words("string", "ABCD", [words[address + k] for k in range(text)])
            score = best[i + text][0] + SCORE_STRING_WORD * text
            if score > choice[0]:
                choice = (score, text, Interpretation("string", "ABCD", content, score))
        best[i] = choice
    draft: list[DraftRegister] = []
    i = 0
    while i < len(addresses):
        address = addresses[i]
        _, width, chosen = best[i]
        name = register_name(kind, address, unit)
        i += width
        if chosen is None:
            word = words[address]
            if skip_zeros and word == 0:
                continue
            value_type = word_type(word)
            value = to_int16(word) if value_type == "int16" else word
            draft.append(DraftRegister(name, unit_id, kind, address, value_type, "ABCD", value))
            continue
        assert chosen.value is not None
        draft.append(
            DraftRegister(
                name,
                unit_id,
                kind,
                address,
                chosen.type,
                chosen.byte_order,
                chosen.value,
                width if chosen.type == "string" else None,
            )
        )
    return draft


def skipped_zeros(
    values: dict[int, int] | dict[int, bool], draft: Sequence[DraftRegister]
) -> list[int]:
    """Responding addresses the draft leaves out (registers that read 0)."""
    covered = {d.address + k for d in draft for k in range(d.width)}
    return [address for address in sorted(values) if address not in covered]


# ============================================================================ results


@dataclass
class FailedRange:
    """Addresses that could not be read, and why (timeout, an exception, a bad answer)."""

    start: int
    count: int
    reason: str


@dataclass
class KindScan:
    """What one (unit, kind) range held: responding addresses and their words or bits."""

    kind: str
    start: int
    count: int
    values: dict[int, int] | dict[int, bool] = field(default_factory=dict)
    failures: list[FailedRange] = field(default_factory=list)
    done: bool = False


@dataclass
class UnitScan:
    """One unit id that answered the probe; ``probe`` says how (values or an exception)."""

    unit_id: int
    probe: str
    kinds: dict[str, KindScan] = field(default_factory=dict)
    identity: dict[str, str] | None = None
    """FC 43/14 objects by name (``--identify``), or None when not asked or not offered."""
    identity_error: str | None = None

    @property
    def register_count(self) -> int:
        """Responding addresses found on this unit, all kinds together."""
        return sum(len(scan.values) for scan in self.kinds.values())


@dataclass
class ScanResult:
    """Everything a scan found so far; complete unless ``interrupted`` or ``link_error``."""

    port: str
    units_probed: tuple[int, ...]
    kinds: tuple[str, ...]
    start: int
    count: int
    timeout_sec: float
    units: list[UnitScan] = field(default_factory=list)
    units_done: int = 0
    requests: int = 0
    elapsed_sec: float = 0.0
    link_error: str | None = None
    garbled: list[int] = field(default_factory=list)
    interrupted: bool = False
    skip_zeros: bool = True
    sweep_stopped: bool = False
    """Ctrl-C ended the unit sweep early; the units found so far were still scanned."""

    @property
    def one_register_per_request(self) -> int:
        """Requests a naive scan would need: one per unit id, plus one per address per unit."""
        return len(self.units_probed) + len(self.units) * len(self.kinds) * self.count

    def draft(self) -> list[DraftRegister]:
        """The most plausible register for every responding address of every unit (but the
        16-bit registers that read 0 when ``skip_zeros``)."""
        several = len(self.units) > 1
        registers: list[DraftRegister] = []
        for unit in self.units:
            for kind in REGISTER_KINDS:
                scan = unit.kinds.get(kind)
                if scan is not None and scan.values:
                    registers.extend(
                        choose_registers(
                            unit.unit_id,
                            kind,
                            scan.values,
                            prefix_unit=several,
                            skip_zeros=self.skip_zeros,
                        )
                    )
        return registers

    def skipped(self) -> list[tuple[int, str, list[int]]]:
        """(unit, kind, addresses) of the responding registers the draft leaves out."""
        draft = self.draft()
        found: list[tuple[int, str, list[int]]] = []
        for unit in self.units:
            for kind, scan in unit.kinds.items():
                if kind in BIT_KINDS or not scan.values:
                    continue
                mine = [d for d in draft if (d.unit_id, d.kind) == (unit.unit_id, kind)]
                addresses = skipped_zeros(scan.values, mine)
                if addresses:
                    found.append((unit.unit_id, kind, addresses))
        return found


@dataclass(frozen=True)
class ScanProgress:
    """A progress report: ``done`` of ``total`` steps of ``phase`` ("units" or "registers")."""

    phase: str
    done: int
    total: int
    detail: str
    found: int = 0
    """Units that answered (units phase) or responding addresses (registers phase) so far."""


# ============================================================================ I/O: the scan


class Scanner:
    """Drives a link through unit discovery and register discovery, filling ``result``.

    ``result`` is complete after ``run()`` and holds what was found so far if ``run()`` is
    interrupted (Ctrl-C raises out of it; the caller still renders ``result``). Not
    thread-safe; the link belongs to it while it runs.
    """

    def __init__(
        self,
        link: ReadLink,
        modbus: ModbusConfig,
        units: Sequence[int],
        kinds: Sequence[str] = ("holding",),
        start: int = 0,
        count: int = 100,
        *,
        on_progress: Callable[[ScanProgress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        identify: bool = False,
    ) -> None:
        if not units:
            raise UsageError("--units: no unit ids to probe")
        if not 0 <= start <= 65535 or count < 1 or start + count > 65536:
            raise UsageError(
                f"--start {start} --count {count}: the range must stay within addresses 0-65535"
            )
        for kind in kinds:
            if kind not in REGISTER_KINDS:
                raise UsageError(f'--kind: unknown kind "{kind}"')
        self.link = link
        self.modbus = modbus
        self.identify = identify
        self.on_progress = on_progress
        self.clock = clock
        self.result = ScanResult(
            port=describe_port(modbus),
            units_probed=tuple(units),
            kinds=tuple(kinds),
            start=start,
            count=count,
            timeout_sec=modbus.timeout_sec,
        )
        self._register_total = 0
        self._register_done = 0

    # ------------------------------------------------------------------ driving

    def run(self) -> ScanResult:
        """Probe the units, then scan the registers of each one that answered.

        Raises ``DeviceError`` (exit 69) when the port cannot be opened or no unit answered.
        A link lost mid-scan stops it with ``result.link_error`` set (rendered, then 69).
        Ctrl-C during the unit sweep ends the sweep, not the scan, once a unit has answered:
        the technician has seen the unit they were waiting for (``result.sweep_stopped``).
        """
        started = self.clock()
        try:
            self.link.connect()
            try:
                self._discover_units()
            except KeyboardInterrupt:
                if not self.result.units:
                    raise
                self.result.sweep_stopped = True
                self.link.close()  # a request may have been cut short: start afresh
                done = self.result.units_done
                self._progress("units", done, done, "sweep stopped (Ctrl-C)")
            if not self.result.units:
                if self.result.link_error is not None:
                    raise DeviceError(self.result.link_error)
                raise DeviceError(self._nobody_answered())
            self._register_total = (
                len(self.result.units) * len(self.result.kinds) * self.result.count
            )
            if self.identify:
                for unit in self.result.units:
                    self._identify(unit)
            for unit in self.result.units:
                for kind in self.result.kinds:
                    if self.result.link_error is not None:
                        return self.result
                    self._scan_kind(unit, kind)
        finally:
            self.result.elapsed_sec = self.clock() - started
        return self.result

    def _nobody_answered(self) -> str:
        result = self.result
        ids = result.units_probed
        span = _describe_ids(ids)
        message = (
            f"no unit answered on {result.port} (probed unit {span}, "
            f"{result.timeout_sec:g} s timeout each)"
        )
        if result.garbled:
            message += f"; garbled answers for unit {_describe_ids(result.garbled)}"
        if not self.modbus.is_tcp:
            message += ": check wiring (A/B), baud rate, parity and termination"
        return message

    def _progress(self, phase: str, done: int, total: int, detail: str) -> None:
        if self.on_progress is not None:
            if phase == "units":
                found = len(self.result.units)
            else:
                found = sum(unit.register_count for unit in self.result.units)
            self.on_progress(ScanProgress(phase, done, total, detail, found))

    def _read(
        self,
        unit_id: int,
        kind: str,
        start: int,
        count: int,
        timeout: float,
        retries: int,
        settle_sec: float | None = None,
    ) -> list[int] | list[bool]:
        self.result.requests += 1
        return self.link.read(
            unit_id, kind, start, count, timeout=timeout, retries=retries, settle_sec=settle_sec
        )

    # ------------------------------------------------------------------ units

    def _identify(self, unit: UnitScan) -> None:
        """Read Device Identification (FC 43/14); many meters do not offer it (exception 1)."""
        identify = getattr(self.link, "identify", None)
        if identify is None:
            unit.identity_error = "not supported by this link"
            return
        self.result.requests += 1
        try:
            found = identify(unit.unit_id, timeout=self.modbus.timeout_sec)
        except ModbusReadError as exc:
            unit.identity_error = exc.reason
            return
        unit.identity = {
            IDENTITY_NAMES.get(object_id, f"object_{object_id}"): text
            for object_id, text in sorted(found.objects.items())
            if text
        }

    def _discover_units(self) -> None:
        result = self.result
        probe_kind = result.kinds[0]
        total = len(result.units_probed)
        for index, unit_id in enumerate(result.units_probed):
            self._progress("units", index, total, f"unit {unit_id}")
            probe = self._probe(unit_id, probe_kind)
            if result.link_error is not None:
                return
            if probe is not None:
                result.units.append(UnitScan(unit_id, probe))
            result.units_done = index + 1
        self._progress("units", total, total, "done")

    def _probe(self, unit_id: int, kind: str) -> str | None:
        """How ``unit_id`` answered one read (None: silent); a lost link is retried once."""
        timeout = self.modbus.timeout_sec
        for attempt in (1, 2):
            try:
                self._read(unit_id, kind, self.result.start, 1, timeout, 0, PROBE_SETTLE_SEC)
            except DeviceException as exc:
                if exc.code in GATEWAY_SILENT_CODES:
                    return None
                return exc.reason
            except ReadTimeout:
                return None
            except BadResponse:
                self.result.garbled.append(unit_id)
                return None
            except LinkDown as exc:
                if attempt == 2:
                    self.result.link_error = exc.message
                continue
            return "answered"
        return None

    # ------------------------------------------------------------------ registers

    def _scan_kind(self, unit: UnitScan, kind: str) -> None:
        result = self.result
        scan = KindScan(kind, result.start, result.count)
        unit.kinds[kind] = scan
        limit = MAX_BITS_PER_REQUEST if kind in BIT_KINDS else self.modbus.max_registers_per_request
        walk = BlockWalk(result.start, result.count, limit)
        done_before = self._register_done
        label = f"unit {unit.unit_id} {kind}"
        while (block := walk.next_block()) is not None:
            outcome = self._read_block(unit.unit_id, kind, block, scan)
            if outcome == "ok":
                walk.answered()
            elif outcome == "refused":
                walk.refused()
            elif outcome == "failed":
                walk.skipped()
            else:  # "stop": the link is gone, or the device does not know this function
                if result.link_error is not None:
                    return
                rest = walk.rest()
                assert rest is not None
                # Illegal function: the rest of the range is moot, and says why.
                scan.failures[-1] = FailedRange(*rest, scan.failures[-1].reason)
                self._register_done = done_before + result.count
                break
            self._register_done = done_before + (walk.position - result.start)
            self._progress("registers", self._register_done, self._register_total, label)
        scan.done = True

    def _read_block(self, unit_id: int, kind: str, block: Block, scan: KindScan) -> str:
        """Read one block into ``scan``: "ok", "refused", "failed" (skip it) or "stop"."""
        start, count = block
        timeout = answer_timeout(self.modbus, kind, count, self.modbus.timeout_sec)
        for attempt in (1, 2):
            try:
                values = self._read(unit_id, kind, start, count, timeout, READ_RETRIES)
            except DeviceException as exc:
                if exc.code in NARROWING_CODES:
                    return "refused"
                scan.failures.append(FailedRange(start, count, exc.reason))
                return "stop" if exc.code == ILLEGAL_FUNCTION else "failed"
            except LinkDown as exc:
                if attempt == 1:
                    continue  # the link reopens on the next read; one lost connection is noise
                self.result.link_error = exc.message
                scan.failures.append(FailedRange(start, count, "disconnected"))
                return "stop"
            except ModbusReadError as exc:  # timeout or a garbled answer
                scan.failures.append(FailedRange(start, count, exc.reason))
                return "failed"
            store: dict[int, Any] = scan.values
            for offset, value in enumerate(values):
                store[start + offset] = value
            return "ok"
        return "failed"  # pragma: no cover - the loop always returns


def scan(
    link: ReadLink,
    modbus: ModbusConfig,
    units: Sequence[int],
    kinds: Sequence[str] = ("holding",),
    start: int = 0,
    count: int = 100,
    *,
    on_progress: Callable[[ScanProgress], None] | None = None,
) -> ScanResult:
    """Run a whole scan (see ``Scanner``) and return what it found."""
    return Scanner(link, modbus, units, kinds, start, count, on_progress=on_progress).run()


def _describe_ids(ids: Iterable[int]) -> str:
    """``1-5, 10`` from ``[1, 2, 3, 4, 5, 10]``."""
    ordered = sorted(set(ids))
    spans: list[str] = []
    run_start = previous = None
    for unit in [*ordered, None]:
        if unit is not None and previous is not None and unit == previous + 1:
            previous = unit
            continue
        if run_start is not None and previous is not None:
            spans.append(str(run_start) if run_start == previous else f"{run_start}-{previous}")
        run_start = previous = unit
    return ", ".join(spans)


# ============================================================================ output


def word_view(word: int) -> dict[str, Any]:
    """A word as raw hex, uint16 and int16."""
    return {"hex": f"0x{word:04X}", "uint16": word, "int16": to_int16(word)}


def result_as_dict(result: ScanResult) -> dict[str, Any]:
    """The scan as one JSON-ready document (float NaN/inf become null)."""
    chosen = {(r.unit_id, r.kind, r.address): r for r in result.draft()}
    units: list[dict[str, Any]] = []
    for unit in result.units:
        kinds: dict[str, Any] = {}
        for kind, scan in unit.kinds.items():
            entries: list[dict[str, Any]] = []
            for address in sorted(scan.values):
                value = scan.values[address]
                entry: dict[str, Any] = {"address": address}
                if kind in BIT_KINDS:
                    entry["value"] = bool(value)
                else:
                    word = int(value)
                    entry.update(word_view(word))
                    following = scan.values.get(address + 1)
                    if following is not None:
                        entry["pair"] = [
                            {
                                "type": i.type,
                                "byte_order": i.byte_order,
                                "value": i.value,
                                "plausible": i.plausible,
                            }
                            for i in interpret_pair(word, int(following))
                        ]
                draft = chosen.get((unit.unit_id, kind, address))
                if draft is not None:
                    entry["draft"] = {
                        "name": draft.name,
                        "type": draft.type,
                        "byte_order": draft.byte_order,
                        "value": draft.value,
                    }
                    if draft.length is not None:
                        entry["draft"]["length"] = draft.length
                entries.append(entry)
            kinds[kind] = {
                "registers": entries,
                "failed": [
                    {"start": f.start, "count": f.count, "reason": f.reason} for f in scan.failures
                ],
                "complete": scan.done,
            }
        entry_unit: dict[str, Any] = {"unit_id": unit.unit_id, "probe": unit.probe}
        if unit.identity is not None or unit.identity_error is not None:
            entry_unit["identity"] = unit.identity
            entry_unit["identity_error"] = unit.identity_error
        entry_unit["kinds"] = kinds
        units.append(entry_unit)
    return {
        "port": result.port,
        "units_probed": list(result.units_probed),
        "kinds": list(result.kinds),
        "start": result.start,
        "count": result.count,
        "timeout_sec": result.timeout_sec,
        "units": units,
        "requests": result.requests,
        "requests_one_per_register": result.one_register_per_request,
        "elapsed_sec": round(result.elapsed_sec, 3),
        "interrupted": result.interrupted,
        "sweep_stopped": result.sweep_stopped,
        "link_error": result.link_error,
        "skipped_zeros": [
            {"unit_id": unit_id, "kind": kind, "addresses": addresses}
            for unit_id, kind, addresses in result.skipped()
        ],
    }


# ============================================================================ the draft


def build_draft(result: ScanResult, modbus: ModbusConfig) -> dict[str, Any]:
    """The draft config document: ``[modbus]`` bus settings and one table per register.

    Raises ``NixlogError`` (exit 1) when the scan found no register: a config needs one.
    """
    registers = result.draft()
    if not registers:
        raise NixlogError(
            f"no responding registers in {', '.join(result.kinds)} "
            f"{result.start}-{result.start + result.count - 1}: no draft written"
        )
    default_unit = registers[0].unit_id
    section: dict[str, Any] = {"port": modbus.port}
    if not modbus.is_tcp:
        section.update(
            baudrate=modbus.baudrate,
            parity=modbus.parity,
            stopbits=modbus.stopbits,
            bytesize=modbus.bytesize,
        )
    section["unit_id"] = default_unit
    # Polling waits longer than a probe: the config's usual second, or what the scan needed.
    section["timeout_sec"] = max(modbus.timeout_sec, 1.0)
    if modbus.max_registers_per_request != MAX_REGISTERS_PER_REQUEST:
        section["max_registers_per_request"] = modbus.max_registers_per_request
    if modbus.request_gap_ms:
        section["request_gap_ms"] = modbus.request_gap_ms
    section["registers_to_read"] = [r.as_toml(default_unit) for r in registers]
    return {"modbus": section}


def _comment(register: DraftRegister) -> str:
    value = register.value
    shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
    described = (
        register.kind if register.kind in BIT_KINDS else f"{register.type} {register.byte_order}"
    )
    return f"# unit {register.unit_id} {register.kind} {register.address}: {shown} ({described})"


def _identity_comment(result: ScanResult) -> list[str]:
    """Comment lines with what each unit said about itself (``--identify``)."""
    return [
        f"# Unit {unit.unit_id}: "
        + ", ".join(f"{name} {text}" for name, text in unit.identity.items()).replace("\n", " ")
        for unit in result.units
        if unit.identity
    ]


def _skipped_comment(result: ScanResult) -> list[str]:
    """Comment lines naming the registers left out because they read 0."""
    lines: list[str] = []
    for unit_id, kind, addresses in result.skipped():
        lines.append(
            f"# Skipped (read 0, likely reserved): unit {unit_id} {kind} "
            f"{_describe_ids(addresses)}."
        )
    if lines:
        lines.append("# Scan with --keep-zeros to draft them too.")
    return lines


def draft_toml(result: ScanResult, modbus: ModbusConfig, now: datetime | None = None) -> str:
    """The draft as TOML text: a header, ``[modbus]``, then ``[[modbus.registers_to_read]]``.

    Values are written by tomli-w; each register gets a comment with the value the scan read,
    so the technician can check it against the panel display before renaming it.
    """
    document = build_draft(result, modbus)
    section = dict(document["modbus"])
    tables = section.pop("registers_to_read")
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Draft written by `nixlog scan-registers` on {stamp} from {result.port}.",
        "# Types and byte orders are the scan's best guess: check each value against the",
        "# device, rename the registers, add scale/units, then add [database] and [api].",
        *_identity_comment(result),
        *_skipped_comment(result),
        "",
        tomli_w.dumps({"modbus": section}).rstrip(),
    ]
    for register, table in zip(result.draft(), tables, strict=True):
        lines += ["", _comment(register), "[[modbus.registers_to_read]]"]
        lines.append(tomli_w.dumps(table).rstrip())
    text = "\n".join(lines) + "\n"
    # The comments and headers are ours, not tomli-w's: prove the text means the document.
    assert tomllib.loads(text) == document
    return text


def write_draft(path: Path, text: str) -> None:
    """Write the draft next to its final name first, then rename: never a half-written file.

    Raises ``UsageError`` (exit 2) when the file cannot be written.
    """
    partial = path.with_name(path.name + ".part")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"--output: cannot write {path}: {exc.strerror or exc}") from None
