"""Refusals judged by what succeeded, backoff reset after delivery, Retry-After of any shape."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixlog import database
from nixlog.api_client import MAX_RETRY_AFTER_SEC, ApiClient, PublishResult, parse_retry_after
from nixlog.core import Backoff, publish_pending
from nixlog.model import StoredReading
from tests.fixtures_http import TEST_API_KEY
from tests.receiver import ScriptedReceiver, Step
from tests.test_publish import DEVICE, FakeClock, MakeApi, fill, flags, global_id

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh real database file."""
    connection = database.open_db(tmp_path / "nixlog.db")
    yield connection
    connection.close()


def client_for(conn: sqlite3.Connection, api: object) -> ApiClient:
    return ApiClient(api, DEVICE, database.get_epoch(conn))  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [400, 422, 413])
def test_an_api_that_refuses_everything_rejects_nothing(
    conn: sqlite3.Connection, make_api_config: MakeApi, status: int
) -> None:
    """400/422/413 for every batch and every single reading: zero rejected, endpoint failure."""
    fill(conn, 193)
    with ScriptedReceiver(api_key=TEST_API_KEY) as rx:
        rx.always(Step(status))
        with client_for(conn, make_api_config(rx.url)) as client:
            backoff = Backoff(clock=FakeClock())
            summary = publish_pending(conn, client, batch_size=100, backoff=backoff)
        requests = len(rx.requests)
    assert summary.rejected == 0 and summary.delivered == 0
    assert summary.failure is not None and summary.failure.kind == "endpoint"
    assert database.count_unsent(conn) == 193 and set(flags(conn).values()) == {0}
    assert backoff.failures == 1, "an endpoint problem backs off"
    # 413: halving down to one reading (8 requests for 100); 4xx: the batch and two probes.
    assert requests <= (9 if status == 413 else 3), requests


def test_refusing_everything_logs_check_the_endpoint(
    conn: sqlite3.Connection, make_api_config: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """The log line for an API that refuses every reading says to check api.endpoint."""
    fill(conn, 10)
    with ScriptedReceiver(api_key=TEST_API_KEY) as rx:
        rx.always(Step(400))
        with client_for(conn, make_api_config(rx.url)) as client:
            publish_pending(conn, client, batch_size=100, backoff=Backoff(clock=FakeClock()))
    assert "check api.endpoint" in caplog.text
    assert "marked rejected" not in caplog.text


def test_a_single_unsent_reading_refused_is_kept(
    conn: sqlite3.Connection, make_api_config: MakeApi
) -> None:
    """A batch of one refused reading has no sibling to judge by: kept, not rejected."""
    fill(conn, 1)
    with ScriptedReceiver(api_key=TEST_API_KEY) as rx:
        rx.poison = {global_id(conn, 1)}
        with client_for(conn, make_api_config(rx.url)) as client:
            summary = publish_pending(conn, client, batch_size=100)
    assert summary.rejected == 0 and database.count_unsent(conn) == 1


@pytest.mark.parametrize("bad", [[1], [100], [1, 2, 3], [99, 100], [1, 50, 100]])
def test_poison_readings_are_rejected_once_a_sibling_is_accepted(
    conn: sqlite3.Connection, make_api_config: MakeApi, bad: list[int]
) -> None:
    """Bad readings at either end or both: exactly they are rejected, the rest delivered."""
    fill(conn, 100)
    with ScriptedReceiver(api_key=TEST_API_KEY) as rx:
        rx.poison = {global_id(conn, i) for i in bad}
        with client_for(conn, make_api_config(rx.url)) as client:
            summary = publish_pending(conn, client, batch_size=100)
        delivered = rx.stats.unique
    if bad == [1, 50, 100]:
        # Both ends refused alone: taken for an endpoint problem (documented price).
        assert summary.rejected == 0 and summary.failure is not None
        assert summary.failure.kind == "endpoint" and database.count_unsent(conn) == 100
        return
    assert sorted(summary.rejected_ids) == bad and summary.failure is None
    assert delivered == 100 - len(bad) and database.count_unsent(conn) == 0


class _HalfFailing:
    """A fake API: 500 on every second request, else delivered (for the backoff reset)."""

    def __init__(self) -> None:
        self.calls = 0

    def publish_data(self, rows: Sequence[StoredReading]) -> PublishResult:
        self.calls += 1
        if self.calls % 2 == 0:
            return PublishResult("temporary", status=500, detail="HTTP 500")
        return PublishResult("delivered", status=200)


def test_backoff_restarts_from_base_after_a_delivered_batch(conn: sqlite3.Connection) -> None:
    """Deliver then fail, many times: the wait never grows past the first step (base)."""
    fill(conn, 1000)
    clock = FakeClock()
    backoff = Backoff(clock=clock, rand=lambda: 1.0)
    api = _HalfFailing()
    for _ in range(20):
        clock.now = max(clock.now, backoff.next_attempt_at)
        publish_pending(conn, api, batch_size=10, backoff=backoff)
        assert backoff.failures == 1 and backoff.last_delay <= 1.0
    assert database.count_unsent(conn) == 1000 - 200


@given(st.text(max_size=500))
@settings(max_examples=300, deadline=None)
def test_retry_after_parsing_never_raises(header: str) -> None:
    """Any header text: None or a finite number of seconds within 0..MAX_RETRY_AFTER_SEC."""
    seconds = parse_retry_after(header, NOW)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MAX_RETRY_AFTER_SEC)


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_backoff_is_never_bypassed(retry_after: float | None) -> None:
    """A failure moves next_attempt_at by at least the backoff's own delay, whatever the hint."""
    clock = FakeClock()
    backoff = Backoff(clock=clock, rand=lambda: 0.0)
    delay = backoff.failure(retry_after)
    assert delay >= 0.5 and backoff.next_attempt_at >= clock.now + 0.5


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("9" * 400, MAX_RETRY_AFTER_SEC),
        ("²", None),
        ("-5", None),
        ("007", 7.0),
        ("Sat, 01 Jan 0001 00:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SEC),
        ("Mon, 30 Nov 2026 12:00:30 GMT", 30.0),
        ("1e400", None),
    ],
)
def test_retry_after_examples(header: str, expected: float | None) -> None:
    """Huge, odd and dated headers: clamped or ignored as documented."""
    assert parse_retry_after(header, NOW) == expected


@pytest.mark.parametrize("status", [400, 413])
def test_publish_exits_78_when_the_api_refuses_every_reading(
    tmp_path: Path, receiver: ScriptedReceiver, status: int
) -> None:
    """`nixlog publish` against 400/413 for all: exit 78 naming api.endpoint, nothing rejected."""
    from tests.test_publish_cli import fill as fill_cli
    from tests.test_publish_cli import run, unsent, write_config

    config = write_config(tmp_path, receiver.url)
    fill_cli(tmp_path, 193)
    receiver.always(Step(status))
    code, stdout, stderr = run("publish", "-c", str(config))
    assert code == 78, stderr
    assert stderr.startswith(
        f"Error: {config}: api.endpoint: does not accept batches (HTTP {status}"
    )
    assert "accepted none of the readings" in stderr and len(stderr.strip().splitlines()) == 1
    assert unsent(tmp_path) == 193
    assert "Delivered 0 readings" in stdout and "rejected" not in stdout
