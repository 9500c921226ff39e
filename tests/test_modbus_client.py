"""ModbusLink against the real simulator: values, and every failure mapped to our errors."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nixlog.modbus_client import (
    FAILURE_DISCONNECTED,
    FAILURE_EXCEPTION,
    FAILURE_TIMEOUT,
    DeviceException,
    LinkDown,
    ReadTimeout,
    create_client,
    read_plan,
)
from nixlog.registers import decode, plan_requests
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorServer, build_simulator_context
from tests.fixtures_modbus import ALL_TYPES, EXAMPLE_PINNED, modbus_config, pinned_context


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_reads_every_type_over_tcp(start_simulator: Callable[..., SimulatorServer]) -> None:
    """Every type and byte order read over Modbus TCP decodes to the value served."""
    registers = [register for register, _ in ALL_TYPES]
    sim = start_simulator(pinned_context(registers, {r.name: v for r, v in ALL_TYPES}))
    link = create_client(modbus_config(sim.address, registers))
    try:
        results = read_plan(link, plan_requests(registers))
    finally:
        link.close()
    decoded = {
        register.name: decode(register, result.request.slice_for(register, result.values))
        for result in results
        if result.values is not None
        for register in result.request.registers
    }
    assert decoded == {register.name: value for register, value in ALL_TYPES}


def test_reads_every_type_over_rtu(
    start_simulator: Callable[..., SimulatorServer], pty_pair: tuple[str, str]
) -> None:
    """The same map over Modbus RTU through a socat pty pair decodes to the same values."""
    server_end, client_end = pty_pair
    registers = [register for register, _ in ALL_TYPES]
    context = pinned_context(registers, {r.name: v for r, v in ALL_TYPES})
    config = modbus_config(client_end, registers, baudrate=19200, timeout_sec=1.0, retries=1)
    start_simulator(context, port=server_end, modbus=config)
    link = create_client(config)
    try:
        results = read_plan(link, plan_requests(registers))
    finally:
        link.close()
    assert all(result.ok for result in results), [result.error for result in results]
    for result in results:
        assert result.values is not None
        for register in result.request.registers:
            served = dict((r.name, v) for r, v in ALL_TYPES)[register.name]
            assert decode(register, result.request.slice_for(register, result.values)) == served


def test_silent_unit_times_out(tcp_simulator: SimulatorServer) -> None:
    """A unit id nobody answers for raises ReadTimeout after timeout x tries, not sooner."""
    link = create_client(modbus_config(tcp_simulator.address, timeout_sec=0.2, retries=1))
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as caught:
        link.read(9, "holding", 100, 1)
    elapsed = time.monotonic() - started
    link.close()
    assert caught.value.reason == "timeout"
    assert 0.35 < elapsed < 2.0
    assert tcp_simulator.context.request_count(9) == 2  # the request and its one retry


def test_exception_response_is_mapped(tcp_simulator: SimulatorServer) -> None:
    """Reading past the device's last address gives exception 2 with its name."""
    link = create_client(modbus_config(tcp_simulator.address))
    with pytest.raises(DeviceException) as caught:
        link.read(1, "holding", 500, 2)
    assert caught.value.code == 2
    assert caught.value.reason == "exception 2 (illegal data address)"
    # The link stays usable after an exception.
    assert link.read(1, "coil", 0, 1) == [True]
    link.close()


def test_gateway_no_response_counts_as_silence(tcp_simulator: SimulatorServer) -> None:
    """Exception 11 (gateway target failed to respond) is classed like a timeout."""
    tcp_simulator.context.fail(1, code=11)
    link = create_client(modbus_config(tcp_simulator.address))
    results = read_plan(link, plan_requests(EXAMPLE_REGISTERS)[:1])
    link.close()
    assert results[0].failure == FAILURE_TIMEOUT
    assert results[0].error == "exception 11 (gateway target device failed to respond)"


def test_refused_port_says_why() -> None:
    """A TCP port with nothing listening raises LinkDown naming the address and the reason."""
    link = create_client(modbus_config(f"tcp://127.0.0.1:{_free_port()}"))
    with pytest.raises(LinkDown, match=r"cannot connect to tcp://127\.0\.0\.1:\d+: connection"):
        link.connect()
    assert not link.connected


def test_missing_serial_port_says_why(tmp_path: Path) -> None:
    """A serial path that does not exist raises LinkDown naming the path."""
    link = create_client(modbus_config(str(tmp_path / "ttyUSB9")))
    with pytest.raises(LinkDown, match="ttyUSB9: no such device"):
        link.connect()


def test_tcp_nodelay_is_set(tcp_simulator: SimulatorServer) -> None:
    """The TCP socket has Nagle switched off."""
    link = create_client(modbus_config(tcp_simulator.address))
    link.connect()
    sock = link.tcp_socket
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    link.close()


def test_lost_server_fails_the_rest_untried(
    start_simulator: Callable[..., SimulatorServer],
) -> None:
    """When the server goes away mid-plan the rest of the plan is "disconnected", untried."""
    context = build_simulator_context()
    sim = start_simulator(context)
    link = create_client(modbus_config(sim.address))
    link.connect()
    sim.stop()
    results = read_plan(link, plan_requests(EXAMPLE_REGISTERS))
    assert [r.failure for r in results] == [FAILURE_DISCONNECTED] * 4
    assert {r.error for r in results} == {"disconnected"}
    assert not link.connected


def test_per_call_timeout_override(tcp_simulator: SimulatorServer) -> None:
    """read(timeout=, retries=) applies to that call only (the scanner's short probe)."""
    link = create_client(modbus_config(tcp_simulator.address, timeout_sec=5.0, retries=3))
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        link.read(42, "holding", 0, 1, timeout=0.1, retries=0)
    assert time.monotonic() - started < 1.0
    assert link.read(1, "holding", 111, 1) == [EXAMPLE_PINNED["status_word"]]
    link.close()


def test_request_gap_spaces_requests(tcp_simulator: SimulatorServer) -> None:
    """request_gap_ms holds each request back until the gap since the last answer passed."""
    link = create_client(modbus_config(tcp_simulator.address, request_gap_ms=50))
    link.connect()
    started = time.monotonic()
    for _ in range(3):
        link.read(1, "coil", 0, 1)
    assert time.monotonic() - started >= 0.15
    link.close()


def test_exception_is_per_request(tcp_simulator: SimulatorServer) -> None:
    """An exception on one kind fails only the requests of that kind."""
    tcp_simulator.context.fail(1, code=4, kind="input")
    link = create_client(modbus_config(tcp_simulator.address))
    results = read_plan(link, plan_requests(EXAMPLE_REGISTERS))
    link.close()
    assert [r.failure for r in results] == [None, FAILURE_EXCEPTION, None, None]
    assert results[1].error == "exception 4 (server device failure)"


def test_late_rtu_answer_is_never_taken_for_the_next(
    start_simulator: Callable[..., SimulatorServer], pty_pair: tuple[str, str]
) -> None:
    """After an RTU timeout, a late answer is dropped, not read as the next request's answer."""
    server_end, client_end = pty_pair
    context = pinned_context(EXAMPLE_REGISTERS, EXAMPLE_PINNED)
    config = modbus_config(client_end, timeout_sec=0.1, retries=0)
    start_simulator(context, port=server_end, modbus=config)
    link = create_client(config)
    try:
        context.delay(1, 0.15)  # every answer comes after the 0.1 s timeout
        with pytest.raises(ReadTimeout):
            link.read(1, "holding", 111, 1)  # status word 0x0108, answered 0.05 s too late
        # Same function and length: only timing tells the late answer apart from this one.
        assert link.read(1, "holding", 110, 1, timeout=0.5) == [0xFF85]  # -12.3 °C
    finally:
        link.close()


def test_rtu_crc_error_is_named_and_the_line_recovers(pty_pair: tuple[str, str]) -> None:
    """A corrupted answer is "crc error" (never values); the next read is right."""
    from nixlog.frames import rtu_answer
    from nixlog.modbus_client import BadResponse
    from tests.peers.devices import Request, RtuDevice, Send, value_of

    server_end, client_end = pty_pair
    corrupt = {"on": True}

    def behaviour(request: Request) -> list[Send]:
        frame = bytearray(rtu_answer(request.unit, request.function, request.values()))
        if corrupt["on"]:
            frame[3] ^= 0x40
        return [(0.0, bytes(frame))]

    device = RtuDevice(server_end, {1}, behaviour).start()
    link = create_client(modbus_config(client_end, timeout_sec=0.3, retries=1))
    try:
        with pytest.raises(BadResponse) as caught:
            link.read(1, "holding", 5, 2)
        assert caught.value.reason == "crc error"
        assert device.count(1) == 2  # nixlog's own retry, after the line settled
        corrupt["on"] = False
        assert link.read(1, "holding", 5, 2) == [value_of(1, 5), value_of(1, 6)]
    finally:
        link.close()
        device.stop()


def test_rtu_exception_and_wrong_unit(pty_pair: tuple[str, str]) -> None:
    """An exception frame maps to DeviceException at once; a reply from unit 255 is named."""
    from nixlog.frames import rtu_answer, rtu_exception
    from nixlog.modbus_client import BadResponse
    from tests.peers.devices import Request, RtuDevice, Send

    server_end, client_end = pty_pair

    def behaviour(request: Request) -> list[Send]:
        if request.start == 0:
            return [(0.0, rtu_exception(request.unit, request.function, 2))]
        return [(0.0, rtu_answer(255, request.function, request.values()))]

    device = RtuDevice(server_end, {1}, behaviour).start()
    link = create_client(modbus_config(client_end, timeout_sec=0.3, retries=0))
    try:
        started = time.monotonic()
        with pytest.raises(DeviceException) as exc_info:
            link.read(1, "holding", 0, 1)
        assert exc_info.value.code == 2
        with pytest.raises(BadResponse, match=r"answer from unit 255 \(asked 1\)"):
            link.read(1, "holding", 10, 1)
        assert time.monotonic() - started < 1.0  # answered at once: no timeout was waited
    finally:
        link.close()
        device.stop()


def test_rtu_stale_bytes_are_discarded_before_a_request(pty_pair: tuple[str, str]) -> None:
    """A frame sent unasked between two requests is dropped, not read as the next answer."""
    from nixlog.frames import rtu_answer
    from tests.peers.devices import RtuDevice, value_of

    server_end, client_end = pty_pair
    device = RtuDevice(server_end, {1}).start()
    link = create_client(modbus_config(client_end, timeout_sec=0.3, retries=0))
    try:
        assert link.read(1, "holding", 7, 1) == [value_of(1, 7)]
        os.write(device._fd, rtu_answer(1, 3, [0xDEAD]))  # the same shape as the next read
        time.sleep(0.05)
        assert link.read(1, "holding", 8, 1) == [value_of(1, 8)]
    finally:
        link.close()
        device.stop()
