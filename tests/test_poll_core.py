"""Station 1: the Poller and the poll loop, against the real simulator and injected clocks."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nixlog.config import RegisterConfig
from nixlog.core import Poller, run_poll_loop
from nixlog.modbus_client import create_client
from nixlog.model import Reading
from nixlog.registers import plan_requests
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorServer, build_simulator_context
from tests.fixtures_modbus import EXAMPLE_PINNED, modbus_config, pinned_context

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> bool:
        self.now += seconds
        return False


@pytest.fixture
def poller_for() -> Iterator[Callable[..., Poller]]:
    """Build pollers on a link to a simulator; their links are closed after the test."""
    made: list[Poller] = []

    def make(address: str, registers: tuple[RegisterConfig, ...], **kwargs: object) -> Poller:
        poller = Poller(create_client(modbus_config(address, registers)), registers, **kwargs)  # type: ignore[arg-type]
        made.append(poller)
        return poller

    yield make
    for poller in made:
        poller.close()


def test_poll_once_reads_every_value(
    tcp_simulator: SimulatorServer, poller_for: Callable[..., Poller]
) -> None:
    """One cycle over TCP gives every value of the example map, exact, in config order."""
    poller = poller_for(tcp_simulator.address, EXAMPLE_REGISTERS)
    reading = poller.poll_once()
    assert reading is not None
    assert reading.values == EXAMPLE_PINNED
    assert list(reading.values) == [r.name for r in EXAMPLE_REGISTERS]
    assert reading.errors == {}
    assert TIMESTAMP.match(reading.timestamp)


def test_poll_once_over_rtu(
    start_simulator: Callable[..., SimulatorServer],
    pty_pair: tuple[str, str],
) -> None:
    """One cycle over RTU (socat pty pair) gives every value of the example map."""
    server_end, client_end = pty_pair
    config = modbus_config(client_end, EXAMPLE_REGISTERS, timeout_sec=1.0)
    start_simulator(pinned_context(EXAMPLE_REGISTERS, EXAMPLE_PINNED), server_end, config)
    poller = Poller(create_client(config), EXAMPLE_REGISTERS)
    try:
        readings = [poller.poll_once() for _ in range(3)]
    finally:
        poller.close()
    assert [r.values if r else None for r in readings] == [EXAMPLE_PINNED] * 3


def test_requests_per_cycle_equal_the_plan(
    tcp_simulator: SimulatorServer, poller_for: Callable[..., Poller]
) -> None:
    """The server receives exactly len(plan) requests per cycle (4 for the example map)."""
    poller = poller_for(tcp_simulator.address, EXAMPLE_REGISTERS)
    tcp_simulator.context.reset_requests()
    for _ in range(5):
        assert poller.poll_once() is not None
    assert len(poller.plan) == len(plan_requests(EXAMPLE_REGISTERS)) == 4
    assert tcp_simulator.context.request_count() == 5 * 4
    assert poller.stats.requests == 20


def test_silent_unit_is_backed_off_while_the_other_works(
    start_simulator: Callable[..., SimulatorServer], poller_for: Callable[..., Poller]
) -> None:
    """A silent unit fails its registers, is then skipped with backoff, and comes back."""
    registers = (
        *EXAMPLE_REGISTERS,
        RegisterConfig("u2_temp", 110, kind="holding", type="int16", unit_id=2),
    )
    context = pinned_context(registers, {**EXAMPLE_PINNED, "u2_temp": 215})
    sim = start_simulator(context)
    clock = FakeClock()
    poller = poller_for(sim.address, registers, clock=clock)
    context.silence(2)
    for _ in range(2):  # the first silent cycle is forgiven, the second starts the backoff
        reading = poller.poll_once()
        assert reading is not None
        assert reading.values == EXAMPLE_PINNED
        assert reading.errors == {"u2_temp": "timeout"}
    asked = context.request_count(2)
    assert poller.unit_backed_off(2)
    started = time.monotonic()
    reading = poller.poll_once()
    assert time.monotonic() - started < 0.2  # no timeout paid while backed off
    assert reading is not None and reading.errors == {"u2_temp": "skipped: unit 2 not responding"}
    assert context.request_count(2) == asked
    context.heal(2)
    clock.advance(61)
    reading = poller.poll_once()
    assert reading is not None and reading.values["u2_temp"] == 215 and not reading.errors
    assert not poller.unit_backed_off(2)


def test_every_register_failing_returns_none_but_counts(
    tcp_simulator: SimulatorServer, poller_for: Callable[..., Poller]
) -> None:
    """A cycle with no value at all returns None, is counted, and keeps its errors."""
    poller = poller_for(tcp_simulator.address, EXAMPLE_REGISTERS)
    tcp_simulator.context.silence(1)
    assert poller.poll_once() is None
    assert poller.stats.failed_cycles == 1 and poller.stats.cycles == 1
    assert poller.last_cycle is not None
    assert set(poller.last_cycle.errors) == {r.name for r in EXAMPLE_REGISTERS}
    # After the first timeout the unit's other requests are skipped, not each timed out.
    assert tcp_simulator.context.request_count(1) == 1


def test_illegal_address_fails_only_that_register(
    tcp_simulator: SimulatorServer, poller_for: Callable[..., Poller]
) -> None:
    """An exception response fails that request's registers; the rest of the cycle reads."""
    registers = (*EXAMPLE_REGISTERS, RegisterConfig("far", 500, kind="holding"))
    poller = poller_for(tcp_simulator.address, registers)
    reading = poller.poll_once()
    assert reading is not None
    assert reading.values == EXAMPLE_PINNED
    assert reading.errors == {"far": "exception 2 (illegal data address)"}
    assert not poller.unit_backed_off(1)  # an exception is an answer: the unit is alive


def test_refused_gap_is_split_and_read_in_the_same_cycle(
    start_simulator: Callable[..., SimulatorServer], poller_for: Callable[..., Poller]
) -> None:
    """A device refusing reads across unused addresses gets gap-free requests from then on."""
    context = build_simulator_context(EXAMPLE_REGISTERS, refuse_unmapped=True)
    for name, value in EXAMPLE_PINNED.items():
        context.pin(name, value)
    sim = start_simulator(context)
    poller = poller_for(sim.address, EXAMPLE_REGISTERS)
    reading = poller.poll_once()
    assert reading is not None and reading.values == EXAMPLE_PINNED and not reading.errors
    assert len(poller.plan) == 7
    context.reset_requests()
    assert poller.poll_once() is not None
    assert context.request_count() == 7


def test_server_that_dies_and_comes_back(
    start_simulator: Callable[..., SimulatorServer], poller_for: Callable[..., Poller]
) -> None:
    """A lost server gives "disconnected" cycles (never an exception), then polling resumes."""
    context = pinned_context(EXAMPLE_REGISTERS, EXAMPLE_PINNED)
    sim = start_simulator(context)
    clock = FakeClock()
    poller = poller_for(sim.address, EXAMPLE_REGISTERS, clock=clock)
    assert poller.poll_once() is not None
    sim.stop()
    assert poller.poll_once() is None  # the read finds the connection gone
    assert set(poller.last_cycle.errors.values()) == {"disconnected"}  # type: ignore[union-attr]
    assert poller.poll_once() is None  # reconnecting is refused: backoff starts
    assert poller.last_link_error is not None and "connection refused" in poller.last_link_error
    attempts = poller.stats.requests
    assert poller.poll_once() is None  # within the backoff: nothing is tried
    assert poller.stats.requests == attempts
    start_simulator(context, port=sim.address)
    clock.advance(31)
    reading = poller.poll_once()
    assert reading is not None and reading.values == EXAMPLE_PINNED
    assert poller.stats.reconnects == 1


def test_nan_becomes_an_error(
    start_simulator: Callable[..., SimulatorServer], poller_for: Callable[..., Poller]
) -> None:
    """A float register holding NaN is reported in errors: JSON cannot carry NaN."""
    sim = start_simulator(
        pinned_context(EXAMPLE_REGISTERS, {**EXAMPLE_PINNED, "voltage_l2": float("nan")})
    )
    reading = poller_for(sim.address, EXAMPLE_REGISTERS).poll_once()
    assert reading is not None
    assert reading.errors == {"voltage_l2": "not a number (nan)"}
    assert "voltage_l2" not in reading.values


# --------------------------------------------------------------------------- the loop


class ScriptedLink:
    """A link whose reads take scripted times on a fake clock (for scheduling tests)."""

    description = "scripted"

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        self.clock = clock
        self.durations = iter(durations)
        self.starts: list[float] = []
        self.connected = True
        self.fail_with: Exception | None = None

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def read(
        self,
        unit_id: int,
        kind: str,
        start: int,
        count: int,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        settle_sec: float | None = None,
    ) -> list[int]:
        self.starts.append(self.clock.now)
        self.clock.advance(next(self.durations, 0.01))
        if self.fail_with is not None:
            raise self.fail_with
        return [7] * count


ONE_REGISTER = (RegisterConfig("x", 0),)


def test_loop_keeps_deadlines_and_skips_after_overrun() -> None:
    """Cycles start on start + n/rate; an overrun skips (and counts) slots instead of bursting."""
    clock = FakeClock()
    link = ScriptedLink(clock, [0.01, 0.01, 0.01, 0.27, 0.01, 0.01, 0.01])
    poller = Poller(link, ONE_REGISTER, clock=clock)
    readings: list[Reading] = []
    run_poll_loop(
        poller, readings.append, threading.Event(), 10.0, clock, wait=clock.advance, max_cycles=7
    )
    offsets = [round(start - link.starts[0], 6) for start in link.starts]
    assert offsets == [0.0, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8]
    assert poller.stats.skipped_slots == 2
    assert len(readings) == 7 and readings[0].values == {"x": 7}


def test_loop_never_drifts_over_many_cycles() -> None:
    """After 1000 cycles with jittery durations the schedule is still on its grid."""
    clock = FakeClock()
    durations = [0.001 + (i % 7) * 0.004 for i in range(1000)]
    link = ScriptedLink(clock, durations)
    poller = Poller(link, ONE_REGISTER, clock=clock)
    run_poll_loop(
        poller, lambda r: None, threading.Event(), 20.0, clock, wait=clock.advance, max_cycles=1000
    )
    assert link.starts[-1] - link.starts[0] == pytest.approx(999 / 20.0)
    assert poller.stats.skipped_slots == 0


def test_loop_stops_within_one_period() -> None:
    """Setting stop ends the loop during its sleep, not after it."""
    link = ScriptedLink(FakeClock(), [])
    poller = Poller(link, ONE_REGISTER)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_poll_loop, args=(poller, lambda r: None, stop, 0.5), daemon=True
    )
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    stop.set()
    thread.join(1.0)
    assert not thread.is_alive()
    assert time.monotonic() - started < 0.5
    assert poller.stats.cycles == 1


def test_unexpected_error_does_not_kill_the_poller(caplog: pytest.LogCaptureFixture) -> None:
    """A bug below the link is logged with its traceback and reported as an error, not raised."""
    clock = FakeClock()
    link = ScriptedLink(clock, [])
    link.fail_with = RuntimeError("boom")
    poller = Poller(link, ONE_REGISTER, clock=clock)
    assert poller.poll_once() is None
    assert poller.last_cycle is not None
    assert poller.last_cycle.errors == {"x": "internal error: RuntimeError"}
    assert "unexpected error" in caplog.text
    link.fail_with = None
    assert poller.poll_once() is not None


# --------------------------------------------------------------------------- isolation


class BehaviourLink:
    """A fake link answering by a rule per (unit, start): values, silence, or a dropped link."""

    description = "fake"

    def __init__(self, rules: dict[tuple[int, int], str]) -> None:
        self.rules = rules
        self.connected = True
        self.connects = 0
        self.asked: list[tuple[int, int]] = []

    def connect(self) -> None:
        self.connects += 1
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def read(
        self,
        unit_id: int,
        kind: str,
        start: int,
        count: int,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        settle_sec: float | None = None,
    ) -> list[int]:
        from nixlog.modbus_client import LATE_ANSWER, LinkDown, ReadTimeout

        self.asked.append((unit_id, start))
        rule = self.rules.get((unit_id, start), "ok")
        if rule == "silent":
            raise ReadTimeout("no answer", "timeout")
        if rule == "late":
            raise ReadTimeout("no answer", LATE_ANSWER)
        if rule == "drop":
            self.connected = False
            raise LinkDown("lost connection to fake")
        return [unit_id * 1000 + start] * count


FOUR_BLOCKS = (
    RegisterConfig("u1_a", 0),
    RegisterConfig("u1_b", 100),
    RegisterConfig("u2_a", 0, unit_id=2),
    RegisterConfig("u2_b", 100, unit_id=2),
)


def test_block_silent_alone_is_backed_off_alone(caplog: pytest.LogCaptureFixture) -> None:
    """A block silent while its unit answers the others is skipped alone; one log line."""
    clock = FakeClock()
    link = BehaviourLink({(1, 0): "silent"})
    poller = Poller(link, FOUR_BLOCKS, clock=clock)
    caplog.set_level("WARNING", logger="nixlog")
    poller.poll_once()  # unit 1 has answered nothing yet: the rest of it is skipped once
    for _ in range(6):
        reading = poller.poll_once()
        assert reading is not None
        assert reading.values == {"u1_b": 1100, "u2_a": 2000, "u2_b": 2100}
        clock.advance(0.1)
    assert not poller.unit_backed_off(1)
    assert poller.block_backed_off(poller.plan[0])
    assert link.asked.count((1, 0)) == 3  # silent three times (once forgiven), then skipped
    assert reading.errors == {"u1_a": "skipped: block not responding"}
    assert sum("does not answer" in m for m in caplog.messages) == 1


def test_silent_first_block_does_not_skip_the_unit_next_time() -> None:
    """After a cycle where its first block was silent, a unit's other blocks are read first."""
    link = BehaviourLink({(1, 0): "silent"})
    poller = Poller(link, FOUR_BLOCKS, clock=FakeClock())
    first = poller.poll_once()
    assert first is not None and "u1_b" not in first.values  # the rest of unit 1 skipped once
    second = poller.poll_once()
    assert second is not None and second.values["u1_b"] == 1100
    assert link.asked[-4:] == [(1, 100), (2, 0), (2, 100), (1, 0)]


def test_late_answer_proves_the_unit_is_there() -> None:
    """A late answer fails its block but does not get the unit's other blocks skipped."""
    link = BehaviourLink({(1, 0): "late"})
    poller = Poller(link, FOUR_BLOCKS, clock=FakeClock())
    reading = poller.poll_once()
    assert reading is not None and reading.values["u1_b"] == 1100
    assert reading.errors == {"u1_a": "late answer discarded"}


def test_dropped_connection_is_reopened_once_per_cycle(caplog: pytest.LogCaptureFixture) -> None:
    """A request that drops the link: one reconnect, the rest still read; blamed on the third."""
    clock = FakeClock()
    link = BehaviourLink({(1, 100): "drop"})
    poller = Poller(link, FOUR_BLOCKS, clock=clock)
    caplog.set_level("WARNING", logger="nixlog")
    for _ in range(5):
        reading = poller.poll_once()
        assert reading is not None
        assert reading.values == {"u1_a": 1000, "u2_a": 2000, "u2_b": 2100}
        clock.advance(0.1)
    assert link.asked.count((1, 100)) == 3  # dropped the link three times in a row: blamed
    assert link.connects == 3
    assert sum("lost connection" in m for m in caplog.messages) == 1


def test_second_drop_in_a_cycle_leaves_the_rest_disconnected() -> None:
    """Two requests dropping the link in one cycle: after the second the rest is not sent."""
    link = BehaviourLink({(1, 0): "drop", (1, 100): "drop"})
    poller = Poller(link, FOUR_BLOCKS, clock=FakeClock())
    assert poller.poll_once() is None
    assert link.asked == [(1, 0), (1, 100)]
    assert poller.last_cycle is not None
    assert poller.last_cycle.errors["u2_b"] == "disconnected"


def test_fault_log_once_then_a_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A repeating condition: one line, then one summary line per interval with the count."""
    import logging

    from nixlog.modbus_client import FaultLog

    clock = FakeClock()
    faults = FaultLog(logging.getLogger("nixlog.test"), interval=300, clock=clock)
    caplog.set_level("WARNING", logger="nixlog")
    for _ in range(100):
        faults.note("k", "unit 1 does not answer")
        clock.advance(5)  # 100 notes over 500 s
    assert caplog.messages == [
        "unit 1 does not answer",
        "unit 1 does not answer (60 times in the last 5 min)",
    ]
    assert faults.clear("k") and not faults.active("k")
    assert faults.note("k", "again")
