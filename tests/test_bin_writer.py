"""The store station as the daemon and `poll --save` use it, and poll's exit-status logic."""

from __future__ import annotations

from pathlib import Path

from nixlog import core, database
from nixlog.model import Reading
from tests.fixtures_db import make_reading


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(path: Path) -> int:
    conn = database.open_db(path)
    try:
        return database.stats(conn).rows
    finally:
        database.close(conn)


def test_writes_whole_batches_and_the_rest_on_close(db_path: Path) -> None:
    """Full bins are written as they fill; close() writes the partial one."""
    conn = database.open_db(db_path)
    writer = core.BinWriter(conn, "dev", batch_size=5, flush_interval_sec=60, clock=FakeClock())
    written = [writer.add(make_reading(i)) for i in range(12)]
    assert written == [0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0]
    assert writer.close() == 2
    assert writer.stored == 12
    database.close(conn)
    assert rows(db_path) == 12


def test_a_failed_write_keeps_readings_and_spaces_retries(db_path: Path) -> None:
    """Database locked: readings stay in memory, retries wait, nothing is lost afterwards."""
    clock = FakeClock()
    errors: list[Exception] = []
    conn = database.open_db(db_path, busy_timeout_ms=50)
    blocker = database.open_db(db_path)
    writer = core.BinWriter(
        conn,
        "dev",
        batch_size=2,
        flush_interval_sec=60,
        clock=clock,
        on_write_error=errors.append,
    )
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        assert writer.add(make_reading(0)) == 0
        assert writer.add(make_reading(1)) == 0  # due, tried, failed
        assert len(errors) == 1 and "locked" in str(errors[0])
        assert writer.add(make_reading(2)) == 0  # within the retry pause: not even tried
        assert len(errors) == 1
        assert len(writer.bin) == 3
    finally:
        blocker.execute("ROLLBACK")
        database.close(blocker)
    clock.now += core.WRITE_RETRY_CAP_SEC
    assert writer.add(make_reading(3)) == 4  # the pause is over: everything kept is written
    database.close(conn)
    assert rows(db_path) == 4


def reading(values: dict[str, object], errors: dict[str, str]) -> Reading:
    return Reading("2026-11-26T00:00:00.000000+00:00", values, errors)  # type: ignore[arg-type]


def test_poll_outcome_unreachable_only_when_nothing_ever_answered() -> None:
    """Silence everywhere is 'unreachable'; one value or one exception answer is not."""
    silent = core.PollOutcome()
    silent.record(reading({}, {"a": "timeout", "b": "skipped: unit 1 not responding"}))
    silent.record(reading({}, {"a": "disconnected"}))
    assert silent.unreachable and silent.first_error == "timeout"

    answered = core.PollOutcome()
    answered.record(reading({}, {"a": "exception 2 (illegal data address)"}))
    assert not answered.unreachable and answered.any_error

    partly = core.PollOutcome()
    partly.record(reading({}, {"a": "timeout"}))
    partly.record(reading({"a": 1}, {}))
    assert not partly.unreachable and partly.any_error

    clean = core.PollOutcome()
    clean.record(reading({"a": 1}, {}))
    assert not clean.unreachable and not clean.any_error
