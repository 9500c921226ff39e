"""`nixlog scan-registers` against real peers: the simulator over Modbus TCP and RTU (socat)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nixlog import core
from nixlog.cli import app
from nixlog.config import ModbusConfig, RegisterConfig, load_config
from nixlog.modbus_client import create_client
from nixlog.model import Value
from nixlog.scanner import Scanner, ScanProgress, ScanResult, bus_settings
from nixlog.simulator import SimulatorContext, SimulatorServer
from tests.fixtures_modbus import with_unit

# Scattered values with illegal-address gaps, each in the type and order a meter might use.
SPARSE: tuple[tuple[RegisterConfig, Value], ...] = (
    (RegisterConfig("volts", 0, type="float32"), 230.5),
    (RegisterConfig("power", 2, type="int32", byte_order="CDAB"), -1234),
    (RegisterConfig("status", 4, type="uint16"), 0x0108),
    (RegisterConfig("temp", 5, type="int16"), -123),
    (RegisterConfig("amps", 10, type="float32", byte_order="CDAB"), 12.34),
    (RegisterConfig("freq", 40, type="uint16"), 5001),
    (RegisterConfig("energy", 60, type="float32", byte_order="BADC"), 1234.5),
    (RegisterConfig("counter", 97, type="uint16"), 42),
    (RegisterConfig("in_volts", 3, kind="input", type="float32", byte_order="DCBA"), 49.98),
    (RegisterConfig("relay", 2, kind="coil", type="bool"), True),
    (RegisterConfig("door", 9, kind="discrete", type="bool"), True),
)
SPARSE_HOLDING = {a for r, _ in SPARSE if r.kind == "holding" for a in range(r.address, r.end)}


def sparse_context(units: Sequence[int] = (3, 7)) -> SimulatorContext:
    """The sparse map served on ``units``, every value pinned."""
    registers = [reg for unit in units for reg in with_unit([r for r, _ in SPARSE], unit)]
    context = SimulatorContext(registers, refuse_unmapped=True)
    for register, value in SPARSE:
        context.pin(register.name, value)
    return context


def run_scan(
    port: str,
    units: Sequence[int],
    kinds: Sequence[str] = ("holding",),
    count: int = 100,
    timeout: float = 0.1,
    **settings: Any,
) -> tuple[ScanResult, list[tuple[float, ScanProgress]]]:
    """Scan ``port`` with the library; the result and the timed progress events."""
    modbus = bus_settings(None, port=port, timeout=timeout)
    if settings:
        from dataclasses import replace

        modbus = replace(modbus, **settings)
    events: list[tuple[float, ScanProgress]] = []
    link = create_client(modbus)
    try:
        result = Scanner(
            link,
            modbus,
            units,
            kinds,
            0,
            count,
            on_progress=lambda event: events.append((time.monotonic(), event)),
        ).run()
    finally:
        link.close()
    return result, events


def unit_phase_seconds(events: list[tuple[float, ScanProgress]]) -> float:
    """Seconds from the first unit probe to the end of unit discovery."""
    unit_events = [at for at, event in events if event.phase == "units"]
    return unit_events[-1] - unit_events[0]


def invoke(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the CLI where no config file can be found."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NIXLOG_CONFIG", raising=False)
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output
    return result


# ----------------------------------------------------------------------------- TCP


def test_tcp_finds_exactly_the_units_and_every_sparse_register(
    start_simulator: Callable[..., SimulatorServer],
) -> None:
    """Over TCP the scan finds units 3 and 7 of 1-10 and every register of the sparse map;
    each silent id costs only the timeout."""
    server = start_simulator(sparse_context((3, 7)))
    result, events = run_scan(server.address, range(1, 11), timeout=0.1)
    assert [unit.unit_id for unit in result.units] == [3, 7]
    for unit in result.units:
        assert set(unit.kinds["holding"].values) == SPARSE_HOLDING
        assert unit.kinds["holding"].failures == []
    seconds = unit_phase_seconds(events)
    assert 8 * 0.1 * 0.9 <= seconds <= 8 * 0.1 + 0.6  # 8 silent ids x 0.1 s, answers are fast


def test_walk_beats_one_request_per_register(
    start_simulator: Callable[..., SimulatorServer],
) -> None:
    """On a meter-like map (runs with refused gaps) the scan sends under half the requests
    a one-register-per-request scan would, and finds every register."""
    registers = [RegisterConfig(f"f{a}", a, type="float32") for a in range(0, 40, 2)]
    registers += [RegisterConfig(f"u{a}", a) for a in range(50, 80)]
    registers += [RegisterConfig(f"i{a}", a, type="int16") for a in range(84, 100)]
    context = SimulatorContext(registers, refuse_unmapped=True)
    server = start_simulator(context)
    result, _ = run_scan(server.address, [1], count=100)
    expected = {a for r in registers for a in range(r.address, r.end)}
    assert set(result.units[0].kinds["holding"].values) == expected
    register_requests = context.request_count(1) - 1  # less the unit probe
    assert register_requests == result.requests - 1
    assert register_requests < 100 / 2, register_requests


def test_all_kinds_and_the_draft_reads_the_same_values(
    start_simulator: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    """--kind all finds holding, input, coil and discrete values; the draft's most plausible
    types are the map's own, and polling with the draft reads exactly the scanned values."""
    server = start_simulator(sparse_context((3,)))
    result, _ = run_scan(server.address, [3], ("holding", "input", "coil", "discrete"))
    draft = result.draft()
    chosen = {(d.kind, d.address): (d.type, d.byte_order) for d in draft}
    for register, _ in SPARSE:
        expected = (
            ("bool", "ABCD")
            if register.kind in ("coil", "discrete")
            else (
                register.type,
                register.byte_order,
            )
        )
        assert chosen[(register.kind, register.address)] == expected, register.name
    from nixlog.scanner import draft_toml

    path = tmp_path / "draft.toml"
    path.write_text(draft_toml(result, bus_settings(None, port=server.address)), "utf-8")
    config = load_config(path)
    poller = core.build_poller(config)
    try:
        reading = poller.poll_once()
    finally:
        poller.close()
    assert reading is not None and reading.errors == {}
    assert reading.values == {d.name: d.value for d in draft}
    assert reading.values["hr_0"] == 230.5 and reading.values["hr_2"] == -1234


def test_cli_json_and_draft_round_trip_through_config_check(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--json prints one parsable document; --output writes a draft `config check` accepts."""
    server = start_simulator(sparse_context((3, 7)))
    draft = tmp_path / "draft.toml"
    result = invoke(
        [
            "scan-registers",
            "--port",
            server.address,
            "--units",
            "1-4,7",
            "--count",
            "64",
            "--timeout",
            "0.1",
            "--json",
            "--output",
            str(draft),
        ],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [unit["unit_id"] for unit in document["units"]] == [3, 7]
    holding = document["units"][0]["kinds"]["holding"]
    first = holding["registers"][0]
    assert first["address"] == 0 and first["hex"] == "0x4366"
    assert first["draft"] == {
        "name": "u3_hr_0",
        "type": "float32",
        "byte_order": "ABCD",
        "value": 230.5,
    }
    assert {(p["type"], p["byte_order"]) for p in first["pair"] if p["plausible"]} >= {
        ("float32", "ABCD")
    }
    # Isolated registers cost about what one request per address would (the walk's floor
    # is one request per missing address); test_walk_beats_one_request_per_register shows
    # the gain on runs.
    assert document["requests"] < 1.3 * document["requests_one_per_register"]
    assert f"Wrote 14 registers to {draft}" in result.stderr
    check = CliRunner().invoke(app, ["config", "check", "-c", str(draft)])
    assert check.exit_code == 0, check.output
    assert "u7_hr_60" in check.stdout


def test_cli_human_output_shows_tables_and_summary(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The human output (--wide) lists each responding address with raw hex, the
    interpretations, the draft choice, and a summary line with the request count."""
    server = start_simulator(sparse_context((3,)))
    result = invoke(
        ["scan-registers", "--port", server.address, "--units", "3", "--count", "20", "--wide"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Unit 3 holding 0-19: 8 responding" in out
    assert "0x4366" in out and "f32 230.5 ✓" in out
    assert "hr_0 float32 ABCD = 230.5" in out
    assert "hr_2 int32 CDAB = -1234" in out
    assert "(part of hr_0)" in out
    assert "1 of 1 probed unit id answered (3)" in out
    assert result.stderr == ""


# ----------------------------------------------------------------------------- RTU


def test_rtu_finds_units_registers_and_polls_the_draft(
    start_simulator: Callable[..., SimulatorServer],
    pty_pair: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over RTU through a socat pty pair the CLI finds unit 2 of 1-4 and every sparse
    register, and polling with its draft over the same line reads the scanned values."""
    server_end, client_end = pty_pair
    line = ModbusConfig(port=server_end, registers=(), baudrate=19200)
    start_simulator(sparse_context((2,)), port=server_end, modbus=line)
    draft = tmp_path / "draft.toml"
    started = time.monotonic()
    result = invoke(
        [
            "scan-registers",
            "--port",
            client_end,
            "--baudrate",
            "19200",
            "--units",
            "1-4",
            "--timeout",
            "0.15",
            "--json",
            "--output",
            str(draft),
        ],
        tmp_path,
        monkeypatch,
    )
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [unit["unit_id"] for unit in document["units"]] == [2]
    found = {entry["address"] for entry in document["units"][0]["kinds"]["holding"]["registers"]}
    assert found == SPARSE_HOLDING
    # 3 silent ids: the timeout plus the line settling after it (one more timeout) each.
    assert elapsed < 3 * (0.15 + 0.15) + 8.0
    config = load_config(draft)
    assert config.modbus.baudrate == 19200 and config.modbus.port == client_end
    poller = core.build_poller(config)
    try:
        reading = poller.poll_once()
    finally:
        poller.close()
    assert reading is not None and reading.errors == {}
    drafted = {
        e["draft"]["name"]: e["draft"]["value"]
        for e in document["units"][0]["kinds"]["holding"]["registers"]
        if "draft" in e
    }
    assert reading.values == drafted


# ----------------------------------------------------------------------------- errors


def test_missing_serial_path_is_exit_69(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A serial path that does not exist: one Error line naming it, exit 69."""
    result = invoke(
        ["scan-registers", "--port", str(tmp_path / "ttyUSB9"), "--units", "1"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 69
    assert result.stderr.splitlines() == [
        f"Error: cannot open serial port {tmp_path / 'ttyUSB9'}: no such device"
    ]
    assert result.stdout == ""


def test_tcp_port_with_nothing_listening_is_exit_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TCP port nobody listens on: one Error line saying the connection was refused, 69."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    result = invoke(
        ["scan-registers", "--port", f"tcp://127.0.0.1:{free_port}", "--units", "1"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 69
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot connect to tcp://127.0.0.1:")
    assert "refused" in lines[0]


def test_no_answering_unit_is_exit_69(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody answers among the probed ids: one Error line saying which ids, exit 69."""
    server = start_simulator(sparse_context((9,)))
    result = invoke(
        ["scan-registers", "--port", server.address, "--units", "1-3", "--timeout", "0.05"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 69
    assert result.stderr.splitlines() == [
        f"Error: no unit answered on {server.address} (probed unit 1-3, 0.05 s timeout each)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--units", "5-1"], 'Error: --units: range "5-1" runs backwards (write 1-5)'),
        (["--units", "1,x"], 'Error: --units: "x" is not a unit id or a range like "1-5"'),
        (["--units", "300"], "Error: --units: unit id 300 is outside 0-255"),
        (["--kind", "registers"], "Error: --kind: expected one of holding, input, coil"),
        (["--start", "65500", "--count", "100"], "Error: --start 65500 --count 100: the range"),
        ([], "Error: no port to scan: pass --port"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unusable options exit 2 with one Error line, before any port is opened."""
    port = [] if not args else ["--port", str(tmp_path / "never-opened")]
    result = invoke(["scan-registers", *port, *args], tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_config_bus_settings_are_used_and_options_override(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With -c the scan uses the config's port; --timeout overrides the config's timeout."""
    server = start_simulator(sparse_context((3,)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[modbus]\nport = "{server.address}"\ntimeout_sec = 5.0\n'
        '[[modbus.registers_to_read]]\nname = "x"\naddress = 0\n',
        encoding="utf-8",
    )
    started = time.monotonic()
    result = invoke(
        ["scan-registers", "-c", str(config), "--units", "1-3", "--timeout", "0.1", "--json"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 3  # two silent ids at 0.1 s, not 5 s
    document = json.loads(result.stdout)
    assert document["timeout_sec"] == 0.1 and document["port"] == server.address


def _scan_process(port: str, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NIXLOG_CONFIG": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "nixlog", "scan-registers", "--port", port, *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_in_the_unit_sweep_scans_the_units_found(
    start_simulator: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    """SIGINT mid-sweep ends the sweep, not the scan: the unit that answered is still
    scanned, its registers shown and drafted, and the command exits 0."""
    context = sparse_context((1,))
    server = start_simulator(context)
    draft = tmp_path / "draft.toml"
    process = _scan_process(
        server.address, tmp_path, "--units", "1-247", "--timeout", "0.2", "--output", str(draft)
    )
    deadline = time.monotonic() + 15
    while context.request_count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until unit 1 answered and the silent ids are being probed
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, (stdout, stderr)
    assert "(unit sweep stopped by Ctrl-C)" in stdout and "answered (1)" in stdout
    assert "hr_0 float32 ABCD = 230.5" in stdout
    assert "Unit sweep stopped; scanning the units found so far" in stderr
    assert 'name = "hr_0"' in draft.read_text(encoding="utf-8")
    assert "Traceback" not in stderr


def test_second_ctrl_c_stops_the_scan_and_exits_130(
    start_simulator: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    """SIGINT during the register scan stops it: what was found is printed, exit 130."""
    context = sparse_context((1,))
    context.delay(1, 0.3)  # slow answers: the register scan is still running at the signal
    server = start_simulator(context)
    process = _scan_process(server.address, tmp_path, "--units", "1", "--timeout", "1")
    deadline = time.monotonic() + 15
    while context.request_count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, (stdout, stderr)
    assert "(interrupted)" in stdout and "answered (1)" in stdout
    assert stderr.strip().splitlines()[-1] == "Interrupted."
    assert "Traceback" not in stderr
