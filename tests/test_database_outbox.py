"""Storage core on real SQLite files: schema, pragmas, insert, unsent queue, sent/rejected."""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixlog import database
from nixlog.model import SENT_DELIVERED, SENT_REJECTED, SENT_UNSENT, Reading
from tests.fixtures_db import fill, flags, make_reading


def test_open_creates_schema_pragmas_and_epoch(db: sqlite3.Connection, db_path: Path) -> None:
    """A new database is WAL, synchronous FULL, secure_delete off, at schema 1, with an epoch."""
    assert db_path.exists()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 0
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == database.BUSY_TIMEOUT_MS
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == database.SCHEMA_VERSION
    epoch = database.get_epoch(db)
    assert len(epoch) == 8
    int(epoch, 16)


def test_reopen_keeps_epoch_and_data(db_path: Path) -> None:
    """Reopening migrates nothing, keeps the epoch and the rows; a new file gets a new epoch."""
    conn = database.open_db(db_path)
    fill(conn, 10)
    epoch = database.get_epoch(conn)
    conn.close()
    again = database.open_db(db_path)
    assert database.get_epoch(again) == epoch
    assert database.count_unsent(again) == 10
    again.close()
    other = database.open_db(db_path.with_name("other.db"))
    assert database.get_epoch(other) != epoch
    other.close()


def test_batch_insert_returns_consecutive_ids_in_order(db: sqlite3.Connection) -> None:
    """Each bin gets consecutive ids after the previous one; an empty bin writes nothing."""
    assert database.batch_insert_readings(db, "dev-1", []) is None
    first = database.batch_insert_readings(db, "dev-1", [make_reading(i) for i in range(100)])
    second = database.batch_insert_readings(db, "dev-1", [make_reading(i) for i in range(3)])
    assert first == (1, 100)
    assert second == (101, 103)
    ids = [row[0] for row in db.execute("SELECT id FROM readings")]
    assert ids == list(range(1, 104))


def test_ids_are_never_reused_after_everything_is_deleted(db: sqlite3.Connection) -> None:
    """AUTOINCREMENT: after pruning every row, the next id continues (receivers dedupe on it)."""
    fill(db, 5)
    db.execute("DELETE FROM reading_rows")
    assert database.batch_insert_readings(db, "dev-1", [make_reading(9)]) == (6, 6)


def test_stored_reading_round_trips_values_and_errors(db: sqlite3.Connection) -> None:
    """Values, errors, device id and timestamp come back as written; no errors means NULL."""
    reading = make_reading(7, errors=True)
    database.batch_insert_readings(db, "dev-1", [reading, make_reading(8)])
    got = database.get_unsent_readings(db, 10)
    assert got[0].values == reading.values
    assert got[0].errors == {"current_l1": "timeout"}
    assert got[0].device_id == "dev-1"
    assert got[0].timestamp == reading.timestamp
    assert got[1].errors == {}
    assert db.execute("SELECT errors FROM readings WHERE id = 2").fetchone()[0] is None


def test_non_finite_floats_are_stored_as_null(db: sqlite3.Connection) -> None:
    """A float32 register decoding to NaN/inf is stored as JSON null, keeping the JSON valid."""
    reading = Reading("2026-11-26T12:00:00.000000+00:00", {"a": math.nan, "b": math.inf, "c": 1})
    database.batch_insert_readings(db, "dev-1", [reading])
    data = db.execute("SELECT data FROM readings").fetchone()[0]
    assert json.loads(data) == {"a": None, "b": None, "c": 1}
    assert db.execute("SELECT json_valid(data) FROM readings").fetchone()[0] == 1


def test_unsent_oldest_first_and_limited(db: sqlite3.Connection) -> None:
    """get_unsent_readings returns the oldest unsent by id, at most ``limit``."""
    fill(db, 250)
    batch = database.get_unsent_readings(db, 100)
    assert [r.id for r in batch] == list(range(1, 101))
    assert all(r.sent_flag == SENT_UNSENT for r in batch)


def test_mark_sent_then_rejected_settles_a_batch(db: sqlite3.Connection) -> None:
    """The shipper's order (rejected, then the rest sent) settles every id of the batch."""
    fill(db, 20)
    batch = [r.id for r in database.get_unsent_readings(db, 10)]
    database.mark_readings_rejected(db, [3, 7])
    database.mark_readings_as_sent(db, [i for i in batch if i not in (3, 7)])
    got = flags(db)
    assert got[3] == got[7] == SENT_REJECTED
    assert all(got[i] == SENT_DELIVERED for i in batch if i not in (3, 7))
    assert all(got[i] == SENT_UNSENT for i in range(11, 21))
    assert [r.id for r in database.get_unsent_readings(db, 5)] == [11, 12, 13, 14, 15]
    assert database.count_unsent(db) == 10
    # The common case leaves no side rows behind: "sent" is one high-water mark.
    assert db.execute("SELECT count(*) FROM sent_ahead_ids").fetchone()[0] == 0
    assert db.execute("SELECT value FROM meta WHERE key = 'sent_upto'").fetchone()[0] == "10"


def test_mark_sent_out_of_order_halves(db: sqlite3.Connection) -> None:
    """Any set of ids works: the second half first (e.g. after a 413 split), then the first."""
    fill(db, 10)
    database.mark_readings_as_sent(db, [6, 7, 8, 9, 10])
    assert flags(db) == {i: SENT_DELIVERED if i > 5 else SENT_UNSENT for i in range(1, 11)}
    assert [r.id for r in database.get_unsent_readings(db, 100)] == [1, 2, 3, 4, 5]
    database.mark_readings_as_sent(db, [1, 2, 3, 4, 5])
    assert set(flags(db).values()) == {SENT_DELIVERED}
    assert database.get_unsent_readings(db, 100) == []
    assert db.execute("SELECT count(*) FROM sent_ahead_ids").fetchone()[0] == 0


def test_rejected_is_never_resent_and_ignores_unknown_ids(db: sqlite3.Connection) -> None:
    """A rejected reading never comes back as unsent; ids that do not exist are ignored."""
    fill(db, 3)
    database.mark_readings_rejected(db, [2, 999])
    database.mark_readings_as_sent(db, [1000])
    assert [r.id for r in database.get_unsent_readings(db, 10)] == [1, 3]
    assert flags(db) == {1: SENT_UNSENT, 2: SENT_REJECTED, 3: SENT_UNSENT}
    assert db.execute("SELECT count(*) FROM rejected_ids").fetchone()[0] == 1


def test_a_rejected_reading_below_a_pruned_gap_stays_rejected(db: sqlite3.Connection) -> None:
    """Delivering a rejected reading after the sent rows above it were pruned keeps the counts
    equal to the view (found by the property test below: it used to count the pruned gap)."""
    fill(db, 10)
    database.mark_readings_rejected(db, [1])
    database.mark_readings_as_sent(db, list(range(2, 11)))
    database._delete_chunk(db, "sent", 6)
    database.mark_readings_as_sent(db, [1])
    by_flag = dict(db.execute("SELECT sent_flag, count(*) FROM readings GROUP BY 1").fetchall())
    got = database.stats(db)
    assert (got.rows, got.unsent, got.sent, got.rejected) == (
        sum(by_flag.values()),
        by_flag.get(SENT_UNSENT, 0),
        by_flag.get(SENT_DELIVERED, 0),
        by_flag.get(SENT_REJECTED, 0),
    )
    assert flags(db)[1] == SENT_REJECTED


def test_record_publish_shows_in_stats(db: sqlite3.Connection) -> None:
    """record_publish stores the time that db stats reports as last_publish."""
    database.record_publish(db, "2026-11-26T12:00:00+00:00")
    assert database.stats(db).last_publish == "2026-11-26T12:00:00+00:00"


operation = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 30)),
    st.tuples(st.just("sent"), st.lists(st.integers(1, 200), max_size=20)),
    st.tuples(st.just("rejected"), st.lists(st.integers(1, 200), max_size=5)),
    st.tuples(st.just("ship"), st.integers(1, 40)),
    st.tuples(st.just("prune"), st.sampled_from(["sent", "rejected", "unsent"])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=25))
def test_cheap_counts_match_the_view(ops: list[tuple[str, object]]) -> None:
    """After any mix of inserts, marks and prune chunks, O(1) counts equal a full view scan."""
    with tempfile.TemporaryDirectory() as directory:
        conn = database.open_db(Path(directory) / "t.db")
        next_index = 0
        for kind, arg in ops:
            if kind == "insert":
                assert isinstance(arg, int)
                fill(conn, arg, batch=7, start=next_index)
                next_index += arg
            elif kind == "sent":
                database.mark_readings_as_sent(conn, arg)  # type: ignore[arg-type]
            elif kind == "rejected":
                database.mark_readings_rejected(conn, arg)  # type: ignore[arg-type]
            elif kind == "ship":
                ids = [r.id for r in database.get_unsent_readings(conn, arg)]  # type: ignore[arg-type]
                database.mark_readings_rejected(conn, ids[::5])
                database.mark_readings_as_sent(conn, [i for i in ids if i not in ids[::5]])
            else:
                database._delete_chunk(conn, str(arg), 6)
            by_flag = dict(
                conn.execute("SELECT sent_flag, count(*) FROM readings GROUP BY 1").fetchall()
            )
            got = database.stats(conn)
            assert (got.unsent, got.sent, got.rejected) == (
                by_flag.get(0, 0),
                by_flag.get(1, 0),
                by_flag.get(2, 0),
            )
            assert got.rows == sum(by_flag.values())
            unsent_ids = [r.id for r in database.get_unsent_readings(conn, 10_000)]
            view_unsent = [
                row[0] for row in conn.execute("SELECT id FROM readings WHERE sent_flag = 0")
            ]
            assert unsent_ids == view_unsent
        conn.close()
