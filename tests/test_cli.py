"""The command-line shell: every command is registered with help, errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    """Each command of the README's table is registered and explains itself with --help."""
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
    assert "paho" not in log


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
        '[[modbus.registers_to_read]]\nname = "v"\naddress = 0\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n',
        encoding="utf-8",
    )
    from nixlog import database

    database.close(database.open_db(db))
    log = _imported_modules("db", "stats", "-c", str(path))
    assert "pymodbus" not in log
    assert "httpx" not in log
    assert "paho" not in log


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["poll", "--bogus"], "Error: No such option: --bogus"),
        (["poll", "--count", "x"], "Error: Invalid value for '--count'"),
        (["poll", "--count", "0"], "Error: Invalid value for '--count'"),
        (["export", "--since"], "Error: Option '--since' requires an argument."),
        (["nosuchcommand"], "Error: No such command 'nosuchcommand'."),
        (["db", "nosuch"], "Error: No such command 'nosuch'."),
        (["scan-registers", "--start", "-5"], "Error: Invalid value for '--start'"),
    ],
)
def test_usage_errors_are_one_error_line_exit_2(args: list[str], start: str) -> None:
    """Unknown option, bad value, missing argument: one `Error:` line and exit 2, no box."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(start), lines[0]
    assert "--help" in lines[0]  # where to look next
    assert result.stdout == ""
    assert "╭" not in result.stderr and "Traceback" not in result.output


def test_usage_error_from_the_real_entry_point_is_one_line() -> None:
    """The installed entry point (not only CliRunner) prints the one-line form."""
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", "poll", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("Error: No such option: --bogus")
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_accepts_verbose_after_its_name(command: list[str]) -> None:
    """`nixlog poll --verbose --help` and `-v` work on every command, as before it."""
    for flag in ("--verbose", "-v"):
        result = CliRunner().invoke(app, [*command, flag, "--help"])
        assert result.exit_code == 0, result.output
        assert "--verbose" in result.stdout


def test_verbose_after_the_command_shows_error_details(tmp_path: Path) -> None:
    """`config check -v` turns on the same details as `nixlog -v config check`."""
    from nixlog.cli import _state

    key = tmp_path / "key"
    key.write_bytes(b"\xff\xfe")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[modbus]\nport = "/dev/ttyUSB0"\n[[modbus.registers_to_read]]\nname = "v"\n'
        'address = 0\n[api]\nendpoint = "https://x.example/v1"\napi_key_file = "key"\n',
        encoding="utf-8",
    )
    try:
        result = CliRunner().invoke(app, ["config", "check", "-c", str(cfg), "-v"])
        assert _state.verbose
    finally:
        _state.verbose = False
    assert result.exit_code == 78
    assert result.stderr.strip().endswith(f"api.api_key_file: {key} is not UTF-8 text")


def test_bare_group_still_shows_help() -> None:
    """`nixlog db` alone shows the group's help (exit 2), as before."""
    result = CliRunner().invoke(app, ["db"])
    assert result.exit_code == 2
    assert "stats" in result.output


# --------------------------------------------------------------------------- broken pipes


def _first_line_then_close(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run nixlog ARGS, read one line of stdout, close the pipe as `head -1` does."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nixlog", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        first = process.stdout.readline()
        process.stdout.close()
        process.stdout = None  # communicate() must not read the closed pipe
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    return process.returncode, first, err


def test_export_into_a_closed_pipe_exits_0_quietly(config_file: Path, db_path: Path) -> None:
    """`nixlog export | head -1` exits 0 with nothing on stderr."""
    from nixlog import database
    from tests.fixtures_db import fill

    conn = database.open_db(db_path)
    fill(conn, 20_000, batch=5_000)  # far more than a pipe buffer holds
    conn.close()
    code, first, err = _first_line_then_close(
        ["export", "-c", str(config_file)], config_file.parent
    )
    assert first.startswith("id,timestamp,device_id")
    assert (code, err) == (0, "")


def test_poll_json_into_a_closed_pipe_exits_0_quietly(
    tcp_simulator: Any, tmp_path: Path
) -> None:
    """`nixlog poll --json | head -1` exits 0 with nothing on stderr."""
    from tests.fixtures_modbus import write_config

    cfg = write_config(tmp_path, tcp_simulator.address, poll_rate_hz=200.0)
    code, first, err = _first_line_then_close(["poll", "-c", str(cfg), "--json"], tmp_path)
    assert first.startswith("{")
    assert (code, err) == (0, "")


def test_config_check_into_a_closed_pipe_exits_0_quietly(tmp_path: Path) -> None:
    """A long rich table into a closed pipe is no error either (rich alone would exit 1)."""
    from tests.test_config import _big_map

    cfg = tmp_path / "c.toml"
    cfg.write_text(_big_map(3000), encoding="utf-8")
    code, first, err = _first_line_then_close(["config", "check", "-c", str(cfg)], tmp_path)
    assert "OK" in first
    assert (code, err) == (0, "")


# --------------------------------------------------------------------------- database files


def test_foreign_schema_version_is_one_database_error(config_file: Path, db_path: Path) -> None:
    """A database whose meta.schema_version is "v2-beta" exits 74 with one line."""
    from nixlog import database

    database.open_db(db_path).close()
    import sqlite3

    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE meta SET value = 'v2-beta' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    for command in (["db", "stats"], ["export"], ["prune"]):
        result = CliRunner().invoke(app, [*command, "-c", str(config_file)])
        assert result.exit_code == 74, result.output
        assert result.stderr.strip() == (
            f"Error: {db_path}: meta.schema_version is 'v2-beta', not a nixlog schema "
            "version; refusing to touch it (point database.path elsewhere)"
        )


def test_database_path_too_long_for_the_file_system_is_one_line(tmp_path: Path) -> None:
    """A path component longer than the file system allows is exit 74, one line."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[database]\npath = "{tmp_path / ("a" * 300) / "x.db"}"\n[modbus]\n'
        'port = "/dev/ttyUSB0"\n[[modbus.registers_to_read]]\nname = "v"\naddress = 0\n',
        encoding="utf-8",
    )
    for command in (["db", "stats"], ["prune"], ["export"]):
        result = CliRunner().invoke(app, [*command, "-c", str(cfg)])
        assert result.exit_code == 74, result.output
        assert len(result.stderr.splitlines()) == 1
        assert "File name too long" in result.stderr


def test_database_path_that_is_a_fifo_or_device_is_refused_at_once(tmp_path: Path) -> None:
    """database.path on a FIFO (which would block) or /dev/zero is one line, exit 74."""
    fifo = tmp_path / "db.fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[database]\npath = "{target}"\n[modbus]\nport = "/dev/ttyUSB0"\n'
            '[[modbus.registers_to_read]]\nname = "v"\naddress = 0\n',
            encoding="utf-8",
        )
        result = CliRunner().invoke(app, ["db", "stats", "-c", str(cfg)])
        assert result.exit_code == 74, result.output
        assert result.stderr.strip() == (
            f"Error: {target}: not a regular file, expected a database file"
        )


def test_publish_on_a_bad_database_leaves_the_ship_log_level_alone(tmp_path: Path) -> None:
    """A publish that fails to open its database does not leave nixlog.ship silenced."""
    import logging

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[database]\npath = "{tmp_path}"\n[modbus]\nport = "/dev/ttyUSB0"\n'
        '[[modbus.registers_to_read]]\nname = "v"\naddress = 0\n'
        '[api]\nendpoint = "https://x.example/v1"\napi_key = "k"\n[device]\nid = "d"\n',
        encoding="utf-8",
    )
    cfg.chmod(0o600)
    before = logging.getLogger("nixlog.ship").level
    result = CliRunner().invoke(app, ["publish", "-c", str(cfg)])
    assert result.exit_code == 74, result.output
    assert logging.getLogger("nixlog.ship").level == before
