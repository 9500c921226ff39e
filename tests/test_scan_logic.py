"""The scanner's pure parts: unit ranges, the block walk, plausibility, the draft."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixlog.config import ModbusConfig, load_config
from nixlog.errors import NixlogError, UsageError
from nixlog.registers import encode_value
from nixlog.scanner import (
    SCORE_16BIT,
    BlockWalk,
    KindScan,
    ScanResult,
    UnitScan,
    answer_timeout,
    best_pair,
    bus_settings,
    choose_registers,
    draft_toml,
    interpret_pair,
    parse_kinds,
    parse_units,
    score_float,
)


def walk_cost(present: set[int], start: int, count: int, limit: int = 125) -> tuple[int, set[int]]:
    """Run a BlockWalk against a device that refuses any read touching a missing address."""
    walk = BlockWalk(start, count, limit)
    requests, found = 0, set[int]()
    while (block := walk.next_block()) is not None:
        requests += 1
        addresses = range(block[0], block[0] + block[1])
        assert 1 <= block[1] <= limit
        if all(address in present for address in addresses):
            found.update(addresses)
            walk.answered()
        else:
            walk.refused()
    return requests, found


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", (1,)),
        ("1-5,10,20-22", (1, 2, 3, 4, 5, 10, 20, 21, 22)),
        (" 3 , 1-2 ,2", (1, 2, 3)),
        ("0-0,255", (0, 255)),
    ],
)
def test_parse_units_accepts_ranges_and_lists(text: str, expected: tuple[int, ...]) -> None:
    """Unit ranges and lists become sorted unique ids."""
    assert parse_units(text) == expected


def test_parse_units_default_is_the_whole_bus() -> None:
    """The default range 1-247 covers every assignable unit id."""
    assert parse_units("1-247") == tuple(range(1, 248))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected ids or ranges"),
        ("1,,2", "expected ids or ranges"),
        ("a-3", '"a-3" is not a unit id'),
        ("1-2-3", '"1-2-3" is not a unit id'),
        ("5-1", "runs backwards (write 1-5)"),
        ("300", "unit id 300 is outside 0-255"),
        ("-1", '"-1" is not a unit id'),
    ],
)
def test_parse_units_refuses_bad_text(text: str, message: str) -> None:
    """A bad range is a UsageError (exit 2) that names the problem."""
    with pytest.raises(UsageError) as caught:
        parse_units(text)
    assert message in caught.value.message
    assert caught.value.message.startswith("--units: ")
    assert caught.value.exit_code == 2


def test_parse_kinds() -> None:
    """One kind gives itself, "all" gives the four, anything else is a usage error."""
    assert parse_kinds("input") == ("input",)
    assert parse_kinds("ALL") == ("holding", "input", "coil", "discrete")
    with pytest.raises(UsageError, match="--kind"):
        parse_kinds("holdings")


def test_bus_settings_options_override_the_config() -> None:
    """Options override the config's bus; no config means 9600 8N1 with the scan timeout."""
    base = ModbusConfig(port="/dev/ttyUSB0", registers=(), baudrate=19200, timeout_sec=2.0)
    merged = bus_settings(base, baudrate=9600, parity="e", timeout=0.5)
    assert (merged.port, merged.baudrate, merged.parity, merged.timeout_sec) == (
        "/dev/ttyUSB0",
        9600,
        "E",
        0.5,
    )
    assert merged.retries == 0 and merged.registers == ()
    bare = bus_settings(None, port="tcp://10.0.0.5:502")
    assert bare.is_tcp and bare.timeout_sec == 0.3 and bare.baudrate == 9600


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "no port to scan"),
        ({"port": "tcp://host:99999"}, "--port: bad TCP port"),
        ({"port": "/dev/x", "parity": "X"}, "--parity"),
        ({"port": "/dev/x", "stopbits": 3}, "--stopbits"),
        ({"port": "/dev/x", "timeout": 0.0}, "--timeout"),
        ({"port": "/dev/x", "baudrate": 10}, "--baudrate"),
    ],
)
def test_bus_settings_refuse_unusable_options(options: dict[str, object], message: str) -> None:
    """An option that cannot work is a usage error naming the option."""
    with pytest.raises(UsageError, match=message):
        bus_settings(None, **options)  # type: ignore[arg-type]


def test_answer_timeout_adds_wire_time_on_serial_only() -> None:
    """A full answer at 9600 baud gets ~0.27 s on top; TCP gets nothing extra."""
    serial = ModbusConfig(port="/dev/ttyUSB0", registers=())
    extra = answer_timeout(serial, "holding", 125, 0.3) - 0.3
    assert 0.26 < extra < 0.29
    # 2000 bits are 250 bytes, as many as 125 registers.
    assert answer_timeout(serial, "coil", 2000, 0.3) == answer_timeout(serial, "holding", 125, 0.3)
    assert (
        answer_timeout(ModbusConfig(port="tcp://h:502", registers=()), "holding", 125, 0.3) == 0.3
    )


# ----------------------------------------------------------------------------- block walk


def test_walk_reads_a_dense_range_in_full_blocks() -> None:
    """A range where every address exists costs one request per 125 registers."""
    requests, found = walk_cost(set(range(1000)), 0, 1000)
    assert found == set(range(1000))
    assert requests == 8


def test_walk_finds_runs_with_far_fewer_requests_than_addresses() -> None:
    """A meter-like map (runs with gaps) is found with under half the naive requests."""
    present = set(range(40)) | set(range(50, 80)) | set(range(84, 100))
    requests, found = walk_cost(present, 0, 100)
    assert found == present
    assert requests < 50


def test_walk_pays_about_one_request_per_missing_address() -> None:
    """Past the end of a map each address costs one request: the floor for a complete scan."""
    requests, found = walk_cost(set(range(112)), 0, 1000)
    assert found == set(range(112))
    assert 888 <= requests <= 888 + 40


def test_walk_honours_a_smaller_request_limit() -> None:
    """No block is larger than max_registers_per_request."""
    requests, found = walk_cost(set(range(100)), 0, 100, limit=16)
    assert found == set(range(100))
    assert requests == 7


@settings(max_examples=200, deadline=None)
@given(
    present=st.sets(st.integers(0, 199), max_size=200),
    start=st.integers(0, 50),
    count=st.integers(1, 150),
    limit=st.integers(1, 125),
)
def test_walk_finds_exactly_the_present_addresses(
    present: set[int], start: int, count: int, limit: int
) -> None:
    """Whatever the map, the walk finds every present address in range and nothing else,
    and never needs more than twice the naive request count."""
    requests, found = walk_cost(present, start, count, limit)
    assert found == {a for a in present if start <= a < start + count}
    assert requests <= 2 * count + 8


# ----------------------------------------------------------------------------- meaning


def words(value_type: str, order: str, value: float) -> tuple[int, int]:
    """The two words a device sends for ``value``."""
    first, second = encode_value(value_type, order, value)
    return first, second


@pytest.mark.parametrize(
    ("value_type", "order", "value"),
    [
        ("float32", "ABCD", 230.5),
        ("float32", "CDAB", 12.34),
        ("float32", "BADC", 1234.5),
        ("float32", "DCBA", 49.98),
        ("float32", "ABCD", -0.75),
        ("int32", "CDAB", -1234),
        ("int32", "ABCD", -2),
        ("int32", "BADC", -300),
    ],
)
def test_best_pair_recognises_typical_values(value_type: str, order: str, value: float) -> None:
    """Typical meter values come out as the type and byte order they were written in."""
    best = best_pair(*words(value_type, order, value))
    assert best is not None
    assert (best.type, best.byte_order, best.value) == (value_type, order, value)


def test_interpret_pair_covers_every_type_and_order() -> None:
    """Twelve interpretations: int32/uint32/float32 in ABCD, CDAB, BADC, DCBA."""
    readings = interpret_pair(0x4366, 0x8000)
    assert {(i.type, i.byte_order) for i in readings} == {
        (t, o) for t in ("int32", "uint32", "float32") for o in ("ABCD", "CDAB", "BADC", "DCBA")
    }
    plausible = {(i.type, i.byte_order) for i in readings if i.plausible}
    assert ("float32", "ABCD") in plausible
    assert ("float32", "CDAB") not in plausible  # 0x80004366 is a denormal


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e-40, 0.0, 1e-12, 3.4e38, -5e15])
def test_score_float_refuses_implausible_values(value: float) -> None:
    """NaN, infinities, denormals, zero and absurd magnitudes are not plausible."""
    assert score_float(value) == 0.0


def test_nan_pair_has_no_value() -> None:
    """A NaN float reading carries None (JSON-safe) and is not plausible."""
    nan = [
        i for i in interpret_pair(0x7FC0, 0x0000) if i.type == "float32" and i.byte_order == "ABCD"
    ]
    assert nan[0].value is None and not nan[0].plausible


def test_small_integer_words_are_not_taken_for_a_float() -> None:
    """0x0000 0x00BC reads as -0.0078125 in DCBA, but two small integers are likelier."""
    best = best_pair(0x0000, 0x00BC)
    assert best is not None and best.score < 2 * SCORE_16BIT  # loses to two 16-bit registers
    draft = choose_registers(1, "holding", {100: 0x0000, 101: 0x00BC})
    assert [(d.type, d.value) for d in draft] == [("uint16", 0), ("uint16", 188)]


def test_choose_registers_segments_a_mixed_run() -> None:
    """A run of float, int32, status word and small negative int16 is cut where it should be."""
    values: dict[int, int] = {}
    for address, value_type, order, value in (
        (0, "float32", "ABCD", 230.5),
        (2, "int32", "CDAB", -1234),
    ):
        values[address], values[address + 1] = words(value_type, order, value)
    values[4] = 0x0108
    values[5] = encode_value("int16", "ABCD", -123)[0]
    draft = choose_registers(1, "holding", values)
    assert [(d.name, d.type, d.byte_order, d.value) for d in draft] == [
        ("hr_0", "float32", "ABCD", 230.5),
        ("hr_2", "int32", "CDAB", -1234),
        ("hr_4", "uint16", "ABCD", 264),
        ("hr_5", "int16", "ABCD", -123),
    ]


def test_choose_registers_names_bits_and_prefixes_units() -> None:
    """Bits become bools named coil_N/di_N; several units get a u<id>_ prefix."""
    coils = choose_registers(2, "coil", {0: True, 7: False})
    assert [(d.name, d.type, d.value) for d in coils] == [
        ("coil_0", "bool", True),
        ("coil_7", "bool", False),
    ]
    inputs = choose_registers(3, "input", {3: 17}, prefix_unit=True)
    assert inputs[0].name == "u3_ir_3"


# ----------------------------------------------------------------------------- draft


def scan_result(units: list[UnitScan], port: str = "/dev/ttyUSB0") -> ScanResult:
    """A finished scan of holding 0-99 holding ``units``."""
    return ScanResult(
        port=port,
        units_probed=tuple(u.unit_id for u in units),
        kinds=("holding",),
        start=0,
        count=100,
        timeout_sec=0.3,
        units=units,
    )


def test_draft_is_valid_toml_that_config_check_accepts(tmp_path: Path) -> None:
    """The draft parses, carries the bus settings and loads as a config."""
    first, second = words("float32", "ABCD", 230.5)
    unit1 = UnitScan(1, "answered", {"holding": KindScan("holding", 0, 100, {0: first, 1: second})})
    unit2 = UnitScan(2, "answered", {"coil": KindScan("coil", 0, 100, {5: True})})
    modbus = ModbusConfig(port="/dev/ttyUSB0", registers=(), baudrate=19200, parity="E")
    text = draft_toml(scan_result([unit1, unit2]), modbus)
    assert "[[modbus.registers_to_read]]" in text
    assert "# unit 1 holding 0: 230.5 (float32 ABCD)" in text
    document = tomllib.loads(text)
    assert document["modbus"]["baudrate"] == 19200 and document["modbus"]["parity"] == "E"
    path = tmp_path / "draft.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    registers = {r.name: r for r in config.modbus.registers}
    assert set(registers) == {"u1_hr_0", "u2_coil_5"}
    assert registers["u1_hr_0"].type == "float32" and registers["u1_hr_0"].unit_id == 1
    assert registers["u2_coil_5"].kind == "coil" and registers["u2_coil_5"].unit_id == 2


def test_draft_without_registers_is_refused() -> None:
    """A scan that found no register gives no draft (a config needs at least one)."""
    empty = UnitScan(
        1, "exception 2 (illegal data address)", {"holding": KindScan("holding", 0, 100)}
    )
    with pytest.raises(NixlogError, match="no responding registers"):
        draft_toml(scan_result([empty]), ModbusConfig(port="tcp://h:502", registers=()))
