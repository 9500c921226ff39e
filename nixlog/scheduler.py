"""Station 1 for a plant: one scheduler per bus, its devices' groups on their own schedules.

A bus is one link (a serial line, a TCP peer or a TCP serial server) and the devices on it.
Each device's registers are split into groups by interval; each group keeps its own
monotonic schedule (``start + n × interval``). One scheduler runs on one thread and sends one
request at a time, so on an RS-485 line no two requests ever overlap; different buses run
on their own threads, in parallel. When several groups are due, the one due first goes
first; a group whose slot passed by more than half its interval skips (and counts) the
missed slots, never bursts. Backoff is the bus poller's (``core.Poller``): per request, per
unit, per link, so a dead device costs the bus only its own timeouts.

Report by exception (``ExceptionFilter``): a register with ``deadband`` or ``heartbeat_sec``
is stored only when it moved, when its state changed (a value after an error), or when its
heartbeat is due; a pass in which nothing is due stores nothing.

The flat ``[modbus]`` form runs through here too, as one bus with one unnamed device
(ARCHITECTURE.md: The plant model).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nixlog.config import BusConfig, Config, PlantDevice, RegisterConfig
from nixlog.core import Poller
from nixlog.errors import ConfigError
from nixlog.modbus_client import ReadLink, create_client
from nixlog.model import Reading, Value
from nixlog.registers import ReadRequest, plan_requests
from nixlog.status import StatusWatch

IDLE_TICK_SEC = 1.0
"""A scheduler with nothing due wakes at least this often (heartbeat for the watchdog)."""
_DUE_SLACK_SEC = 1e-4


# ------------------------------------------------------------------ report by exception


def _moved(value: Value, last: Value, deadband: float) -> bool:
    numeric = (int, float)
    if (
        isinstance(value, numeric)
        and isinstance(last, numeric)
        and not isinstance(value, bool)
        and not isinstance(last, bool)
        and deadband > 0
    ):
        return abs(float(value) - float(last)) >= deadband
    return value != last


class ExceptionFilter:
    """Keeps only what is due of a group's reading; pure apart from its memory.

    For a register with ``deadband`` or ``heartbeat_sec``: stored when first seen, when
    ``|value - last stored| >= deadband`` (any change when the deadband is 0 or unset), when
    it failed or recovered (its state changed), or when ``heartbeat_sec`` has passed since it
    was last stored (less half a polling interval, so a heartbeat is never a whole interval
    late). Registers without either are always stored. ``apply`` returns None when nothing
    of the reading is due: that pass stores nothing.
    """

    def __init__(self, registers: Sequence[RegisterConfig], interval_sec: float) -> None:
        self._rules = {r.name: r for r in registers if r.by_exception}
        self._slack = interval_sec / 2
        self._last: dict[str, tuple[str, Value]] = {}
        self._stored_at: dict[str, float] = {}
        self.suppressed = 0
        """Values not stored because nothing about them was due."""

    @property
    def active(self) -> bool:
        """True when any register of the group reports by exception."""
        return bool(self._rules)

    def _due(self, name: str, state: tuple[str, Value], now: float) -> bool:
        rule = self._rules.get(name)
        if rule is None:
            return True
        last = self._last.get(name)
        if last is None or last[0] != state[0]:
            return True
        heartbeat = rule.heartbeat_sec
        if heartbeat is not None and now - self._stored_at[name] >= heartbeat - self._slack:
            return True
        if state[0] == "e":
            return last[1] != state[1]
        return _moved(state[1], last[1], rule.deadband or 0.0)

    def apply(self, reading: Reading, now: float) -> Reading | None:
        """The part of ``reading`` to store at monotonic time ``now``, or None."""
        if not self._rules:
            return reading
        values: dict[str, Value] = {}
        errors: dict[str, str] = {}
        for name, value in reading.values.items():
            if self._due(name, ("v", value), now):
                values[name] = value
            else:
                self.suppressed += 1
        for name, error in reading.errors.items():
            if self._due(name, ("e", error), now):
                errors[name] = error
        if not values and not errors:
            return None
        for name, value in values.items():
            self._remember(name, ("v", value), now)
        for name, error in errors.items():
            self._remember(name, ("e", error), now)
        if len(values) == len(reading.values) and len(errors) == len(reading.errors):
            return reading
        return Reading(
            timestamp=reading.timestamp, values=values, errors=errors, device=reading.device
        )

    def _remember(self, name: str, state: tuple[str, Value], now: float) -> None:
        if name in self._rules:
            self._last[name] = state
            self._stored_at[name] = now


# ------------------------------------------------------------------ groups


@dataclass
class GroupStats:
    """Counters of one group since its scheduler started."""

    passes: int = 0
    stored: int = 0
    skipped_slots: int = 0


@dataclass
class PollGroup:
    """One device's registers that share an interval: one reading per pass."""

    device: str | None
    interval_sec: float
    registers: tuple[RegisterConfig, ...]
    plan: list[ReadRequest]
    filter: ExceptionFilter
    deadline: float = 0.0
    stats: GroupStats = field(default_factory=GroupStats)

    @property
    def label(self) -> str:
        """``meter1 @ 1 s`` for messages and the benchmark."""
        return f"{self.device or 'modbus'} @ {self.interval_sec:g} s"


def build_groups(bus: BusConfig, config_path: object = "config") -> list[PollGroup]:
    """The groups of every device on ``bus``, in config order; coalescing stays per group.

    Raises ``ConfigError`` when a group cannot be planned within the bus's request limit.
    """
    groups: list[PollGroup] = []
    for device in bus.devices:
        by_interval: dict[float, list[RegisterConfig]] = {}
        for register in device.registers:
            by_interval.setdefault(device.interval_of(register), []).append(register)
        for interval, registers in by_interval.items():
            try:
                plan = plan_requests(registers, bus.link.max_registers_per_request)
            except ValueError as exc:
                where = f"bus {bus.name}: " if device.name is not None else "modbus."
                raise ConfigError(
                    f"{config_path}: {where}max_registers_per_request: {exc}"
                ) from None
            groups.append(
                PollGroup(
                    device=device.name,
                    interval_sec=interval,
                    registers=tuple(registers),
                    plan=plan,
                    filter=ExceptionFilter(registers, interval),
                )
            )
    return groups


# ------------------------------------------------------------------ the scheduler


class BusScheduler:
    """Runs the groups of one bus through its poller, one request at a time.

    ``run`` is the loop (the daemon runs one per bus on its own thread); ``run_pass`` polls
    the group due first once (the single-shot commands and tests). ``clock`` is monotonic.
    """

    def __init__(
        self,
        bus: BusConfig,
        poller: Poller,
        groups: Sequence[PollGroup],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.poller = poller
        self.groups = list(groups)
        self.clock = clock
        self.passes = 0
        self.status = StatusWatch()
        """Per-device online/offline state; its transitions are stored as readings."""
        self._started = False

    def start(self, now: float | None = None) -> None:
        """Make every group due now (called by ``run``; tests may call it themselves)."""
        start = self.clock() if now is None else now
        for group in self.groups:
            group.deadline = start
        self._started = True

    def next_due(self) -> PollGroup:
        """The group due first (ties: config order)."""
        return min(self.groups, key=lambda g: g.deadline)

    def run_pass(self, group: PollGroup) -> tuple[Reading | None, Reading | None]:
        """Poll ``group`` once and move its deadline; (cycle reading, reading to store).

        The cycle reading is every value and error of the pass (for display); the one to
        store is what report by exception lets through (None: store nothing).
        """
        reading = self.poller.poll_group(group.registers, group.plan, group.device)
        cycle = self.poller.last_cycle
        now = self.clock()
        group.stats.passes += 1
        self.passes += 1
        stored = group.filter.apply(reading, now) if reading is not None else None
        if stored is not None:
            group.stats.stored += 1
        group.deadline += group.interval_sec
        late = now - group.deadline
        if late > group.interval_sec / 2:
            missed = math.ceil((late - group.interval_sec / 2) / group.interval_sec)
            group.stats.skipped_slots += missed
            self.poller.stats.skipped_slots += missed
            group.deadline += missed * group.interval_sec
        return cycle, stored

    def run(
        self,
        on_reading: Callable[[Reading], None],
        stop: threading.Event,
        *,
        wait: Callable[[float], object] | None = None,
        on_cycle: Callable[[Reading], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        max_passes: int | None = None,
    ) -> None:
        """Poll the groups on their schedules until ``stop`` is set (or ``max_passes``).

        ``on_reading`` gets what is to be stored (a device's status change included:
        ``nixlog.status``), ``on_cycle`` every pass's reading (even one where all registers
        failed), ``on_idle`` is called at least every ``IDLE_TICK_SEC``
        while nothing is due. Sleeps with ``stop.wait`` (``wait`` for tests).
        """
        sleep = wait if wait is not None else stop.wait
        if not self._started:
            self.start()
        passes = 0
        while not stop.is_set():
            group = self.next_due()
            pause = group.deadline - self.clock()
            if pause > _DUE_SLACK_SEC:
                sleep(min(pause, IDLE_TICK_SEC))
                if on_idle is not None:
                    on_idle()
                continue
            cycle, stored = self.run_pass(group)
            passes += 1
            # A status change is stored past report by exception: it is never suppressed.
            change = self.status.observe(cycle) if cycle is not None else None
            if change is not None:
                on_reading(change)
            if stored is not None:
                on_reading(stored)
            if on_cycle is not None and cycle is not None:
                on_cycle(cycle)
            if max_passes is not None and passes >= max_passes:
                return


def build_bus_scheduler(
    config: Config,
    bus: BusConfig,
    *,
    link: ReadLink | None = None,
    devices: Sequence[PlantDevice] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BusScheduler:
    """A scheduler for ``bus`` (or only ``devices`` of it) with a new, unopened link."""
    chosen = bus if devices is None else _with_devices(bus, devices)
    groups = build_groups(chosen, config.path)
    if link is None:
        link = create_client(bus.link)
    registers = tuple(r for group in groups for r in group.registers)
    poller = Poller(link, registers, [], clock=clock)
    return BusScheduler(chosen, poller, groups, clock=clock)


def _with_devices(bus: BusConfig, devices: Sequence[PlantDevice]) -> BusConfig:
    return BusConfig(name=bus.name, link=bus.link, devices=tuple(devices))


# ------------------------------------------------------------------ load figures (config check)

BUSY_WARN_SHARE = 0.8
"""``config check`` warns when a serial line's plan needs more than this share of it."""
_RTU_REQUEST_BYTES = 8  # unit, function, start, count, CRC
_RTU_ANSWER_OVERHEAD = 5  # unit, function, byte count, CRC
_RTU_SILENCE_CHARS = 7  # 3.5 character times before each of the two frames
_ROW_FIXED_BYTES = 80
"""A stored row without its values: id, timestamp, logger id, JSON braces, SQLite's record."""
_VALUE_BYTES = 12
"""A value in a row's JSON beside its name: quotes, colon, comma and about 8 digits."""


@dataclass(frozen=True)
class BusLoad:
    """What a bus's plan asks of its line and of the disk (every pass stored)."""

    name: str
    devices: int
    requests_per_sec: float
    busy_share: float | None
    """Share of the serial line's time the requests and answers need (None: Modbus TCP)."""
    rows_per_day: float
    bytes_per_day: float

    @property
    def overloaded(self) -> bool:
        """True above ``BUSY_WARN_SHARE`` of the line."""
        return self.busy_share is not None and self.busy_share > BUSY_WARN_SHARE


def request_wire_sec(bus: BusConfig, request: ReadRequest) -> float:
    """Seconds one request and its answer occupy a serial line at its baud rate."""
    link = bus.link
    bits = 1 + link.bytesize + (0 if link.parity == "N" else 1) + link.stopbits
    bit_kind = request.kind in ("coil", "discrete")
    data = (request.count + 7) // 8 if bit_kind else 2 * request.count
    chars = _RTU_REQUEST_BYTES + _RTU_ANSWER_OVERHEAD + data + _RTU_SILENCE_CHARS
    return chars * bits / link.baudrate + link.request_gap_ms / 1000.0


def bus_load(bus: BusConfig, groups: Sequence[PollGroup] | None = None) -> BusLoad:
    """The figures ``config check`` prints for ``bus`` (pure: from the plan alone)."""
    groups = build_groups(bus) if groups is None else groups
    requests = 0.0
    busy = 0.0
    rows = 0.0
    size = 0.0
    for group in groups:
        per_sec = 1.0 / group.interval_sec
        requests += len(group.plan) * per_sec
        busy += sum(request_wire_sec(bus, r) for r in group.plan) * per_sec
        row = _ROW_FIXED_BYTES + len(group.device or "") + sum(
            len(r.name) + _VALUE_BYTES for r in group.registers
        )
        rows += per_sec * 86400
        size += per_sec * 86400 * row
    return BusLoad(
        name=bus.name,
        devices=len(bus.devices),
        requests_per_sec=requests,
        busy_share=None if bus.link.is_tcp else busy,
        rows_per_day=rows,
        bytes_per_day=size,
    )
