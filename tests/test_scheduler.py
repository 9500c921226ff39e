"""The bus scheduler and report by exception: pure rules, then against a real TCP simulator."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from nixlog.config import Config, RegisterConfig, load_config
from nixlog.model import Reading
from nixlog.scheduler import BusScheduler, ExceptionFilter, build_bus_scheduler
from nixlog.simulator import SimulatorServer, build_simulator_context, bus_registers


def reading(values: dict[str, float | str | bool], errors: dict[str, str] | None = None) -> Reading:
    """A reading of device "m" at a fixed time."""
    return Reading("2026-11-30T00:00:00.000000+00:00", dict(values), errors or {}, device="m")


# ------------------------------------------------------------------ pure rules


def test_filter_stores_first_then_only_moves_beyond_the_deadband() -> None:
    """First value stored; moves below the deadband are not; a move of the deadband is."""
    rule = ExceptionFilter([RegisterConfig("v", 0, deadband=0.5)], interval_sec=1.0)
    assert rule.apply(reading({"v": 230.0}), 0.0) is not None
    assert rule.apply(reading({"v": 230.4}), 1.0) is None
    assert rule.apply(reading({"v": 229.6}), 2.0) is None  # measured from the last STORED
    stored = rule.apply(reading({"v": 230.5}), 3.0)
    assert stored is not None and stored.values == {"v": 230.5}
    assert rule.suppressed == 2


def test_filter_heartbeat_stores_steady_values_on_time() -> None:
    """A steady value is stored again once heartbeat_sec passed (less half an interval)."""
    rule = ExceptionFilter([RegisterConfig("v", 0, heartbeat_sec=10.0)], interval_sec=1.0)
    stored_at = [t for t in range(0, 31) if rule.apply(reading({"v": 1.0}), float(t))]
    assert stored_at == [0, 10, 20, 30]


def test_filter_keeps_plain_registers_and_drops_only_what_is_not_due() -> None:
    """Registers without deadband/heartbeat are always stored; a due-less pass stores none."""
    registers = [RegisterConfig("v", 0, deadband=1.0), RegisterConfig("i", 2)]
    rule = ExceptionFilter(registers, interval_sec=1.0)
    rule.apply(reading({"v": 1.0, "i": 5.0}), 0.0)
    kept = rule.apply(reading({"v": 1.2, "i": 5.0}), 1.0)
    assert kept is not None and kept.values == {"i": 5.0} and kept.device == "m"
    only_exception = ExceptionFilter([RegisterConfig("v", 0, deadband=1.0)], interval_sec=1.0)
    only_exception.apply(reading({"v": 1.0}), 0.0)
    assert only_exception.apply(reading({"v": 1.0}), 1.0) is None


def test_filter_reports_a_failure_and_the_recovery_once() -> None:
    """An error is stored when it starts (not again while it lasts); the value after it too."""
    rule = ExceptionFilter([RegisterConfig("v", 0, deadband=1.0)], interval_sec=1.0)
    rule.apply(reading({"v": 1.0}), 0.0)
    failed = rule.apply(reading({}, {"v": "timeout"}), 1.0)
    assert failed is not None and failed.errors == {"v": "timeout"}
    assert rule.apply(reading({}, {"v": "timeout"}), 2.0) is None
    back = rule.apply(reading({"v": 1.0}), 3.0)
    assert back is not None and back.values == {"v": 1.0}


def test_filter_on_strings_and_bools_means_on_change() -> None:
    """A deadband on a non-numeric value stores it whenever it changes."""
    rule = ExceptionFilter(
        [RegisterConfig("s", 0, type="string", length=2, deadband=5.0), RegisterConfig("b", 3)],
        interval_sec=1.0,
    )
    rule.apply(reading({"s": "ok", "b": True}), 0.0)
    changed = rule.apply(reading({"s": "NO", "b": True}), 1.0)
    assert changed is not None and changed.values == {"s": "NO", "b": True}


# ------------------------------------------------------------------ against a simulator

DEVICE_TOML = """
[database]
path = "{db}"

[[bus]]
name = "plc"
port = "{port}"
timeout_sec = 0.5
retries = 0

[[bus.device]]
name = "tank"
unit_id = 1
poll_interval_sec = 0.05
{extra}
registers = [
  {{name = "level", address = 0, kind = "input", type = "float32", units = "m"}},
  {{name = "temperature", address = 2, kind = "input", type = "float32", units = "°C"}},
]
"""


def tank_config(tmp_path: Path, port: str, extra: str = "") -> Config:
    """One device, two registers polled every 50 ms (``extra``: device keys)."""
    path = tmp_path / f"tank{len(extra)}.toml"
    path.write_text(
        DEVICE_TOML.format(db=tmp_path / "t.db", port=port, extra=extra), encoding="utf-8"
    )
    return load_config(path, env={})


def run_for(scheduler: BusScheduler, seconds: float) -> tuple[list[Reading], int]:
    """Run ``scheduler`` for ``seconds`` on a thread; (readings to store, passes)."""
    stored: list[Reading] = []
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stored.append, stop), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(5)
    scheduler.poller.close()
    return stored, scheduler.passes


@pytest.fixture
def steady_tank(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer]
) -> tuple[SimulatorServer, Callable[[str], Config]]:
    """A TCP simulator holding the tank's values steady; a config maker for it."""
    base = tank_config(tmp_path, "tcp://127.0.0.1:1")
    context = build_simulator_context(bus_registers(base.buses[0]))
    context.pin("level", 2.5)
    context.pin("temperature", 21.0)
    server = start_simulator(context)
    return server, lambda extra: tank_config(tmp_path, server.address, extra)


def test_deadband_drops_steady_rows_by_90_percent_with_heartbeats_on_time(
    steady_tank: tuple[SimulatorServer, Callable[[str], Config]],
) -> None:
    """Steady values: every pass stored without deadband; ≥ 90 % fewer rows with it, and
    the heartbeat rows come every heartbeat_sec."""
    _server, make = steady_tank
    plain = make("")
    rows, passes = run_for(build_bus_scheduler(plain, plain.buses[0]), 3.0)
    assert passes >= 30 and len(rows) == passes
    by_exception = make("deadband = 0.1\nheartbeat_sec = 1.0")
    rows, passes = run_for(build_bus_scheduler(by_exception, by_exception.buses[0]), 3.6)
    assert passes >= 30
    assert len(rows) <= 0.1 * passes, (len(rows), passes)
    times = [datetime.fromisoformat(r.timestamp).timestamp() for r in rows]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 3
    assert all(0.9 <= gap <= 1.2 for gap in gaps), gaps
    assert all(r.values == {"level": 2.5, "temperature": 21.0} for r in rows)


def test_step_change_is_stored_in_the_next_pass(
    steady_tank: tuple[SimulatorServer, Callable[[str], Config]],
) -> None:
    """After a step beyond the deadband, the very next pass stores the new value."""
    server, make = steady_tank
    config = make("deadband = 0.1\nheartbeat_sec = 60")
    scheduler = build_bus_scheduler(config, config.buses[0])
    scheduler.start()
    (group,) = scheduler.groups
    try:
        first = scheduler.run_pass(group)[1]
        assert first is not None
        assert all(scheduler.run_pass(group)[1] is None for _ in range(5))
        server.context.pin("level", 3.0)
        step = scheduler.run_pass(group)[1]
        assert step is not None and step.values == {"level": 3.0}
        assert scheduler.run_pass(group)[1] is None
    finally:
        scheduler.poller.close()


def test_overrun_skips_slots_and_never_bursts(
    steady_tank: tuple[SimulatorServer, Callable[[str], Config]],
) -> None:
    """A device answering in 0.12 s on a 0.05 s schedule: slots skipped, no catch-up burst."""
    server, make = steady_tank
    server.context.delay(1, 0.12)
    config = make("")
    scheduler = build_bus_scheduler(config, config.buses[0])
    _rows, passes = run_for(scheduler, 1.5)
    (group,) = scheduler.groups
    assert 6 <= passes <= 13, passes  # ~1.5 / 0.12, never the 30 slots of the schedule
    assert group.stats.skipped_slots >= 10
