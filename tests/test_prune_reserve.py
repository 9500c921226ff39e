"""The disk-full reserve: a file given back so that a prune can commit on a full disk."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from nixlog import database
from nixlog.config import DatabaseConfig
from nixlog.database import RESERVE_BYTES, ensure_reserve, reserve_path
from tests.fixtures_db import fill


def test_reserve_is_created_only_with_room_to_spare(db_path: Path) -> None:
    """The reserve appears (full size, not sparse) only when the disk has twice its size free."""
    db_path.parent.mkdir(parents=True)
    assert not ensure_reserve(db_path, free_disk=lambda _: 2 * RESERVE_BYTES - 1)
    assert not reserve_path(db_path).exists()
    assert ensure_reserve(db_path, free_disk=lambda _: 2 * RESERVE_BYTES)
    reserve = reserve_path(db_path)
    assert reserve.stat().st_size == RESERVE_BYTES
    assert reserve.stat().st_blocks * 512 >= RESERVE_BYTES  # really allocated


def test_idle_maintenance_keeps_a_reserve(db: sqlite3.Connection, db_path: Path) -> None:
    """A maintenance pass with nothing to prune still makes sure the reserve exists."""
    config = DatabaseConfig(path=db_path, storage_limit_gb=0.0)
    report = database.prune_database(db, config, free_disk=lambda _: 10**12, headroom_bytes=0)
    assert report.idle
    assert reserve_path(db_path).exists()


def full_disk(db_path: Path) -> Callable[[Path], int]:
    """A filesystem exactly filled by the database, its WAL and the reserve: 0 bytes free
    while the reserve exists, its size once it is given back."""
    files = (db_path, db_path.with_name(db_path.name + "-wal"), reserve_path(db_path))
    capacity = sum(p.stat().st_size for p in files if p.exists())

    def free(_: Path) -> int:
        return capacity - sum(p.stat().st_size for p in files if p.exists())

    return free


def test_full_disk_releases_the_reserve_and_prunes_oldest(
    db: sqlite3.Connection, db_path: Path
) -> None:
    """At 0 bytes free the reserve is given back first, then the oldest rows are pruned.

    The reserve counts as room in the measurement, so giving it back is no "progress" that
    would stop the pruner early, nor a loss that would make it delete more.
    """
    fill(db, 5000)
    database.checkpoint(db)
    assert ensure_reserve(db_path, free_disk=lambda _: 10**12)
    disk = full_disk(db_path)
    assert disk(db_path) == 0
    config = DatabaseConfig(path=db_path, storage_limit_gb=0.0)
    headroom = RESERVE_BYTES + 50_000  # the reserve alone is not enough room
    report = database.prune_database(db, config, free_disk=disk, headroom_bytes=headroom)
    assert not reserve_path(db_path).exists(), "the reserve was kept on a full disk"
    first, count = db.execute("SELECT min(id), count(*) FROM readings").fetchone()
    assert 0 < report.deleted_unsent < 2500, report
    assert first == report.deleted_unsent + 1 and count == 5000 - report.deleted_unsent
