"""Modbus peers: the simulator over TCP and over a socat pty pair, plus config helpers."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nixlog.config import ModbusConfig, RegisterConfig
from nixlog.model import Value
from nixlog.simulator import (
    EXAMPLE_REGISTERS,
    SimulatorContext,
    SimulatorServer,
    build_simulator_context,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "config.toml"

# Values the example map serves in exact-value tests (status_word carries alarm_active's bit 3).
EXAMPLE_PINNED: dict[str, Value] = {
    "voltage_l1": 230.5,
    "voltage_l2": 231.1,
    "voltage_l3": 229.75,
    "current_l1": 12.34,
    "power_total": -1234,
    "frequency": 50.01,
    "energy_total": 12345.678,
    "temperature": -12.3,
    "status_word": 0x0108,
    "alarm_active": True,
    "breaker_closed": True,
    "door_open": False,
}

# Every type in every byte order it allows, across two units; with the values served.
ALL_TYPES: tuple[tuple[RegisterConfig, Value], ...] = (
    (RegisterConfig("i16", 0, type="int16", byte_order="BADC"), -2),
    (RegisterConfig("u16", 1, type="uint16"), 65535),
    (RegisterConfig("i32_abcd", 2, type="int32"), -100000),
    (RegisterConfig("u32_dcba", 4, type="uint32", byte_order="DCBA"), 4000000000),
    (RegisterConfig("f32_cdab", 6, type="float32", byte_order="CDAB"), 230.5),
    (RegisterConfig("f32_badc", 8, type="float32", byte_order="BADC"), -0.1),
    (RegisterConfig("i64_badc", 10, type="int64", byte_order="BADC"), -(2**40)),
    (RegisterConfig("u64_cdab", 14, type="uint64", byte_order="CDAB"), 2**63 + 5),
    (RegisterConfig("f64_dcba", 18, type="float64", byte_order="DCBA"), 1e-300),
    (RegisterConfig("f64_abcd", 22, type="float64"), 3.141592653589793),
    (RegisterConfig("text", 40, type="string", length=4), "FW1.2"),
    (RegisterConfig("flags", 45, kind="input", type="uint16"), 0x8001),
    (RegisterConfig("flag15", 45, kind="input", type="bool", bit=15), True),
    (RegisterConfig("scaled", 46, kind="input", type="int16", scale=0.1, offset=-40.0), 21.5),
    (RegisterConfig("coil7", 7, kind="coil", type="bool"), True),
    (RegisterConfig("di3", 3, kind="discrete", type="bool"), True),
    (RegisterConfig("other_unit", 0, type="uint16", unit_id=2), 4242),
)


def modbus_config(
    port: str, registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS, **settings: Any
) -> ModbusConfig:
    """A ``ModbusConfig`` with test-friendly timing (short timeout, one try)."""
    defaults: dict[str, Any] = {"timeout_sec": 0.3, "retries": 0, "poll_rate_hz": 50.0}
    defaults.update(settings)
    return ModbusConfig(port=port, registers=tuple(registers), **defaults)


def pinned_context(
    registers: Sequence[RegisterConfig], values: dict[str, Value], **kwargs: Any
) -> SimulatorContext:
    """A simulator context whose registers serve the given fixed values."""
    context = build_simulator_context(registers, **kwargs)
    for name, value in values.items():
        context.pin(name, value)
    return context


def write_config(
    directory: Path,
    port: str,
    *,
    unit_id: int = 1,
    timeout_sec: float = 0.3,
    retries: int = 0,
    poll_rate_hz: float = 50.0,
    extra_toml: str = "",
) -> Path:
    """The example config pointed at ``port``, a database in ``directory``, no [api]."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    text = text.split("\n[api]")[0]
    text = re.sub(r'(?m)^port = ".*"', f'port = "{port}"', text)
    text = re.sub(r'(?m)^path = ".*"', f'path = "{directory / "nixlog.db"}"', text)
    text = re.sub(r"(?m)^unit_id = 1", f"unit_id = {unit_id}", text)
    text = re.sub(r"(?m)^timeout_sec = .*", f"timeout_sec = {timeout_sec}", text)
    text = re.sub(r"(?m)^retries = .*", f"retries = {retries}", text)
    text = re.sub(r"(?m)^poll_rate_hz = .*", f"poll_rate_hz = {poll_rate_hz}", text)
    text = text.replace("[device]\n", '[device]\nid = "test-logger"\n')
    path = directory / "config.toml"
    path.write_text(text + extra_toml, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., SimulatorServer]]:
    """Start simulators on background threads (``port`` default: a free TCP port)."""
    started: list[SimulatorServer] = []

    def start(
        context: SimulatorContext | None = None,
        port: str = "tcp://127.0.0.1:0",
        modbus: ModbusConfig | None = None,
    ) -> SimulatorServer:
        server = SimulatorServer(port, context, modbus).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tcp_simulator(start_simulator: Callable[..., SimulatorServer]) -> SimulatorServer:
    """The example map on a free TCP port, serving ``EXAMPLE_PINNED``."""
    return start_simulator(pinned_context(EXAMPLE_REGISTERS, EXAMPLE_PINNED))


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked serial ptys from socat: (server end, client end)."""
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed")
    server_end, client_end = tmp_path / "ttyS", tmp_path / "ttyC"
    process = subprocess.Popen(
        [
            socat,
            f"pty,raw,echo=0,link={server_end}",
            f"pty,raw,echo=0,link={client_end}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not (server_end.exists() and client_end.exists()):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("socat did not create the pty pair")
        time.sleep(0.01)
    yield str(server_end), str(client_end)
    process.terminate()
    process.wait(5)


def with_unit(registers: Sequence[RegisterConfig], unit_id: int) -> tuple[RegisterConfig, ...]:
    """The same registers moved to another unit id."""
    return tuple(replace(register, unit_id=unit_id) for register in registers)
