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


def _rows_and_integrity(conn: sqlite3.Connection) -> tuple[int, int, int, str]:
    first, last, count = conn.execute("SELECT min(id), max(id), count(*) FROM readings").fetchone()
    return first, last, count, conn.execute("PRAGMA integrity_check").fetchone()[0]


def _prune_a_disk_the_database_filled(
    db: sqlite3.Connection, db_path: Path
) -> tuple[Callable[[Path], int], int]:
    """100,000 readings and the reserve fill the disk; one prune that must drop readings.

    Returns the disk's free-space function and the file's size before the prune.
    """
    fill(db, 100_000)
    database.checkpoint(db)
    assert ensure_reserve(db_path, free_disk=lambda _: 10**12)
    disk = full_disk(db_path)
    size_before = db_path.stat().st_size
    config = DatabaseConfig(path=db_path, storage_limit_gb=0.0)
    report = database.prune_database(db, config, free_disk=disk, headroom_bytes=4 * RESERVE_BYTES)
    assert report.deleted_sent + report.deleted_unsent > 0, report
    return disk, size_before


def test_pages_freed_by_pruning_bring_the_reserve_back(
    db: sqlite3.Connection, db_path: Path
) -> None:
    """Our own database filled the disk: pruning frees pages inside the file, and just enough
    of them go back to the filesystem for the reserve to return in the same pass."""
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # new files are incremental
    disk, size_before = _prune_a_disk_the_database_filled(db, db_path)
    assert reserve_path(db_path).stat().st_size == RESERVE_BYTES, "no reserve after the prune"
    given_back = size_before - db_path.stat().st_size
    # The file gave the filesystem room for the reserve twice over, and not much more.
    assert given_back + disk(db_path) + RESERVE_BYTES >= 2 * RESERVE_BYTES
    assert given_back <= 2 * RESERVE_BYTES + 65536, given_back
    first, last, count, integrity = _rows_and_integrity(db)
    assert integrity == "ok"
    assert (last, count) == (100_000, 100_000 - first + 1)  # oldest gone, the rest intact


def test_an_older_non_incremental_file_keeps_working_without_its_reserve(
    db: sqlite3.Connection, db_path: Path
) -> None:
    """A file made before auto_vacuum (NONE) cannot give pages back: the prune still frees
    room inside it, the reserve stays missing, and nothing raises; a VACUUM converts it."""
    db.execute("PRAGMA auto_vacuum = NONE")
    db.execute("VACUUM")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    _, size_before = _prune_a_disk_the_database_filled(db, db_path)
    assert not reserve_path(db_path).exists()
    assert db_path.stat().st_size == size_before  # freed pages stay inside the file
    assert _rows_and_integrity(db)[3] == "ok"
    # `nixlog prune --vacuum` (a new connection, then VACUUM) converts it: from then on it
    # can give pages back.
    again = database.open_db(db_path)
    try:
        database.vacuum_database(again, free_disk=lambda _: 10**12)
        assert again.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        database.close(again)
