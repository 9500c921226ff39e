"""Station 2 (store): the in-memory bin and its flush into real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nixlog import core, database
from nixlog.errors import DatabaseError
from tests.fixtures_db import make_reading


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bin_is_due_exactly_at_batch_size() -> None:
    """Not due at batch_size - 1 readings, due at batch_size (before the interval)."""
    clock = FakeClock()
    bin_ = core.ReadingBin(batch_size=100, flush_interval_sec=10, clock=clock)
    for i in range(99):
        bin_.add(make_reading(i))
    assert len(bin_) == 99
    assert not bin_.is_due()
    bin_.add(make_reading(99))
    assert bin_.is_due()
    assert bin_.seconds_until_due() == 0


def test_bin_is_due_when_oldest_waited_the_flush_interval() -> None:
    """A partial bin becomes due flush_interval_sec after its OLDEST reading, not its newest."""
    clock = FakeClock()
    bin_ = core.ReadingBin(batch_size=100, flush_interval_sec=10, clock=clock)
    assert not bin_.is_due()  # empty is never due, however long
    clock.now += 1000
    assert not bin_.is_due()
    bin_.add(make_reading(0))
    clock.now += 6
    bin_.add(make_reading(1))
    assert bin_.seconds_until_due() == pytest.approx(4)
    clock.now += 3.999
    assert not bin_.is_due()
    clock.now += 0.001
    assert bin_.is_due()


def test_drain_empties_and_restarts_the_interval() -> None:
    """drain() returns readings oldest first; the interval restarts at the next add."""
    clock = FakeClock()
    bin_ = core.ReadingBin(batch_size=5, flush_interval_sec=10, clock=clock)
    readings = [make_reading(i) for i in range(3)]
    for reading in readings:
        bin_.add(reading)
    assert bin_.drain() == readings
    assert len(bin_) == 0
    clock.now += 60
    bin_.add(make_reading(9))
    assert not bin_.is_due()
    assert bin_.seconds_until_due() == pytest.approx(10)


def test_bin_refuses_nonsense_settings() -> None:
    """A zero batch or a non-positive interval is a programming error, caught early."""
    with pytest.raises(ValueError, match="batch_size"):
        core.ReadingBin(batch_size=0, flush_interval_sec=1)
    with pytest.raises(ValueError, match="flush_interval_sec"):
        core.ReadingBin(batch_size=1, flush_interval_sec=0)


def test_flush_writes_the_bin_in_one_transaction(db: sqlite3.Connection) -> None:
    """A full bin becomes one commit: consecutive ids, one WAL commit frame set."""
    bin_ = core.ReadingBin(batch_size=100, flush_interval_sec=10, clock=FakeClock())
    for i in range(100):
        bin_.add(make_reading(i))
    changes_before = db.total_changes
    assert core.flush(db, "dev-1", bin_) == 100
    assert len(bin_) == 0
    assert db.total_changes - changes_before == 100
    ids = [row[0] for row in db.execute("SELECT id FROM readings")]
    assert ids == list(range(1, 101))


def test_shutdown_flush_writes_a_partial_bin(db_path: Path) -> None:
    """On shutdown the partial bin is written whatever its age; an empty bin writes nothing."""
    conn = database.open_db(db_path)
    bin_ = core.ReadingBin(batch_size=100, flush_interval_sec=10, clock=FakeClock())
    for i in range(7):
        bin_.add(make_reading(i))
    assert not bin_.is_due()
    assert core.flush(conn, "dev-1", bin_) == 7  # what the daemon does in its finally
    assert core.flush(conn, "dev-1", bin_) == 0
    conn.close()
    reopened = database.open_db(db_path)
    assert database.count_unsent(reopened) == 7
    reopened.close()


def test_failed_flush_keeps_the_readings(db: sqlite3.Connection) -> None:
    """If the write fails (locked disk), the readings stay in the bin for the next attempt."""
    bin_ = core.ReadingBin(batch_size=10, flush_interval_sec=10, clock=FakeClock())
    for i in range(3):
        bin_.add(make_reading(i))
    db.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(database._path_of(db), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseError, match="locked"):
        core.flush(db, "dev-1", bin_)
    assert len(bin_) == 3
    blocker.execute("ROLLBACK")
    blocker.close()
    assert core.flush(db, "dev-1", bin_) == 3
    assert len(bin_) == 0


def test_bin_memory_is_capped_when_nothing_can_be_written() -> None:
    """With the database unwritable for long, the bin keeps at most 100 batches, oldest dropped."""
    bin_ = core.ReadingBin(batch_size=2, flush_interval_sec=10, clock=FakeClock())
    cap = 2 * core.MAX_PENDING_BATCHES
    for i in range(cap + 5):
        bin_.add(make_reading(i))
    assert len(bin_) == cap
    assert bin_.dropped == 5
    assert bin_.peek()[0] == make_reading(5)
