"""What `nixlog scan-registers` shows: a compact table, --wide, --identify, zeros, hints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.modbus_client import create_client
from nixlog.scanner import Scanner, ScanProgress, bus_settings
from nixlog.simulator import SimulatorServer
from tests.test_scan_accuracy import MAP_END, known_context


def invoke(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the CLI where no config file can be found."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NIXLOG_CONFIG", raising=False)
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output
    return result


def scan_args(address: str, *extra: str) -> list[str]:
    return ["scan-registers", "--port", address, "--units", "1", "--count", str(MAP_END), *extra]


def test_compact_table_fits_100_columns(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default table is one line per address and no wider than 100 columns."""
    server = start_simulator(known_context())
    result = invoke(scan_args(server.address), tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert max(len(line) for line in table) <= 100  # prose lines wrap at the terminal's width
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == MAP_END  # one row per responding address, none wrapped
    assert any("hr_0 float32 ABCD = 230.5" in line for line in rows)
    assert any("hr_58 string = 'PM5560'" in line for line in rows)
    assert any("0: left out" in line for line in rows)
    assert "ABCD (this+next)" not in result.stdout


def test_wide_shows_every_byte_order(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--wide adds the four byte-order columns with each 32-bit reading."""
    server = start_simulator(known_context())
    result = invoke(scan_args(server.address, "--count", "4", "--wide"), tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    for order in ("ABCD", "CDAB", "BADC", "DCBA"):
        assert f"{order} (this+next)" in result.stdout
    assert "f32 230.5 ✓" in result.stdout


def test_identify_reads_vendor_product_revision(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--identify asks FC 43/14: the line, the JSON and the draft's comment carry it."""
    context = known_context()
    context.identity = {"VendorName": "ACME", "ProductCode": "PM-1", "MajorMinorRevision": "2.1"}
    server = start_simulator(context)
    draft = tmp_path / "draft.toml"
    shown = invoke(
        scan_args(server.address, "--count", "4", "--identify", "--output", str(draft)),
        tmp_path,
        monkeypatch,
    )
    assert shown.exit_code == 0, shown.output
    assert "Unit 1 identifies as vendor: ACME, product_code: PM-1, revision: 2.1" in shown.stdout
    assert "# Unit 1: vendor ACME, product_code PM-1, revision 2.1" in draft.read_text("utf-8")
    as_json = invoke(
        scan_args(server.address, "--count", "4", "--identify", "--json"), tmp_path, monkeypatch
    )
    unit = json.loads(as_json.stdout)["units"][0]
    assert unit["identity"] == {"vendor": "ACME", "product_code": "PM-1", "revision": "2.1"}


def test_zeros_are_left_out_unless_kept(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The draft leaves zero registers out and lists them; --keep-zeros drafts them."""
    server = start_simulator(known_context())
    draft = tmp_path / "draft.toml"
    result = invoke(scan_args(server.address, "--output", str(draft)), tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    text = draft.read_text("utf-8")
    assert "# Skipped (read 0, likely reserved): unit 1 holding 24-27, 56-57, 93-95." in text
    assert 'name = "hr_24"' not in text
    assert "(9 zero registers left out)" in result.stderr
    kept = invoke(
        scan_args(server.address, "--keep-zeros", "--output", str(draft)), tmp_path, monkeypatch
    )
    assert kept.exit_code == 0, kept.output
    assert 'name = "hr_24"' in draft.read_text("utf-8")


def test_progress_counts_what_was_found(start_simulator: Callable[..., SimulatorServer]) -> None:
    """Progress events carry the found count: units in the sweep, addresses after it."""
    server = start_simulator(known_context())
    modbus = bus_settings(None, port=server.address, timeout=0.1)
    events: list[ScanProgress] = []
    link = create_client(modbus)
    try:
        Scanner(link, modbus, [1, 2], ("holding",), 0, MAP_END, on_progress=events.append).run()
    finally:
        link.close()
    units = [e.found for e in events if e.phase == "units"]
    registers = [e.found for e in events if e.phase == "registers"]
    assert units[0] == 0 and units[-1] == 1
    assert registers[-1] == MAP_END and registers == sorted(registers)


def test_busy_serial_port_names_the_service(
    pty_pair: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serial port another program holds: exit 69 and a hint that the service may hold it."""
    import serial  # type: ignore[import-untyped]

    _, client_end = pty_pair
    holder = serial.Serial(client_end, exclusive=True)
    try:
        result = invoke(
            ["scan-registers", "--port", client_end, "--units", "1"], tmp_path, monkeypatch
        )
    finally:
        holder.close()
    assert result.exit_code == 69
    assert "in use by another program" in result.stderr
    assert "sudo systemctl stop nixlog" in result.stderr
    assert result.stderr.count("\n") == 1


def test_identify_over_rtu(
    start_simulator: Callable[..., SimulatorServer],
    pty_pair: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FC 43/14 over a serial line: the answer's length is learnt as it arrives."""
    server_end, client_end = pty_pair
    context = known_context()
    context.identity = {"VendorName": "ACME RTU", "ProductCode": "PM-9"}
    start_simulator(context, port=server_end)
    result = invoke(
        ["scan-registers", "--port", client_end, "--units", "1", "--count", "4", "--identify"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    assert "Unit 1 identifies as vendor: ACME RTU, product_code: PM-9" in result.stdout
