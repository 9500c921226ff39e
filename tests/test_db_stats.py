"""`nixlog db stats`: stable JSON keys, the table, and reading while another process writes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.errors import EXIT_DATABASE
from tests.fixtures_db import fill, make_reading

STABLE_KEYS = [
    "rows",
    "unsent",
    "sent",
    "rejected",
    "oldest",
    "newest",
    "oldest_unsent",
    "db_bytes",
    "free_pages_bytes",
    "free_disk_bytes",
    "last_publish",
    "pruned_sent",
    "pruned_rejected",
    "pruned_unsent",
    "epoch",
    "lost_unwritten",
    "outputs",
]


def _stats_json(config_file: Path) -> dict[str, object]:
    result = CliRunner().invoke(app, ["db", "stats", "--json", "-c", str(config_file)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "Traceback" not in result.stdout
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_stats_json_has_the_stable_keys_and_right_numbers(config_file: Path, db_path: Path) -> None:
    """--json: exactly the documented keys, counts per class, ages by id, epoch, last publish."""
    conn = database.open_db(db_path)
    fill(conn, 50)
    database.mark_readings_rejected(conn, [3])
    database.mark_readings_as_sent(conn, [i for i in range(1, 21) if i != 3])
    database.record_publish(conn, "2026-11-26T12:05:00+00:00")
    epoch = database.get_epoch(conn)
    conn.close()
    got = _stats_json(config_file)
    assert list(got) == STABLE_KEYS
    assert (got["rows"], got["unsent"], got["sent"], got["rejected"]) == (50, 30, 19, 1)
    assert got["oldest"] == make_reading(0).timestamp
    assert got["newest"] == make_reading(49).timestamp
    assert got["oldest_unsent"] == make_reading(20).timestamp
    assert got["last_publish"] == "2026-11-26T12:05:00+00:00"
    assert got["epoch"] == epoch
    assert isinstance(got["db_bytes"], int) and got["db_bytes"] > 0
    assert isinstance(got["free_disk_bytes"], int) and got["free_disk_bytes"] > 0
    assert (got["pruned_sent"], got["pruned_unsent"], got["free_pages_bytes"]) == (0, 0, 0)


def test_stats_table_for_humans(config_file: Path, db_path: Path) -> None:
    """Without --json a table with the counts and 'never' for a database never published."""
    conn = database.open_db(db_path)
    fill(conn, 5)
    conn.close()
    result = CliRunner().invoke(app, ["db", "stats", "-c", str(config_file)])
    assert result.exit_code == 0
    assert "unsent" in result.stdout
    assert "never" in result.stdout
    assert str(db_path) in result.stdout.replace("\n", "")
    assert result.stderr == ""


def test_stats_on_an_empty_database(config_file: Path, db_path: Path) -> None:
    """A database with no readings yet: zeros and nulls, not an error."""
    database.open_db(db_path).close()
    got = _stats_json(config_file)
    assert (got["rows"], got["unsent"], got["oldest"], got["oldest_unsent"]) == (0, 0, None, None)


def test_stats_without_a_database_is_a_clear_error(config_file: Path, db_path: Path) -> None:
    """No database file yet: exit 74, one line, and no empty database is created."""
    result = CliRunner().invoke(app, ["db", "stats", "-c", str(config_file)])
    assert result.exit_code == EXIT_DATABASE
    assert result.stderr.startswith("Error: ")
    assert "no database here yet" in result.stderr
    assert not db_path.exists()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nixlog import database
    from nixlog.model import Reading

    conn = database.open_db(Path(sys.argv[1]))
    print("ready", flush=True)
    i = 0
    while True:
        rows = [Reading(f"2026-11-26T12:00:00.{j:06d}+00:00", {"v": j}) for j in range(100)]
        database.batch_insert_readings(conn, "dev-1", rows)
        i += 1
        if i % 3 == 0:
            ids = [r.id for r in database.get_unsent_readings(conn, 150)]
            database.mark_readings_as_sent(conn, ids)
    """
)


def test_stats_while_another_process_writes(
    config_file: Path, db_path: Path, tmp_path: Path
) -> None:
    """A daemon-like process inserts and marks sent; stats keeps answering, consistently."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    database.open_db(db_path).close()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        previous = -1
        for _ in range(15):
            got = _stats_json(config_file)
            rows = got["rows"]
            assert isinstance(rows, int) and rows >= previous
            assert rows == got["unsent"] + got["sent"] + got["rejected"]  # type: ignore[operator]
            assert rows % 100 == 0  # a snapshot never shows half a batch
            previous = rows
        assert previous > 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_stats_while_a_writer_holds_its_transaction_open(config_file: Path, db_path: Path) -> None:
    """WAL: a writer in the middle of a long transaction does not block db stats."""
    conn = database.open_db(db_path)
    fill(conn, 10)
    conn.close()
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        "INSERT INTO reading_rows(timestamp, cpu_id, data) "
        "VALUES ('2026-11-26T13:00:00', 'x', '{}')"
    )
    try:
        got = _stats_json(config_file)
        assert got["rows"] == 10  # the uncommitted row is invisible
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_stats_show_readings_lost_unwritten(config_file: Path, db_path: Path) -> None:
    """Readings a daemon could not write by its stop: table row and --json key lost_unwritten."""
    conn = database.open_db(db_path)
    fill(conn, 3)
    database.stop_writing(conn, lost=925)
    conn.close()
    assert _stats_json(config_file)["lost_unwritten"] == 925
    result = CliRunner().invoke(app, ["db", "stats", "-c", str(config_file)])
    assert result.exit_code == 0, result.stderr
    assert "lost unwritten" in result.stdout and "925" in result.stdout
