"""Fleet simulation: N real daemons at 10 Hz into one local mosquitto, then the same fleet over
HTTP into one local receiver; every reading delivered, CPU per reading per daemon compared.

Each daemon is ``python -m nixlog daemon`` with the example map against one ``nixlog simulate``
process, its own database and device id. CPU is utime+stime of every daemon between a sample
taken after the warm-up and one taken just before SIGTERM, divided by the readings stored in
between. After the stop, ``nixlog publish`` ships what each left; then every stored reading's id
must have arrived (subscriber or receiver).

    .venv/bin/python benchmarks/mqtt_fleet.py [--daemons 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rig import EXAMPLE_CONFIG, nixlog_env, sample_process, simulator_process
from nixlog.receiver import Receiver
from tests.fixtures_mqtt import Broker, Subscriber

WARMUP_SEC = 10.0


def fleet_config(directory: Path, index: int, modbus: str, output: str, target: str) -> Path:
    """The example config for daemon ``index``: own id and database, [api] or [mqtt] only."""
    directory.mkdir(parents=True, exist_ok=True)
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8").split("\n[api]")[0]
    text = text.replace('# id = "plant7-logger"', f'id = "fleet-{index:03d}"')
    text = text.replace(
        'path = "/var/lib/nixlog/datalog.db"', f'path = "{directory / "datalog.db"}"'
    )
    text = text.replace('port = "/dev/ttyUSB0"', f'port = "{modbus}"')
    if output == "mqtt":
        text += f'\n[mqtt]\nurl = "{target}"\npublish_interval_sec = 1\n'
    else:
        text += f'\n[api]\nendpoint = "{target}"\napi_key = "k"\npublish_interval_sec = 1\n'
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def stored(config: Path) -> tuple[str, list[int]]:
    """(epoch, every stored id) of one daemon's database."""
    conn = sqlite3.connect(config.parent / "datalog.db", timeout=10)
    try:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        return epoch, [r[0] for r in conn.execute("SELECT id FROM readings")]
    finally:
        conn.close()


@dataclass(frozen=True)
class FleetRun:
    """One fleet run over one output."""

    output: str
    daemons: int
    readings: int
    cpu_sec: float
    delivered_all: bool
    missing: int

    @property
    def cpu_ms_per_reading(self) -> float:
        """CPU (all threads of all daemons) per reading stored in the window."""
        return 1000 * self.cpu_sec / max(self.readings, 1)


def run_fleet(
    workdir: Path,
    modbus: str,
    output: str,
    target: str,
    count: int,
    seconds: float,
    delivered: Callable[[], set[str]],
) -> FleetRun:
    """Start ``count`` daemons, measure, stop, ship the rest, check every id arrived."""
    configs = [
        fleet_config(workdir / f"{output}-{i}", i, modbus, output, target) for i in range(count)
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "nixlog", "daemon", "-c", str(c)],
            stdout=subprocess.DEVNULL,
            stderr=(c.parent / "daemon.log").open("wb"),
            env=nixlog_env(),
        )
        for c in configs
    ]
    try:
        time.sleep(WARMUP_SEC)
        before = [sample_process(p.pid).cpu_sec for p in processes]
        rows_before = [len(stored(c)[1]) for c in configs]
        time.sleep(seconds)
        after = [sample_process(p.pid).cpu_sec for p in processes]
        rows_after = [len(stored(c)[1]) for c in configs]
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(30)
    for c in configs:
        subprocess.run(
            [sys.executable, "-m", "nixlog", "publish", "-c", str(c)],
            capture_output=True, env=nixlog_env(), check=True, timeout=120,
        )  # fmt: skip
    expected: set[str] = set()
    for index, c in enumerate(configs):
        epoch, ids = stored(c)
        expected.update(f"fleet-{index:03d}-{epoch}-{i}" for i in ids)
    deadline = time.monotonic() + 10
    while not expected <= delivered() and time.monotonic() < deadline:
        time.sleep(0.2)
    missing = len(expected - delivered())
    return FleetRun(
        output,
        count,
        sum(rows_after) - sum(rows_before),
        sum(after) - sum(before),
        missing == 0,
        missing,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, simulator_process() as modbus:
        workdir = Path(tmp)
        broker = Broker(workdir / "broker").start()
        subscriber = Subscriber(broker.port, "nixlog/#")
        try:
            mqtt = run_fleet(
                workdir, modbus, "mqtt", broker.url, args.daemons, args.seconds,
                lambda: set(subscriber.reading_ids()),
            )  # fmt: skip
        finally:
            subscriber.close()
            broker.stop()
        with Receiver(api_key="k", keep_readings=False) as receiver:
            http = run_fleet(
                workdir, modbus, "http", receiver.url, args.daemons, args.seconds,
                receiver.seen_ids,
            )  # fmt: skip
    print(f"{args.daemons} daemons at 10 Hz, {args.seconds:g} s after a {WARMUP_SEC:g} s warm-up")
    for run in (mqtt, http):
        print(
            f"{run.output:>5}: {run.readings:,} readings, {run.cpu_ms_per_reading:.3f} ms CPU per "
            f"reading per daemon, every reading delivered: {run.delivered_all} "
            f"(missing {run.missing})"
        )
    ratio = mqtt.cpu_ms_per_reading / http.cpu_ms_per_reading
    print(f"MQTT / HTTP CPU per reading: {ratio:.2f} (target within 1.20)")


if __name__ == "__main__":
    main()
