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


# ----------------------------------------------------------------------------- writes, FC 43/14

from nixlog.frames import (  # noqa: E402  (grouped with the tests that use them)
    answer_pdu_length,
    check_answer,
    device_id_pdu,
    encode_device_id_answer,
    parse_device_id,
    write_pdu,
)


def test_write_golden_frames() -> None:
    """FC 6 of 0x0003 at 1 and FC 5 "on" at 0xAC are the spec's examples."""
    assert write_pdu(6, 1, [3]) == bytes.fromhex("0600010003")
    assert write_pdu(5, 0xAC, [True]) == bytes.fromhex("0500ACFF00")
    assert write_pdu(16, 1, [0x000A, 0x0102]) == bytes.fromhex("100001000204000A0102")


@given(starts, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123))
def test_write_answer_is_the_echo(start: int, words: list[int]) -> None:
    """A write is answered by the echo of function, address and value/count: accepted as
    5 bytes; any other echo is refused; an exception answer gives its code."""
    function = 6 if len(words) == 1 else 16
    if start + len(words) > 0x10000:
        return
    request = write_pdu(function, start, words)
    echo = request[:5]
    assert answer_pdu_length(request, echo[:1]) == 5
    assert check_answer(request, echo) is None
    assert check_answer(request, bytes([function | 0x80, 2])) == 2
    wrong = echo[:4] + bytes([echo[4] ^ 1])
    with pytest.raises(FrameError):
        check_answer(request, wrong)


@given(
    st.dictionaries(
        st.integers(0, 6),
        st.binary(min_size=0, max_size=30).map(lambda b: b.replace(b"\0", b"")),
        max_size=7,
    )
)
def test_device_id_round_trip(objects: dict[int, bytes]) -> None:
    """An FC 43/14 answer built and parsed back gives the same objects; its length is known
    from its prefix byte by byte (never beyond what has arrived plus what must follow)."""
    request = device_id_pdu(1, 0)
    answer = encode_device_id_answer(1, objects)
    for cut in range(1, len(answer)):
        assert answer_pdu_length(request, answer[:cut]) > cut
    assert answer_pdu_length(request, answer) == len(answer)
    assert check_answer(request, answer) is None
    parsed = parse_device_id(answer)
    assert parsed.objects == {k: v.decode("latin-1").rstrip(" ") for k, v in objects.items()}


def test_device_id_exception_and_wrong_length() -> None:
    """Exception 1 (not offered) is a code; a truncated answer is refused."""
    request = device_id_pdu()
    assert check_answer(request, bytes([0xAB, 1])) == 1
    answer = encode_device_id_answer(1, {0: b"ACME"})
    with pytest.raises(FrameError):
        check_answer(request, answer[:-1])
