"""Readable output: poll off a terminal, plurals, help without ``<bool>``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.simulator import SimulatorServer
from tests.fixtures_modbus import write_config

runner = CliRunner()


def test_poll_into_a_pipe_prints_every_cycle(
    tcp_simulator: SimulatorServer, tmp_path: Path
) -> None:
    """`poll --count 3 | cat` gets three tables (one per cycle), not only the last one."""
    config = write_config(tmp_path, tcp_simulator.address)
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", "poll", "-c", str(config), "--count", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(tcp_simulator.address) == 3
    for cycle in (1, 2, 3):
        assert f"cycle {cycle} (" in done.stdout
    assert done.stdout.count("voltage_l1") == 3
    assert "Traceback" not in done.stderr


def test_saved_one_reading_is_singular(tcp_simulator: SimulatorServer, tmp_path: Path) -> None:
    """`poll --once --save` says "Saved 1 reading", not "1 readings"."""
    config = write_config(tmp_path, tcp_simulator.address)
    result = runner.invoke(app, ["poll", "-c", str(config), "--once", "--save"])
    assert result.exit_code == 0, result.stderr
    assert "Saved 1 reading to" in result.stderr
    assert "readings" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["poll"], ["read"], ["write"], ["scan-registers"], ["db"], ["db", "stats"], ["export"]],
)
def test_help_shows_no_bool_metavar(command: list[str]) -> None:
    """Flags take no value, so the help shows no `<bool>` next to them."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.stdout
    assert "<bool>" not in result.stdout
