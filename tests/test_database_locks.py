"""One process, several connections: opening a second one must not drop the first's locks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nixlog import database
from nixlog.errors import DatabaseError
from tests.fixtures_db import make_reading

COUNT_FROM_OTHER_PROCESS = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
    "print(c.execute('SELECT count(*) FROM readings').fetchone()[0]); c.close()"
)


def count_elsewhere(db_path: Path) -> int:
    """Count rows from another process, which closes its connection afterwards."""
    done = subprocess.run(
        [sys.executable, "-c", COUNT_FROM_OTHER_PROCESS, str(db_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout)


def test_second_connection_keeps_the_wal_alive(db_path: Path) -> None:
    """A writer's later batches stay visible after another thread opened and closed the file.

    Regression: reading the header of a file this process already had open released the
    writer's POSIX locks; another process then deleted the live WAL on close, and every
    later batch went into an unlinked file (lost).
    """
    writer = database.open_db(db_path)
    try:
        database.batch_insert_readings(writer, "dev", [make_reading(i) for i in range(10)])
        other = database.open_db(db_path)  # e.g. the ship thread, or `db stats` in-process
        database.close(other)
        assert count_elsewhere(db_path) == 10
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.exists(), "another process deleted the WAL the writer still uses"
        database.batch_insert_readings(writer, "dev", [make_reading(i) for i in range(10, 20)])
        assert count_elsewhere(db_path) == 20
    finally:
        database.close(writer)


def test_damage_check_still_runs_for_a_file_nobody_holds(tmp_path: Path) -> None:
    """The header check is skipped only while we hold the file: a foreign file is refused."""
    path = tmp_path / "foreign.db"
    path.write_bytes(b"not sqlite" * 100)
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        database.open_db(path)
