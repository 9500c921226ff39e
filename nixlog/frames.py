"""Modbus read frames as bytes: CRC16, request ADUs, answer lengths and parsing (pure, no I/O).

``modbus_client`` owns the transaction (write, read exactly this many bytes, check, retry);
this module only knows what the bytes must be. Everything here is property-tested: a request
built and parsed back is the same request, an answer built and parsed back gives the same
values, and the CRC matches the golden values of the Modbus specification.

RTU ADU: unit, function, data, CRC16 (low byte first). TCP ADU: a 7-byte MBAP header
(transaction id, protocol 0, length of what follows, unit) and the PDU, no CRC.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

READ_FUNCTIONS: Final = frozenset({1, 2, 3, 4})
BIT_FUNCTIONS: Final = frozenset({1, 2})
EXCEPTION_BIT: Final = 0x80
RTU_EXCEPTION_LENGTH: Final = 5  # unit, function | 0x80, code, CRC (2)
RTU_HEADER_LENGTH: Final = 3  # unit, function, byte count (or exception code)
MBAP_LENGTH: Final = 7
MBAP_HEADER: Final = struct.Struct(">HHHB")
"""Transaction id, protocol, length (of the unit byte and PDU), unit: how a TCP frame starts."""
MAX_PDU_LENGTH: Final = 253
_START_COUNT: Final = struct.Struct(">HH")  # what a read request PDU asks for, after its function


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC16 (polynomial 0xA001 reflected, start 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC16, low byte first (a complete RTU frame)."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """True when the last two bytes of ``frame`` are the CRC16 of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def byte_count(function: int, count: int) -> int:
    """Data bytes of a normal answer: 2 per register, or the bits packed 8 to a byte."""
    return (count + 7) // 8 if function in BIT_FUNCTIONS else 2 * count


def read_pdu(function: int, start: int, count: int) -> bytes:
    """The PDU of a read: function, start address, quantity."""
    if function not in READ_FUNCTIONS:
        raise ValueError(f"not a read function: {function}")
    if not (0 <= start <= 0xFFFF and 1 <= count <= 2000):
        raise ValueError(f"start {start} / count {count} out of range")
    return struct.pack(">BHH", function, start, count)


def rtu_request(unit: int, function: int, start: int, count: int) -> bytes:
    """The 8-byte RTU frame of a read request."""
    return with_crc(bytes([unit]) + read_pdu(function, start, count))


def rtu_answer_length(function: int, count: int) -> int:
    """Length of the normal RTU answer to a read: unit, function, byte count, data, CRC."""
    return 5 + byte_count(function, count)


def tcp_request(transaction: int, unit: int, function: int, start: int, count: int) -> bytes:
    """The 12-byte Modbus TCP frame of a read request."""
    pdu = read_pdu(function, start, count)
    return MBAP_HEADER.pack(transaction & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


class Mbap(NamedTuple):
    """A Modbus TCP header: ``length`` counts the unit byte and the PDU.

    A named tuple, not a frozen dataclass: one is built per answer on the poll path.
    """

    transaction: int
    protocol: int
    length: int
    unit: int


def parse_mbap(header: bytes) -> Mbap:
    """The fields of a 7-byte MBAP header."""
    return Mbap._make(MBAP_HEADER.unpack(header))


class Answer(NamedTuple):
    """A checked answer: ``values`` (words or bits), or the exception ``code``."""

    values: list[int] | list[bool] | None = None
    code: int | None = None


class FrameError(ValueError):
    """Bytes that are not the answer to the request; ``reason`` is the short diagnosis."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_read_pdu(pdu: bytes, function: int, count: int) -> int | None:
    """The exception code of a read's answer PDU, or None when it carries the data asked for;
    ``FrameError`` otherwise. Checks without unpacking the values (the poll path checks every
    answer once in the transaction and unpacks it once in ``read_answer_values``)."""
    if not pdu:
        raise FrameError("empty answer")
    if pdu[0] == function | EXCEPTION_BIT:
        if len(pdu) != 2:
            raise FrameError("bad exception frame")
        return pdu[1]
    if pdu[0] != function:
        raise FrameError(f"answer with function {pdu[0]} (asked {function})")
    expected = byte_count(function, count)
    if len(pdu) < 2 or pdu[1] != expected or len(pdu) != 2 + expected:
        got = pdu[1] if len(pdu) > 1 else 0
        raise FrameError(f"answer with {got} data bytes (expected {expected})")
    return None


def parse_pdu(pdu: bytes, function: int, count: int) -> Answer:
    """Check an answer PDU (function, byte count, data) against the read it answers."""
    code = _check_read_pdu(pdu, function, count)
    if code is not None:
        return Answer(code=code)
    return Answer(values=read_answer_values(pdu, function, count))


def read_answer_values(pdu: bytes, function: int, count: int) -> list[int] | list[bool]:
    """The words (or bits) of a read's answer PDU that has passed ``check_answer``.

    Unpacks without checking again: the link checks every answer once, in its transaction.
    """
    if function in BIT_FUNCTIONS:
        return [bool(pdu[2 + i // 8] >> (i % 8) & 1) for i in range(count)]
    return list(struct.unpack_from(f">{count}H", pdu, 2))


def parse_rtu_answer(frame: bytes, unit: int, function: int, count: int) -> Answer:
    """Check a complete RTU answer frame (CRC, unit, then the PDU) for the request."""
    if not crc_ok(frame):
        raise FrameError("crc error")
    if frame[0] != unit:
        raise FrameError(f"answer from unit {frame[0]} (asked {unit})")
    return parse_pdu(frame[1:-2], function, count)


def rtu_frame_length(header: bytes) -> int | None:
    """Length of an RTU answer from its first 3 bytes, or None if they are no read answer."""
    function = header[1]
    if function & EXCEPTION_BIT and function & 0x7F in READ_FUNCTIONS:
        return RTU_EXCEPTION_LENGTH
    if function in READ_FUNCTIONS:
        return 5 + header[2]
    return None


def encode_answer_pdu(function: int, values: list[int] | list[bool]) -> bytes:
    """The answer PDU carrying ``values`` (the inverse of ``parse_pdu``; devices in tests)."""
    if function in BIT_FUNCTIONS:
        data = bytearray((len(values) + 7) // 8)
        for index, bit in enumerate(values):
            if bit:
                data[index // 8] |= 1 << (index % 8)
        payload = bytes(data)
    else:
        payload = struct.pack(f">{len(values)}H", *values)
    return bytes([function, len(payload)]) + payload


def rtu_answer(unit: int, function: int, values: list[int] | list[bool]) -> bytes:
    """A complete RTU answer frame carrying ``values``."""
    return with_crc(bytes([unit]) + encode_answer_pdu(function, values))


def rtu_exception(unit: int, function: int, code: int) -> bytes:
    """A complete RTU exception frame."""
    return with_crc(bytes([unit, function | EXCEPTION_BIT, code]))


def parse_rtu_request(frame: bytes) -> tuple[int, int, int, int]:
    """(unit, function, start, count) of an 8-byte RTU read request; FrameError if bad."""
    if len(frame) != 8 or not crc_ok(frame):
        raise FrameError("crc error")
    function, start, count = struct.unpack(">BHH", frame[1:6])
    return frame[0], function, start, count


# ----------------------------------------------------------------------------- any request
# Writes (FC 5, 6, 16) and device identification (FC 43/14) use the same transaction as reads:
# the link sends a request PDU and asks ``answer_pdu_length`` how long the answer must be (from
# what has arrived so far), then ``check_answer`` whether it answers the request.

WRITE_SINGLE_COIL: Final = 5
WRITE_SINGLE_REGISTER: Final = 6
WRITE_MULTIPLE_REGISTERS: Final = 16
WRITE_FUNCTIONS: Final = frozenset(
    {WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER, WRITE_MULTIPLE_REGISTERS}
)
MEI_FUNCTION: Final = 0x2B
READ_DEVICE_ID: Final = 0x0E
DEVICE_ID_HEADER: Final = 7  # function, MEI type, read code, conformity, more, next id, count
MAX_WRITE_REGISTERS: Final = 123


def write_pdu(function: int, address: int, values: Sequence[int] | Sequence[bool]) -> bytes:
    """The PDU of a write: one coil (FC 5), one register (FC 6) or several registers (FC 16)."""
    if not 0 <= address <= 0xFFFF:
        raise ValueError(f"address {address} out of range")
    if function == WRITE_SINGLE_COIL:
        if len(values) != 1:
            raise ValueError("FC 5 writes exactly one coil")
        return struct.pack(">BHH", function, address, 0xFF00 if values[0] else 0x0000)
    words = [int(value) for value in values]
    if any(not 0 <= word <= 0xFFFF for word in words):
        raise ValueError("register word out of range")
    if function == WRITE_SINGLE_REGISTER:
        if len(words) != 1:
            raise ValueError("FC 6 writes exactly one register")
        return struct.pack(">BHH", function, address, words[0])
    if function == WRITE_MULTIPLE_REGISTERS:
        if not 1 <= len(words) <= MAX_WRITE_REGISTERS or address + len(words) > 0x10000:
            raise ValueError(f"cannot write {len(words)} registers at {address}")
        header = struct.pack(">BHHB", function, address, len(words), 2 * len(words))
        return header + struct.pack(f">{len(words)}H", *words)
    raise ValueError(f"not a write function: {function}")


def device_id_pdu(read_code: int = 1, object_id: int = 0) -> bytes:
    """The PDU of Read Device Identification (FC 43, MEI 14): basic (1), regular (2)..."""
    if not (1 <= read_code <= 4 and 0 <= object_id <= 0xFF):
        raise ValueError(f"read code {read_code} / object {object_id} out of range")
    return bytes([MEI_FUNCTION, READ_DEVICE_ID, read_code, object_id])


def answer_pdu_length(request: bytes, prefix: bytes) -> int:
    """How long the answer PDU to ``request`` must be, as far as ``prefix`` (its start) tells.

    Never less than what must still arrive before more can be known; once the answer is
    complete it is its exact length. An exception answer is 2 bytes.
    """
    function = request[0]
    if prefix and prefix[0] == function | EXCEPTION_BIT:
        return 2
    if function in READ_FUNCTIONS:
        _, count = _START_COUNT.unpack_from(request, 1)
        return 2 + byte_count(function, count)
    if function in WRITE_FUNCTIONS:
        return 5
    if function == MEI_FUNCTION:
        if len(prefix) < DEVICE_ID_HEADER:
            return DEVICE_ID_HEADER
        length = DEVICE_ID_HEADER
        for _ in range(prefix[6]):
            if len(prefix) < length + 2:
                return length + 2
            length += 2 + prefix[length + 1]
        return length
    raise ValueError(f"unsupported function {function}")


def longest_answer_pdu(request: bytes) -> int:
    """The longest answer PDU ``request`` can get (for the wire time of a deadline)."""
    if request[0] == MEI_FUNCTION:
        return MAX_PDU_LENGTH
    return answer_pdu_length(request, b"")


def check_answer(request: bytes, answer: bytes) -> int | None:
    """Check an answer PDU against its request: the exception code, or None when it is the
    answer; ``FrameError`` when it answers something else."""
    function = request[0]
    if function in READ_FUNCTIONS:
        _, count = _START_COUNT.unpack_from(request, 1)
        return _check_read_pdu(answer, function, count)
    if not answer:
        raise FrameError("empty answer")
    if answer[0] == function | EXCEPTION_BIT:
        if len(answer) != 2:
            raise FrameError("bad exception frame")
        return answer[1]
    if answer[0] != function:
        raise FrameError(f"answer with function {answer[0]} (asked {function})")
    if function in WRITE_FUNCTIONS:
        if answer != request[:5]:
            raise FrameError("write answer does not echo the request")
        return None
    if function == MEI_FUNCTION:
        if len(answer) < DEVICE_ID_HEADER or answer[1] != READ_DEVICE_ID:
            raise FrameError("not a device identification answer")
        if len(answer) != answer_pdu_length(request, answer):
            raise FrameError("device identification answer of the wrong length")
        return None
    raise FrameError(f"unsupported function {function}")


@dataclass(frozen=True)
class DeviceIdentity:
    """What a Read Device Identification answer holds: object id → text, and continuation."""

    objects: dict[int, str]
    conformity: int
    more_follows: bool
    next_object: int


def parse_device_id(answer: bytes) -> DeviceIdentity:
    """The objects of a checked FC 43/14 answer PDU (texts decoded as latin-1)."""
    conformity, more, next_object, count = answer[3], answer[4], answer[5], answer[6]
    objects: dict[int, str] = {}
    position = DEVICE_ID_HEADER
    for _ in range(count):
        object_id, length = answer[position], answer[position + 1]
        data = answer[position + 2 : position + 2 + length]
        objects[object_id] = data.decode("latin-1").rstrip("\x00 ")
        position += 2 + length
    return DeviceIdentity(objects, conformity, more == 0xFF, next_object)


def encode_device_id_answer(
    read_code: int, objects: dict[int, bytes], *, more: bool = False, next_object: int = 0
) -> bytes:
    """An FC 43/14 answer PDU carrying ``objects`` (the inverse of ``parse_device_id``)."""
    body = b"".join(bytes([oid, len(data)]) + data for oid, data in objects.items())
    header = bytes(
        [MEI_FUNCTION, READ_DEVICE_ID, read_code, 0x81, 0xFF if more else 0, next_object]
    )
    return header + bytes([len(objects)]) + body


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """A complete RTU frame: unit, PDU, CRC."""
    return with_crc(bytes([unit]) + pdu)


def tcp_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    """A complete Modbus TCP frame: MBAP header and PDU."""
    return MBAP_HEADER.pack(transaction & 0xFFFF, 0, len(pdu) + 1, unit) + pdu
