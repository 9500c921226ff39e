"""Damaged, foreign, locked and crashed databases: clear errors, never a silent overwrite."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.errors import EXIT_DATABASE, DatabaseError
from tests.fixtures_db import fill, make_reading


def _made_db(path: Path, rows: int) -> None:
    conn = database.open_db(path)
    fill(conn, rows)
    database.checkpoint(conn)
    conn.close()


def test_not_a_database_is_refused_and_left_alone(db_path: Path) -> None:
    """A file that is not SQLite is refused (exit 74) and its bytes are untouched."""
    db_path.parent.mkdir(parents=True)
    content = b"these are someone's notes, not a database\n" * 10
    db_path.write_bytes(content)
    with pytest.raises(DatabaseError, match="not a SQLite database") as caught:
        database.open_db(db_path)
    assert caught.value.exit_code == EXIT_DATABASE
    assert db_path.read_bytes() == content


def test_foreign_sqlite_database_is_refused(db_path: Path) -> None:
    """Another program's SQLite file (tables nixlog did not create) is not migrated into."""
    db_path.parent.mkdir(parents=True)
    other = sqlite3.connect(db_path)
    other.execute("CREATE TABLE customers(name TEXT)")
    other.commit()
    other.close()
    with pytest.raises(DatabaseError, match="customers"):
        database.open_db(db_path)
    names = sqlite3.connect(db_path).execute("SELECT name FROM sqlite_master").fetchall()
    assert names == [("customers",)]


def test_truncated_database_is_refused(db_path: Path) -> None:
    """A database cut short (copied half-way, card error) is reported as truncated."""
    _made_db(db_path, 2000)
    size = db_path.stat().st_size
    with db_path.open("r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(DatabaseError, match="truncated"):
        database.open_db(db_path)


def test_malformed_pages_give_a_clear_error(db_path: Path) -> None:
    """Garbage inside the file surfaces as one 'damaged' DatabaseError, not a sqlite3 error."""
    _made_db(db_path, 3000)
    page = 4096
    with db_path.open("r+b") as handle:
        for number in range(3, db_path.stat().st_size // page, 2):
            handle.seek(number * page)
            handle.write(b"\xff" * page)
    # Where it surfaces (opening, or reading the rows) depends on which pages the garbage hit.
    with pytest.raises(DatabaseError, match="damaged"):
        conn = database.open_db(db_path)
        try:
            list(database.iter_readings(conn))
        finally:
            conn.close()


def test_zero_byte_file_becomes_a_fresh_database(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty file (e.g. `touch`ed) becomes a new database, with a warning in the log."""
    db_path.parent.mkdir(parents=True)
    db_path.touch()
    with caplog.at_level(logging.WARNING, logger="nixlog.database"):
        conn = database.open_db(db_path)
    assert "empty (0 bytes)" in caplog.text
    assert database.count_unsent(conn) == 0
    assert database.get_epoch(conn)
    conn.close()


def test_missing_parent_directory_is_created(tmp_path: Path) -> None:
    """First start on a fresh card: the database directory is created."""
    path = tmp_path / "var" / "lib" / "nixlog" / "datalog.db"
    database.open_db(path).close()
    assert path.is_file()


def test_missing_database_with_create_false_is_an_error(db_path: Path) -> None:
    """Read-only commands do not leave an empty database behind."""
    with pytest.raises(DatabaseError, match="no database here"):
        database.open_db(db_path, create=False)
    assert not db_path.exists()


def test_directory_instead_of_file(db_path: Path) -> None:
    """database.path naming a directory is a clear error."""
    db_path.mkdir(parents=True)
    with pytest.raises(DatabaseError, match="is a directory"):
        database.open_db(db_path)


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A database from a newer nixlog is not downgraded or touched."""
    database.open_db(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseError, match="newer nixlog"):
        database.open_db(db_path)


def test_locked_database_gives_up_with_a_clear_error(db_path: Path) -> None:
    """A database held exclusively by another connection: 'locked' after the busy timeout."""
    database.open_db(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO meta VALUES ('x', 'y')")
    holder.execute("COMMIT")  # exclusive mode keeps the lock after the commit
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="locked"):
            database.open_db(db_path, busy_timeout_ms=200)
        assert time.monotonic() - started < 5
    finally:
        holder.close()


def test_write_waits_for_another_writer_then_reports_locked(db: sqlite3.Connection) -> None:
    """A batch insert while another writer holds the lock fails as 'locked', bin kept intact."""
    db.execute("PRAGMA busy_timeout = 100")
    other = sqlite3.connect(database._path_of(db), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseError, match="locked"):
            database.batch_insert_readings(db, "dev-1", [make_reading(1)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert database.batch_insert_readings(db, "dev-1", [make_reading(1)]) == (1, 1)


def test_cli_reports_damaged_database_in_one_line(config_file: Path, db_path: Path) -> None:
    """`nixlog db stats` on a non-database file: exit 74, one Error line, no traceback."""
    db_path.parent.mkdir(parents=True)
    db_path.write_text("not sqlite at all")
    result = CliRunner().invoke(app, ["db", "stats", "-c", str(config_file)])
    assert result.exit_code == EXIT_DATABASE
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert "not a SQLite database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stdout + result.stderr


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nixlog import database
    from nixlog.model import Reading

    conn = database.open_db(Path(sys.argv[1]))
    n = 0
    while True:
        bin = [Reading(f"2026-11-26T12:00:00.{i:06d}+00:00", {"v": i, "pad": "x" * 200})
               for i in range(100)]
        database.batch_insert_readings(conn, "dev-1", bin)
        n += 1
        if n == 3:
            print("ready", flush=True)
    """
)


def test_kill_9_of_a_writer_leaves_whole_batches_only(db_path: Path, tmp_path: Path) -> None:
    """SIGKILL of a writing process, three times: integrity_check ok, only whole batches."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    database.open_db(db_path).close()
    for kill_after in (0.05, 0.13, 0.21):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(kill_after)  # let it be somewhere inside a later batch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
    conn = database.open_db(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [row[0] for row in conn.execute("SELECT id FROM readings ORDER BY id")]
        assert len(ids) >= 900
        assert len(ids) % 100 == 0
        assert ids == list(range(1, len(ids) + 1))
    finally:
        conn.close()
