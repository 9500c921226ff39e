"""The API down for a long stretch: polling keeps its rate, retries back off, backlog drains.

The guarantees (README: Guarantees): "Nothing is lost ... on API outages of any length"; retry "with
capped exponential backoff with jitter, forever". The outage is compressed in time: 6 s in CI,
``NIXLOG_OUTAGE_SECONDS`` (default 600: long enough to reach the 300 s cap) in full mode.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from nixlog.core import BACKOFF_BASE_SEC, BACKOFF_CAP_SEC
from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import DaemonProcess, daemon_config, row_count, wait_until
from tests.faults.helpers import (
    account,
    assert_all_settled,
    backoff_attempt_bound,
    report,
)
from tests.faults.test_kill9 import publish_rest
from tests.receiver import ScriptedReceiver, Step

RATE_HZ = 20.0
API_BATCH = 50


def outage(
    tmp_path: Path,
    simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
    seconds: float,
) -> None:
    """503 for ``seconds``, then healthy: check rate, retry spacing, drain order, books."""
    config = daemon_config(
        tmp_path, simulator.address, receiver.url, poll_rate_hz=RATE_HZ, publish_interval_sec=0.3
    )
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("publish_interval_sec =", f"batch_size = {API_BATCH}\npublish_interval_sec ="),
        encoding="utf-8",
    )
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: receiver.stats.unique >= 20, 20, "the first deliveries", daemon)

    receiver.always(Step(503))
    down_at, first_request = time.monotonic(), len(receiver.requests)
    rows_at_start = row_count(db_path)
    time.sleep(seconds)
    rows_at_end = row_count(db_path)
    up_at, recovery_request = time.monotonic(), len(receiver.requests)
    receiver.always(None)
    attempts = receiver.requests[first_request:recovery_request]

    rate = (rows_at_end - rows_at_start) / (up_at - down_at)
    assert rate >= RATE_HZ * 0.8, f"polling slowed to {rate:.1f}/s during the outage"

    # Not a tight loop: the n-th retry waits at least min(cap, base * 2**(n-1)) / 2 ...
    assert 1 <= len(attempts) <= backoff_attempt_bound(seconds) + 1, len(attempts)
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(attempts)]
    for n, gap in enumerate(gaps, start=1):
        floor = min(BACKOFF_CAP_SEC, BACKOFF_BASE_SEC * 2 ** (n - 1)) / 2
        assert gap >= floor * 0.95, f"retry {n} came after {gap:.2f} s (floor {floor:.2f} s)"
        # ... and it never gives up: no wait longer than the cap (plus scheduling slack).
        assert gap <= BACKOFF_CAP_SEC + 6, f"retry {n} came after {gap:.0f} s"
    # Every attempt offered the same head of the queue: the oldest unsent reading.
    heads = {r.payload["readings"][0]["seq"] for r in attempts}
    assert len(heads) == 1, heads

    # The backlog drains oldest first, batch after batch, while polling goes on.
    backlog = rows_at_end - (min(heads) - 1)
    # The first post after the outage may wait out a whole backoff delay (up to the cap).
    wait_until(
        lambda: account(db_path, receiver).unsent < API_BATCH,
        min(seconds, BACKOFF_CAP_SEC) + 60,
        "the drain",
        daemon,
    )
    drain = receiver.requests[recovery_request:]
    seqs = [reading["seq"] for r in drain for reading in r.payload["readings"]]
    assert seqs[0] == min(heads), "the drain did not start with the oldest reading"
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "drain out of order"
    rows_after = row_count(db_path)
    code, _ = daemon.terminate()
    assert code == 0, daemon.log[-2000:]
    publish_rest(config)
    books = account(db_path, receiver)
    assert_all_settled(books)
    assert books.duplicates == 0
    assert "Traceback" not in daemon.log
    # The first post after the outage waits out the backoff; then batches go back to back.
    resumed_at = drain[0].received_at
    last_of_backlog = min(heads) + backlog - 1
    caught_up_at = next(
        r.received_at for r in drain if r.payload["readings"][-1]["seq"] >= last_of_backlog
    )
    drain_rate = backlog / max(caught_up_at - resumed_at, 1e-3)
    report(
        f"API outage {seconds:.0f} s: polling {rate:.1f}/s (of {RATE_HZ:g}), "
        f"{len(attempts)} attempts (bound {backoff_attempt_bound(seconds) + 1}), gaps "
        f"{', '.join(f'{g:.1f}' for g in gaps)} s; first post {resumed_at - up_at:.1f} s "
        f"after the API returned; backlog {backlog} drained in {caught_up_at - resumed_at:.2f} s "
        f"({drain_rate:.0f}/s, polling added "
        f"{rows_after - rows_at_end}); {books.line()}"
    )


def test_api_outage_short(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """6 s of 503: polling at rate, retries spaced by the backoff, backlog drains in order."""
    outage(tmp_path, tcp_simulator, receiver, processes, 6.0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_api_outage_reaches_the_cap(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """A 10-minute outage: retries grow to the 300 s cap and stay there; nothing is lost."""
    outage(
        tmp_path,
        tcp_simulator,
        receiver,
        processes,
        float(os.environ.get("NIXLOG_OUTAGE_SECONDS", "600")),
    )
