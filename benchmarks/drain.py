"""Drain throughput: how fast a backlog ships to a local receiver, versus how fast it grows.

Builds a 100,000-reading backlog (12 registers per reading, the example map's size) in a
temporary database, then drains a fresh copy of it with ``core.publish_pending`` into the
in-process ``nixlog.receiver.Receiver`` over real HTTP on 127.0.0.1, once per configuration,
side by side in one run. Prints readings/second, microseconds per reading, the ratio to the
production rate of 10 readings/s, and how long a week of backlog takes to drain.

    /work/venv/bin/python benchmarks/drain.py [--readings 100000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nixlog import database
from nixlog.api_client import ApiClient
from nixlog.config import ApiConfig, Secret
from nixlog.core import publish_pending
from nixlog.model import Reading, Value
from nixlog.receiver import Receiver

DEVICE = "bench-logger"
KEY = "bench-key"
PRODUCTION_RATE = 10.0  # readings per second (poll_rate_hz = 10)
WEEK_READINGS = PRODUCTION_RATE * 7 * 24 * 3600

NAMES = [
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "power_total",
    "energy_total",
    "frequency",
    "power_factor",
    "temperature",
    "breaker_closed",
]


def build_backlog(path: Path, count: int) -> None:
    """Store ``count`` readings (in large bins: building the fixture is not what we measure)."""
    conn = database.open_db(path)
    try:
        for start in range(0, count, 5000):
            size = min(5000, count - start)
            bin_ = []
            for i in range(start, start + size):
                values: dict[str, Value] = {
                    name: round(230.0 + (i % 97) * 0.137 + k, 3)
                    for k, name in enumerate(NAMES[:-1])
                }
                values["breaker_closed"] = i % 2 == 0
                micro = i % 1_000_000
                bin_.append(
                    Reading(f"2026-11-26T16:{i // 600 % 60:02d}:00.{micro:06d}+00:00", values)
                )
            database.batch_insert_readings(conn, DEVICE, bin_)
        database.checkpoint(conn)
    finally:
        conn.close()


def drain(template: Path, workdir: Path, batch_size: int, gzip: bool) -> tuple[int, float, int]:
    """Drain a copy of the backlog; return (readings delivered, seconds, requests)."""
    path = workdir / f"drain-{batch_size}-{gzip}.db"
    shutil.copy(template, path)
    conn = database.open_db(path)
    with Receiver(api_key=KEY, keep_readings=False) as receiver:
        api = ApiConfig(
            endpoint=receiver.url, api_key=Secret(KEY), batch_size=batch_size, gzip=gzip
        )
        with ApiClient(api, DEVICE, database.get_epoch(conn)) as client:
            started = time.perf_counter()
            summary = publish_pending(conn, client, batch_size=batch_size)
            elapsed = time.perf_counter() - started
        assert summary.caught_up and summary.failure is None, summary
        assert receiver.stats.unique == summary.delivered
    conn.close()
    path.unlink()
    return summary.delivered, elapsed, summary.requests


@dataclass(frozen=True)
class Drain:
    """One drain of the whole backlog through one client configuration."""

    batch_size: int
    gzip: bool
    delivered: int
    seconds: float
    requests: int

    @property
    def rate(self) -> float:
        """Readings delivered per second."""
        return self.delivered / self.seconds


CONFIGS = ((500, False), (500, True), (100, False), (1000, False))


def measure(readings: int = 100_000, configs: Sequence[tuple[int, bool]] = CONFIGS) -> list[Drain]:
    """Build the backlog once, drain a fresh copy per (batch size, gzip) configuration."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        template = workdir / "backlog.db"
        build_backlog(template, readings)
        for batch_size, gzip in configs:
            delivered, seconds, requests = drain(template, workdir, batch_size, gzip)
            results.append(Drain(batch_size, gzip, delivered, seconds, requests))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = measure(args.readings)
    print(
        f"backlog: {args.readings:,} readings of {len(NAMES)} registers; "
        f"built and drained {len(results)} times in {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"{'batch':>6} {'gzip':>5} {'requests':>9} {'seconds':>8} {'readings/s':>11} "
        f"{'us/reading':>11} {'x production':>13} {'week drains in':>15}"
    )
    for got in results:
        week = WEEK_READINGS / got.rate
        print(
            f"{got.batch_size:>6} {('on' if got.gzip else 'off'):>5} {got.requests:>9,} "
            f"{got.seconds:>8.2f} {got.rate:>11,.0f} {1e6 / got.rate:>11.1f} "
            f"{got.rate / PRODUCTION_RATE:>12,.0f}x {week / 60:>12.1f} min"
        )
    print(
        f"production rate: {PRODUCTION_RATE:g} readings/s; a week = {WEEK_READINGS:,.0f} readings"
    )


if __name__ == "__main__":
    main()
