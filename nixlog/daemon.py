"""``nixlog daemon``: the poll loop and the ship/maintain loop, run until SIGTERM or SIGINT.

Named, non-daemon threads share one stop event:

* **poll**, one per bus (``nixlog-poll`` for the flat form, ``nixlog-poll-<bus>`` for a
  plant): ``scheduler.BusScheduler.run`` puts each reading into the one shared bin; requests
  on one bus are strictly sequential, buses poll in parallel;
* **store** (``nixlog-store``, its own database connection): writes the bin with
  ``core.BinWriter`` when it is due, and at the stop once the poll threads have ended;
* **ship** (its own connection): ``core.publish_pending`` while a backlog exists,
  ``core.maintain`` every minute (at once when a write failed, which is how a full disk gets
  room back);
* **ship-mqtt** (with ``[mqtt]``): the same ``core.publish_pending`` through the MQTT output,
  with its own cursor, backoff and batch size, so a dead broker never holds up the HTTP API
  or the reverse. Maintenance stays in the ship thread and waits for every output.

They call the same station functions as ``nixlog poll``, ``publish`` and ``prune``. A fault
inside a loop is logged and the loop goes on; a loop that stops making progress stops the
systemd watchdog pings, and systemd restarts us.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

from nixlog import core, database, scheduler
from nixlog.config import BusConfig, Config
from nixlog.errors import EXIT_DATABASE, EXIT_INTERRUPTED, NixlogError
from nixlog.hardware import resolve_device_id
from nixlog.model import Reading, Value
from nixlog.systemd import Notifier

log = logging.getLogger("nixlog.daemon")

HEARTBEAT_SEC = 5.0
"""The ship loop wakes at least this often, so its heartbeat stays fresh while idle."""
MAINTAIN_INTERVAL_SEC = 60.0
"""How often the ship thread checks the disk budget (a prune is cheap when nothing is due)."""
STATUS_INTERVAL_SEC = 10.0
READY_TIMEOUT_SEC = 20.0
"""READY=1 is sent after the first poll cycle, or after this long if that cycle hangs."""
LOOP_RESTART_SEC = 1.0
"""Pause before a loop that raised is started again (a bug must not become a busy loop)."""
STALL_DEFAULT_SEC = 60.0
"""Without a systemd watchdog, a loop silent this long is reported as stalled."""
STOP_JOIN_SEC = 3.0
"""After SIGTERM the loops get this long to end by themselves; then the main thread writes
what the poll thread's bin holds (that thread may be stuck in a device read) and leaves."""
STOP_DB_BUSY_MS = 500
"""The last writes at stop wait at most this long for a lock: the stop is a deadline."""
STORE_TICK_SEC = 0.2
"""The store thread looks at the bin at least this often (a full bin wakes it at once)."""
STORE_WAITS_FOR_POLL_SEC = 2.0
"""At the stop the store thread waits this long for the poll threads before its last write."""


@dataclass
class DaemonStatus:
    """A snapshot of the daemon's counters (``STATUS=`` lines and the demo dashboard)."""

    polled: int = 0
    failed_cycles: int = 0
    skipped_slots: int = 0
    stored: int = 0
    unsaved: int = 0
    dropped: int = 0
    shipped: int = 0
    rejected: int = 0
    backlog: int = 0
    pruned: int = 0
    publish_failures: int = 0
    last_publish_error: str | None = None
    mqtt_shipped: int = 0
    mqtt_backlog: int | None = None
    """None without ``[mqtt]``."""
    mqtt_error: str | None = None
    last_values: dict[str, Value] = field(default_factory=dict)
    last_errors: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, Value]] = field(default_factory=dict)
    """The last values of each plant device (empty for the flat form)."""
    uptime_sec: float = 0.0

    def summary(self) -> str:
        """One line for ``systemctl status`` and the log."""
        rate = self.polled / self.uptime_sec if self.uptime_sec > 0 else 0.0
        text = (
            f"polled {self.polled} ({rate:.1f}/s), stored {self.stored}, "
            f"shipped {self.shipped}, backlog {self.backlog}"
        )
        if self.failed_cycles:
            text += f", failed cycles {self.failed_cycles}"
        if self.rejected:
            text += f", rejected {self.rejected}"
        if self.pruned:
            text += f", pruned {self.pruned}"
        if self.dropped:
            text += f", LOST {self.dropped} (database not writable)"
        if self.last_publish_error:
            text += f", API: {self.last_publish_error}"
        if self.mqtt_backlog is not None:
            text += f", mqtt shipped {self.mqtt_shipped}, backlog {self.mqtt_backlog}"
        if self.mqtt_error:
            text += f", MQTT: {self.mqtt_error}"
        return text


class Daemon:
    """The two loops of the logger, startable in-process (the demo) or as the service.

    ``start()`` opens the database once to refuse an unusable one (exit 74) before any thread
    runs; ``request_stop()`` is what the signal handlers call; ``join()`` waits for a clean
    shutdown: partial bin written, in-flight post finished or timed out, WAL checkpointed.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        maintain_interval_sec: float = MAINTAIN_INTERVAL_SEC,
    ) -> None:
        self.config = config
        self.clock = clock
        self.maintain_interval_sec = maintain_interval_sec
        self.stop_event = threading.Event()
        self.first_cycle = threading.Event()
        # Wakes the ship thread early: on stop, and when a failed write wants room now.
        self._wake = threading.Event()
        self._maintenance_wanted = threading.Event()
        self._lock = threading.Lock()
        self._status = DaemonStatus()
        self._heartbeats: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._started_at = clock()
        self.device_id = ""
        self.writer_lock: database.WriterLock | None = None
        # Guards the poll thread's bin: at a stop the main thread may write it instead.
        self._bin_lock = threading.Lock()
        self._writer: core.BinWriter | None = None
        self._bin_taken = False
        self.lost = 0
        self._schedulers: list[scheduler.BusScheduler] = []
        self._poll_threads: list[threading.Thread] = []
        self._first_passes: set[str] = set()
        self._store_wake = threading.Event()
        self._writer_ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take the one-writer lock, resolve the identity, check the database, start both loops.

        A second writer on the same database fails here (``DatabaseError``, exit 74), before
        the device is touched.
        """
        self.writer_lock = database.acquire_writer_lock(self.config.database.path)
        try:
            self.device_id = resolve_device_id(self.config)
            conn = database.open_db(self.config.database.path)
            try:
                database.start_writing(conn, self.writer_lock)
                backlog = database.count_unsent(conn)
            finally:
                database.close(conn)
        except BaseException:
            self.writer_lock.release()
            self.writer_lock = None
            raise
        with self._lock:
            self._status.backlog = backlog
        if not self.config.output_names:
            log.warning(
                "no [api] or [mqtt] section: readings are kept locally only (nothing is shipped)"
            )
        self._started_at = self.clock()
        buses = self.config.buses
        targets: list[tuple[str, Callable[[], None]]] = [("nixlog-store", self._store_thread)]
        for bus in buses:
            name = f"nixlog-poll-{bus.name}" if self.config.is_plant else "nixlog-poll"
            targets.append((name, lambda bus=bus: self._poll_thread(bus)))  # type: ignore[misc]
        targets.append(("nixlog-ship", self._ship_thread))
        if self.config.mqtt is not None:
            targets.append(("nixlog-ship-mqtt", self._mqtt_thread))
        for name, target in targets:
            self._heartbeats[name] = self.clock()
            thread = threading.Thread(target=target, name=name, daemon=False)
            self._threads.append(thread)
            if name.startswith("nixlog-poll"):
                self._poll_threads.append(thread)
        for thread in self._threads:
            thread.start()
        if self.config.is_plant:
            log.info(
                "started: %d devices on %d buses (%s), database %s, device id %s",
                sum(len(bus.devices) for bus in buses),
                len(buses),
                ", ".join(f"{bus.name} {bus.link.port}" for bus in buses),
                self.config.database.path,
                self.device_id,
            )
        else:
            log.info(
                "started: %d registers on %s at %g Hz, database %s, device id %s",
                len(self.config.modbus.registers),
                self.config.modbus.port,
                self.config.modbus.poll_rate_hz,
                self.config.database.path,
                self.device_id,
            )

    def request_stop(self) -> None:
        """Ask both loops to stop (signal-handler safe: it only sets events)."""
        self.stop_event.set()
        self._wake.set()
        self.first_cycle.set()  # ends the wait for READY: a stop must not wait for a read

    def join(self, timeout: float | None = None) -> bool:
        """Wait for both loops (at most ``timeout``), then finish; True when both ended.

        Finishing never waits long: a poll thread stuck in a device read has its bin written
        by this thread; what cannot be written (disk full) is counted in ``lost``, recorded
        in ``meta.lost_unwritten`` (or in the lock file until the disk allows) and the
        clean-stop mark is set; the WAL is checkpointed; the lock is released.
        """
        deadline = None if timeout is None else self.clock() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - self.clock())
            thread.join(remaining)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.error("still running after the stop timeout: %s (abandoned)", ", ".join(alive))
        unwritten = self._take_over_bin()
        with self._lock:
            self.lost = self._status.dropped + unwritten
            self._status.dropped = self.lost
        self._finish_writing()
        return not alive

    def _take_over_bin(self) -> int:
        """Write what the poll thread's bin still holds; return how many could not be."""
        if not self._bin_lock.acquire(timeout=0.5):
            writer = self._writer  # stuck mid-write: what it holds is lost with the process
            return len(writer.bin) if writer is not None else 0
        try:
            self._bin_taken = True
            writer = self._writer
            if writer is None or not len(writer.bin):
                return 0
            try:
                conn = database.open_db(self.config.database.path, busy_timeout_ms=STOP_DB_BUSY_MS)
                try:
                    self._count_stored(core.flush(conn, self.device_id, writer.bin))
                finally:
                    database.close(conn)
            except NixlogError as exc:
                log.error("cannot write the last %d readings: %s", len(writer.bin), exc)
            return len(writer.bin)
        finally:
            self._bin_lock.release()

    def _finish_writing(self) -> None:
        lock = self.writer_lock
        recorded = False
        try:
            conn = database.open_db(self.config.database.path, busy_timeout_ms=STOP_DB_BUSY_MS)
            try:
                database.stop_writing(conn, self.lost)
                recorded = True
                database.checkpoint(conn)
            finally:
                database.close(conn)
        except NixlogError as exc:
            log.warning("final WAL checkpoint failed: %s", exc)
            if self.lost and not recorded and lock is not None:
                # The lock file was written at start: overwriting it needs no new block, so
                # the count survives a full disk; the next start adds it to meta.
                try:
                    lock.write(self.lost)
                except OSError as err:
                    log.error("cannot record %d lost readings: %s", self.lost, err.strerror)
        finally:
            if lock is not None:
                lock.release()
                self.writer_lock = None

    @property
    def running(self) -> bool:
        """True while any loop thread is alive."""
        return any(t.is_alive() for t in self._threads)

    def status(self) -> DaemonStatus:
        """A copy of the counters."""
        with self._lock:
            snapshot = replace(
                self._status,
                last_values=dict(self._status.last_values),
                last_errors=dict(self._status.last_errors),
                devices={name: dict(v) for name, v in self._status.devices.items()},
            )
        snapshot.uptime_sec = self.clock() - self._started_at
        return snapshot

    def stalled_loops(self, max_silence_sec: float) -> list[str]:
        """Loops that died or have not shown progress for ``max_silence_sec``."""
        now = self.clock()
        stalled = []
        for thread in self._threads:
            beat = self._heartbeats.get(thread.name, now)
            if not thread.is_alive() or now - beat > max_silence_sec:
                stalled.append(thread.name)
        return stalled

    def _beat(self) -> None:
        self._heartbeats[threading.current_thread().name] = self.clock()

    # ------------------------------------------------------------------ poll threads

    def _poll_thread(self, bus: BusConfig) -> None:
        """One bus: its scheduler runs until the stop; readings go to the shared bin."""
        bus_scheduler = None
        try:
            # The bin belongs to the store thread; a reading must not arrive before it exists.
            self._writer_ready.wait()
            if self._writer is None:
                return  # the store thread could not open the database (it asked to stop)
            bus_scheduler = scheduler.build_bus_scheduler(self.config, bus, clock=self.clock)
            with self._lock:
                self._schedulers.append(bus_scheduler)
            self._poll_until_stopped(bus, bus_scheduler)
        except NixlogError as exc:
            log.error("poll loop of bus %s cannot run: %s", bus.name, exc)
            self.request_stop()
        finally:
            if bus_scheduler is not None:
                bus_scheduler.poller.close()
            self._first_pass_done(bus.name)
            self._store_wake.set()

    def _first_pass_done(self, bus_name: str) -> None:
        with self._lock:
            self._first_passes.add(bus_name)
            everyone = len(self._first_passes) >= len(self.config.buses)
        if everyone:
            self.first_cycle.set()

    def _poll_until_stopped(self, bus: BusConfig, bus_scheduler: scheduler.BusScheduler) -> None:
        writer = self._writer
        assert writer is not None

        def on_reading(reading: Reading) -> None:
            with self._bin_lock:
                if self._bin_taken:
                    return  # a late answer after the stop: the bin is written already
                writer.bin.add(reading)
                full = len(writer.bin) >= writer.bin.batch_size
            with self._lock:
                self._status.polled += 1
            if full:
                self._store_wake.set()

        def on_cycle(reading: Reading) -> None:
            self._beat()
            with self._lock:
                self._status.last_values = dict(reading.values)
                self._status.last_errors = dict(reading.errors)
                if reading.device is not None:
                    # Merged: a device's interval groups each bring part of its values. A new
                    # dict each time, so a reader holding the old one never sees it change.
                    known = self._status.devices.get(reading.device, {})
                    self._status.devices[reading.device] = {**known, **reading.values}
            self._first_pass_done(bus.name)

        while not self.stop_event.is_set():
            try:
                bus_scheduler.run(
                    on_reading,
                    self.stop_event,
                    on_cycle=on_cycle,
                    on_idle=self._beat,
                )
            except Exception:
                log.exception(
                    "poll loop of bus %s failed; restarting it in %.0f s",
                    bus.name,
                    LOOP_RESTART_SEC,
                )
                self.stop_event.wait(LOOP_RESTART_SEC)

    # ------------------------------------------------------------------ store thread

    def _store_thread(self) -> None:
        """The one store station: writes the shared bin when due, and last at the stop."""
        conn = None
        writer = None
        try:
            conn = database.open_db(self.config.database.path)
            writer = core.BinWriter(
                conn,
                self.device_id,
                self.config.modbus.batch_size,
                self.config.database.flush_interval_sec,
                clock=self.clock,
                on_write_error=self._on_write_error,
            )
            self._writer = writer
            self._writer_ready.set()
            while not self.stop_event.is_set():
                self._beat()
                # Checked on a tick, not only when a reading arrives: with the devices gone, a
                # partial bin must still be written within flush_interval_sec.
                with self._bin_lock:
                    if not self._bin_taken:
                        self._count_stored(writer.flush_if_due())
                self._copy_poll_stats(writer.bin)
                self._store_wake.wait(STORE_TICK_SEC)
                self._store_wake.clear()
            # Stop polling first, then write the partial bin: a reading still in flight on a
            # bus gets its chance, a bus stuck in a device read does not hold the write up.
            deadline = self.clock() + STORE_WAITS_FOR_POLL_SEC
            for thread in self._poll_threads:
                thread.join(max(0.0, deadline - self.clock()))
        except NixlogError as exc:
            log.error("store loop cannot run: %s", exc)
            self.request_stop()
        finally:
            self._writer_ready.set()
            # Shutdown: whatever the bin holds is written before we let go of the database
            # (unless the main thread, tired of waiting, took the bin over).
            if writer is not None:
                with self._bin_lock:
                    if not self._bin_taken:
                        self._count_stored(writer.close())
                        self._bin_taken = not len(writer.bin)
                self._copy_poll_stats(writer.bin)
            if conn is not None:
                database.close(conn)
            self.first_cycle.set()

    def _on_write_error(self, _exc: Exception) -> None:
        # Disk full is the usual cause: let the maintenance loop make room now.
        self._maintenance_wanted.set()
        self._wake.set()

    def _count_stored(self, written: int) -> None:
        if written:
            with self._lock:
                self._status.stored += written
                self._status.backlog += written

    def _copy_poll_stats(self, reading_bin: core.ReadingBin) -> None:
        with self._lock:
            pollers = [bus_scheduler.poller for bus_scheduler in self._schedulers]
            self._status.failed_cycles = sum(p.stats.failed_cycles for p in pollers)
            self._status.skipped_slots = sum(p.stats.skipped_slots for p in pollers)
            self._status.unsaved = len(reading_bin)
            self._status.dropped = reading_bin.dropped

    # ------------------------------------------------------------------ ship thread

    def _ship_thread(self) -> None:
        api = self.config.api
        conn = None
        client: Any = None
        backoff = core.Backoff(clock=self.clock)
        repeats = _RepeatFilter(self.clock)
        next_publish = next_maintain = self.clock()
        try:
            conn = database.open_db(self.config.database.path)
            if api is not None:
                from nixlog.api_client import ApiClient

                # The stop event abandons a post in flight: its rows stay unsent.
                client = ApiClient(
                    api, self.device_id, database.get_epoch(conn), cancel=self.stop_event
                )
            while not self.stop_event.is_set():
                self._beat()
                try:
                    if client is not None and self.clock() >= next_publish:
                        next_publish = self.clock() + self._publish(conn, client, backoff)
                    if self.clock() >= next_maintain or self._maintenance_wanted.is_set():
                        self._maintenance_wanted.clear()
                        self._maintain(conn)
                        next_maintain = self.clock() + self.maintain_interval_sec
                    # The disk-full reserve comes back as soon as there is room for it (a
                    # stat when it exists), so that a second full disk is handled like the
                    # first; waiting for the next maintenance pass could be too late.
                    database.ensure_reserve(self.config.database.path)
                except NixlogError as exc:
                    # Field trouble (disk full, database locked): one line, not a traceback
                    # a second; the same message again only once a minute.
                    if repeats.should_log(str(exc)):
                        log.error("ship loop: %s; going on in %.0f s", exc, LOOP_RESTART_SEC)
                    next_publish = max(next_publish, self.clock() + LOOP_RESTART_SEC)
                    next_maintain = max(next_maintain, self.clock() + LOOP_RESTART_SEC)
                except Exception:
                    log.exception("ship loop failed; going on in %.0f s", LOOP_RESTART_SEC)
                    next_publish = max(next_publish, self.clock() + LOOP_RESTART_SEC)
                    next_maintain = max(next_maintain, self.clock() + LOOP_RESTART_SEC)
                due = min(next_maintain, next_publish if client is not None else next_maintain)
                self._wake.wait(min(HEARTBEAT_SEC, max(0.0, due - self.clock())))
                self._wake.clear()
        except NixlogError as exc:
            log.error("ship loop cannot run: %s", exc)
            self.request_stop()
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # an abandoned post may still hold a connection
                    log.debug("closing the API client", exc_info=True)
            if conn is not None:
                database.close(conn)

    def _publish(self, conn: Any, client: Any, backoff: core.Backoff) -> float:
        """Ship the backlog; return how long to sleep before the next attempt."""
        api = self.config.api
        assert api is not None
        if not backoff.ready():
            return backoff.remaining()
        summary = core.publish_pending(
            conn,
            client,
            batch_size=api.batch_size,
            stop=self.stop_event,
            on_progress=lambda _settled: self._beat(),
            backoff=backoff,
        )
        backlog = database.count_unsent(conn)
        with self._lock:
            self._status.shipped += summary.delivered
            self._status.rejected += summary.rejected
            self._status.backlog = backlog
            if summary.failure is not None:
                self._status.publish_failures += 1
                self._status.last_publish_error = summary.failure.detail
            elif summary.requests:
                self._status.last_publish_error = None
        if summary.failure is not None or summary.deferred:
            return backoff.remaining()
        if summary.caught_up:
            return api.publish_interval_sec
        return 0.0

    def _mqtt_thread(self) -> None:
        """The MQTT output's own loop: its cursor, backoff and batch size (see the module)."""
        from nixlog import outputs

        mqtt = self.config.mqtt
        assert mqtt is not None
        conn = None
        client: Any = None
        backoff = core.Backoff(clock=self.clock)
        repeats = _RepeatFilter(self.clock)
        try:
            conn = database.open_db(self.config.database.path)
            client = outputs.open_output(
                self.config,
                "mqtt",
                self.device_id,
                database.get_epoch(conn),
                cancel=self.stop_event,
            )
            while not self.stop_event.is_set():
                self._beat()
                pause = LOOP_RESTART_SEC
                try:
                    pause = self._publish_mqtt(conn, client, backoff)
                except NixlogError as exc:
                    if repeats.should_log(str(exc)):
                        log.error("mqtt loop: %s; going on in %.0f s", exc, LOOP_RESTART_SEC)
                except Exception:
                    log.exception("mqtt loop failed; going on in %.0f s", LOOP_RESTART_SEC)
                self.stop_event.wait(min(HEARTBEAT_SEC, max(0.0, pause)))
        except NixlogError as exc:
            log.error("mqtt loop cannot run: %s", exc)
            self.request_stop()
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    log.debug("closing the MQTT output", exc_info=True)
            if conn is not None:
                database.close(conn)

    def _publish_mqtt(self, conn: Any, client: Any, backoff: core.Backoff) -> float:
        mqtt = self.config.mqtt
        assert mqtt is not None
        if not backoff.ready():
            return backoff.remaining()
        summary = core.publish_pending(
            conn,
            client,
            batch_size=mqtt.batch_size,
            stop=self.stop_event,
            on_progress=lambda _settled: self._beat(),
            backoff=backoff,
            output="mqtt",
        )
        backlog = database.count_unsent(conn, "mqtt")
        with self._lock:
            self._status.mqtt_shipped += summary.delivered
            self._status.mqtt_backlog = backlog
            if summary.failure is not None:
                self._status.mqtt_error = summary.failure.detail
            elif summary.requests:
                self._status.mqtt_error = None
        if summary.failure is not None or summary.deferred:
            return backoff.remaining()
        if summary.caught_up:
            return mqtt.publish_interval_sec
        return 0.0

    def _maintain(self, conn: Any) -> None:
        report = core.maintain(conn, self.config.database, outputs=self.config.output_names)
        if report.deleted:
            with self._lock:
                self._status.pruned += report.deleted
                self._status.backlog = database.count_unsent(conn)


class _RepeatFilter:
    """Lets a log message through when it is new, or once per ``interval`` when repeated."""

    def __init__(self, clock: Callable[[], float], interval: float = 60.0) -> None:
        self.clock = clock
        self.interval = interval
        self._last: tuple[str, float] | None = None

    def should_log(self, message: str) -> bool:
        now = self.clock()
        last = self._last
        if last is not None and last[0] == message and now - last[1] < self.interval:
            return False
        self._last = (message, now)
        return True


@contextmanager
def _signal_handlers(daemon: Daemon) -> Iterator[None]:
    """SIGTERM/SIGINT stop the daemon; a second SIGINT forces the exit; SIGHUP is ignored.

    Handlers only set events (uvicorn's rule): everything else happens on the main thread.
    """
    interrupts = 0

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                # The operator insists: leave now. What the bin holds is lost; the database
                # is safe (every batch is one transaction).
                os.write(2, b"nixlog: second interrupt, exiting without waiting\n")
                os._exit(EXIT_INTERRUPTED)
        daemon.request_stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "SIGHUP ignored: the config is read only at start; restart the service to apply it"
        )

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_daemon(config: Config, notifier: Notifier | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; return the exit code.

    0 after a stop that lost nothing; 74 when readings could not be written (the last status
    line says ``LOST n``). The process exits within 5 s of SIGTERM whatever the API, the
    device or the disk does. Raises ``NixlogError`` (database in use or unusable, no device
    id) before any loop starts.
    """
    notifier = notifier if notifier is not None else Notifier()
    daemon = Daemon(config)
    watchdog = notifier.watchdog_interval_sec
    stall_after = watchdog * 2 if watchdog else STALL_DEFAULT_SEC
    with _signal_handlers(daemon):
        daemon.start()
        try:
            daemon.first_cycle.wait(READY_TIMEOUT_SEC)
            notifier.ready(daemon.status().summary())
            log.info("ready")
            _supervise(daemon, notifier, watchdog, stall_after)
        finally:
            daemon.request_stop()
            notifier.stopping()
            log.info("stopping: writing the last readings and checkpointing")
            # A deadline, not a hope: a post in flight is abandoned at once (its rows stay
            # unsent); a poll thread stuck in a device read is left behind.
            ended = daemon.join(timeout=STOP_JOIN_SEC)
            status = daemon.status()
            log.info("stopped: %s", status.summary())
            notifier.close()
    code = EXIT_DATABASE if daemon.lost else 0
    if not ended:
        # A thread stuck in a read would keep the interpreter alive past systemd's stop
        # timeout (and be SIGKILLed there); everything worth keeping is written already.
        logging.shutdown()
        os._exit(code)
    return code


def _supervise(
    daemon: Daemon, notifier: Notifier, watchdog: float | None, stall_after: float
) -> None:
    """The main thread's job while the loops run: watchdog pings and status lines."""
    tick = min(1.0, watchdog) if watchdog else 1.0
    next_status = daemon.clock() + STATUS_INTERVAL_SEC
    reported_stall = False
    while not daemon.stop_event.wait(tick):
        stalled = daemon.stalled_loops(stall_after)
        if stalled:
            if not reported_stall:
                log.error("no progress from %s: withholding the watchdog", ", ".join(stalled))
                reported_stall = True
        else:
            reported_stall = False
            if watchdog:
                notifier.watchdog()
        if daemon.clock() >= next_status:
            summary = daemon.status().summary()
            notifier.status(summary)
            log.debug("%s", summary)
            next_status = daemon.clock() + STATUS_INTERVAL_SEC
