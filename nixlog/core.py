"""The stations of the conveyor belt as plain functions, and the loops that drive them.

poll → store → ship → maintain (ARCHITECTURE.md: Bird's-eye view). ``nixlog
poll``/``publish``/``prune`` call these functions once; the daemon's two loops call the very same
functions forever.
"""

from __future__ import annotations

import logging
import math
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from nixlog.config import Config, RegisterConfig
from nixlog.errors import ConfigError, NixlogError
from nixlog.modbus_client import (
    FAILURE_DISCONNECTED,
    FAILURE_TIMEOUT,
    LATE_ANSWER,
    FaultLog,
    ModbusReadError,
    ReadLink,
    create_client,
    failed_result,
)
from nixlog.model import Reading, StoredReading, Value
from nixlog.registers import (
    ReadRequest,
    plan_for_config,
    plan_requests,
    split_at_gaps,
)
from nixlog.status import StatusWatch

if TYPE_CHECKING:
    from pathlib import Path

    from nixlog.config import DatabaseConfig
    from nixlog.database import PruneReport
    from nixlog.outputs import PublishResult

# ============================================================== station 1: poll (poll issue)

poll_log = logging.getLogger("nixlog.poll")

UNIT_BACKOFF_BASE_SEC = 1.0
UNIT_BACKOFF_CAP_SEC = 60.0
CONNECT_BACKOFF_BASE_SEC = 0.5
CONNECT_BACKOFF_CAP_SEC = 30.0
UNIT_SILENT_GRACE = 1
"""Silent cycles a unit is forgiven before it is backed off (one lost answer is noise)."""
LINK_DROP_GRACE = 2
"""Connections a request may see dropped in a row before it is blamed and backed off."""

BlockKey = tuple[int, str, int, int]
"""What a request reads (unit, kind, start, count): silence and backoff are counted per block."""


def utc_timestamp(now: datetime | None = None) -> str:
    """UTC ISO 8601 with microseconds: ``2026-11-26T16:00:00.123456+00:00``."""
    moment = datetime.now(UTC) if now is None else now.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


@dataclass
class PollStats:
    """Counters of a poller since it started (the daemon reports them)."""

    cycles: int = 0
    failed_cycles: int = 0  # every register failed: no reading stored, still counted
    skipped_slots: int = 0  # schedule slots dropped after an overrun (run_poll_loop)
    requests: int = 0
    failed_requests: int = 0
    skipped_requests: int = 0  # not sent: unit backed off or link down
    reconnects: int = 0
    last_cycle_sec: float = 0.0


class Poller:
    """Station 1: reads the register plan once per ``poll_once`` and decodes one reading.

    Holds the link, the plan, per-unit backoff (a unit that stays silent is skipped for
    growing intervals, capped, while other units keep being read) and connection backoff (a
    lost port is reopened with capped backoff; the poller never raises for device trouble).
    ``clock`` is monotonic seconds; ``wall_clock`` gives the reading's UTC time.
    """

    def __init__(
        self,
        link: ReadLink,
        registers: Sequence[RegisterConfig],
        plan: Sequence[ReadRequest] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        unit_backoff: tuple[float, float] = (UNIT_BACKOFF_BASE_SEC, UNIT_BACKOFF_CAP_SEC),
        connect_backoff: tuple[float, float] = (
            CONNECT_BACKOFF_BASE_SEC,
            CONNECT_BACKOFF_CAP_SEC,
        ),
    ) -> None:
        self.link = link
        self.registers = tuple(registers)
        self.plan: list[ReadRequest] = list(
            plan_requests(self.registers) if plan is None else plan
        )
        self.clock = clock
        self.wall_clock = wall_clock
        self.stats = PollStats()
        self.last_cycle: Reading | None = None
        self._unit_backoff_limits = unit_backoff
        self._unit_backoff: dict[int, Backoff] = {}
        self._unit_silent: dict[int, int] = {}
        self._block_backoff: dict[BlockKey, Backoff] = {}
        self._block_silent: dict[BlockKey, int] = {}
        self._block_drops: dict[BlockKey, int] = {}
        self._suspect: set[BlockKey] = set()  # unanswered when last sent
        self.faults = FaultLog(poll_log, clock=clock)
        base, cap = connect_backoff
        self._connect_backoff = Backoff(base=base, cap=cap, clock=clock)
        self._link_error = "disconnected"
        self._ever_connected = False
        self.last_link_error: str | None = None
        self.device: str | None = None
        """The plant device ``poll_once`` reads (its readings carry the name)."""
        self.rate_hz: float | None = None
        """The device's own rate, for ``nixlog poll --device`` (None: the config's)."""

    # ------------------------------------------------------------------ state

    def unit_backed_off(self, unit_id: int) -> bool:
        """True while ``unit_id`` is being skipped after staying silent."""
        backoff = self._unit_backoff.get(unit_id)
        return backoff is not None and not backoff.ready()

    def close(self) -> None:
        """Close the link."""
        self.link.close()

    # ------------------------------------------------------------------ one cycle

    def poll_once(self) -> Reading | None:
        """Read the whole plan once; the reading, or None when every register failed.

        A failed register is absent from ``values`` and present in ``errors``. ``last_cycle``
        holds the cycle's reading even when it is None here (for display). Never raises for
        device or link trouble.
        """
        return self.poll_group(self.registers, self.plan, self.device)

    def poll_group(
        self,
        registers: Sequence[RegisterConfig],
        plan: list[ReadRequest],
        device: str | None = None,
    ) -> Reading | None:
        """``poll_once`` for one group of a bus (``plan`` covers ``registers``).

        The bus scheduler calls it per device and interval group: backoff (per request, per
        unit, per link) is the bus's, shared by all its groups. ``plan`` may be rewritten in
        place (a bridged request a device refuses is split). The reading carries ``device``.
        """
        started = self.clock()
        self.stats.cycles += 1
        timestamp: str | None = None
        decoded: dict[str, Value] = {}
        errors: dict[str, str] = {}
        if not self._ensure_connected():
            for register in registers:
                errors[register.name] = self._link_error
            self.stats.skipped_requests += len(plan)
        else:
            timestamp = self._read_plan(decoded, errors, plan)
        if timestamp is None:
            timestamp = utc_timestamp(self.wall_clock())
        names = [register.name for register in registers]  # the reading keeps the map's order
        values = {name: decoded[name] for name in names if name in decoded}
        ordered_errors = {name: errors[name] for name in names if name in errors} if errors else {}
        reading = Reading(timestamp=timestamp, values=values, errors=ordered_errors, device=device)
        self.last_cycle = reading
        self.stats.last_cycle_sec = self.clock() - started
        if not values:
            self.stats.failed_cycles += 1
            return None
        return reading

    def _ensure_connected(self) -> bool:
        if self.link.connected:
            return True
        if not self._connect_backoff.ready():
            return False
        try:
            self.link.connect()
        except ModbusReadError as exc:
            delay = self._connect_backoff.failure()
            self.last_link_error = exc.message
            if self._connect_backoff.failures == 1 or delay >= CONNECT_BACKOFF_CAP_SEC / 2:
                poll_log.warning("%s; retrying in %.1f s", exc.message, delay)
            return False
        if self._ever_connected:
            self.stats.reconnects += 1
            self.faults.note(("reconnected",), f"reconnected to {self.link.description}")
        self._ever_connected = True
        self._connect_backoff.success()
        self.last_link_error = None
        return True

    def _read_plan(
        self, decoded: dict[str, Value], errors: dict[str, str], plan: list[ReadRequest]
    ) -> str | None:
        """Run the plan; fill ``decoded``/``errors``; the time the first request was sent.

        Isolation is per request, then per unit, then per link: a block that stays silent
        while its unit answers other blocks is backed off alone; a unit that has answered
        nothing yet in this cycle is skipped for the rest of it after a silent request (so
        blocks silent last time are read last); a dropped connection is reopened once per
        cycle and the remaining requests are still sent.
        """
        timestamp: str | None = None
        silent: set[int] = set()
        answered: set[int] = set()
        block_silent: list[ReadRequest] = []
        block_ok: list[ReadRequest] = []
        link_killers: list[ReadRequest] = []
        reconnected = False
        link_lost = False
        queue = deque(plan)
        if self._suspect:
            # Requests that went unanswered last time go last: a unit's healthy blocks are
            # read (and prove it alive) before one silent block can get the rest skipped.
            queue = deque(sorted(plan, key=lambda r: _block_key(r) in self._suspect))
        while queue:
            request = queue.popleft()
            unit = request.unit_id
            key = _block_key(request)
            skip_reason: str | None = None
            if link_lost:
                skip_reason = "disconnected"
            elif unit not in answered and (unit in silent or self.unit_backed_off(unit)):
                skip_reason = f"skipped: unit {unit} not responding"
            elif self._key_backed_off(key):
                skip_reason = "skipped: block not responding"
            if skip_reason is not None:
                self.stats.skipped_requests += 1
                for register in request.registers:
                    errors[register.name] = skip_reason
                continue
            if timestamp is None:
                timestamp = utc_timestamp(self.wall_clock())
            try:
                raw = self._read(request, key)
            except ModbusReadError as exc:
                result = failed_result(request, exc)
            else:
                answered.add(unit)
                block_ok.append(request)
                self._suspect.discard(key)
                self._decode(request, raw, decoded, errors)
                continue
            self.stats.failed_requests += 1
            if result.failure == FAILURE_DISCONNECTED:
                self.last_link_error = (
                    result.detail or f"lost connection to {self.link.description}"
                )
                if reconnected or not self._reconnect():
                    link_lost = True
                else:
                    link_killers.append(request)  # the link is fine: this request drops it
                    self._suspect.add(_block_key(request))
                reconnected = True
            elif result.failure == FAILURE_TIMEOUT:
                # A late answer is still an answer: the unit is there, this block is slow.
                (answered if result.error == LATE_ANSWER else silent).add(unit)
                block_silent.append(request)
                self._suspect.add(_block_key(request))
            else:
                answered.add(unit)  # an exception or a garbled answer: someone is there
                block_ok.append(request)
                self.faults.note(
                    ("answer", unit, result.error), f"{request.describe()}: {result.error}"
                )
                if result.exception_code == 2 and request.bridged:
                    parts = self._split(request, plan)
                    if len(parts) > 1:
                        queue.extendleft(reversed(parts))
                        continue
            for register in request.registers:
                errors[register.name] = result.error or "failed"
        self._update_unit_backoff(silent - answered, answered)
        # A silent block of a unit that answered nothing is the unit's backoff, not its own.
        silent_alone = [r for r in block_silent if r.unit_id in answered]
        self._update_block_backoff(silent_alone, link_killers, block_ok)
        return timestamp

    def _reconnect(self) -> bool:
        """Reopen a link lost mid-cycle (once per cycle); True when it is open again."""
        self.faults.note(("link",), f"{self.last_link_error}; reconnecting")
        self.link.close()
        try:
            self.link.connect()
        except ModbusReadError as exc:
            self._connect_backoff.failure()
            self.last_link_error = exc.message
            return False
        self.stats.reconnects += 1
        return True

    def block_backed_off(self, request: ReadRequest) -> bool:
        """True while ``request`` is being skipped after staying silent alone."""
        return self._key_backed_off(_block_key(request))

    def _key_backed_off(self, key: BlockKey) -> bool:
        """``block_backed_off`` of the request whose key the caller already has."""
        backoff = self._block_backoff.get(key)
        return backoff is not None and not backoff.ready()

    def _update_block_backoff(
        self,
        silent: Sequence[ReadRequest],
        killers: Sequence[ReadRequest],
        answered: Sequence[ReadRequest],
    ) -> None:
        """Count each block's silent (or link-dropping) tries in a row; back off past grace.

        A dropped link is blamed on a request only after ``LINK_DROP_GRACE`` drops in a row on
        it: a gateway or proxy that resets now and then hits whichever request is in flight.
        """
        # While no block is counted or backed off (every healthy cycle) answers clear nothing.
        if self._block_silent or self._block_drops or self._block_backoff:
            for request in answered:
                key = _block_key(request)
                silent_count = self._block_silent.pop(key, 0)
                dropped_count = self._block_drops.pop(key, 0)
                if silent_count > UNIT_SILENT_GRACE or dropped_count > LINK_DROP_GRACE:
                    self.faults.note(("block again", key), f"{request.describe()} answers again")
                # Forgotten rather than reset: a new backoff is the same as a reset one.
                self._block_backoff.pop(key, None)
        if not silent and not killers:
            return
        for requests, counts, grace, what in (
            (silent, self._block_silent, UNIT_SILENT_GRACE, "does not answer"),
            (killers, self._block_drops, LINK_DROP_GRACE, "drops the connection"),
        ):
            for request in requests:
                key = _block_key(request)
                count = counts[key] = counts.get(key, 0) + 1
                if count <= grace:
                    continue
                backoff = self._block_backoff.get(key)
                if backoff is None:
                    base, cap = self._unit_backoff_limits
                    backoff = Backoff(base=base, cap=cap, clock=self.clock)
                    self._block_backoff[key] = backoff
                delay = backoff.failure()
                self.faults.note(
                    ("block", key),
                    f"{request.describe()} {what} (its unit answers other requests); "
                    f"skipping this request, next try in {delay:.1f} s",
                )

    def _read(self, request: ReadRequest, key: BlockKey) -> list[int] | list[bool]:
        """The values ``request`` read; every failure raises ``ModbusReadError``.

        Only a failure builds a ``RequestResult`` (the caller's): a success, every request of
        a healthy cycle, costs nothing but the values.
        """
        self.stats.requests += 1
        # A request or unit tried again after a backoff is probed once, without retries: it
        # has failed every time so far, and its retries would cost everyone's bus time.
        block = self._block_backoff.get(key)
        unit = self._unit_backoff.get(request.unit_id)
        probe = (block is not None and block.failures > 0) or (
            unit is not None and unit.failures > 0
        )
        try:
            if probe:
                return self.link.read(
                    request.unit_id, request.kind, request.start, request.count, retries=0
                )
            return self.link.read(request.unit_id, request.kind, request.start, request.count)
        except ModbusReadError:
            raise
        except Exception as exc:
            # A bug in a library must not kill the poller of an unattended logger: record it
            # with its traceback and keep polling the rest.
            poll_log.exception("unexpected error reading %s", request.describe())
            reason = f"internal error: {type(exc).__name__}"
            raise ModbusReadError(f"{request.describe()}: {reason}", reason) from exc

    def _decode(
        self,
        request: ReadRequest,
        raw: list[int] | list[bool],
        decoded: dict[str, Value],
        errors: dict[str, str],
    ) -> None:
        # The request's decoders are built on its first cycle: each is registers.decode
        # specialised for its register, with the same values and the same errors.
        for name, first, end, decoder in request.decoders:
            try:
                value = decoder(raw[first:end])
            except ValueError as exc:
                errors[name] = f"invalid value ({exc})"
                continue
            if isinstance(value, float) and not math.isfinite(value):
                # NaN/inf is a sensor fault, and JSON cannot carry it to the API.
                errors[name] = f"not a number ({value})"
                continue
            decoded[name] = value

    def _split(self, request: ReadRequest, plan: list[ReadRequest]) -> list[ReadRequest]:
        """Stop bridging gaps for a device that refuses reads of unused addresses."""
        parts = split_at_gaps(request)
        if len(parts) > 1 and request in plan:
            index = plan.index(request)
            plan[index : index + 1] = parts
            poll_log.warning(
                "%s refused (exception 2): reading it as %d requests without gaps from now on",
                request.describe(),
                len(parts),
            )
        return parts

    def _update_unit_backoff(self, silent: set[int], answered: set[int]) -> None:
        # While no unit is counted or backed off (every healthy cycle) answers clear nothing.
        if self._unit_silent or self._unit_backoff:
            for unit in answered:
                if self._unit_silent.pop(unit, 0) > UNIT_SILENT_GRACE:
                    self.faults.note(("unit again", unit), f"unit {unit} answers again")
                # Forgotten rather than reset: a new backoff is the same as a reset one.
                self._unit_backoff.pop(unit, None)
        for unit in silent:
            count = self._unit_silent.get(unit, 0) + 1
            self._unit_silent[unit] = count
            if count <= UNIT_SILENT_GRACE:
                continue
            backoff = self._unit_backoff.get(unit)
            if backoff is None:
                base, cap = self._unit_backoff_limits
                backoff = self._unit_backoff[unit] = Backoff(base=base, cap=cap, clock=self.clock)
            delay = backoff.failure()
            self.faults.note(
                ("unit", unit),
                f"unit {unit} does not answer; skipping it, next try in {delay:.1f} s",
            )


def _block_key(request: ReadRequest) -> BlockKey:
    return (request.unit_id, request.kind, request.start, request.count)


def build_poller(
    config: Config, link: ReadLink | None = None, device: str | None = None
) -> Poller:
    """A poller for the configured bus and map (the link is created, not yet opened).

    ``device`` (a plant device's name) polls that device's registers on its bus, and its
    readings carry the name. A plant config with several devices needs one (``UsageError``).
    """
    from nixlog.errors import UsageError

    if device is None and config.is_plant:
        named = [d.name for d in config.devices() if d.name is not None]
        if len(named) > 1:
            raise UsageError(
                f"{config.path} has {len(named)} devices: choose one with --device "
                f"({', '.join(named[:8])}{', ...' if len(named) > 8 else ''})"
            )
        device = named[0]
    if device is None:
        plan = plan_for_config(config)
        if link is None:
            link = create_client(config.modbus)
        return Poller(link, config.modbus.registers, plan)
    bus, chosen = config.find_device(device)
    try:
        plan = plan_requests(chosen.registers, bus.link.max_registers_per_request)
    except ValueError as exc:
        raise ConfigError(f"{config.path}: {bus.name}.max_registers_per_request: {exc}") from None
    poller = Poller(link if link is not None else create_client(bus.link), chosen.registers, plan)
    poller.device = chosen.name
    poller.rate_hz = 1.0 / chosen.poll_interval_sec
    return poller


def run_poll_loop(
    poller: Poller,
    on_reading: Callable[[Reading], None],
    stop: threading.Event,
    rate_hz: float,
    clock: Callable[[], float] = time.monotonic,
    *,
    wait: Callable[[float], object] | None = None,
    on_cycle: Callable[[Reading], None] | None = None,
    on_status: Callable[[Reading], None] | None = None,
    max_cycles: int | None = None,
) -> None:
    """Poll at ``rate_hz`` on monotonic deadlines until ``stop`` is set (or ``max_cycles``).

    Deadlines are ``start + n / rate_hz``: no drift. A cycle that overruns makes the loop
    skip (and count in ``poller.stats.skipped_slots``) every slot whose deadline is more than
    half a period gone, so it never bursts to catch up. Sleeps with ``stop.wait`` (``wait``
    for tests), so it stops within one period. ``on_reading`` gets each reading that has
    values, and a device status change (``nixlog.status``) before it; ``on_cycle`` gets every
    cycle's reading, even one where all registers failed; ``on_status`` the status changes.
    """
    period = 1.0 / rate_hz
    sleep = wait if wait is not None else stop.wait
    deadline = clock()
    cycles = 0
    watch = StatusWatch()
    while not stop.is_set():
        reading = poller.poll_once()
        cycles += 1
        change = watch.observe(poller.last_cycle) if poller.last_cycle is not None else None
        if change is not None:
            on_reading(change)
            if on_status is not None:
                on_status(change)
        if reading is not None:
            on_reading(reading)
        if on_cycle is not None and poller.last_cycle is not None:
            on_cycle(poller.last_cycle)
        if max_cycles is not None and cycles >= max_cycles:
            return
        deadline += period
        late = clock() - deadline
        if late > period / 2:
            missed = math.ceil((late - period / 2) / period)
            poller.stats.skipped_slots += missed
            deadline += missed * period
        sleep(max(0.0, deadline - clock()))


class PollOutcome:
    """What the cycles of a ``nixlog poll`` run amounted to; decides its exit status.

    "Unreachable" (exit 69) means nothing ever answered: no value in any cycle, and every
    error was silence (timeout, lost link, a skipped unit, a gateway's "no answer" codes).
    A device that answers with exceptions is reachable: that is a partial failure (exit 1).
    """

    _SILENCE_PREFIXES = ("skipped:", "exception 10 ", "exception 11 ")

    def __init__(self) -> None:
        self.cycles = 0
        self.any_value = False
        self.any_error = False
        self.first_error: str | None = None
        self.only_silence = True

    def record(self, reading: Reading) -> None:
        """Account for one cycle's reading (``Poller.last_cycle``, failed registers included)."""
        self.cycles += 1
        self.any_value = self.any_value or bool(reading.values)
        for error in reading.errors.values():
            self.any_error = True
            if not error.startswith("skipped:"):
                self.first_error = self.first_error or error
            silent = error in (FAILURE_TIMEOUT, FAILURE_DISCONNECTED) or error.startswith(
                self._SILENCE_PREFIXES
            )
            self.only_silence = self.only_silence and silent

    @property
    def unreachable(self) -> bool:
        """True when the device never answered at all."""
        return not self.any_value and self.any_error and self.only_silence


# ============================================================== station 2: store (warehouse)

store_log = logging.getLogger("nixlog.store")

MAX_PENDING_BATCHES = 100
"""A bin that cannot be written (disk trouble) keeps at most this many batches in memory."""


class ReadingBin:
    """Polled readings held in memory until a whole batch is written in one transaction.

    Due when it holds ``batch_size`` readings, or when its oldest reading has waited
    ``flush_interval_sec`` (on the injected monotonic ``clock``). While the database cannot
    be written, readings stay here, up to ``MAX_PENDING_BATCHES`` batches; beyond that the
    oldest are dropped and counted in ``dropped`` (memory must not grow forever).
    """

    def __init__(
        self,
        batch_size: int,
        flush_interval_sec: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1 or flush_interval_sec <= 0:
            raise ValueError(
                f"need batch_size >= 1 and flush_interval_sec > 0, "
                f"got {batch_size} and {flush_interval_sec}"
            )
        self.batch_size = batch_size
        self.flush_interval_sec = flush_interval_sec
        self.clock = clock
        self.dropped = 0
        self._items: list[Reading] = []
        self._oldest_at: float | None = None

    def add(self, reading: Reading) -> None:
        """Keep one reading; start the flush-interval clock if the bin was empty."""
        if not self._items:
            self._oldest_at = self.clock()
        self._items.append(reading)
        excess = len(self._items) - self.batch_size * MAX_PENDING_BATCHES
        if excess > 0:
            del self._items[:excess]
            # Log the first loss and then every 1000th, not once per poll cycle.
            if self.dropped % 1000 == 0:
                store_log.error(
                    "database not writable: dropping oldest unsaved readings "
                    "(%d so far, %d held in memory)",
                    self.dropped + excess,
                    len(self._items),
                )
            self.dropped += excess

    def is_due(self) -> bool:
        """True when the bin is full or its oldest reading has waited the flush interval."""
        if not self._items:
            return False
        return len(self._items) >= self.batch_size or self.seconds_until_due() <= 0

    def seconds_until_due(self) -> float:
        """Seconds until the flush interval expires (inf when empty, 0 when due)."""
        if self._oldest_at is None:
            return math.inf
        if len(self._items) >= self.batch_size:
            return 0.0
        return max(0.0, self._oldest_at + self.flush_interval_sec - self.clock())

    def peek(self) -> list[Reading]:
        """A copy of the readings held, oldest first (the bin keeps them)."""
        return list(self._items)

    def drain(self) -> list[Reading]:
        """Take every reading out, oldest first; the bin is empty afterwards."""
        items, self._items, self._oldest_at = self._items, [], None
        return items

    def discard(self, count: int) -> None:
        """Forget the ``count`` oldest readings (they were written)."""
        del self._items[:count]
        if not self._items:
            self._oldest_at = None

    def __len__(self) -> int:
        return len(self._items)


def flush(conn: sqlite3.Connection, device_id: str, reading_bin: ReadingBin) -> int:
    """Write everything in the bin in one transaction; return how many readings were written.

    An empty bin writes nothing. The readings leave the bin only once the transaction has
    committed: if the write fails (``DatabaseError``) they stay for the next attempt.
    Call it when ``is_due()``, and on shutdown or Ctrl-C whatever the bin holds.
    """
    from nixlog import database

    pending = reading_bin.peek()
    if not pending:
        return 0
    database.batch_insert_readings(conn, device_id, pending)
    reading_bin.discard(len(pending))
    return len(pending)


WRITE_RETRY_BASE_SEC = 0.5
WRITE_RETRY_CAP_SEC = 10.0


class BinWriter:
    """Station 2 for one thread: a ``ReadingBin`` flushed to that thread's connection.

    ``add`` keeps a reading and writes the bin when it is due. A failed write (disk full,
    database locked) keeps the readings in the bin and spaces the next attempts with capped
    backoff — a full disk is not fixed in one poll period — and calls ``on_write_error``
    (the daemon uses it to ask for maintenance now). ``close`` writes whatever is left.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        device_id: str,
        batch_size: int,
        flush_interval_sec: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_write_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.conn = conn
        self.device_id = device_id
        self.bin = ReadingBin(batch_size, flush_interval_sec, clock=clock)
        self.stored = 0
        self.on_write_error = on_write_error
        self._retry = Backoff(base=WRITE_RETRY_BASE_SEC, cap=WRITE_RETRY_CAP_SEC, clock=clock)

    def add(self, reading: Reading) -> int:
        """Keep ``reading``; write the bin if it is due. Returns readings written now."""
        self.bin.add(reading)
        return self.flush_if_due()

    def flush_if_due(self) -> int:
        """Write the bin when it is full or old enough and no retry pause is running."""
        if not self.bin.is_due() or not self._retry.ready():
            return 0
        return self._write()

    def close(self) -> int:
        """Write what the bin holds now, whatever the pause (shutdown, Ctrl-C)."""
        return self._write() if len(self.bin) else 0

    def _write(self) -> int:
        from nixlog.errors import DatabaseError

        try:
            written = flush(self.conn, self.device_id, self.bin)
        except DatabaseError as exc:
            delay = self._retry.failure()
            store_log.error(
                "cannot write %d readings (kept in memory, next try in %.1f s): %s",
                len(self.bin),
                delay,
                exc,
            )
            if self.on_write_error is not None:
                self.on_write_error(exc)
            return 0
        self._retry.success()
        self.stored += written
        return written


# ============================================================== station 3: ship (shipping)

ship_log = logging.getLogger("nixlog.ship")

BACKOFF_BASE_SEC = 1.0
BACKOFF_CAP_SEC = 300.0


class Backoff:
    """Capped exponential backoff with jitter; pure (injected clock and random source).

    After the n-th consecutive failure the next attempt waits a random time in
    ``[d/2, d]`` with ``d = min(cap, base * 2**(n-1))`` — never near zero, so a dead peer
    is not hammered — or the server's ``Retry-After`` when that is longer. ``next_attempt_at``
    (on ``clock``'s scale) is the earliest moment a request may be made; ``success()`` resets.
    """

    def __init__(
        self,
        *,
        base: float = BACKOFF_BASE_SEC,
        cap: float = BACKOFF_CAP_SEC,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self.clock = clock
        self.rand = rand
        self.failures = 0
        self.next_attempt_at = -math.inf
        self.last_delay = 0.0

    def ready(self) -> bool:
        """True when a request may be made now."""
        return self.clock() >= self.next_attempt_at

    def remaining(self) -> float:
        """Seconds until a request may be made (0 when ready)."""
        return max(0.0, self.next_attempt_at - self.clock())

    def failure(self, retry_after: float | None = None) -> float:
        """Record a failure; return the delay chosen and move ``next_attempt_at``."""
        self.failures += 1
        if retry_after is not None and not math.isfinite(retry_after):
            retry_after = None
        # The exponent is bounded so that years of outage cannot overflow a float.
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 64))
        delay = ceiling / 2 + self.rand() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.last_delay = delay
        self.next_attempt_at = self.clock() + delay
        return delay

    def success(self) -> None:
        """Record a success: the next failure starts again from ``base``."""
        self.failures = 0
        self.last_delay = 0.0
        self.next_attempt_at = -math.inf


@dataclass
class PublishSummary:
    """What one ``publish_pending`` call did.

    ``failure`` is the result that stopped it (temporary, auth or endpoint), None when it
    stopped because it caught up, was asked to stop, or sent its one batch. ``retry_at`` is
    the backoff's earliest next attempt (monotonic clock) after a failure or while deferred.
    """

    delivered: int = 0
    rejected: int = 0
    batches: int = 0
    requests: int = 0
    caught_up: bool = False
    deferred: bool = False
    failure: PublishResult | None = None
    retry_at: float | None = None
    rejected_ids: list[int] = field(default_factory=list)


class Shipper(Protocol):
    """What ``publish_pending`` needs from an output (``nixlog.outputs``; tests pass fakes)."""

    def publish_data(self, rows: Sequence[StoredReading]) -> PublishResult:
        """Post one batch and classify the answer; never raises for network trouble."""
        ...


def publish_pending(
    conn: sqlite3.Connection,
    api_client: Shipper,
    *,
    batch_size: int,
    stop: threading.Event | None = None,
    once: bool = False,
    on_progress: Callable[[int], None] | None = None,
    backoff: Backoff | None = None,
    output: str = "api",
) -> PublishSummary:
    """Ship unsent readings oldest first until caught up, stopped, or the first failure.

    Full batches go back to back while a backlog exists (a week of backlog drains in
    minutes, not a week). A batch the API refuses in part (4xx) or finds too large (413) is
    bisected: the readings it refuses alone are marked rejected, the rest delivered. A
    temporary failure (network, timeout, 408/429/5xx), a key problem (401/403) or a wrong
    endpoint (404/405/501...) stops the call with nothing of that batch marked: the caller
    sleeps (``backoff.remaining()``) and calls again. With ``backoff``, a call made before
    ``backoff.next_attempt_at`` sends nothing (``deferred``), and the outcome updates it.
    ``on_progress(n)`` is called with the number of readings settled after each batch.
    ``output`` names the cursor (each output has its own; ARCHITECTURE.md: Outputs).
    """
    from nixlog import database

    summary = PublishSummary()
    if backoff is not None and not backoff.ready():
        summary.deferred = True
        summary.retry_at = backoff.next_attempt_at
        return summary
    while stop is None or not stop.is_set():
        rows = database.get_unsent_readings(conn, batch_size, output)
        if not rows:
            summary.caught_up = True
            break
        summary.batches += 1
        settled = _Settled()
        complete = _ship_batch(api_client, rows, settled, summary)
        # Rejected first, then sent: storage may keep "sent" as a high-water mark, and the
        # bisection settles readings strictly in id order, so what is settled is a prefix.
        if settled.rejected:
            database.mark_readings_rejected(conn, settled.rejected, output)
        if settled.delivered:
            database.mark_readings_as_sent(conn, settled.delivered, output)
        summary.delivered += len(settled.delivered)
        summary.rejected += len(settled.rejected)
        summary.rejected_ids.extend(settled.rejected)
        if on_progress is not None and (settled.delivered or settled.rejected):
            on_progress(len(settled.delivered) + len(settled.rejected))
        if not complete or once:
            break
    if once and summary.failure is None and not summary.caught_up:
        summary.caught_up = database.count_unsent(conn, output) == 0
    if summary.delivered:
        database.record_publish(conn, datetime.now(UTC).isoformat(), output)
    if summary.failure is not None:
        # Only a statistic: a full disk or a lock must not turn a failed post into a raise.
        with suppress(NixlogError):
            database.record_publish_failure(conn, output)
    _after_publish(summary, backoff, output)
    return summary


@dataclass
class _Settled:
    delivered: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    # Readings refused alone before any sibling was accepted: rejected only once one is.
    refused_alone: list[int] = field(default_factory=list)


def _ship_batch(
    client: Shipper, rows: Sequence[StoredReading], settled: _Settled, summary: PublishSummary
) -> bool:
    """Send one batch; on refusal find the readings to reject; False: stop for now.

    Refusals are judged by what succeeded: a reading is rejected only when a sibling of the
    same batch (or an earlier batch of the same call) was accepted. An API that refuses
    everything (400 for all, 413 even for one reading) is an endpoint problem: nothing is
    rejected, the rows stay, we back off. To tell the two apart cheaply, a refused batch is
    first probed with its last reading alone, then its first: bad readings come in runs (a
    sensor fault lasts), so a batch whose both ends are refused alone is taken for "the API
    refuses everything" after 3 requests, not 2N-1. The price: a batch that really is bad at
    both ends is kept and retried (never written off) until the endpoint or the data is
    fixed; the log says "check api.endpoint".
    """
    result = _post(client, rows, summary)
    if summary.delivered:
        # An earlier batch of this call was accepted: the endpoint works, no probe needed.
        complete = _ship_rows(client, rows, settled, summary, accepted=True, result=result)
        return _judge(complete, result, settled, summary)
    if result.kind == "refused" and len(rows) > 1:
        refused: list[StoredReading] = []
        for probe in (rows[-1], rows[0]):
            answer = _post(client, [probe], summary)
            if answer.kind == "delivered":
                settled.delivered.append(probe.id)
                for row in refused:
                    _reject(row.id, answer, settled)
                skip = {probe.id, *(row.id for row in refused)}
                rest = [row for row in rows if row.id not in skip]
                complete = not rest or _ship_rows(client, rest, settled, summary, accepted=True)
                return _judge(complete, result, settled, summary)
            if answer.kind not in ("refused", "too_large"):
                summary.failure = answer
                return False
            refused.append(probe)
        summary.failure = _refused_everything(result)
        return False
    complete = _ship_rows(client, rows, settled, summary, accepted=False, result=result)
    return _judge(complete, result, settled, summary)


def _post(client: Shipper, rows: Sequence[StoredReading], summary: PublishSummary) -> PublishResult:
    summary.requests += 1
    return client.publish_data(rows)


def _reject(rid: int, result: PublishResult, settled: _Settled) -> None:
    # A reading the API refuses while it accepts its siblings can never be delivered: keep
    # it for export, never resend it, never let it block the queue.
    ship_log.warning(
        "the API refused reading %d (%s); marked rejected, kept for export", rid, result.detail
    )
    settled.rejected.append(rid)


def _refused_everything(result: PublishResult) -> PublishResult:
    from nixlog.outputs import PublishResult

    return PublishResult(
        "endpoint",
        status=result.status,
        detail=f"{result.detail}; the API accepted none of the readings of the batch",
    )


def _judge(
    complete: bool, result: PublishResult, settled: _Settled, summary: PublishSummary
) -> bool:
    """Settle the readings refused alone: rejected if a sibling was accepted, else kept."""
    if not settled.refused_alone:
        return complete
    if settled.delivered:
        for rid in settled.refused_alone:
            _reject(rid, result, settled)
        settled.refused_alone.clear()
        return complete
    settled.refused_alone.clear()
    if summary.failure is None:
        summary.failure = _refused_everything(result)
    return False


def _ship_rows(
    client: Shipper,
    rows: Sequence[StoredReading],
    settled: _Settled,
    summary: PublishSummary,
    *,
    accepted: bool,
    result: PublishResult | None = None,
) -> bool:
    """Send ``rows`` (or judge ``result``), bisecting on 4xx/413; False: stop for now."""
    if result is None:
        result = _post(client, rows, summary)
    if result.kind == "delivered":
        settled.delivered.extend(row.id for row in rows)
        return True
    if result.kind == "too_large" and len(rows) == 1:
        # One reading is a few hundred bytes: a server too small for it is misconfigured.
        summary.failure = _refused_everything(result)
        return False
    if result.kind == "refused" and len(rows) == 1:
        if accepted or settled.delivered:
            _reject(rows[0].id, result, settled)
        else:
            settled.refused_alone.append(rows[0].id)
        return True
    if result.kind in ("refused", "too_large"):
        middle = len(rows) // 2
        return _ship_rows(
            client, rows[:middle], settled, summary, accepted=accepted
        ) and _ship_rows(client, rows[middle:], settled, summary, accepted=accepted)
    summary.failure = result
    return False


def _after_publish(summary: PublishSummary, backoff: Backoff | None, output: str = "api") -> None:
    """Log the failure that stopped a publish and move the backoff."""
    failure = summary.failure
    if backoff is not None:
        if failure is not None:
            if summary.delivered:
                # Any delivered batch proves the API works: the next wait starts from base,
                # or a steady rate of random failures would push it to the cap.
                backoff.success()
            backoff.failure(failure.retry_after)
            summary.retry_at = backoff.next_attempt_at
        elif summary.requests:
            backoff.success()
    if failure is None:
        return
    wait = f"; next attempt in {backoff.last_delay:.0f} s" if backoff is not None else ""
    if output == "mqtt":
        if failure.kind == "auth":
            ship_log.error(
                "mqtt: THE BROKER REFUSED THE LOGIN (%s): check mqtt.username and "
                "mqtt.password; readings are kept%s",
                failure.detail,
                wait,
            )
        else:
            ship_log.warning(
                "mqtt: publishing failed: %s; readings are kept%s", failure.detail, wait
            )
        return
    if failure.kind == "auth":
        ship_log.error(
            "THE API REFUSED THE KEY (%s): check api.api_key; readings are kept%s",
            failure.detail,
            wait,
        )
    elif failure.kind == "endpoint":
        ship_log.error(
            "the API endpoint does not accept batches (%s): check api.endpoint; "
            "readings are kept%s",
            failure.detail,
            wait,
        )
    else:
        ship_log.warning("publishing failed: %s; readings are kept%s", failure.detail, wait)


# ============================================================== station 4: maintain (warehouse)


def maintain(
    conn: sqlite3.Connection,
    database_config: DatabaseConfig,
    dry_run: bool = False,
    *,
    vacuum: bool = False,
    free_disk: Callable[[Path], int] | None = None,
    outputs: Sequence[str] = ("api",),
) -> PruneReport:
    """One maintenance pass: prune oldest (sent → rejected → unsent) back within budget.

    ``vacuum`` also shrinks the file afterwards (on request only: it needs free room of
    twice the live size). ``free_disk`` replaces the filesystem measurement in tests.
    ``outputs``: the configured outputs; a reading is sent only when all of them have it.
    """
    from nixlog import database

    measure = database.free_disk_bytes if free_disk is None else free_disk
    report = database.prune_database(
        conn, database_config, dry_run=dry_run, free_disk=measure, outputs=outputs or ("api",)
    )
    if vacuum and not dry_run:
        reclaimed = database.vacuum_database(conn, free_disk=measure)
        report = replace(report, vacuumed_bytes=reclaimed)
    return report


# ============================================================== loops (daemon issue)
