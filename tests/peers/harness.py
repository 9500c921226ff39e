"""Drive a Poller against a misbehaving device and check what it stored, value by value."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixlog.config import ModbusConfig, RegisterConfig
from nixlog.core import Poller, run_poll_loop
from nixlog.modbus_client import create_client
from nixlog.model import Reading
from nixlog.status import STATUS_KEY
from tests.peers.devices import value_of


def holding(name: str, address: int, unit: int = 1) -> RegisterConfig:
    """A uint16 holding register of ``unit``."""
    return RegisterConfig(name, address, unit_id=unit)


@dataclass
class Run:
    """The cycles of a poll run: every reading, values per register, errors seen."""

    poller: Poller
    cycles: list[Reading] = field(default_factory=list)
    values: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    count: int = 0  # cycles run


def poll_for(
    modbus: ModbusConfig,
    seconds: float,
    rate_hz: float,
    poller: Poller | None = None,
    *,
    keep: bool = True,
) -> Run:
    """Run ``run_poll_loop`` for ``seconds``; every cycle's reading is counted (and kept).

    With ``keep=False`` readings are checked against the device as they come and dropped, so
    a long run holds no growing list (for memory measurements).
    """
    poller = poller or Poller(create_client(modbus), modbus.registers)
    run = Run(poller)
    by_name = {register.name: register for register in modbus.registers}

    def on_cycle(reading: Reading) -> None:
        run.values.update(reading.values.keys())
        run.errors.update(reading.errors.values())
        run.count += 1
        if keep:
            run.cycles.append(reading)
            return
        for name, value in reading.values.items():
            register = by_name[name]
            assert value == value_of(register.unit_id, register.address), (name, value)

    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        run_poll_loop(poller, lambda _: None, stop, rate_hz, on_cycle=on_cycle)
    finally:
        timer.cancel()
        poller.close()
    return run


def assert_no_wrong_value(run: Run, registers: Sequence[RegisterConfig]) -> None:
    """Every value stored is exactly what the device holds at that register's address."""
    by_name = {register.name: register for register in registers}
    for reading in run.cycles:
        if STATUS_KEY in reading.values:
            continue  # a device status reading: no register value to check
        for name, value in reading.values.items():
            register = by_name[name]
            expected = value_of(register.unit_id, register.address)
            assert value == expected, (
                f"{name} = {value}, the device holds {expected} "
                f"(cycle at {reading.timestamp}; errors {reading.errors})"
            )


def log_lines(messages: Sequence[str], text: str) -> int:
    """How many log messages contain ``text``."""
    return sum(1 for message in messages if text in message)


def peer_config(
    directory: Path, port: str, registers: Sequence[RegisterConfig], **modbus: Any
) -> Path:
    """A config file for ``nixlog poll``/``daemon`` reading ``registers`` on ``port``."""
    settings = {"timeout_sec": 0.3, "retries": 1, "poll_rate_hz": 10, "batch_size": 5, **modbus}
    lines = [
        "[device]",
        'id = "peer-test"',
        "[database]",
        f'path = "{directory / "nixlog.db"}"',
        "storage_limit_gb = 0.0",
        "flush_interval_sec = 0.5",
        "[modbus]",
        f'port = "{port}"',
        *(f"{key} = {value}" for key, value in settings.items()),
    ]
    for register in registers:
        lines += [
            "[[modbus.registers_to_read]]",
            f'name = "{register.name}"',
            f"address = {register.address}",
            f"unit_id = {register.unit_id}",
        ]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
