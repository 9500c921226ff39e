"""The simulator: plausible changing values, silent unknown units, injected faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nixlog.errors import DeviceError
from nixlog.modbus_client import ReadTimeout, create_client
from nixlog.registers import decode
from nixlog.simulator import (
    EXAMPLE_REGISTERS,
    SimulatorServer,
    build_simulator_context,
    serve_serial,
    simulated_value,
)
from tests.fixtures_modbus import modbus_config

BY_NAME = {register.name: register for register in EXAMPLE_REGISTERS}


def test_values_are_plausible_and_change() -> None:
    """Voltages swing around 230 V, frequency near 50 Hz, energy only rises, coils toggle."""
    times = [t * 0.7 for t in range(60)]
    volts = [simulated_value(BY_NAME["voltage_l1"], t) for t in times]
    assert all(225 <= v <= 235 for v in volts) and len(set(volts)) > 10  # type: ignore[operator]
    assert all(
        49.9 <= simulated_value(BY_NAME["frequency"], t) <= 50.1  # type: ignore[operator]
        for t in times
    )
    energy = [simulated_value(BY_NAME["energy_total"], t) for t in times]
    assert energy == sorted(energy) and energy[-1] > energy[0]  # type: ignore[operator]
    assert {simulated_value(BY_NAME["breaker_closed"], t) for t in times} == {True, False}
    assert simulated_value(BY_NAME["voltage_l1"], 3.0) != simulated_value(
        BY_NAME["voltage_l2"], 3.0
    )


def test_served_words_decode_to_the_simulated_values() -> None:
    """What the simulator serves decodes (with our decoder) to what it meant, bits merged."""
    now = [50.0]
    context = build_simulator_context(clock=lambda: now[0])
    now[0] += 12.5
    words = context.image(1, "holding", 100, 12)
    for name in ("energy_total", "temperature"):
        register = BY_NAME[name]
        raw = words[register.address - 100 : register.end - 100]
        assert decode(register, raw) == pytest.approx(context.value_of(register), abs=0.051)
    # The status word carries alarm_active as its bit 3, as a real meter's would.
    status = words[11]
    assert status & ~0x0008 == int(context.value_of(BY_NAME["status_word"])) & ~0x0008
    assert bool(status & 0x0008) == context.value_of(BY_NAME["alarm_active"])


def test_pin_unknown_register_is_refused() -> None:
    """Pinning a name that is not in the map is a KeyError, not a silent no-op."""
    with pytest.raises(KeyError):
        build_simulator_context().pin("nope", 1)


def test_slow_unit(start_simulator: Callable[..., SimulatorServer]) -> None:
    """A delayed unit times out a short timeout and answers a long one."""
    context = build_simulator_context()
    sim = start_simulator(context)
    context.delay(1, 0.3)
    link = create_client(modbus_config(sim.address, timeout_sec=0.1))
    try:
        with pytest.raises(ReadTimeout):
            link.read(1, "coil", 0, 1)
        time.sleep(0.3)  # let the late answer arrive and be discarded before the next read
        started = time.monotonic()
        assert len(link.read(1, "coil", 0, 1, timeout=1.0)) == 1
        assert time.monotonic() - started >= 0.25
    finally:
        link.close()


def test_writes_are_refused(start_simulator: Callable[..., SimulatorServer]) -> None:
    """The simulated meter is read-only: a write gets exception 1 (and is counted)."""
    context = build_simulator_context()
    sim = start_simulator(context)
    from pymodbus.client import ModbusTcpClient

    host, port = modbus_config(sim.address).tcp_address
    client = ModbusTcpClient(host, port=port, timeout=1.0, retries=0)
    client.connect()  # type: ignore[no-untyped-call]
    try:
        response = client.write_register(100, 5, device_id=1)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    assert response.isError() and response.exception_code == 1
    assert context.request_count(1) == 1


def test_serial_path_missing(tmp_path: Path) -> None:
    """Serving on a serial path that does not exist raises DeviceError naming it."""
    with pytest.raises(DeviceError, match="ttyNOPE"):
        serve_serial(str(tmp_path / "ttyNOPE"), EXAMPLE_REGISTERS, threading.Event())
