"""The command-line shell: every command is registered with help, errors are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import __version__
from nixlog.cli import app

COMMANDS = [
    ["poll"],
    ["publish"],
    ["prune"],
    ["daemon"],
    ["scan-registers"],
    ["export"],
    ["db", "stats"],
    ["config", "check"],
    ["simulate"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    """Each DESIGN §4 command is registered and explains itself with --help."""
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    if command != ["demo"]:
        assert "--config" in result.stdout


def test_version() -> None:
    """--version prints the package version and exits 0."""
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"nixlog {__version__}"


def test_unknown_option_is_usage_error() -> None:
    """A wrong option exits 2 without a traceback."""
    result = CliRunner().invoke(app, ["config", "check", "--bogus"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_config_error_is_one_line_with_code_78(tmp_path: Path) -> None:
    """A config error prints exactly one `Error:` line on stderr and exits 78."""
    bad = tmp_path / "c.toml"
    bad.write_text("[modbus\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 78
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: line 1")
    assert "Traceback" not in result.output


def _imported_modules(*args: str) -> str:
    """Run `python -X importtime -m nixlog ARGS` and return its import log."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "nixlog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_help_does_not_import_pymodbus_or_httpx() -> None:
    """`nixlog --help` stays fast on a Pi: neither pymodbus nor httpx is imported."""
    log = _imported_modules("--help")
    assert "pymodbus" not in log
    assert "httpx" not in log


def test_config_check_without_api_says_so(tmp_path: Path) -> None:
    """A config without [api] checks OK and says literally that the section is missing."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[modbus]\nport = "/dev/ttyUSB0"\n[[modbus.registers_to_read]]\nname = "v"\naddress = 0\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "api: not configured (no [api] section)" in result.stdout


def test_db_stats_does_not_import_pymodbus_or_httpx(tmp_path: Path) -> None:
    """`nixlog db stats` stays fast on a Pi: the station modules' heavy imports stay lazy."""
    db = tmp_path / "x.db"
    path = tmp_path / "c.toml"
    path.write_text(
        f'[database]\npath = "{db}"\n[modbus]\nport = "/dev/ttyUSB0"\n'
        '[[modbus.registers_to_read]]\nname = "v"\naddress = 0\n',
        encoding="utf-8",
    )
    from nixlog import database

    database.close(database.open_db(db))
    log = _imported_modules("db", "stats", "-c", str(path))
    assert "pymodbus" not in log
    assert "httpx" not in log
