"""HTTP and MQTT at once, the broker down for a while: the API keeps getting readings, the
MQTT backlog drains when the broker returns, nothing is lost on either, ids stay stable.

The broker is stopped with SIGTERM (it saves its store, as a broker on a real host does at a
restart); 5 s in CI, ``NIXLOG_BROKER_OUTAGE_SECONDS`` (default 20) in the slow variant.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import (
    DaemonProcess,
    assert_duplicates_are_identical,
    daemon_config,
    delivered_by_id,
    wait_until,
)
from tests.faults.helpers import report
from tests.faults.test_kill9 import publish_rest
from tests.fixtures_mqtt import Broker, Subscriber
from tests.receiver import ScriptedReceiver


def _all_ids(db_path: Path) -> list[str]:
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        ids = [r[0] for r in conn.execute("SELECT id FROM readings ORDER BY id")]
    finally:
        conn.close()
    return [f"test-logger-{epoch}-{i}" for i in ids]


def broker_outage(
    tmp_path: Path,
    simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    broker: Broker,
    processes: list[DaemonProcess],
    seconds: float,
) -> None:
    """Stop the broker for ``seconds`` mid-stream; check both outputs' books at the end."""
    config = daemon_config(tmp_path, simulator.address, receiver.url, poll_rate_hz=20.0)
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[mqtt]\nurl = "{broker.url}"\nbatch_size = 50\npublish_interval_sec = 0.3\n'
        "timeout_sec = 2\n",
        encoding="utf-8",
    )
    db_path = tmp_path / "nixlog.db"
    subscriber = Subscriber(broker.port, "nixlog/#")
    try:
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(lambda: len(subscriber.reading_ids()) >= 20, 20, "MQTT deliveries", daemon)
        wait_until(lambda: receiver.stats.unique >= 20, 20, "HTTP deliveries", daemon)

        broker.stop()
        down_at = time.monotonic()
        http_before = receiver.stats.unique
        mqtt_before = len(set(subscriber.reading_ids()))
        time.sleep(seconds)
        http_during = receiver.stats.unique - http_before
        # The API kept getting readings at the poll rate while the broker was away.
        assert http_during >= 20 * seconds * 0.5, (http_during, seconds)
        broker.start()
        up_at = time.monotonic()

        def mqtt_caught_up() -> bool:
            return len(set(subscriber.reading_ids())) >= len(_all_ids(db_path)) - 60

        # paho's reconnect delay doubles up to 60 s, the shipping backoff as well.
        wait_until(mqtt_caught_up, seconds + 90, "the MQTT backlog to drain", daemon)
        drained_at = time.monotonic()
        code, _ = daemon.terminate()
        assert code == 0, daemon.log[-3000:]
        assert "Traceback" not in daemon.log
        publish_rest(config)  # both outputs: what the stop left unsent
        all_ids = _all_ids(db_path)
        assert subscriber.wait_for(lambda: set(subscriber.reading_ids()) >= set(all_ids), 10)
        # Nothing lost on either output; every id stable, duplicates identical.
        assert set(subscriber.reading_ids()) == set(all_ids)
        assert set(delivered_by_id(receiver)) == set(all_ids)
        copies: dict[str, dict[str, object]] = {}
        duplicates = 0
        for reading in subscriber.readings():
            first = copies.setdefault(reading["id"], reading)
            assert first == reading, f"{reading['id']} arrived twice with different content"
            duplicates += first is not reading
        http_duplicates = assert_duplicates_are_identical(receiver)
        report(
            f"broker down {seconds:.0f} s: HTTP delivered {http_during} meanwhile; MQTT had "
            f"{mqtt_before} before, drained {drained_at - up_at:.1f} s after the broker "
            f"returned (outage began {up_at - down_at:.1f} s before); {len(all_ids)} readings, "
            f"MQTT duplicates {duplicates}, HTTP duplicates {http_duplicates}"
        )
    finally:
        subscriber.close()


def test_broker_outage_short(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    broker: Broker,
    processes: list[DaemonProcess],
) -> None:
    """Broker down 5 s: HTTP keeps delivering, MQTT drains after, nothing lost on either."""
    broker_outage(tmp_path, tcp_simulator, receiver, broker, processes, 5.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_broker_outage_long(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    broker: Broker,
    processes: list[DaemonProcess],
) -> None:
    """Broker down 20 s (or ``NIXLOG_BROKER_OUTAGE_SECONDS``): the same, with longer backoff."""
    seconds = float(os.environ.get("NIXLOG_BROKER_OUTAGE_SECONDS", "20"))
    broker_outage(tmp_path, tcp_simulator, receiver, broker, processes, seconds)


def test_stop_is_a_deadline_with_a_frozen_broker(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    broker: Broker,
    processes: list[DaemonProcess],
) -> None:
    """Broker frozen (SIGSTOP: connected, no PUBACK ever): SIGTERM still exits 0 within 5 s."""
    import signal

    config = daemon_config(tmp_path, tcp_simulator.address, None, poll_rate_hz=20.0)
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[mqtt]\nurl = "{broker.url}"\nbatch_size = 20\npublish_interval_sec = 0.2\n'
        "timeout_sec = 30\n",
        encoding="utf-8",
    )
    subscriber = Subscriber(broker.port, "nixlog/#")
    daemon = DaemonProcess(config)
    processes.append(daemon)
    assert broker.process is not None
    try:
        wait_until(lambda: len(subscriber.reading_ids()) >= 20, 20, "MQTT deliveries", daemon)
        broker.process.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # a batch is now waiting for a PUBACK that will not come
        code, seconds = daemon.terminate()
        assert code == 0, daemon.log[-3000:]
        assert seconds < 5.0, seconds
        assert "Traceback" not in daemon.log
        report(f"broker frozen mid-batch: the daemon stopped in {seconds:.2f} s")
    finally:
        broker.process.send_signal(signal.SIGCONT)
        subscriber.close()
