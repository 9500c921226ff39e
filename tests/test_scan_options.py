"""Commissioning options of `scan-registers`: scan defaults, which config, early checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.simulator import SimulatorServer
from tests.test_scan_device import sparse_context

SLOW_CONFIG = """\
[modbus]
port = "{port}"
baudrate = 19200
timeout_sec = 5.0
retries = 3

[[modbus.registers_to_read]]
name = "x"
address = 0
"""


def invoke(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the CLI in ``cwd`` without $NIXLOG_CONFIG."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("NIXLOG_CONFIG", raising=False)
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output
    return result


def test_port_option_ignores_a_found_config_and_says_so(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --port, ./config.toml's 5 s timeout is not used (0.3 s), and stderr says so."""
    server = start_simulator(sparse_context((3,)))
    (tmp_path / "config.toml").write_text(SLOW_CONFIG.format(port="/dev/ttyUSB9"), "utf-8")
    started = time.monotonic()
    result = invoke(
        ["scan-registers", "--port", server.address, "--units", "1-3", "--json"],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 4  # two silent ids at 0.3 s, not 5 s × 4 tries
    assert json.loads(result.stdout)["timeout_sec"] == 0.3
    assert "config.toml not used" in result.stderr
    assert "0.3 s timeout" in result.stderr


def test_explicit_config_gives_line_settings_but_not_its_timeout(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With -c the config's port is scanned at the scan timeout; stderr names the config."""
    server = start_simulator(sparse_context((3,)))
    config = tmp_path / "site.toml"
    config.write_text(SLOW_CONFIG.format(port=server.address), "utf-8")
    result = invoke(
        ["scan-registers", "-c", str(config), "--units", "2-3", "--json"], tmp_path, monkeypatch
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["port"], document["timeout_sec"]) == (server.address, 0.3)
    assert f"settings from {config}" in result.stderr


@pytest.mark.parametrize("where", ["directory", "missing-dir"])
def test_output_is_checked_before_scanning(
    start_simulator: Callable[..., SimulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """An --output that cannot be written is exit 2 before a single request is sent."""
    context = sparse_context((3,))
    server = start_simulator(context)
    output = tmp_path if where == "directory" else tmp_path / "no" / "draft.toml"
    result = invoke(
        ["scan-registers", "--port", server.address, "--units", "3", "--output", str(output)],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: --output: ")
    assert context.request_count() == 0


def test_host_port_without_scheme_is_refused_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--port 192.168.1.50:502` is exit 2 with a tcp:// hint, never opened as a serial path."""
    result = invoke(["scan-registers", "--port", "192.168.1.50:502"], tmp_path, monkeypatch)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        'Error: --port: "192.168.1.50:502" looks like a TCP address, not a serial device: '
        'write "tcp://192.168.1.50:502"'
    )


@pytest.mark.parametrize("port", ["/dev/ttyUSB0", "/dev/serial/by-id/usb-FTDI:1-if00", "COM3"])
def test_serial_paths_are_not_taken_for_host_port(port: str) -> None:
    """Real serial paths, even with a colon inside, still pass the port check."""
    from nixlog.config import check_port

    check_port(port)
