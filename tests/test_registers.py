"""Pure decoding, encoding and request planning (no I/O)."""

from __future__ import annotations

import math
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixlog.config import BYTE_ORDERS, VALUE_TYPES, RegisterConfig, load_config
from nixlog.model import Value
from nixlog.registers import (
    DEFAULT_MAX_GAP,
    Decoder,
    ReadRequest,
    apply_scale,
    compile_decoder,
    decode,
    decode_words,
    encode,
    encode_value,
    plan_requests,
    shortest_float32,
    split_at_gaps,
)
from nixlog.simulator import EXAMPLE_REGISTERS
from tests.fixtures_modbus import EXAMPLE_CONFIG

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
WIDE_ORDERS = st.sampled_from(BYTE_ORDERS)
NARROW_ORDERS = st.sampled_from(("ABCD", "BADC"))

GOLDEN = [
    # (type, byte order, value, words on the wire)
    ("float32", "ABCD", 230.5, [0x4366, 0x8000]),
    ("float32", "CDAB", 230.5, [0x8000, 0x4366]),
    ("float32", "BADC", 230.5, [0x6643, 0x0080]),
    ("float32", "DCBA", 230.5, [0x0080, 0x6643]),
    ("float32", "ABCD", -1.0, [0xBF80, 0x0000]),
    ("int16", "ABCD", -2, [0xFFFE]),
    ("int16", "BADC", -2, [0xFEFF]),
    ("uint16", "ABCD", 5001, [0x1389]),
    ("uint16", "BADC", 5001, [0x8913]),
    ("int32", "ABCD", -100000, [0xFFFE, 0x7960]),
    ("int32", "CDAB", -100000, [0x7960, 0xFFFE]),
    ("uint32", "ABCD", 0x12345678, [0x1234, 0x5678]),
    ("uint32", "CDAB", 0x12345678, [0x5678, 0x1234]),
    ("uint32", "BADC", 0x12345678, [0x3412, 0x7856]),
    ("uint32", "DCBA", 0x12345678, [0x7856, 0x3412]),
    ("uint64", "ABCD", 0x0102030405060708, [0x0102, 0x0304, 0x0506, 0x0708]),
    ("uint64", "CDAB", 0x0102030405060708, [0x0708, 0x0506, 0x0304, 0x0102]),
    ("uint64", "DCBA", 0x0102030405060708, [0x0807, 0x0605, 0x0403, 0x0201]),
    ("int64", "ABCD", -1, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    ("float64", "ABCD", 1.0, [0x3FF0, 0x0000, 0x0000, 0x0000]),
    ("float64", "CDAB", 1.0, [0x0000, 0x0000, 0x0000, 0x3FF0]),
    ("string", "ABCD", "AB", [0x4142]),
    ("string", "BADC", "AB", [0x4241]),
]


@pytest.mark.parametrize(("value_type", "order", "value", "words"), GOLDEN)
def test_golden_words(value_type: str, order: str, value: object, words: list[int]) -> None:
    """Known register words decode to known values and encode back to the same words."""
    length = len(words) if value_type == "string" else None
    assert decode_words(value_type, order, words) == value
    assert encode_value(value_type, order, value, length) == words  # type: ignore[arg-type]


@pytest.mark.parametrize("value_type", sorted(INT_RANGES))
@given(data=st.data())
def test_integers_round_trip(value_type: str, data: st.DataObject) -> None:
    """decode(encode(x)) == x for every integer type, its whole range, every byte order."""
    low, high = INT_RANGES[value_type]
    value = data.draw(st.integers(low, high))
    orders = NARROW_ORDERS if value_type.endswith("16") else WIDE_ORDERS
    order = data.draw(orders)
    register = RegisterConfig("x", 0, type=value_type, byte_order=order)
    decoded = decode(register, encode(register, value))
    assert decoded == value and type(decoded) is int


@given(value=st.floats(width=32, allow_nan=False), order=WIDE_ORDERS)
def test_float32_round_trip(value: float, order: str) -> None:
    """decode(encode(x)) is the same float32 as x (as its shortest decimal) in every order."""
    register = RegisterConfig("x", 0, type="float32", byte_order=order)
    decoded = decode(register, encode(register, value))
    assert isinstance(decoded, float)
    assert struct.pack(">f", decoded) == struct.pack(">f", value)


@given(value=st.floats(allow_nan=False), order=WIDE_ORDERS)
def test_float64_round_trip(value: float, order: str) -> None:
    """decode(encode(x)) == x exactly for float64 in every byte order."""
    register = RegisterConfig("x", 0, type="float64", byte_order=order)
    assert decode(register, encode(register, value)) == value


@given(
    text=st.text(
        st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
        max_size=8,
    ),
    order=NARROW_ORDERS,
)
def test_string_round_trip(text: str, order: str) -> None:
    """decode(encode(s)) == s for UTF-8 text that fits, NUL padding stripped, both orders."""
    register = RegisterConfig("x", 0, type="string", byte_order=order, length=16)
    assert decode(register, encode(register, text)) == text


@given(words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), order=WIDE_ORDERS)
def test_float32_words_round_trip(words: list[int], order: str) -> None:
    """Every non-NaN float32 bit pattern survives decode then encode unchanged."""
    value = decode_words("float32", order, words)
    assert isinstance(value, float)
    if math.isnan(value):
        return
    assert encode_value("float32", order, value) == words


@given(
    raw=st.integers(-(2**15), 2**15 - 1),
    scale=st.sampled_from([0.1, 0.01, 0.001, 0.5, 2.5]),
    offset=st.sampled_from([0.0, -40.0, 0.5, 273.15]),
)
def test_scaled_round_trip(raw: int, scale: float, offset: float) -> None:
    """A scaled integer decodes to raw*scale+offset and encodes back to the same raw word."""
    register = RegisterConfig("x", 0, type="int16", scale=scale, offset=offset)
    words = encode_value("int16", "ABCD", raw)
    value = decode(register, words)
    assert value == pytest.approx(raw * scale + offset)
    assert encode(register, value) == words


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        (23, 0.1, 0.0, 2.3),
        (5001, 0.01, 0.0, 50.01),
        (12345678, 0.001, 0.0, 12345.678),
        (215, 0.1, -40.0, -18.5),
        (7, 1.0, 0.0, 7),
        (7, 10.0, 5.0, 75),
    ],
)
def test_apply_scale_is_clean(raw: int, scale: float, offset: float, expected: float) -> None:
    """Scaling gives the config's resolution without float noise; whole factors stay int."""
    result = apply_scale(raw, scale, offset)
    assert result == expected and type(result) is type(expected)


def test_float32_shortest_decimal() -> None:
    """A float32 230.1 comes back as 230.1, not 230.10000610351562."""
    assert shortest_float32(struct.unpack(">f", struct.pack(">f", 230.1))[0]) == 230.1
    assert decode_words("float32", "ABCD", encode_value("float32", "ABCD", 0.1)) == 0.1


def test_bits_and_flags() -> None:
    """Coils decode as bools; ``bit = N`` picks that bit of a holding word."""
    coil = RegisterConfig("c", 3, kind="coil", type="bool")
    assert decode(coil, [True]) is True and encode(coil, False) == [False]
    flag = RegisterConfig("f", 9, type="bool", bit=3)
    assert decode(flag, [0x0108]) is True
    assert decode(flag, [0x0100]) is False
    assert encode(flag, True) == [0x0008]


def test_string_strips_padding_and_survives_bad_bytes() -> None:
    """Trailing NULs and spaces go; bytes that are not UTF-8 still decode (latin-1)."""
    assert decode_words("string", "ABCD", [0x4142, 0x2000, 0x0000]) == "AB"
    assert decode_words("string", "ABCD", [0x41FF]) == "A\xff"


@pytest.mark.parametrize(
    ("value_type", "value"),
    [("int16", 40000), ("uint16", -1), ("uint32", 2**32), ("int16", 1.5), ("float32", 1e39)],
)
def test_encode_refuses_values_that_do_not_fit(value_type: str, value: float) -> None:
    """Encoding a value outside the type raises ValueError instead of wrapping around."""
    with pytest.raises(ValueError, match=r"fit|whole"):
        encode_value(value_type, "ABCD", value)


def test_decode_refuses_wrong_word_count() -> None:
    """A slice of the wrong length is an error, never a silently wrong value."""
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode_words("float32", "ABCD", [1])
    with pytest.raises(ValueError, match="out of range"):
        decode_words("uint16", "ABCD", [70000])


def _outcome(decoder: Decoder, words: list[int] | list[bool]) -> tuple[str, str]:
    """What a decoder made of ``words``: the value (type and exact repr) or the error text."""
    try:
        value: Value = decoder(words)
    except ValueError as exc:
        return "error", str(exc)
    return type(value).__name__, repr(value)


def _words_for(register: RegisterConfig) -> st.SearchStrategy[list[int] | list[bool]]:
    """Words for ``register``: mostly a checked answer's, also the wrong count, range or type."""
    size = register.count
    return st.one_of(
        st.lists(st.integers(0, 0xFFFF), min_size=size, max_size=size),
        st.lists(st.integers(0, 0xFFFF), max_size=5),
        st.lists(st.integers(-2, 0x10001), min_size=size, max_size=size),
        st.lists(st.booleans(), min_size=size, max_size=size),
    )


# 16-bit types and strings in CDAB/DCBA too: decode refuses them, and so must the decoder.
ALL_SHAPES = [(value_type, order) for value_type in VALUE_TYPES for order in BYTE_ORDERS]


@pytest.mark.parametrize(("value_type", "order"), ALL_SHAPES)
@given(
    scale=st.sampled_from([1.0, 2.0, 0.1, 0.01, 0.001, 0.5, -1.0]),
    offset=st.sampled_from([0.0, 3.0, -40.0, 273.15]),
    bit=st.integers(0, 15),
    data=st.data(),
)
def test_compiled_decoder_is_decode(
    value_type: str, order: str, scale: float, offset: float, bit: int, data: st.DataObject
) -> None:
    """The poll path's decoder of a register gives exactly what decode gives, errors too."""
    register = RegisterConfig(
        "r",
        0,
        kind=data.draw(st.sampled_from(("holding", "input"))),
        type=value_type,
        byte_order=order,
        scale=scale,
        offset=offset,
        length=2 if value_type == "string" else None,
        bit=bit if value_type == "bool" else None,
    )
    words = data.draw(_words_for(register))
    assert _outcome(compile_decoder(register), words) == _outcome(
        lambda w: decode(register, w), words
    )


@pytest.mark.parametrize("kind", ["coil", "discrete"])
@given(
    words=st.one_of(st.lists(st.booleans(), max_size=2), st.lists(st.integers(0, 2), max_size=2))
)
def test_compiled_bit_decoder_is_decode(kind: str, words: list[int] | list[bool]) -> None:
    """Coils and discrete inputs too: one bit, or the same error as decode."""
    register = RegisterConfig("b", 0, kind=kind, type="bool")
    assert _outcome(compile_decoder(register), words) == _outcome(
        lambda w: decode(register, w), words
    )


@given(words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), order=WIDE_ORDERS)
def test_compiled_float_decoder_keeps_nan_and_shortest(words: list[int], order: str) -> None:
    """Every float32 bit pattern (NaN, inf, denormals) decodes as decode does."""
    register = RegisterConfig("f", 0, type="float32", byte_order=order)
    assert _outcome(compile_decoder(register), words) == _outcome(
        lambda w: decode(register, w), words
    )


def test_request_decoders_take_each_registers_slice() -> None:
    """A planned request's decoders name its registers and cut the same slices as slice_for."""
    plan = plan_requests(EXAMPLE_REGISTERS)
    for request in plan:
        raw = list(range(request.count))
        assert [(name, raw[first:end]) for name, first, end, _ in request.decoders] == [
            (register.name, request.slice_for(register, raw)) for register in request.registers
        ]
        assert request.decoders is request.decoders  # built once, on first use


# --------------------------------------------------------------------------- planning


def test_example_map_plan() -> None:
    """The 12-register example map is read in 4 requests per cycle (11 without coalescing)."""
    plan = plan_requests(EXAMPLE_REGISTERS)
    assert [(r.unit_id, r.kind, r.start, r.count) for r in plan] == [
        (1, "holding", 100, 12),
        (1, "input", 0, 21),
        (1, "coil", 0, 1),
        (1, "discrete", 0, 1),
    ]
    assert sum(len(r.registers) for r in plan) == 12
    assert len(plan_requests(EXAMPLE_REGISTERS, max_gap=0)) == 7


def test_example_registers_match_example_config() -> None:
    """The simulator's built-in default map is exactly examples/config.toml's map."""
    assert load_config(EXAMPLE_CONFIG).modbus.registers == EXAMPLE_REGISTERS


def test_gap_rule() -> None:
    """Gaps up to max_gap are bridged; a larger gap starts a new request."""
    a = RegisterConfig("a", 0, type="uint16")
    b = RegisterConfig("b", 1 + DEFAULT_MAX_GAP, type="uint16")
    c = RegisterConfig("c", 2 + 2 * DEFAULT_MAX_GAP + 1, type="uint16")
    plan = plan_requests([c, b, a])
    assert [(r.start, r.count) for r in plan] == [(0, 2 + DEFAULT_MAX_GAP), (c.address, 1)]
    assert plan[0].bridged == DEFAULT_MAX_GAP


def test_request_size_limit() -> None:
    """No request exceeds max_registers_per_request; contiguous runs are split at the limit."""
    registers = [RegisterConfig(f"r{i}", 2 * i, type="float32") for i in range(100)]
    plan = plan_requests(registers)
    assert [r.count for r in plan] == [124, 76]
    small = plan_requests(registers, max_registers_per_request=10)
    assert all(r.count <= 10 for r in small) and len(small) == 20
    with pytest.raises(ValueError, match="more than the 3"):
        plan_requests([RegisterConfig("big", 0, type="uint64")], max_registers_per_request=3)


def test_bits_merge_to_2000() -> None:
    """Coils merge into requests of up to 2000 bits, bridging up to 160 unused bits."""
    coils = [RegisterConfig(f"c{i}", i * 100, kind="coil", type="bool") for i in range(30)]
    plan = plan_requests(coils)
    assert [(r.start, r.count) for r in plan] == [(0, 1901), (2000, 901)]


def test_units_and_kinds_never_mix() -> None:
    """Requests are per (unit, kind), ordered by unit, then kind, then address."""
    registers = [
        RegisterConfig("b", 0, kind="input", unit_id=2),
        RegisterConfig("a", 1, kind="holding", unit_id=2),
        RegisterConfig("c", 2, kind="holding", unit_id=1),
        RegisterConfig("d", 3, kind="input", unit_id=1),
    ]
    plan = plan_requests(registers)
    assert [(r.unit_id, r.kind) for r in plan] == [
        (1, "holding"),
        (1, "input"),
        (2, "holding"),
        (2, "input"),
    ]


def test_split_at_gaps() -> None:
    """A refused bridged request splits into contiguous requests carrying the same registers."""
    request = plan_requests(EXAMPLE_REGISTERS)[1]
    parts = split_at_gaps(request)
    assert [(p.start, p.count) for p in parts] == [(0, 8), (12, 2), (20, 1)]
    assert {r for p in parts for r in p.registers} == set(request.registers)
    assert all(p.bridged == 0 for p in parts)


def test_slice_for_register() -> None:
    """A request hands each register exactly its own words."""
    register = RegisterConfig("x", 12, kind="input", type="int32")
    request = ReadRequest(1, "input", 10, 6, (register,))
    assert request.slice_for(register, [0, 1, 2, 3, 4, 5]) == [2, 3]
    assert request.describe() == "unit 1 input 10-15 (6 registers)"
    assert replace(request, count=1).describe() == "unit 1 input 10-10 (1 register)"
