"""MQTT drain throughput: a 100,000-reading backlog into a local mosquitto, PUBACK-confirmed.

Builds the same backlog as ``drain.py`` (12 registers per reading), starts ``mosquitto`` on a
free port of 127.0.0.1 with a subscriber attached (so the broker really forwards every
message), and drains a fresh copy per batch size with ``core.publish_pending`` through
``nixlog.outputs.mqtt.MqttOutput``; the HTTP drain of the same backlog is printed beside it.
Target: at least 20,000 readings/s.

    .venv/bin/python benchmarks/mqtt_drain.py [--readings 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.drain import DEVICE, build_backlog, drain
from nixlog import database
from nixlog.config import MqttConfig
from nixlog.core import publish_pending
from nixlog.outputs.mqtt import MqttOutput
from tests.fixtures_mqtt import Broker, Subscriber

TARGET = 20_000.0
BATCHES = (100, 500, 1000)


def mqtt_drain(template: Path, workdir: Path, broker: Broker, batch_size: int) -> float:
    """Drain a copy of the backlog to ``broker``; return readings/second (PUBACK-confirmed)."""
    path = workdir / f"mqtt-{batch_size}.db"
    shutil.copy(template, path)
    conn = database.open_db(path)
    config = MqttConfig(
        url=broker.url, host="127.0.0.1", port=broker.port, tls=False, batch_size=batch_size
    )
    try:
        with MqttOutput(config, DEVICE, database.get_epoch(conn)) as out:
            out.publish_data(database.get_unsent_readings(conn, 1, "mqtt"))  # connect first
            started = time.perf_counter()
            summary = publish_pending(conn, out, batch_size=batch_size, output="mqtt")
            elapsed = time.perf_counter() - started
        assert summary.caught_up and summary.failure is None, summary
        return summary.delivered / elapsed
    finally:
        conn.close()
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        template = workdir / "backlog.db"
        build_backlog(template, args.readings)
        broker = Broker(workdir / "broker").start()
        subscriber = Subscriber(broker.port, "nixlog/#")
        try:
            print(f"backlog: {args.readings:,} readings of 12 registers; mosquitto on 127.0.0.1")
            print(f"{'output':>7} {'batch':>6} {'readings/s':>11} {'us/reading':>11}")
            for batch in BATCHES:
                rate = mqtt_drain(template, workdir, broker, batch)
                verdict = "ok" if rate >= TARGET else f"BELOW the {TARGET:,.0f}/s target"
                print(f"{'mqtt':>7} {batch:>6} {rate:>11,.0f} {1e6 / rate:>11.1f}  {verdict}")
            delivered, seconds, _ = drain(template, workdir, 500, False)
            rate = delivered / seconds
            print(f"{'http':>7} {500:>6} {rate:>11,.0f} {1e6 / rate:>11.1f}")
        finally:
            subscriber.close()
            broker.stop()


if __name__ == "__main__":
    main()
