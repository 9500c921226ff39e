"""A soak at a high poll rate: resident memory, open descriptors and threads stay flat.

The short run (``NIXLOG_SOAK_SECONDS``, default 15) is CI's; the full run (at least ten
minutes, ``NIXLOG_SOAK_FULL_SECONDS``, default 600) is marked slow. Both print the slopes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import DaemonProcess, daemon_config, wait_until
from tests.faults.helpers import (
    ResourceSamples,
    account,
    assert_all_settled,
    report,
    slope_per_minute,
)
from tests.faults.test_kill9 import publish_rest
from tests.receiver import ScriptedReceiver

RATE_HZ = 100.0


def soak(
    tmp_path: Path,
    simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
    seconds: float,
    every: float,
    rss_tolerance_kib_per_min: float,
) -> None:
    """Run the daemon ``seconds`` at 100 Hz, sampling /proc every ``every`` s; check slopes."""
    config = daemon_config(
        tmp_path,
        simulator.address,
        receiver.url,
        poll_rate_hz=RATE_HZ,
        batch_size=100,
        flush_interval_sec=1.0,
        publish_interval_sec=1.0,
        # A small cap, so the maintenance pass (every minute) prunes throughout a long soak.
        extra_database="max_db_mb = 2",
    )
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: "ready" in daemon.log, 20, "the daemon to be ready", daemon)
    pid = daemon.process.pid
    samples = ResourceSamples()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        assert daemon.process.poll() is None, daemon.log[-2000:]
        samples.take(pid, started)
        time.sleep(every)
    elapsed = time.monotonic() - started
    code, _ = daemon.terminate()
    assert code == 0, daemon.log[-2000:]
    publish_rest(config)
    books = account(db_path, receiver)
    assert_all_settled(books)
    # Warm-up (imports, first connections, SQLite's page cache filling) is not a leak.
    steady = samples.after(min(10.0, seconds / 4))
    rss = slope_per_minute(steady.t, steady.rss_kib)
    late = samples.after(seconds / 2)  # the second half: SQLite's page caches are full
    rss_late = slope_per_minute(late.t, late.rss_kib)
    fds = slope_per_minute(steady.t, steady.fds)
    threads = slope_per_minute(steady.t, steady.threads)
    rate = books.stored / elapsed
    report(
        f"soak {elapsed:.0f} s at {RATE_HZ:g} Hz ({rate:.1f} readings/s stored), "
        f"{len(steady.t)} samples: RSS {steady.rss_kib[0]}->{steady.rss_kib[-1]} KiB, "
        f"slope {rss:+.1f} KiB/min (second half {rss_late:+.1f}); "
        f"fds {min(steady.fds)}-{max(steady.fds)}, slope "
        f"{fds:+.3f}/min; threads {min(steady.threads)}-{max(steady.threads)}, slope "
        f"{threads:+.3f}/min; {books.line()}"
    )
    assert "Traceback" not in daemon.log
    assert rss_late <= rss_tolerance_kib_per_min, f"resident memory grows {rss_late:.0f} KiB/min"
    # Descriptors and threads are things we own: they must not move at all after warm-up
    # (one fd of slack: the HTTP keep-alive connection may be re-opened).
    assert max(steady.fds) - min(steady.fds) <= 1, steady.fds
    assert max(steady.threads) - min(steady.threads) <= 1, steady.threads
    assert rate >= RATE_HZ * 0.6, f"the soak polled only {rate:.1f}/s"


def test_soak_short(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """A short soak at 100 Hz: memory, fds and threads flat; every reading delivered."""
    seconds = float(os.environ.get("NIXLOG_SOAK_SECONDS", "15"))
    # Over 15 s SQLite's page caches (2 MB per connection) are still filling: this catches
    # a per-reading leak (1 KiB x 100 Hz = 6 MiB/min), the ten-minute run the small ones.
    soak(tmp_path, tcp_simulator, receiver, processes, seconds, 1.0, 6144.0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_ten_minutes(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Ten minutes at 100 Hz: memory grows < 64 KiB/min (second half), fds, threads flat."""
    seconds = float(os.environ.get("NIXLOG_SOAK_FULL_SECONDS", "600"))
    soak(tmp_path, tcp_simulator, receiver, processes, seconds, 5.0, 64.0)
