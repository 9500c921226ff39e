"""`nixlog poll`, `nixlog simulate` and the plan in `nixlog config check`, as operators see them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.simulator import SimulatorServer
from tests.fixtures_modbus import EXAMPLE_PINNED, write_config

runner = CliRunner()

FAR_REGISTER = """
[[modbus.registers_to_read]]
name = "far"
address = 500
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean(result: object) -> None:
    output = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    assert "Traceback" not in output


def test_poll_once_shows_a_table(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """--once prints every register with its value and units, exits 0, stderr empty."""
    config = write_config(tmp_path, tcp_simulator.address)
    result = runner.invoke(app, ["poll", "-c", str(config), "--once"])
    _clean(result)
    assert result.exit_code == 0, result.stderr
    for name in EXAMPLE_PINNED:
        assert name in result.stdout
    assert "230.5" in result.stdout and "kWh" in result.stdout and "12345.678" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / "nixlog.db").exists()  # poll stores nothing without --save


def test_poll_json_count(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """--json --count 3 prints three JSON lines {timestamp, values, errors} with every value."""
    config = write_config(tmp_path, tcp_simulator.address)
    result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--count", "3"])
    _clean(result)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        record = json.loads(line)
        assert set(record) == {"timestamp", "values", "errors"}
        assert record["values"] == EXAMPLE_PINNED
        assert record["errors"] == {}


def test_poll_partial_failure_exits_1(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """A register the device refuses shows its error; the others are read; exit 1."""
    config = write_config(tmp_path, tcp_simulator.address, extra_toml=FAR_REGISTER)
    result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--once"])
    _clean(result)
    assert result.exit_code == 1
    record = json.loads(result.stdout)
    assert record["errors"] == {"far": "exception 2 (illegal data address)"}
    assert record["values"] == EXAMPLE_PINNED


def test_poll_table_shows_errors(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """The table names the error of a failed register next to it."""
    config = write_config(tmp_path, tcp_simulator.address, extra_toml=FAR_REGISTER)
    result = runner.invoke(app, ["poll", "-c", str(config), "--once"])
    _clean(result)
    assert result.exit_code == 1
    far_line = next(line for line in result.stdout.splitlines() if "far" in line)
    assert "exception 2 (illegal data address)" in far_line


def test_dead_tcp_port_exits_69_with_one_line(tmp_path: Path) -> None:
    """Nothing listening: exit 69, one "Error:" line naming the address, fast, no traceback."""
    config = write_config(tmp_path, f"tcp://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    result = runner.invoke(app, ["poll", "-c", str(config), "--once"])
    _clean(result)
    assert time.monotonic() - started < 3
    assert result.exit_code == 69
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: cannot connect to tcp://127.0.0.1:")
    assert "connection refused" in result.stderr


def test_missing_serial_port_exits_69_with_one_line(tmp_path: Path) -> None:
    """A serial path that does not exist: exit 69 and one line naming the path."""
    config = write_config(tmp_path, str(tmp_path / "ttyUSB7"))
    result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--once"])
    _clean(result)
    assert result.exit_code == 69
    assert result.stdout == ""
    assert (
        result.stderr == f"Error: cannot open serial port {tmp_path / 'ttyUSB7'}: no such device\n"
    )


def test_silent_unit_exits_69(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """A port that is up but no unit answering is "unreachable" too: 69, within seconds."""
    config = write_config(tmp_path, tcp_simulator.address, unit_id=7)
    started = time.monotonic()
    result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--once"])
    _clean(result)
    assert time.monotonic() - started < 3
    assert result.exit_code == 69
    assert json.loads(result.stdout)["values"] == {}
    assert result.stderr.endswith(
        f"no answer from unit 7 on {tcp_simulator.address}: timeout (0.3 s × 1 try)\n"
    )


def test_poll_save_stores_readings(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """--save writes every reading to the configured database through the warehouse."""
    config = write_config(tmp_path, tcp_simulator.address)
    result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--count", "3", "--save"])
    _clean(result)
    assert result.exit_code == 0, result.stderr
    assert "Saved 3 readings" in result.stderr
    conn = database.open_db(tmp_path / "nixlog.db", create=False)
    try:
        rows = database.get_unsent_readings(conn, 10)
    finally:
        database.close(conn)
    assert len(rows) == 3
    assert rows[0].values == EXAMPLE_PINNED and rows[0].device_id == "test-logger"


def test_config_check_prints_the_plan(tmp_path: Path) -> None:
    """config check prints requests per cycle and each request's unit, kind, start, count."""
    config = write_config(tmp_path, "tcp://127.0.0.1:5020")
    result = runner.invoke(app, ["config", "check", "-c", str(config)])
    _clean(result)
    assert result.exit_code == 0, result.stderr
    assert "Request plan: 4 requests per cycle (11 without coalescing)" in result.stdout
    plan_rows = [line for line in result.stdout.splitlines() if "voltage_l1, voltage_l2" in line]
    assert plan_rows and all(field in plan_rows[0] for field in ("input", " 0 ", " 21 "))


def test_config_check_counts_one_register_in_the_singular(tmp_path: Path) -> None:
    """A one-register map is "1 register" read in "1 request per cycle", not "1 registers"."""
    config = tmp_path / "one.toml"
    config.write_text(
        '[modbus]\nport = "tcp://127.0.0.1:5020"\n'
        '[[modbus.registers_to_read]]\nname = "voltage"\naddress = 0\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["config", "check", "-c", str(config)])
    _clean(result)
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "OK — 1 register on" in text
    assert "Request plan: 1 request per cycle" in text


def test_config_check_refuses_an_impossible_plan(tmp_path: Path) -> None:
    """A register larger than max_registers_per_request is a config error naming the key."""
    config = write_config(tmp_path, "tcp://127.0.0.1:5020")
    text = config.read_text().replace(
        "max_registers_per_request = 125", "max_registers_per_request = 2"
    )
    config.write_text(text)
    result = runner.invoke(app, ["config", "check", "-c", str(config)])
    _clean(result)
    assert result.exit_code == 78
    assert "modbus.max_registers_per_request" in result.stderr
    assert '"energy_total" needs 4 registers' in result.stderr


def test_simulate_serves_until_ctrl_c(tmp_path: Path) -> None:
    """`nixlog simulate` serves the example map until SIGINT, then exits 130 cleanly."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "NIXLOG_CONFIG": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "nixlog", "simulate", "--port", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        assert "Simulating 12 registers (unit 1) from the example map on " + address in banner
        config = write_config(tmp_path, address)
        result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--once"])
        assert result.exit_code == 0, result.stderr
        values = json.loads(result.stdout)["values"]
        assert 200 < values["voltage_l1"] < 260 and 49 < values["frequency"] < 51
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "Traceback" not in stderr and stdout == ""
    assert stderr.strip() == "Interrupted."


def test_simulate_on_a_busy_port_says_so(
    start_simulator: Callable[..., SimulatorServer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A port already in use: one error line, exit 69, no traceback."""
    busy = start_simulator().address
    monkeypatch.chdir(tmp_path)  # no ./config.toml: the example map
    result = runner.invoke(
        app, ["simulate", "--port", busy], env={"NIXLOG_CONFIG": ""}, catch_exceptions=False
    )
    _clean(result)
    assert result.exit_code == 69
    assert result.stderr.startswith(f"Error: cannot serve on {busy}")


@pytest.mark.parametrize(("command", "option"), [("poll", "--once"), ("simulate", "--port")])
def test_help(command: str, option: str) -> None:
    """Each command documents its options."""
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and option in result.stdout
