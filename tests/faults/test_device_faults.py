"""Device faults: the serial port vanishes and returns, TCP resets, answers come too late.

The guarantees (README: Guarantees): "Nothing is lost ... on a dead device"; "Connection loss (USB
unplug, TCP reset) is retried with capped backoff; the poller never dies", and a late answer is
never taken for the answer to the next request (ARCHITECTURE.md: Modbus). Every register serves a
distinctive pinned value; every value stored must be exactly that value, or absent (listed in the
reading's errors).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nixlog.config import RegisterConfig, parse_tcp_address
from nixlog.model import Value
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorServer
from tests.daemon_helpers import DaemonProcess, daemon_config, row_count, wait_until
from tests.faults.helpers import (
    LateContext,
    ResettingProxy,
    SocatPair,
    account,
    assert_all_settled,
    assert_values_pinned,
    late_context,
    read_values,
    report,
)
from tests.faults.test_kill9 import publish_rest
from tests.fixtures_http import TEST_API_KEY
from tests.fixtures_modbus import EXAMPLE_PINNED, pinned_context
from tests.receiver import ScriptedReceiver


def finish(daemon: DaemonProcess, config: Path, receiver: ScriptedReceiver) -> tuple[int, int]:
    """SIGTERM, ship the rest, check the books and every stored value; (complete, partial)."""
    assert daemon.process.poll() is None, "the daemon died:\n" + daemon.log[-2000:]
    code, seconds = daemon.terminate()
    assert code == 0, daemon.log[-2000:]
    assert seconds < 10
    assert "Traceback" not in daemon.log
    publish_rest(config)
    db_path = config.parent / "nixlog.db"
    assert_all_settled(account(db_path, receiver))
    return assert_values_pinned(read_values(db_path), EXAMPLE_PINNED)


def complete_count(db_path: Path) -> int:
    """Stored readings in which every register was read (status readings are not counted)."""
    return assert_values_pinned(read_values(db_path), EXAMPLE_PINNED)[0]


def test_serial_port_vanishes_and_returns(
    tmp_path: Path,
    start_simulator: Callable[..., SimulatorServer],
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """socat killed (the adapter unplugged) then recreated: polling resumes, nothing stale."""
    pair = SocatPair(tmp_path / "ttyS", tmp_path / "ttyC").start()
    try:
        context = pinned_context(EXAMPLE_REGISTERS, EXAMPLE_PINNED)
        simulator = start_simulator(context, port=str(pair.server_end))
        config = daemon_config(tmp_path, str(pair.client_end), receiver.url, poll_rate_hz=10)
        db_path = tmp_path / "nixlog.db"
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(lambda: row_count(db_path) >= 20, 30, "readings over RTU", daemon)
        simulator.stop()
        pair.stop()
        time.sleep(1.5)
        assert daemon.process.poll() is None, "the daemon died with the port"
        unplugged = row_count(db_path)
        pair.start()
        start_simulator(context, port=str(pair.server_end))
        replugged = time.monotonic()
        wait_until(
            lambda: row_count(db_path) >= unplugged + 20, 40, "readings after replug", daemon
        )
        back_after = time.monotonic() - replugged
        complete, partial = finish(daemon, config, receiver)
        assert complete > 20
        report(
            f"serial unplug: readings resumed {back_after:.1f} s after the port returned; "
            f"{complete} complete + {partial} partial readings, every value the pinned one"
        )
    finally:
        pair.stop()


def test_tcp_device_resets_connections(
    tmp_path: Path,
    start_simulator: Callable[..., SimulatorServer],
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """A gateway that RSTs mid-answer, and a device restart: polling goes on, no torn value."""
    context = pinned_context(EXAMPLE_REGISTERS, EXAMPLE_PINNED)
    simulator = start_simulator(context)
    proxy = ResettingProxy(parse_tcp_address(simulator.address), reset_every=7)
    try:
        config = daemon_config(tmp_path, proxy.address, receiver.url, poll_rate_hz=20)
        db_path = tmp_path / "nixlog.db"
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(lambda: row_count(db_path) >= 20, 30, "readings through the proxy", daemon)
        # The device itself restarts on the same port (every connection dropped at once).
        simulator.stop()
        time.sleep(1.0)
        start_simulator(context, port=simulator.address)
        before = row_count(db_path)
        # After a reset the rest of the cycle is still read (one reconnect per cycle), so most
        # cycles see a reset of this proxy (every 7th answer) and store a partial reading; how
        # many on a loaded machine varies: wait for enough complete ones, not for a row count.
        wait_until(lambda: row_count(db_path) >= before + 80, 40, "readings after", daemon)
        wait_until(lambda: complete_count(db_path) > 20, 60, "complete readings", daemon)
        complete, partial = finish(daemon, config, receiver)
        assert proxy.resets >= 5, proxy.resets
        assert complete > 20
        report(
            f"TCP resets: {proxy.resets} connections reset mid-answer + one device restart; "
            f"{complete} complete + {partial} partial readings, every value the pinned one"
        )
    finally:
        proxy.close()


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_late_answers_never_land_under_the_wrong_register(
    transport: str,
    tmp_path: Path,
    start_simulator: Callable[..., SimulatorServer],
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Answers later than the timeout (one request, then the whole unit): no stale value stored."""
    context = late_context(EXAMPLE_PINNED)
    if transport == "rtu":
        pair = SocatPair(tmp_path / "ttyS", tmp_path / "ttyC").start()
        start_simulator(context, port=str(pair.server_end))
        port = str(pair.client_end)
    else:
        pair = None
        port = start_simulator(context).address
    try:
        # timeout_sec is 0.3 (write_config): a 0.45 s answer arrives while the NEXT request
        # of the cycle waits for its own answer.
        config = daemon_config(tmp_path, port, receiver.url, poll_rate_hz=10)
        db_path = tmp_path / "nixlog.db"
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(lambda: row_count(db_path) >= 10, 30, "the first readings", daemon)
        context.late_sec = 0.45  # the coil answers late, the rest on time
        time.sleep(2.0)
        context.late_sec = 0.0
        context.delay(1, 0.45)  # now the whole unit answers late
        time.sleep(1.0)
        context.heal()
        before = row_count(db_path)
        wait_until(lambda: row_count(db_path) >= before + 20, 40, "readings after heal", daemon)
        complete, partial = finish(daemon, config, receiver)
        assert context.late_answers > 0
        assert partial > 0, "no reading showed the late registers as failed"
        assert complete > 20
        report(
            f"late answers ({transport}): {context.late_answers} late coil answers + a "
            f"late unit; {complete} complete + {partial} partial readings, none stale"
        )
    finally:
        if pair is not None:
            pair.stop()


def two_block_config(directory: Path, port: str, endpoint: str) -> Path:
    """Two holding registers far apart: two requests of the same function and length."""
    path = directory / "config.toml"
    path.write_text(
        f"""[device]
id = "test-logger"

[database]
path = "{directory / "nixlog.db"}"
storage_limit_gb = 0.0
flush_interval_sec = 0.5

[modbus]
port = "{port}"
timeout_sec = 0.3
retries = 0
poll_rate_hz = 10
batch_size = 10

[[modbus.registers_to_read]]
name = "first_block"
address = 0

[[modbus.registers_to_read]]
name = "second_block"
address = 500

[api]
endpoint = "{endpoint}"
api_key = "{TEST_API_KEY}"
publish_interval_sec = 0.3
timeout_sec = 2.0
""",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


def test_late_tcp_answer_is_not_taken_for_the_next_request_of_the_same_shape(
    tmp_path: Path,
    start_simulator: Callable[..., SimulatorServer],
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Same-shaped reads, the first late now and then: its answer never lands under the other."""
    registers = (
        RegisterConfig("first_block", 0),
        RegisterConfig("second_block", 500),
    )
    pinned: dict[str, Value] = {"first_block": 1111, "second_block": 2222}
    context = LateContext(
        registers, late_function=3, late_address=0, late_every=2, slow_addresses={500: 0.15}
    )
    for name, value in pinned.items():
        context.pin(name, value)
    simulator = start_simulator(context)
    config = two_block_config(tmp_path, simulator.address, receiver.url)
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: row_count(db_path) >= 10, 30, "the first readings", daemon)
    context.late_sec = 0.45
    time.sleep(3.0)
    context.late_sec = 0.0
    before = row_count(db_path)
    wait_until(lambda: row_count(db_path) >= before + 10, 30, "readings after", daemon)
    code, _ = daemon.terminate()
    assert code == 0
    assert context.late_answers > 0
    assert_values_pinned(read_values(db_path), pinned)
