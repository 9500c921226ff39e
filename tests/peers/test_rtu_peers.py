"""RTU devices that misbehave on a socat pty pair: never a value under the wrong name.

Each device holds a distinct value at every address of every unit; every value the poller
returns is compared with it. Timing is scaled down from the field reports (timeout 0.3 s
instead of 1 s) so each test takes a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.core import Poller, run_poll_loop
from nixlog.frames import rtu_answer
from nixlog.modbus_client import ANSWERED_TWICE, LATE_ANSWER, create_client
from nixlog.model import Reading
from tests.faults.helpers import SocatPair
from tests.fixtures_modbus import modbus_config
from tests.peers.devices import Request, RtuDevice, Send, value_of
from tests.peers.harness import (
    Run,
    assert_no_wrong_value,
    holding,
    log_lines,
    peer_config,
    poll_for,
)


def answer(request: Request) -> bytes:
    """The right RTU answer to ``request``."""
    return rtu_answer(request.unit, request.function, request.values())


@pytest.mark.parametrize("late_sec", [0.4, 0.75])
def test_queued_late_answers_never_shift_values(
    pty_pair: tuple[str, str], caplog: pytest.LogCaptureFixture, late_sec: float
) -> None:
    """A slave queueing requests, address 0 answered late: same-shaped reads keep their values.

    The field case: ``late_0=64302 r_2000=64302 r_65530=2000`` once the client's retry took
    the late answer; here every value must be the device's own, with retries on.
    """
    server_end, client_end = pty_pair
    registers = (holding("late_0", 0), holding("r_2000", 2000), holding("r_65530", 65530))

    def behaviour(request: Request) -> list[Send]:
        return [(late_sec if request.start == 0 else 0.12, answer(request))]

    device = RtuDevice(server_end, {1}, behaviour, queue=True).start()
    caplog.set_level(logging.WARNING, logger="nixlog")
    try:
        modbus = modbus_config(client_end, registers, timeout_sec=0.3, retries=1)
        run = poll_for(modbus, seconds=7.0, rate_hz=5)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    cycles = len(run.cycles)
    assert cycles >= 3
    # The blocks that answer in time are in every cycle; the late block is backed off alone.
    assert run.values["r_2000"] >= 0.9 * cycles and run.values["r_65530"] >= 0.9 * cycles
    assert run.errors[LATE_ANSWER] >= 1
    assert not run.poller.unit_backed_off(1)
    assert log_lines(caplog.messages, "holding 0-0 (1 register) does not answer") == 1
    assert log_lines(caplog.messages, f"unit 1 {LATE_ANSWER}") == 1


def test_unit_answering_twice_keeps_its_neighbour_healthy(
    pty_pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Unit 1 sends every answer again 20 ms later: no wrong value, unit 2 keeps its rate."""
    server_end, client_end = pty_pair
    registers = (
        holding("u1_a", 0, unit=1),
        holding("u1_b", 100, unit=1),  # the same shape as u1_a: only timing tells them apart
        holding("u2_a", 0, unit=2),
        holding("u2_b", 100, unit=2),
    )

    def behaviour(request: Request) -> list[Send]:
        frame = answer(request)
        return [(0.0, frame), (0.02, frame)] if request.unit == 1 else [(0.0, frame)]

    device = RtuDevice(server_end, {1, 2}, behaviour).start()
    caplog.set_level(logging.WARNING, logger="nixlog")
    seconds, rate = 4.0, 10.0
    try:
        modbus = modbus_config(client_end, registers, timeout_sec=0.3, retries=1)
        run = poll_for(modbus, seconds=seconds, rate_hz=rate)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    full_rate = seconds * rate
    assert run.values["u2_a"] >= 0.9 * full_rate and run.values["u2_b"] >= 0.9 * full_rate
    assert run.values["u1_a"] >= 0.9 * full_rate and run.values["u1_b"] >= 0.9 * full_rate
    assert not run.poller.unit_backed_off(2)
    assert log_lines(caplog.messages, f"unit 1 {ANSWERED_TWICE}") == 1
    assert log_lines(caplog.messages, LATE_ANSWER) == 0


def test_unit_silent_on_one_block_keeps_its_other_blocks(
    pty_pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A meter silent on one block (no exception 2): that block alone is backed off."""
    server_end, client_end = pty_pair
    registers = (
        holding("silent", 0),  # first in the plan: it must not get the others skipped
        holding("a", 100),
        holding("b", 200),
        holding("c", 300),
    )

    def behaviour(request: Request) -> list[Send]:
        return [] if request.start == 0 else [(0.0, answer(request))]

    device = RtuDevice(server_end, {1}, behaviour).start()
    caplog.set_level(logging.WARNING, logger="nixlog")
    try:
        modbus = modbus_config(client_end, registers, timeout_sec=0.3, retries=1)
        run = poll_for(modbus, seconds=5.0, rate_hz=4)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    cycles = len(run.cycles)
    for name in ("a", "b", "c"):
        assert run.values[name] >= 0.9 * cycles - 1, (name, run.values, cycles)
    assert run.values["silent"] == 0
    assert not run.poller.unit_backed_off(1)
    assert run.poller.block_backed_off(run.poller.plan[0]) or device.count(1, 0) < 2 * cycles
    assert log_lines(caplog.messages, "unit 1 does not answer") == 0
    assert log_lines(caplog.messages, "holding 0-0 (1 register) does not answer") == 1


def test_answer_from_the_wrong_unit_is_named(pty_pair: tuple[str, str]) -> None:
    """An answer carrying unit 255 for unit 1 is "answer from unit 255 (asked 1)", at once."""
    server_end, client_end = pty_pair
    registers = (holding("a", 0),)

    def behaviour(request: Request) -> list[Send]:
        return [(0.0, rtu_answer(255, request.function, request.values()))]

    device = RtuDevice(server_end, {1}, behaviour).start()
    try:
        modbus = modbus_config(client_end, registers, timeout_sec=0.3, retries=1)
        run = poll_for(modbus, seconds=1.0, rate_hz=5)
    finally:
        device.stop()
    assert run.values["a"] == 0
    assert run.errors == {"answer from unit 255 (asked 1)": len(run.cycles)}
    assert not run.poller.unit_backed_off(1)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_serial_port_vanishing_while_the_device_is_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The adapter pulled mid-timeout, mid-settle and mid-retry: one log line, no traceback.

    Each time the poller keeps going, reconnects when the port returns, and reads the right
    values once the device answers again; no file descriptor is left behind.
    """
    pair = SocatPair(tmp_path / "ttyS", tmp_path / "ttyC").start()
    registers = (holding("a", 0), holding("b", 100))
    modbus = modbus_config(str(pair.client_end), registers, timeout_sec=0.3, retries=1)
    poller = Poller(create_client(modbus), registers, connect_backoff=(0.1, 0.2))
    caplog.set_level(logging.WARNING, logger="nixlog")
    readings: list[Reading] = []
    stop = threading.Event()
    loop = threading.Thread(
        target=run_poll_loop, args=(poller, readings.append, stop, 5.0), daemon=True
    )
    fds_before = _open_fds()
    device = RtuDevice(str(pair.server_end), set()).start()  # silent: nobody answers
    loop.start()
    try:
        # Pulled 0.15 s (waiting for the first answer), 0.45 s (settling after the timeout)
        # and 0.75 s (waiting for the retry's answer) into a silent read.
        for phase in (0.15, 0.45, 0.75):
            time.sleep(phase)
            pair.stop()
            device.stop()
            time.sleep(0.6)
            assert loop.is_alive()
            pair.start()
            device = RtuDevice(str(pair.server_end), set()).start()
            time.sleep(0.5)
        device.stop()
        device = RtuDevice(str(pair.server_end), {1}).start()  # the device answers again
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (readings and len(readings[-1].values) == 2):
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(10)
        poller.close()
        device.stop()
        pair.stop()
    assert readings and readings[-1].values == {"a": value_of(1, 0), "b": value_of(1, 100)}
    assert_no_wrong_value(Run(poller, cycles=readings), registers)
    assert "Traceback" not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)
    assert (
        log_lines(caplog.messages, "lost serial port")
        + log_lines(caplog.messages, "lost connection")
        <= 1
    )
    assert log_lines(caplog.messages, "reconnected to") == 1
    assert poller.stats.reconnects >= 3
    assert _open_fds() <= fds_before


def test_poll_json_against_a_unit_answering_twice(
    pty_pair: tuple[str, str], tmp_path: Path
) -> None:
    """`nixlog poll --json` with unit 1 answering twice: right values, exit 0, one log line."""
    server_end, client_end = pty_pair
    registers = (holding("u1_a", 0), holding("u1_b", 100), holding("u2_a", 0, unit=2))

    def behaviour(request: Request) -> list[Send]:
        frame = answer(request)
        return [(0.0, frame), (0.02, frame)] if request.unit == 1 else [(0.0, frame)]

    device = RtuDevice(server_end, {1, 2}, behaviour).start()
    try:
        config = peer_config(tmp_path, client_end, registers)
        result = CliRunner().invoke(app, ["poll", "-c", str(config), "--json", "--count", "20"])
    finally:
        device.stop()
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 20
    expected = {r.name: value_of(r.unit_id, r.address) for r in registers}
    for line in lines:
        record = json.loads(line)
        assert record["values"] == expected and record["errors"] == {}
    assert result.stderr.count(ANSWERED_TWICE) == 1, result.stderr


def test_poll_json_against_a_queueing_late_slave(pty_pair: tuple[str, str], tmp_path: Path) -> None:
    """`nixlog poll --json` with the default retry: the late block fails, the rest is right."""
    server_end, client_end = pty_pair
    registers = (holding("late_0", 0), holding("r_2000", 2000), holding("r_65530", 65530))

    def behaviour(request: Request) -> list[Send]:
        return [(0.4 if request.start == 0 else 0.12, answer(request))]

    device = RtuDevice(server_end, {1}, behaviour, queue=True).start()
    try:
        config = peer_config(tmp_path, client_end, registers, retries=1)
        result = CliRunner().invoke(app, ["poll", "-c", str(config), "--json", "--count", "3"])
    finally:
        device.stop()
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code == 1, result.stderr  # partial: the device answered
    for line in result.stdout.splitlines():
        record = json.loads(line)
        assert record["values"] == {"r_2000": value_of(1, 2000), "r_65530": value_of(1, 65530)}
        assert record["errors"]["late_0"] in (LATE_ANSWER, "skipped: block not responding")
