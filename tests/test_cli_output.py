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


def _units_config(tmp_path: Path) -> Path:
    """A config whose map has units on two of three registers."""
    from tests.fixtures_db import CONFIG_TEMPLATE

    text = CONFIG_TEMPLATE.format(db=tmp_path / "data" / "nixlog.db")
    text = text.replace('name = "voltage_l1"\n', 'name = "voltage_l1"\nunits = "V"\n')
    text = text.replace('name = "current_l1"\n', 'name = "current_l1"\nunits = "A"\n')
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_export_units_in_the_header(tmp_path: Path) -> None:
    """--units labels the columns `voltage_l1 [V]`; without it the header is plain names."""
    from nixlog import database
    from tests.fixtures_db import fill

    config = _units_config(tmp_path)
    conn = database.open_db(tmp_path / "data" / "nixlog.db")
    fill(conn, 2)
    conn.close()
    plain = runner.invoke(app, ["export", "-c", str(config)])
    assert plain.exit_code == 0, plain.stderr
    assert plain.stdout.splitlines()[0].startswith("id,timestamp,device_id,voltage_l1,current_l1")
    labelled = runner.invoke(app, ["export", "-c", str(config), "--units"])
    assert labelled.exit_code == 0, labelled.stderr
    header = labelled.stdout.splitlines()[0]
    assert header.startswith("id,timestamp,device_id,voltage_l1 [V],current_l1 [A],breaker_closed")
    assert len(labelled.stdout.splitlines()) == 3
    target = tmp_path / "out.csv"
    to_file = runner.invoke(app, ["export", "-c", str(config), "--units", "-o", str(target)])
    assert to_file.exit_code == 0, to_file.stderr
    assert target.read_text(encoding="utf-8").splitlines()[0] == header


def test_db_stats_sizes_in_kb_and_pruned_rejected(tmp_path: Path) -> None:
    """A small database shows its size in kB (not "0.0 MB"); --json has pruned_rejected."""
    import json

    from nixlog import database
    from tests.fixtures_db import fill

    config = _units_config(tmp_path)
    conn = database.open_db(tmp_path / "data" / "nixlog.db")
    fill(conn, 5)
    conn.close()
    table = runner.invoke(app, ["db", "stats", "-c", str(config)])
    assert table.exit_code == 0, table.stderr
    assert "0.0 MB" not in table.stdout
    size_line = next(line for line in table.stdout.splitlines() if "file size" in line)
    assert " kB" in size_line
    document = json.loads(runner.invoke(app, ["db", "stats", "--json", "-c", str(config)]).stdout)
    assert document["pruned_rejected"] == 0


@pytest.mark.parametrize(
    ("size", "shown"),
    [(512, "512 B"), (36_000, "36 kB"), (4_200_000, "4.2 MB"), (1_500_000_000, "1.5 GB")],
)
def test_sizes_pick_their_unit(size: int, shown: str) -> None:
    """Sizes are written in B, kB, MB or GB, whichever fits."""
    from nixlog.console import format_size

    assert format_size(size) == shown


def test_demo_dashboard_has_units_and_fits_100_columns() -> None:
    """The dashboard shows values with their units under "value" (not "count"), one line
    per row, no wider than 100 columns, its heading unwrapped."""
    import io

    from rich.console import Console

    from nixlog.cli import _demo_dashboard
    from nixlog.daemon import DaemonStatus

    status = DaemonStatus(
        polled=200,
        stored=190,
        shipped=180,
        backlog=10,
        uptime_sec=20.0,
        last_values={"voltage_l1": 230.5, "energy_total": 12345.678, "breaker_closed": True},
        last_errors={"temperature": "timeout"},
    )
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(
        _demo_dashboard(status, 12.0, {"voltage_l1": "V", "energy_total": "kWh"})
    )
    lines = out.getvalue().splitlines()
    assert lines[0] == "nixlog demo — 12 s left (Ctrl-C ends it)"
    assert max(len(line) for line in lines) <= 100
    assert "count" not in lines[2] and "value" in lines[2]
    row = next(line for line in lines if "voltage_l1" in line)
    assert "230.5" in row and " V " in row
    assert any("12345.678" in line and "kWh" in line for line in lines)
    assert any("temperature" in line and "timeout" in line for line in lines)


def test_demo_ends_with_three_next_steps(tmp_path: Path) -> None:
    """After the summary the demo names three next steps: scan, config check, install."""
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", "demo", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("demo finished after")
    steps = done.stderr.strip().splitlines()[-3:]
    assert "nixlog scan-registers" in steps[0]
    assert "nixlog config check" in steps[1]
    assert "install.sh" in steps[2]
    assert "Traceback" not in done.stderr
