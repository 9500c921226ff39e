"""Database fixtures: real SQLite files in tmp_path, readings shaped like the example map."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nixlog import database
from nixlog.model import Reading

BASE_TIME = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
REGISTER_NAMES = ("voltage_l1", "current_l1", "breaker_closed")


def make_reading(index: int, *, at: datetime | None = None, errors: bool = False) -> Reading:
    """Reading number ``index``, one second apart from ``BASE_TIME`` unless ``at`` is given."""
    moment = at if at is not None else BASE_TIME + timedelta(seconds=index)
    values: dict[str, int | float | bool | str] = {
        "voltage_l1": 230.0 + index / 10,
        "current_l1": index,
        "breaker_closed": index % 2 == 0,
    }
    failed: dict[str, str] = {}
    if errors:
        del values["current_l1"]
        failed["current_l1"] = "timeout"
    return Reading(
        timestamp=moment.isoformat(timespec="microseconds"), values=values, errors=failed
    )


def fill(conn: sqlite3.Connection, count: int, *, batch: int = 100, start: int = 0) -> None:
    """Insert ``count`` readings in batches, as the store station does."""
    for first in range(start, start + count, batch):
        readings = [make_reading(i) for i in range(first, min(first + batch, start + count))]
        database.batch_insert_readings(conn, "dev-1", readings)


def flags(conn: sqlite3.Connection) -> dict[int, int]:
    """``sent_flag`` of every row, read through the seed's ``readings`` view."""
    return dict(conn.execute("SELECT id, sent_flag FROM readings ORDER BY id").fetchall())


CONFIG_TEMPLATE = """\
[device]
id = "dev-1"

[database]
path = "{db}"
storage_limit_gb = 0
flush_interval_sec = 10

[modbus]
port = "tcp://127.0.0.1:5020"

[[modbus.registers_to_read]]
name = "voltage_l1"
address = 0
type = "float32"

[[modbus.registers_to_read]]
name = "current_l1"
address = 2
type = "float32"

[[modbus.registers_to_read]]
name = "breaker_closed"
address = 0
kind = "coil"
"""


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test database lives (not created yet)."""
    return tmp_path / "data" / "nixlog.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh, migrated database connection, closed after the test."""
    conn = database.open_db(db_path)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def config_file(tmp_path: Path, db_path: Path) -> Path:
    """A config.toml whose database is ``db_path`` and whose map is ``REGISTER_NAMES``."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TEMPLATE.format(db=db_path), encoding="utf-8")
    return path
