"""The wall clock steps back an hour mid-run: no reading lost, the queue keeps its order.

A Raspberry Pi has no RTC: NTP steps the clock at boot, and an operator may set it by hand.
ARCHITECTURE.md (Storage): "The queue is ordered by id, never by timestamp". The real daemon runs
under libfaketime (Debian package ``faketime``) with an offset file it re-reads on every call; only
the wall clock moves (``FAKETIME_DONT_FAKE_MONOTONIC=1``), as with a real clock step.
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import DaemonProcess, daemon_config, read_ledger, row_count, wait_until
from tests.faults.helpers import (
    account,
    assert_all_settled,
    faketime_env,
    report,
    seqs_in_arrival_order,
)
from tests.faults.test_kill9 import publish_rest
from tests.receiver import ScriptedReceiver


def test_wall_clock_steps_back_an_hour(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """-1 h mid-run: polling goes on, ids stay in order, delivery follows ids, nothing lost."""
    offset_file = tmp_path / "faketime-offset"
    env = faketime_env(offset_file)
    if env is None:
        pytest.skip("libfaketime is not installed (Debian package: faketime)")
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url, poll_rate_hz=20)
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config, env=env)
    processes.append(daemon)
    wait_until(lambda: receiver.stats.unique >= 30, 20, "deliveries before the step", daemon)
    # Atomically: libfaketime reads the file on every call, and a truncated file read between
    # truncate and write means "no offset", a spurious step forward and back.
    staged = offset_file.with_name(offset_file.name + ".new")
    staged.write_text("-1h\n", encoding="utf-8")
    os.replace(staged, offset_file)
    stepped = row_count(db_path)
    wait_until(lambda: row_count(db_path) >= stepped + 40, 20, "polling after the step", daemon)
    wait_until(lambda: receiver.stats.unique >= stepped + 20, 20, "deliveries after the step")
    code, _ = daemon.terminate()
    assert code == 0, daemon.log[-2000:]
    assert "Traceback" not in daemon.log
    publish_rest(config)

    books = account(db_path, receiver)
    assert_all_settled(books)
    assert books.duplicates == 0, daemon.log[-6000:]
    ledger = read_ledger(db_path)
    assert ledger.ids == list(range(1, books.stored + 1))
    # The fault really happened: one reading's time is ~an hour before its predecessor's.
    times = [datetime.fromisoformat(ledger.timestamps[i]) for i in ledger.ids]
    steps = [b - a for a, b in itertools.pairwise(times)]
    back = [s for s in steps if s < timedelta(minutes=-50)]
    assert len(back) == 1, f"expected one step back, saw {back}"
    # Everything else moves forward at the poll rate: no reordering, no gap in polling.
    odd = [
        (seq, step)
        for seq, step in zip(ledger.ids[1:], steps, strict=True)
        if step not in back and not timedelta(0) <= step < timedelta(seconds=2)
    ]
    assert not odd, odd
    # The receiver got readings in queue order (ids), not in timestamp order.
    seqs = seqs_in_arrival_order(receiver)
    assert seqs == sorted(seqs) == ledger.ids
    report(
        f"clock step -1 h: {books.stored} readings, one backward step of "
        f"{back[0].total_seconds():.0f} s, "
        f"delivered in id order; {books.line()}"
    )
