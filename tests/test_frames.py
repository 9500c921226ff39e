"""Modbus frames as bytes (nixlog.frames): CRC golden values and build/parse round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixlog.frames import (
    FrameError,
    crc16,
    crc_ok,
    encode_answer_pdu,
    parse_mbap,
    parse_pdu,
    parse_rtu_answer,
    parse_rtu_request,
    rtu_answer,
    rtu_answer_length,
    rtu_exception,
    rtu_frame_length,
    rtu_request,
    tcp_request,
)

units = st.integers(0, 255)
starts = st.integers(0, 0xFFFF)
register_counts = st.integers(1, 125)
bit_counts = st.integers(1, 2000)


@pytest.mark.parametrize(
    ("body", "crc_bytes"),
    [
        ("01 03 00 00 00 0A", "C5 CD"),  # the classic example of the Modbus RTU guides
        ("11 03 00 6B 00 03", "76 87"),  # Modbus over serial line spec, read holding 108-110
        ("01 04 00 00 00 01", "31 CA"),
        ("01 01 00 00 00 08", "3D CC"),
    ],
)
def test_crc_golden_values(body: str, crc_bytes: str) -> None:
    """CRC16 of known request frames, sent low byte first, matches the published values."""
    frame = bytes.fromhex(body)
    assert crc16(frame).to_bytes(2, "little") == bytes.fromhex(crc_bytes)


def test_rtu_request_golden_frame() -> None:
    """Reading 10 holding registers from 0 on unit 1 is 01 03 00 00 00 0A C5 CD."""
    assert rtu_request(1, 3, 0, 10) == bytes.fromhex("01030000000AC5CD")


def test_tcp_request_golden_frame() -> None:
    """The TCP form: transaction, protocol 0, length 6, unit, then the PDU, no CRC."""
    assert tcp_request(0x1234, 1, 3, 0, 10) == bytes.fromhex("1234000000060103000000 0A")


@given(units, st.sampled_from([1, 2, 3, 4]), starts, st.integers(1, 2000))
def test_request_round_trip(unit: int, function: int, start: int, count: int) -> None:
    """A request built and parsed back is the same request, and its CRC checks."""
    frame = rtu_request(unit, function, start, count)
    assert len(frame) == 8 and crc_ok(frame)
    assert parse_rtu_request(frame) == (unit, function, start, count)


@given(units, st.sampled_from([3, 4]), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125))
def test_register_answer_round_trip(unit: int, function: int, words: list[int]) -> None:
    """An answer carrying words parses back to the same words, with the length predicted."""
    frame = rtu_answer(unit, function, words)
    assert len(frame) == rtu_answer_length(function, len(words))
    assert rtu_frame_length(frame[:3]) == len(frame)
    assert parse_rtu_answer(frame, unit, function, len(words)).values == words


@given(units, st.sampled_from([1, 2]), st.lists(st.booleans(), min_size=1, max_size=2000))
def test_bit_answer_round_trip(unit: int, function: int, bits: list[bool]) -> None:
    """Bits packed 8 to a byte, LSB first, parse back to the same bits."""
    frame = rtu_answer(unit, function, bits)
    assert len(frame) == rtu_answer_length(function, len(bits))
    assert parse_rtu_answer(frame, unit, function, len(bits)).values == bits


@given(units, st.sampled_from([1, 2, 3, 4]), st.integers(1, 255))
def test_exception_round_trip(unit: int, function: int, code: int) -> None:
    """An exception frame is 5 bytes and parses to its code."""
    frame = rtu_exception(unit, function, code)
    assert rtu_frame_length(frame[:3]) == 5 == len(frame)
    assert parse_rtu_answer(frame, unit, function, 1).code == code


@given(
    units,
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    st.integers(0, 8 * 125 - 1),
)
def test_any_flipped_bit_is_a_crc_error(unit: int, words: list[int], bit: int) -> None:
    """One bit flipped anywhere in an answer is caught (never parsed into values)."""
    frame = bytearray(rtu_answer(unit, 3, words))
    frame[bit // 8 % len(frame)] ^= 1 << (bit % 8)
    with pytest.raises(FrameError, match="crc error"):
        parse_rtu_answer(bytes(frame), unit, 3, len(words))


@given(units, units, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10))
def test_answer_from_another_unit_is_named(asked: int, sender: int, words: list[int]) -> None:
    """A valid answer from another unit is "answer from unit X (asked Y)"."""
    frame = rtu_answer(sender, 3, words)
    if sender == asked:
        assert parse_rtu_answer(frame, asked, 3, len(words)).values == words
    else:
        with pytest.raises(FrameError, match=rf"answer from unit {sender} \(asked {asked}\)"):
            parse_rtu_answer(frame, asked, 3, len(words))


@given(register_counts, register_counts)
def test_wrong_byte_count_is_refused(asked: int, served: int) -> None:
    """An answer with another number of registers than asked is refused, whatever its CRC."""
    pdu = encode_answer_pdu(3, [7] * served)
    if asked == served:
        assert parse_pdu(pdu, 3, asked).values == [7] * asked
    else:
        with pytest.raises(FrameError, match="data bytes"):
            parse_pdu(pdu, 3, asked)


def test_wrong_function_is_refused() -> None:
    """An answer to function 4 is not taken for a read of function 3."""
    with pytest.raises(FrameError, match=r"function 4 \(asked 3\)"):
        parse_pdu(encode_answer_pdu(4, [1]), 3, 1)


@given(st.integers(0, 0xFFFF), units, st.sampled_from([1, 2, 3, 4]), starts, bit_counts)
def test_mbap_round_trip(
    transaction: int, unit: int, function: int, start: int, count: int
) -> None:
    """A TCP request's header parses back: transaction, protocol 0, length 6, unit."""
    header = parse_mbap(tcp_request(transaction, unit, function, start, count)[:7])
    assert (header.transaction, header.protocol, header.length, header.unit) == (
        transaction,
        0,
        6,
        unit,
    )


def test_request_out_of_range_is_refused() -> None:
    """A write function or a zero count is no read request."""
    with pytest.raises(ValueError, match="not a read function"):
        rtu_request(1, 6, 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        rtu_request(1, 3, 0, 0)
