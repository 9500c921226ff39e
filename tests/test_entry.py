"""The console script's fast path for ``nixlog db stats`` (nixlog/entry.py).

The fast path must be invisible: the same stdout, stderr and exit code as the Typer command,
for every spelling it takes, and Typer's own answer for every spelling it does not. Each case
runs both fronts as real processes on one database and compares them byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nixlog import database
from nixlog.entry import DbStatsArgs, parse_db_stats
from tests.fixtures_db import fill

TYPER_CLI = "from nixlog.cli import main; main()"
CLI_LIBRARIES = ("typer", "click", "rich", "pydantic")
FREE_DISK = re.compile(r"(free disk\s+)\S+ \S+|(\"free_disk_bytes\": )\d+")


def _run(
    args: list[str], *, typer: bool, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``nixlog ARGS`` as the console script runs it, or straight through the Typer CLI."""
    front = ["-c", TYPER_CLI] if typer else ["-m", "nixlog"]
    env = {key: value for key, value in os.environ.items() if key != "NIXLOG_CONFIG"}
    return subprocess.run(
        [sys.executable, *front, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


def _same_on_both_fronts(
    args: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` on both fronts; assert the same exit code and output; return the fast one."""
    fast = _run(args, typer=False, cwd=cwd)
    slow = _run(args, typer=True, cwd=cwd)
    assert fast.returncode == slow.returncode, (fast.stderr, slow.stderr)
    # Free space may change between the two runs; nothing else may.
    assert FREE_DISK.sub(r"\1\2", fast.stdout) == FREE_DISK.sub(r"\1\2", slow.stdout)
    assert fast.stderr == slow.stderr
    assert "Traceback" not in fast.stderr
    return fast


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["db", "stats"], DbStatsArgs(None, False)),
        (["db", "stats", "--json"], DbStatsArgs(None, True)),
        (["db", "stats", "-c", "a.toml"], DbStatsArgs(Path("a.toml"), False)),
        (["db", "stats", "--json", "--config", "a.toml"], DbStatsArgs(Path("a.toml"), True)),
        (["db", "stats", "--config=a.toml", "--json"], DbStatsArgs(Path("a.toml"), True)),
        (["db", "stats", "-c", "a.toml", "-c", "b.toml"], DbStatsArgs(Path("b.toml"), False)),
    ],
)
def test_the_plain_spellings_take_the_fast_path(argv: list[str], expected: DbStatsArgs) -> None:
    """Each documented spelling of ``db stats`` is recognised, a repeated option's last wins."""
    assert parse_db_stats(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["db"],
        ["stats"],
        ["-v", "db", "stats"],
        ["db", "stats", "-v"],
        ["db", "stats", "--help"],
        ["db", "stats", "--bogus"],
        ["db", "stats", "-c"],
        ["db", "stats", "-c", ""],
        ["db", "stats", "-c", "--json"],
        ["db", "stats", "-c", "/"],
        ["db", "stats", "--config="],
        ["db", "stats", "extra"],
        ["db", "stats", "--", "-c"],
        ["export", "--json"],
    ],
)
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    """Help, verbosity, unknown or incomplete options, directories: Typer parses and says."""
    assert parse_db_stats(argv) is None


def test_the_fast_path_prints_what_typer_prints(
    tmp_path: Path, config_file: Path, db_path: Path
) -> None:
    """Table and JSON, by every spelling: the same bytes as the Typer command, exit 0."""
    conn = database.open_db(db_path)
    fill(conn, 25)
    database.close(conn)
    table = _same_on_both_fronts(["db", "stats", "-c", str(config_file)])
    assert table.returncode == 0
    assert table.stdout.startswith("nixlog database\n")
    assert re.search(r"^  readings\s+25$", table.stdout, re.MULTILINE), table.stdout
    assert re.search(r"^  unsent\s+25$", table.stdout, re.MULTILINE)
    assert str(db_path) in table.stdout
    document = _same_on_both_fronts(["db", "stats", f"--config={config_file}", "--json"])
    assert json.loads(document.stdout)["rows"] == 25
    # No -c: the default search finds ./config.toml.
    assert _same_on_both_fronts(["db", "stats"], cwd=tmp_path).stdout == table.stdout


def test_the_fast_path_reports_errors_as_typer_does(tmp_path: Path, config_file: Path) -> None:
    """No database yet (74), no config (78), a broken config (78): one line, same words."""
    missing_db = _same_on_both_fronts(["db", "stats", "-c", str(config_file)])
    assert missing_db.returncode == 74 and missing_db.stderr.startswith("Error: ")
    missing = _same_on_both_fronts(["db", "stats", "-c", str(tmp_path / "nope.toml")])
    assert missing.returncode == 78 and len(missing.stderr.splitlines()) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[database\n", encoding="utf-8")
    assert _same_on_both_fronts(["db", "stats", "-c", str(broken)]).returncode == 78


def test_a_config_warning_is_logged_the_same_way(
    tmp_path: Path, db_path: Path, config_file: Path
) -> None:
    """The plain-http warning of a config with an API key: the same log line on both fronts."""
    database.open_db(db_path).close()
    with_api = tmp_path / "api.toml"
    with_api.write_text(
        config_file.read_text(encoding="utf-8")
        + '\n[api]\nendpoint = "http://example.invalid/v1/data"\napi_key = "k"\n',
        encoding="utf-8",
    )
    with_api.chmod(0o600)
    done = _same_on_both_fronts(["db", "stats", "-c", str(with_api)])
    assert done.returncode == 0
    assert done.stderr.startswith("WARNING nixlog.config: "), done.stderr
    assert "plain http://" in done.stderr


def test_typer_answers_what_the_fast_path_passes_on(config_file: Path) -> None:
    """``--help`` and a bad option reach Typer: its usage text, exit 0 and exit 2."""
    helped = _run(["db", "stats", "--help"], typer=False)
    assert helped.returncode == 0 and "Usage:" in helped.stdout and "--json" in helped.stdout
    bad = _run(["db", "stats", "-c", str(config_file), "--bogus"], typer=False)
    assert bad.returncode == 2 and "No such option: --bogus" in bad.stderr
    directory = _run(["db", "stats", "-c", str(config_file.parent)], typer=False)
    assert directory.returncode == 2 and "Traceback" not in directory.stderr


def test_the_fast_path_loads_no_cli_library(config_file: Path, db_path: Path) -> None:
    """What makes it fast: neither Typer, click, rich nor pydantic is imported."""
    database.open_db(db_path).close()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "nixlog", "db", "stats", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert imported.isdisjoint(CLI_LIBRARIES), imported & set(CLI_LIBRARIES)
    assert {"sqlite3", "nixlog.dbstats"} <= imported


def test_a_closed_pipe_is_not_an_error(config_file: Path, db_path: Path) -> None:
    """``nixlog db stats | true``: the reader went away; exit 0 and nothing on stderr."""
    database.open_db(db_path).close()
    done = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$0" -m nixlog db stats -c "$1" | true',
            sys.executable,
            str(config_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
