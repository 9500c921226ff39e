"""Station 3: publish_pending over a real SQLite outbox and a real HTTP receiver."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from nixlog import database
from nixlog.api_client import ApiClient
from nixlog.config import ApiConfig, Secret
from nixlog.core import Backoff, publish_pending
from nixlog.model import Reading
from tests.fixtures_http import TEST_API_KEY
from tests.receiver import ScriptedReceiver, Step

DEVICE = "plant7-logger"
MakeApi = Callable[..., ApiConfig]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh real database file."""
    connection = database.open_db(tmp_path / "nixlog.db")
    yield connection
    connection.close()


def fill(conn: sqlite3.Connection, count: int) -> None:
    """Store ``count`` readings in bins of 100 (ids 1..count on a fresh database)."""
    for start in range(0, count, 100):
        size = min(100, count - start)
        database.batch_insert_readings(
            conn,
            DEVICE,
            [
                Reading(
                    f"2026-11-26T16:00:00.{start + i:06d}+00:00",
                    {"voltage_l1": 230.5, "n": start + i + 1},
                )
                for i in range(size)
            ],
        )


def client_for(conn: sqlite3.Connection, api: ApiConfig) -> ApiClient:
    return ApiClient(api, DEVICE, database.get_epoch(conn))


def global_id(conn: sqlite3.Connection, seq: int) -> str:
    return f"{DEVICE}-{database.get_epoch(conn)}-{seq}"


def flags(conn: sqlite3.Connection) -> dict[int, int]:
    return dict(conn.execute("SELECT id, sent_flag FROM readings ORDER BY id").fetchall())


def last_publish(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_publish'").fetchone()
    return None if row is None else row[0]


# ------------------------------------------------------------------ Backoff (pure)


def test_backoff_grows_exponentially_with_jitter_and_stays_at_the_cap() -> None:
    """Delays double from base, stay in [d/2, d], and after many failures stay at the cap."""
    clock = FakeClock()
    low = Backoff(base=1, cap=60, clock=clock, rand=lambda: 0.0)
    high = Backoff(base=1, cap=60, clock=clock, rand=lambda: 1.0)
    assert [low.failure() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [high.failure() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    real = Backoff(base=1, cap=60, clock=clock)
    delays = [real.failure() for _ in range(2000)]
    assert all(30 <= d <= 60 for d in delays[10:]), "no tight loop once at the cap"


def test_backoff_honours_retry_after_and_resets_on_success() -> None:
    """Retry-After longer than the backoff wins; ready() only after it; success resets."""
    clock = FakeClock()
    backoff = Backoff(base=1, cap=300, clock=clock, rand=lambda: 0.5)
    assert backoff.ready() and backoff.remaining() == 0
    assert backoff.failure(retry_after=120) == 120
    assert backoff.next_attempt_at == clock.now + 120
    clock.now += 119.9
    assert not backoff.ready() and backoff.remaining() == pytest.approx(0.1)
    clock.now += 0.1
    assert backoff.ready()
    backoff.success()
    assert backoff.failures == 0 and backoff.failure() == 0.75


def test_backoff_refuses_nonsense_settings() -> None:
    """A base of zero (a tight loop) or a cap below the base is refused."""
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=10, cap=5)


# ------------------------------------------------------------------ delivery


def test_backlog_drains_in_full_batches_back_to_back(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """250 readings, batches of 100: three requests, all delivered, caught up, publish noted."""
    fill(conn, 250)
    progress: list[int] = []
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100, on_progress=progress.append)
    assert (summary.delivered, summary.rejected, summary.requests) == (250, 0, 3)
    assert summary.caught_up and summary.failure is None
    assert progress == [100, 100, 50]
    assert [len(b) for b in receiver.batches()] == [100, 100, 50]
    assert receiver.stats.unique == 250 and receiver.stats.duplicates == 0
    assert database.count_unsent(conn) == 0
    assert set(flags(conn).values()) == {1}
    assert last_publish(conn) is not None
    seqs = [r["seq"] for batch in receiver.batches() for r in batch]
    assert seqs == list(range(1, 251)), "oldest first, in id order"


def test_once_sends_exactly_one_batch(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """once=True posts one batch and leaves the rest unsent."""
    fill(conn, 250)
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100, once=True)
    assert (summary.delivered, summary.requests, summary.caught_up) == (100, 1, False)
    assert database.count_unsent(conn) == 150


def test_nothing_to_send_makes_no_request(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """An empty outbox is caught up without a request and without recording a publish."""
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100)
    assert summary.caught_up and summary.requests == 0
    assert receiver.requests == [] and last_publish(conn) is None


def test_a_set_stop_event_sends_nothing(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """With the stop event already set (shutdown), no new batch is started."""
    fill(conn, 10)
    stop = threading.Event()
    stop.set()
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100, stop=stop)
    assert summary.requests == 0 and database.count_unsent(conn) == 10


# ------------------------------------------------------------------ temporary failures


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_temporary_failure_marks_nothing_and_backs_off(
    conn: sqlite3.Connection,
    receiver: ScriptedReceiver,
    make_api_config: MakeApi,
    status: int,
) -> None:
    """5xx/408: the call stops at once, nothing is marked sent, the backoff moves on."""
    fill(conn, 150)
    receiver.always(Step(status))
    clock = FakeClock()
    backoff = Backoff(base=2, cap=60, clock=clock, rand=lambda: 1.0)
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100, backoff=backoff)
    assert summary.failure is not None and summary.failure.status == status
    assert (summary.delivered, summary.requests) == (0, 1)
    assert summary.retry_at == clock.now + 2
    assert database.count_unsent(conn) == 150 and last_publish(conn) is None


def test_failure_mid_drain_keeps_the_delivered_prefix_only(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """Batch 1 acknowledged, batch 2 answered 503: exactly batch 1 is marked sent."""
    fill(conn, 300)
    receiver.queue(Step(200, store=True), Step(503))
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100)
    assert summary.delivered == 100 and summary.failure is not None
    assert database.count_unsent(conn) == 200
    assert [r.id for r in database.get_unsent_readings(conn, 1)] == [101]


def test_429_retry_after_seconds_no_request_before_it(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """After 429 Retry-After: 30, calls before then send nothing; the first call after does."""
    fill(conn, 10)
    receiver.queue(Step(429, retry_after="30"))
    clock = FakeClock()
    backoff = Backoff(base=1, cap=300, clock=clock, rand=lambda: 0.0)
    with client_for(conn, make_api_config(receiver.url)) as client:
        first = publish_pending(conn, client, batch_size=100, backoff=backoff)
        assert first.failure is not None and first.failure.status == 429
        assert backoff.next_attempt_at == clock.now + 30
        clock.now += 29.5
        early = publish_pending(conn, client, batch_size=100, backoff=backoff)
        assert early.deferred and early.requests == 0
        assert len(receiver.requests) == 1, "no request before Retry-After"
        clock.now += 0.5
        late = publish_pending(conn, client, batch_size=100, backoff=backoff)
    assert late.delivered == 10 and late.caught_up
    assert len(receiver.requests) == 2 and backoff.failures == 0


def test_429_retry_after_http_date_is_honoured(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """A Retry-After HTTP date 90 s ahead holds the next attempt back 90 s."""
    fill(conn, 5)
    now = datetime(2026, 11, 26, 16, 0, 0, tzinfo=UTC)
    receiver.queue(Step(429, retry_after=format_datetime(now + timedelta(seconds=90), True)))
    clock = FakeClock()
    backoff = Backoff(base=1, cap=300, clock=clock, rand=lambda: 0.0)
    api = make_api_config(receiver.url)
    with ApiClient(api, DEVICE, database.get_epoch(conn), wall_clock=lambda: now) as client:
        summary = publish_pending(conn, client, batch_size=100, backoff=backoff)
    assert summary.retry_at == clock.now + 90
    assert database.count_unsent(conn) == 5


def test_server_down_keeps_everything(
    conn: sqlite3.Connection, dead_url: str, make_api_config: MakeApi
) -> None:
    """Nothing listening: a temporary failure, every reading still unsent."""
    fill(conn, 20)
    with client_for(conn, make_api_config(dead_url)) as client:
        summary = publish_pending(conn, client, batch_size=100)
    assert summary.failure is not None and summary.failure.kind == "temporary"
    assert database.count_unsent(conn) == 20


def test_server_that_never_answers_times_out_and_keeps_everything(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """A hung server costs one timeout, then the call returns with nothing marked."""
    fill(conn, 20)
    receiver.always(Step(hang=True))
    with client_for(conn, make_api_config(receiver.url, timeout_sec=0.3)) as client:
        summary = publish_pending(conn, client, batch_size=100)
    assert summary.failure is not None and "timeout" in summary.failure.detail
    assert database.count_unsent(conn) == 20


def test_lost_ack_resends_with_the_same_ids_and_loses_nothing(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """Server stores then answers 500: the retry repeats the same ids and idempotency key."""
    fill(conn, 50)
    receiver.queue(Step(500, store=True))
    with client_for(conn, make_api_config(receiver.url)) as client:
        first = publish_pending(conn, client, batch_size=100)
        assert first.failure is not None and database.count_unsent(conn) == 50
        second = publish_pending(conn, client, batch_size=100)
    assert second.delivered == 50 and database.count_unsent(conn) == 0
    one, two = receiver.requests
    assert one.headers["idempotency-key"] == two.headers["idempotency-key"]
    assert one.reading_ids == two.reading_ids
    assert receiver.stats.received == 100 and receiver.stats.duplicates == 50
    assert receiver.seen_ids() == {global_id(conn, seq) for seq in range(1, 51)}


# ------------------------------------------------------------------ refusals


def test_one_poison_reading_in_100_is_rejected_and_99_delivered(
    conn: sqlite3.Connection, receiver: ScriptedReceiver, make_api_config: MakeApi
) -> None:
    """400 for one reading: bisection rejects exactly it, delivers the other 99, never resends."""
    fill(conn, 100)
    receiver.poison = {global_id(conn, 37)}
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100)
        assert (summary.delivered, summary.rejected, summary.rejected_ids) == (99, 1, [37])
        assert summary.caught_up and summary.failure is None
        assert summary.requests <= 2 * 7 + 1, "bisection, not one request per reading"
        state = flags(conn)
        assert state[37] == 2 and all(flag == 1 for seq, flag in state.items() if seq != 37)
        assert receiver.seen_ids() == {global_id(conn, s) for s in range(1, 101) if s != 37}
        assert receiver.stats.duplicates == 0
        # The rejected reading never blocks the queue and is never sent again.
        fill(conn, 10)
        requests_before = len(receiver.requests)
        after = publish_pending(conn, client, batch_size=100)
    assert after.delivered == 10 and len(receiver.requests) == requests_before + 1
    assert global_id(conn, 37) not in receiver.requests[-1].reading_ids


def test_413_splits_the_batch_until_it_fits(
    conn: sqlite3.Connection, make_api_config: MakeApi
) -> None:
    """A receiver taking at most 30 readings gets halves of halves; everything is delivered."""
    fill(conn, 100)
    with ScriptedReceiver(api_key=TEST_API_KEY, max_batch=30) as rx:
        with client_for(conn, make_api_config(rx.url)) as client:
            summary = publish_pending(conn, client, batch_size=100)
        assert (summary.delivered, summary.rejected, summary.caught_up) == (100, 0, True)
        assert rx.stats.unique == 100 and rx.stats.duplicates == 0
        accepted = [len(b) for b in rx.batches() if len(b) <= 30]
    assert sum(accepted) == 100
    assert database.count_unsent(conn) == 0


def test_401_keeps_rows_backs_off_and_logs_loudly_without_the_key(
    conn: sqlite3.Connection,
    receiver: ScriptedReceiver,
    make_api_config: MakeApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong key: one request, nothing marked or rejected, an ERROR log that hides the key."""
    fill(conn, 100)
    wrong = "wrong-key-0xDEADBEEF"
    backoff = Backoff(clock=FakeClock(), rand=lambda: 0.0)
    caplog.set_level(logging.WARNING, logger="nixlog")
    api = make_api_config(receiver.url, api_key=Secret(wrong))
    with client_for(conn, api) as client:
        summary = publish_pending(conn, client, batch_size=100, backoff=backoff)
    assert summary.failure is not None and summary.failure.kind == "auth"
    assert (summary.requests, summary.rejected) == (1, 0)
    assert database.count_unsent(conn) == 100 and backoff.failures == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "REFUSED THE KEY" in errors[0].getMessage()
    assert wrong not in caplog.text and TEST_API_KEY not in caplog.text


@pytest.mark.parametrize("status", [404, 501])
def test_wrong_endpoint_keeps_rows_instead_of_rejecting_the_backlog(
    conn: sqlite3.Connection,
    receiver: ScriptedReceiver,
    make_api_config: MakeApi,
    status: int,
) -> None:
    """404/501 say nothing about the readings: no bisection, nothing rejected, all kept."""
    fill(conn, 100)
    receiver.always(Step(status))
    with client_for(conn, make_api_config(receiver.url)) as client:
        summary = publish_pending(conn, client, batch_size=100)
    assert summary.failure is not None and summary.failure.kind == "endpoint"
    assert (summary.requests, summary.rejected) == (1, 0)
    assert database.count_unsent(conn) == 100
