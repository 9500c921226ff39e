"""Modbus TCP gateways that misbehave, as raw sockets on 127.0.0.1.

Every value returned is compared with the one the device holds; healthy units behind the same
gateway must keep their rate; each kind of fault is logged once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.core import Poller
from nixlog.frames import encode_answer_pdu
from nixlog.modbus_client import ANSWERED_TWICE, LATE_ANSWER, create_client
from tests.fixtures_modbus import modbus_config
from tests.peers.devices import Request, Send, TcpDevice, tcp_correct, tcp_frame
from tests.peers.harness import (
    assert_no_wrong_value,
    holding,
    log_lines,
    peer_config,
    poll_for,
)

runner = CliRunner()


def test_gateway_dropping_the_connection_on_one_request(caplog: pytest.LogCaptureFixture) -> None:
    """One request makes the gateway close the connection: the rest of the cycle is still read.

    The link is reopened once per cycle, the request that drops it is backed off alone, and
    unit 2 behind the same gateway keeps its full rate. One log line for the lost link.
    """
    registers = (
        holding("u1_a", 0, unit=1),
        holding("u1_drop", 100, unit=1),
        holding("u2_a", 0, unit=2),
        holding("u2_b", 100, unit=2),
    )

    def behaviour(transaction: int, request: Request) -> list[Send]:
        if request.unit == 1 and request.start == 100:
            return [(0.0, None)]
        return tcp_correct(transaction, request)

    device = TcpDevice(behaviour).start()
    caplog.set_level(logging.WARNING, logger="nixlog")
    seconds, rate = 3.0, 20.0
    try:
        run = poll_for(modbus_config(device.address, registers, retries=1), seconds, rate)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    full_rate = seconds * rate
    for name in ("u1_a", "u2_a", "u2_b"):
        assert run.values[name] >= 0.9 * full_rate, (name, run.values, len(run.cycles))
    assert run.values["u1_drop"] == 0
    assert device.count(1, 100) <= 6  # backed off, not asked every cycle
    assert device.connections <= device.count(1, 100) + 1
    assert log_lines(caplog.messages, "lost connection") == 1
    assert log_lines(caplog.messages, "holding 100-100 (1 register) drops the connection") == 1


def test_answer_from_unit_255_is_named_and_poll_does_not_say_unreachable(
    tmp_path: Path,
) -> None:
    """A gateway rewriting the unit id to 255: "answer from unit 255 (asked 1)", exit 1, not 69."""

    def behaviour(transaction: int, request: Request) -> list[Send]:
        pdu = encode_answer_pdu(request.function, request.values())
        return [(0.0, tcp_frame(transaction, 255, pdu))]

    device = TcpDevice(behaviour).start()
    try:
        config = peer_config(tmp_path, device.address, (holding("a", 0),))
        result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--count", "2"])
    finally:
        device.stop()
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code == 1, (result.stdout, result.stderr)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    status = [r["values"] for r in records if "nixlog:status" in r["values"]]
    # Not the unit asked for: after two passes it is reported offline, naming the answer.
    assert status == [
        {"nixlog:status": "offline", "nixlog:reason": "answer from unit 255 (asked 1)"}
    ]
    for record in records:
        if "nixlog:status" in record["values"]:
            continue
        assert record["values"] == {}
        assert record["errors"] == {"a": "answer from unit 255 (asked 1)"}
    assert "cannot be reached" not in result.stderr


def test_wrong_transaction_id_is_never_taken(caplog: pytest.LogCaptureFixture) -> None:
    """Answers echoing another transaction id are refused; the connection is replaced."""
    registers = (holding("a", 0), holding("b", 100))

    def behaviour(transaction: int, request: Request) -> list[Send]:
        pdu = encode_answer_pdu(request.function, request.values())
        if request.start == 100:
            transaction = (transaction + 1000) & 0xFFFF
        return [(0.0, tcp_frame(transaction, request.unit, pdu))]

    device = TcpDevice(behaviour).start()
    try:
        run = poll_for(modbus_config(device.address, registers, retries=0), 1.0, 10)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    assert run.values["b"] == 0
    assert run.values["a"] >= 0.9 * len(run.cycles)
    assert all(
        e.startswith("answer to transaction")
        for e in run.errors
        if e != "skipped: block not responding"
    )


def test_second_copy_with_the_old_transaction_id_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway sending each answer twice: the copy (old id) is dropped, nothing is lost."""
    registers = (holding("a", 0), holding("b", 100), holding("c", 0, unit=2))

    def behaviour(transaction: int, request: Request) -> list[Send]:
        frame = tcp_correct(transaction, request)[0][1]
        return [(0.0, frame), (0.0, frame)]

    device = TcpDevice(behaviour).start()
    caplog.set_level(logging.WARNING, logger="nixlog")
    seconds, rate = 2.0, 20.0
    try:
        run = poll_for(modbus_config(device.address, registers, retries=0), seconds, rate)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    for name in ("a", "b", "c"):
        assert run.values[name] >= 0.9 * seconds * rate
    assert not run.errors
    assert device.connections == 1
    assert log_lines(caplog.messages, ANSWERED_TWICE) == 2  # once per unit
    assert log_lines(caplog.messages, LATE_ANSWER) == 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.parametrize(
    "seconds",
    [pytest.param(4.0, id="short"), pytest.param(60.0, id="minute", marks=pytest.mark.slow)],
)
def test_memory_and_descriptors_stay_flat_under_faults(seconds: float) -> None:
    """A gateway dropping the link and doubling answers, for a while: no fd or memory growth."""
    registers = (holding("a", 0), holding("drop", 100), holding("c", 0, unit=2))

    def behaviour(transaction: int, request: Request) -> list[Send]:
        if request.start == 100:
            return [(0.0, None)]
        frame = tcp_correct(transaction, request)[0][1]
        return [(0.0, frame), (0.0, frame)]

    device = TcpDevice(behaviour).start()
    modbus = modbus_config(device.address, registers, retries=0)
    poller = Poller(create_client(modbus), registers, unit_backoff=(0.05, 0.1))
    try:
        warm = poll_for(modbus, seconds / 3, 50.0, poller, keep=False)
        poller.link.connect()
        fds, rss = _open_fds(), _rss_kib()
        run = poll_for(modbus, 2 * seconds / 3, 50.0, poller, keep=False)  # checks each value
        assert _open_fds() <= fds
        growth = _rss_kib() - rss
    finally:
        device.stop()
    assert run.values["a"] >= 0.9 * run.count and warm.values["a"] > 0
    assert device.connections > 5  # the backoff is short: the link is dropped over and over
    assert growth < 1024, f"resident memory grew {growth} KiB"


def test_gateway_silent_on_one_block_keeps_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """Over TCP too, a block that never answers is backed off alone; one log line."""
    registers = (holding("silent", 0), holding("a", 100), holding("b", 0, unit=2))

    def behaviour(transaction: int, request: Request) -> list[Send]:
        return [] if request.unit == 1 and request.start == 0 else tcp_correct(transaction, request)

    device = TcpDevice(behaviour).start()
    caplog.set_level(logging.WARNING, logger="nixlog")
    try:
        run = poll_for(modbus_config(device.address, registers, retries=1), 3.0, 10)
    finally:
        device.stop()
    assert_no_wrong_value(run, registers)
    cycles = len(run.cycles)
    assert run.values["silent"] == 0
    assert run.values["a"] >= 0.9 * cycles - 1 and run.values["b"] >= 0.9 * cycles
    assert not run.poller.unit_backed_off(1)
    assert log_lines(caplog.messages, "holding 0-0 (1 register) does not answer") == 1
