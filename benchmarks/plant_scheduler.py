"""What the bus scheduler costs, and what report by exception saves.

1. Cycles per second of one bus with 8 devices (8 groups, one request each, through
   ``scheduler.BusScheduler``) against one device whose 8 registers sit on the same 8 units
   (one group of 8 requests through ``Poller.poll_once``): the same requests on the wire,
   so the ratio is the scheduler's own overhead. Loops take turns in 0.1 s slices against a
   simulator in its own process, once answering at once and once after 1 ms.
2. Rows stored from a device holding its values steady, polled every 50 ms for a while, with
   and without ``deadband``/``heartbeat_sec`` (heartbeat 1 s).

Run: python benchmarks/plant_scheduler.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rig import free_port, serving
from nixlog.config import Config, load_config
from nixlog.core import Poller
from nixlog.modbus_client import create_client
from nixlog.model import Reading
from nixlog.registers import plan_requests
from nixlog.scheduler import build_bus_scheduler

SLICE_SEC = 0.1
DEVICES = 8
DEVICE_TURNAROUND_MS = 1.0
"""A device that answers 1 ms after a request: still faster than any RS-485 meter (5-50 ms),
but it takes the loopback artefact out of the ratio (with instant answers, the few
microseconds a pass adds between one answer and the next request decide whether the
simulator process is still awake, which on a loaded machine costs more than the work)."""

PLANT = """
[database]
path = "bench.db"
[[bus]]
name = "bench"
port = "{port}"
timeout_sec = 1.0
retries = 0
{devices}
[profile.meter]
poll_interval_sec = {interval}
{exception}
registers = [
  {{name = "voltage", address = 0, kind = "input", type = "float32", units = "V"}},
  {{name = "current", address = 6, kind = "input", type = "float32", units = "A"}},
]
"""


def plant_config(directory: Path, port: str, interval: float, exception: str = "") -> Config:
    """``DEVICES`` meters of one profile on one TCP bus, units 1..8."""
    devices = "".join(
        f'[[bus.device]]\nname = "m{unit}"\nunit_id = {unit}\nprofile = "meter"\n'
        for unit in range(1, DEVICES + 1)
    )
    path = directory / f"plant-{len(exception)}-{interval}.toml"
    path.write_text(
        PLANT.format(port=port, devices=devices, interval=interval, exception=exception),
        encoding="utf-8",
    )
    return load_config(path, env={})


_SERVE = """
import sys, threading
from pathlib import Path
from nixlog.config import load_config
from nixlog.simulator import SimulatorServer, build_simulator_context, bus_registers
config_path, address, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
bus = load_config(Path(config_path), env={}).buses[0]
context = build_simulator_context(bus_registers(bus))
if delay_ms > 0:
    for device in bus.devices:
        context.delay(device.unit_id, delay_ms / 1000)
server = SimulatorServer(address, context, bus.link).start()
print("Simulating", file=sys.stderr, flush=True)
threading.Event().wait()
"""


@contextmanager
def plant_simulator(directory: Path, answer_delay_ms: float = 0.0) -> Iterator[str]:
    """The 8-meter plant served in its own process (its own GIL, like a real device);
    every unit answers ``answer_delay_ms`` after a request (0: at once). Its address."""
    address = f"tcp://127.0.0.1:{free_port()}"
    plant_config(directory, address, 1.0)
    config = directory / f"plant-0-{1.0}.toml"
    command = [sys.executable, "-c", _SERVE, str(config), address, str(answer_delay_ms)]
    with serving(command, address):
        yield address


def _slice_rates(cycles: Sequence[Callable[[], object]], seconds: float) -> list[list[float]]:
    """Cycles per second of each loop in each slice; the loops take turns slice by slice,
    so that a noisy neighbour on a shared machine hits both alike."""
    for cycle in cycles:
        for _ in range(20):
            cycle()
    rates: list[list[float]] = [[] for _ in cycles]
    for _ in range(max(1, round(seconds / SLICE_SEC))):
        for index, cycle in enumerate(cycles):
            count = 0
            started = time.perf_counter()
            deadline = started + SLICE_SEC
            while time.perf_counter() < deadline:
                cycle()
                count += 1
            rates[index].append(count / (time.perf_counter() - started))
    return rates


@dataclass(frozen=True)
class SchedulerCost:
    """Cycles/s (8 requests each) through the scheduler and through one poller."""

    scheduler_cycles_per_sec: float
    single_device_cycles_per_sec: float
    ratio: float
    """Median over neighbouring slices of scheduler / single device (1.0: costs nothing)."""


def measure_scheduler_cost(address: str, directory: Path, seconds: float) -> SchedulerCost:
    """The 8-device bus against one device × 8 units, same requests."""
    # An interval far below a request's time: every group is always due, as fast as it goes.
    config = plant_config(directory, address, 0.001)
    bus = config.buses[0]
    scheduler = build_bus_scheduler(config, bus)
    scheduler.start()
    registers = tuple(r for device in bus.devices for r in device.registers)
    single = Poller(create_client(bus.link), registers, plan_requests(registers))
    assert len(single.plan) == DEVICES == len(scheduler.groups)

    def scheduler_cycle() -> None:
        for _ in range(DEVICES):
            scheduler.run_pass(scheduler.next_due())

    try:
        bus_rates, single_rates = _slice_rates([scheduler_cycle, single.poll_once], seconds)
    finally:
        scheduler.poller.close()
        single.close()
    ratios = sorted(b / s for b, s in zip(bus_rates, single_rates, strict=True))
    return SchedulerCost(
        statistics.mean(bus_rates), statistics.mean(single_rates), statistics.median(ratios)
    )


@dataclass(frozen=True)
class ExceptionSaving:
    """Rows stored from steady values: every pass vs by exception."""

    passes: int
    rows_without: int
    rows_with: int

    @property
    def saved(self) -> float:
        """Share of rows report by exception did not store."""
        return 1.0 - self.rows_with / self.rows_without


def _stored_rows(config: Config, seconds: float) -> tuple[int, int]:
    scheduler = build_bus_scheduler(config, config.buses[0])
    stored: list[Reading] = []
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stored.append, stop), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(10)
    scheduler.poller.close()
    return len(stored), scheduler.passes


def measure_exception_saving(address: str, directory: Path, seconds: float) -> ExceptionSaving:
    """Steady-ish values (the simulator's slow waveforms) at 0.5 s for ``seconds``."""
    plain = plant_config(directory, address, 0.5)
    by_exception = plant_config(
        directory, address, 0.5, "deadband = 5.0\nheartbeat_sec = 10.0"
    )
    rows_without, passes = _stored_rows(plain, seconds)
    rows_with, _ = _stored_rows(by_exception, seconds)
    return ExceptionSaving(passes, rows_without, rows_with)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    for delay_ms in (0.0, DEVICE_TURNAROUND_MS):
        with tempfile.TemporaryDirectory() as tmp, plant_simulator(Path(tmp), delay_ms) as address:
            cost = measure_scheduler_cost(address, Path(tmp), args.seconds)
        print(
            f"devices answering after {delay_ms:g} ms: 8-device bus via the scheduler "
            f"{cost.scheduler_cycles_per_sec:.0f} cycles/s, one device x 8 units "
            f"{cost.single_device_cycles_per_sec:.0f} cycles/s: ratio {cost.ratio:.2f}"
        )
    with tempfile.TemporaryDirectory() as tmp, plant_simulator(Path(tmp)) as address:
        saving = measure_exception_saving(address, Path(tmp), max(12.0, args.seconds * 4))
        print(
            f"report by exception (deadband 5, heartbeat 10 s, 8 meters every 0.5 s): "
            f"{saving.rows_with} rows instead of {saving.rows_without} "
            f"({saving.saved:.0%} fewer)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
