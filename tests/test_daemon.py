"""`nixlog daemon` as a real process: readings flow, stops are clean, crashes lose little."""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nixlog import core, database
from nixlog.api_client import ApiClient
from nixlog.config import load_config
from nixlog.errors import DatabaseError
from nixlog.model import Reading
from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import (
    DaemonProcess,
    assert_duplicates_are_identical,
    assert_one_run,
    daemon_config,
    delivered_by_id,
    read_ledger,
    row_count,
    skipped_id_ranges,
    stopped_counts,
    wait_until,
)
from tests.fixtures_http import TEST_API_KEY
from tests.receiver import ScriptedReceiver, Step


def drain(config_path: Path) -> None:
    """Ship whatever is still unsent, as `nixlog publish` would."""
    config = load_config(config_path)
    conn = database.open_db(config.database.path)
    try:
        api = config.require_api()
        with ApiClient(api, "test-logger", database.get_epoch(conn)) as client:
            summary = core.publish_pending(conn, client, batch_size=api.batch_size)
        assert summary.failure is None and summary.caught_up
    finally:
        database.close(conn)


def test_readings_flow_and_sigterm_loses_nothing(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Readings reach the receiver; SIGTERM with a half-full bin writes it and exits 0 in 5 s."""
    config = daemon_config(
        tmp_path, tcp_simulator.address, receiver.url, batch_size=50, flush_interval_sec=30
    )
    daemon = DaemonProcess(config)
    processes.append(daemon)
    # batch 50 at 20 Hz and a 30 s flush interval: readings are shipped only from full batches.
    wait_until(lambda: receiver.stats.unique >= 50, 20, "the first full batch at the receiver")
    time.sleep(0.7)  # the next bin is now partly filled (~14 readings)
    code, seconds = daemon.terminate()
    assert code == 0, daemon.log
    assert seconds < 5.0, f"SIGTERM took {seconds:.1f} s"
    counts = stopped_counts(daemon.log)
    ledger = read_ledger(tmp_path / "nixlog.db")
    assert ledger.integrity == "ok"
    # Everything polled was stored, including the partial bin, with ids 1..N and no gap.
    assert counts["polled"] == counts["stored"] == len(ledger.ids) > 50
    assert len(ledger.ids) % 50 != 0, "the partial bin was not written at shutdown"
    assert ledger.ids == list(range(1, len(ledger.ids) + 1))
    drain(config)
    assert receiver.stats.unique == len(ledger.ids)
    assert "Traceback" not in daemon.log


def test_kill_minus_nine_never_corrupts_or_reuses_ids(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """kill -9 at random moments: integrity holds, ids only grow, all committed gets delivered."""
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url, poll_rate_hz=50)
    db_path = tmp_path / "nixlog.db"
    rng = random.Random(7)
    highest = 0
    for _ in range(4):
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(
            lambda floor=highest: row_count(db_path) > floor, 20, "new rows after restart", daemon
        )
        time.sleep(rng.uniform(0.1, 0.8))
        daemon.kill()
        ledger = read_ledger(db_path)
        assert ledger.integrity == "ok"
        # Ids only grow: after each crash the sequence jumps (ids are never reused, even if
        # the WAL were lost); the only holes are the recorded jumps.
        assert_one_run(ledger.ids, skipped_id_ranges(db_path))
        # Whole batches only: a crash loses at most the unwritten bin, never half a batch.
        assert len(ledger.ids) % 10 == 0
        assert len(ledger.ids) > highest
        highest = len(ledger.ids)
    final = DaemonProcess(config)
    processes.append(final)
    wait_until(lambda: row_count(db_path) > highest, 20, "rows after the last restart", final)
    code, _ = final.terminate()
    assert code == 0
    drain(config)
    ledger = read_ledger(db_path)
    assert ledger.unsent == []
    delivered = delivered_by_id(receiver)
    expected = {f"test-logger-{ledger.epoch}-{i}" for i in ledger.ids}
    assert set(delivered) == expected
    assert_duplicates_are_identical(receiver)


def test_api_outage_loses_nothing_and_polling_keeps_its_rate(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """The API answering 503 for a while: polling goes on at its rate, the backlog drains after."""
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url, poll_rate_hz=20)
    db_path = tmp_path / "nixlog.db"
    receiver.always(Step(503))
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: row_count(db_path) >= 10, 20, "the first batch")
    start_rows, started = row_count(db_path), time.monotonic()
    time.sleep(3.0)
    rate = (row_count(db_path) - start_rows) / (time.monotonic() - started)
    outage_requests = len(receiver.requests)
    assert rate > 20 * 0.7, f"polling slowed to {rate:.1f}/s during the outage"
    # Backoff (1 s doubling, jittered) means a handful of attempts, not a tight loop.
    assert 1 <= outage_requests <= 8
    receiver.always(None)
    wait_until(lambda: receiver.stats.unique >= start_rows + 40, 20, "the backlog to drain")
    code, _ = daemon.terminate()
    assert code == 0
    drain(config)
    ledger = read_ledger(db_path)
    assert receiver.stats.unique == len(ledger.ids)
    assert "publishing failed" in daemon.log
    assert TEST_API_KEY not in daemon.log


def test_device_disappears_and_comes_back(
    tmp_path: Path,
    start_simulator: Callable[..., SimulatorServer],
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """The device going away does not stop the daemon; readings resume when it returns."""
    simulator = start_simulator()
    config = daemon_config(tmp_path, simulator.address, receiver.url)
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: row_count(db_path) >= 10, 20, "the first batch")
    simulator.stop()
    time.sleep(1.5)
    during_outage = row_count(db_path)
    time.sleep(1.0)
    assert row_count(db_path) - during_outage <= 10, "readings appeared with no device"
    assert daemon.process.poll() is None, "the daemon died with the device"
    start_simulator(port=simulator.address)
    wait_until(lambda: row_count(db_path) >= during_outage + 20, 40, "readings after return")
    code, _ = daemon.terminate()
    assert code == 0


def test_notify_socket_messages(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """READY=1 after the first cycle, STATUS lines, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        config = daemon_config(tmp_path, tcp_simulator.address, receiver.url)
        daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        processes.append(daemon)
        messages = [sock.recv(4096).decode()]
        assert messages[0].startswith("READY=1\nSTATUS=polled")
        while sum(m == "WATCHDOG=1" for m in messages) < 3:
            messages.append(sock.recv(4096).decode())
        code, _ = daemon.terminate()
        assert code == 0
        sock.settimeout(1)
        rest = []
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        sock.close()


def test_sighup_is_ignored_with_a_log_line(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """SIGHUP neither stops nor silently reloads: the daemon says so and keeps polling."""
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url)
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: row_count(db_path) >= 10, 20, "the first batch")
    daemon.process.send_signal(signal.SIGHUP)
    before = row_count(db_path)
    wait_until(lambda: row_count(db_path) > before, 10, "polling after SIGHUP")
    assert daemon.process.poll() is None
    code, _ = daemon.terminate()
    assert code == 0
    assert "SIGHUP ignored" in daemon.log


def test_bad_config_refused_before_touching_the_database(tmp_path: Path) -> None:
    """A config error exits 78 with one line, and no database file is created."""
    config = daemon_config(tmp_path, "tcp://127.0.0.1:1", None)
    config.write_text("bogus = 1\n" + config.read_text(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", "daemon", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 78
    assert done.stderr.strip().splitlines() == [f"Error: {config}: bogus: unknown key"]
    assert not (tmp_path / "nixlog.db").exists()


def test_unusable_database_exits_74(tmp_path: Path) -> None:
    """A database file that is not SQLite stops the daemon at start with exit 74."""
    config = daemon_config(tmp_path, "tcp://127.0.0.1:1", None)
    (tmp_path / "nixlog.db").write_bytes(b"this is somebody's spreadsheet, not a database" * 50)
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", "daemon", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 74, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_unreachable_device_at_start_is_not_fatal(
    tmp_path: Path, receiver: ScriptedReceiver, processes: list[DaemonProcess]
) -> None:
    """No device at start: the daemon keeps running (and shipping), retrying the device."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = daemon_config(tmp_path, f"tcp://127.0.0.1:{port}", receiver.url)
    daemon = DaemonProcess(config)
    processes.append(daemon)
    time.sleep(2.0)
    assert daemon.process.poll() is None, daemon.log
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 5


def test_demo_runs_and_ships(tmp_path: Path) -> None:
    """`nixlog demo --seconds 5` needs nothing, exits 0 and reports readings shipped."""
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", "demo", "--seconds", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("demo finished after")
    polled = int(summary.split("polled ")[1].split(",")[0])
    shipped = int(summary.split("shipped ")[1].split(" ")[0])
    received = int(summary.split("receiver counted ")[1].split(",")[0])
    assert polled >= 30 and shipped == received == polled
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_wal_is_checkpointed_on_stop(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """After a clean stop the WAL is empty: the main file alone holds every reading."""
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url)
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: row_count(db_path) >= 20, 20, "two batches")
    code, _ = daemon.terminate()
    assert code == 0
    wal = db_path.with_name(db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] >= 20
    conn.close()


def test_status_line_names_readings_lost_to_an_unwritable_database() -> None:
    """The status/stopped line says LOST when readings were dropped from a full memory bin."""
    from nixlog.daemon import DaemonStatus

    assert "LOST" not in DaemonStatus(polled=10, stored=10).summary()
    line = DaemonStatus(polled=10, stored=4, dropped=6, uptime_sec=1.0).summary()
    assert "LOST 6 (database not writable)" in line


# ------------------------------------------------------------------ one writer, ids, lost count


def test_the_writer_lock_refuses_a_second_holder_naming_the_pid(tmp_path: Path) -> None:
    """flock on <db>.lock: a second holder gets one line with the first holder's PID."""
    db_path = tmp_path / "nixlog.db"
    first = database.acquire_writer_lock(db_path)
    try:
        with pytest.raises(DatabaseError) as refused:
            database.acquire_writer_lock(db_path)
        assert str(refused.value).startswith(f"{db_path} is in use by nixlog (PID {os.getpid()})")
        assert refused.value.exit_code == 74
        assert (tmp_path / "nixlog.db.lock").stat().st_mode & 0o777 == 0o640
    finally:
        first.release()
    database.acquire_writer_lock(db_path).release()  # released: free again


def test_an_unclean_stop_moves_the_id_sequence_and_counts_stay_right(tmp_path: Path) -> None:
    """Mark "running" left behind: ids jump by 1,000,000, the jump is recorded, counts ignore it."""
    db_path = tmp_path / "nixlog.db"
    lock = database.acquire_writer_lock(db_path)
    conn = database.open_db(db_path)
    try:
        assert database.start_writing(conn, lock) is None, "a new database is not a crash"
        database.batch_insert_readings(conn, "d", [Reading("t", {"v": 1})] * 5)
        # No stop_writing: the process "died". The next writer finds the mark still set.
        skipped = database.start_writing(conn, lock)
        assert skipped == (6, 5 + database.ID_JUMP_AFTER_UNCLEAN_STOP)
        first, last = database.batch_insert_readings(conn, "d", [Reading("t", {"v": 2})] * 3)
        assert (first, last) == (skipped[1] + 1, skipped[1] + 3)
        assert database.count_unsent(conn) == 8
        stats = database.stats(conn)
        assert (stats.rows, stats.unsent, stats.sent) == (8, 8, 0)
        database.mark_readings_as_sent(conn, [1, 2, 3, 4, 5, first])
        assert database.count_unsent(conn) == 2
        database.stop_writing(conn, lost=7)
        assert database.start_writing(conn, lock) is None, "after a clean stop: no jump"
        assert database.stats(conn).lost_unwritten == 7
    finally:
        database.close(conn)
        lock.release()


def test_a_lost_count_the_disk_refused_is_carried_by_the_lock_file(tmp_path: Path) -> None:
    """A count written into the lock file at stop is added to meta by the next writer."""
    db_path = tmp_path / "nixlog.db"
    lock = database.acquire_writer_lock(db_path)
    lock.write(lost=42)  # what the daemon does when meta cannot be written
    lock.release()
    again = database.acquire_writer_lock(db_path)
    conn = database.open_db(db_path)
    try:
        database.start_writing(conn, again)
        assert database.stats(conn).lost_unwritten == 42
        assert "lost_unwritten 0" in (tmp_path / "nixlog.db.lock").read_text()
    finally:
        database.close(conn)
        again.release()


CLI_LIBRARIES = ("typer", "click", "rich", "pydantic", "pydantic_core")


def test_daemon_process_runs_lean_without_the_cli_libraries(
    tmp_path: Path, tcp_simulator: SimulatorServer, processes: list[DaemonProcess]
) -> None:
    """After the config check the daemon execs itself (same PID) without the CLI's libraries."""
    config = daemon_config(tmp_path, tcp_simulator.address, None)
    daemon = DaemonProcess(config, args=["-v"])
    processes.append(daemon)
    db_path = tmp_path / "nixlog.db"
    wait_until(lambda: row_count(db_path) >= 10, 20, "the first batch", daemon)
    pid = daemon.process.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"nixlog.service" in cmdline  # the very child we started, now the lean image
    maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")
    assert "pydantic_core" not in maps  # the one CLI library with a shared object
    line = next(line for line in daemon.log.splitlines() if "top-level modules loaded:" in line)
    loaded = set(line.split("top-level modules loaded:")[1].split())
    assert {"nixlog", "sqlite3"} <= loaded
    assert loaded.isdisjoint(CLI_LIBRARIES), loaded & set(CLI_LIBRARIES)
    code, _ = daemon.terminate()
    assert code == 0
    assert "stopped: polled" in daemon.log


REFUSED_EXEC = (
    "import errno, os\n"
    "def refuse(*args):\n"
    "    raise PermissionError(errno.EPERM, 'Operation not permitted')\n"
    "os.execv = refuse\n"
    "from nixlog.entry import main\n"
    "main()\n"
)
"""nixlog's console script in a process whose exec is refused, as a seccomp filter would."""


def test_daemon_runs_in_the_cli_process_when_the_exec_is_refused(
    tmp_path: Path, tcp_simulator: SimulatorServer, processes: list[DaemonProcess]
) -> None:
    """No lean process: one warning naming why, then the same service in the CLI's process."""
    config = daemon_config(tmp_path, tcp_simulator.address, None)
    daemon = DaemonProcess(config, front=("-c", REFUSED_EXEC))
    processes.append(daemon)
    wait_until(lambda: row_count(tmp_path / "nixlog.db") >= 10, 20, "the first batch", daemon)
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text(encoding="utf-8")
    assert "pydantic_core" in maps  # still the CLI's image: the exec really did not happen
    code, _ = daemon.terminate()
    assert code == 0, daemon.log
    warnings = [line for line in daemon.log.splitlines() if "lean daemon" in line]
    assert warnings == [
        "WARNING nixlog.service: could not start the lean daemon process ([Errno 1] Operation "
        "not permitted); running in this one, which keeps the command line's libraries loaded "
        "(about 13 MB more)"
    ]
    assert "stopped: polled" in daemon.log
    assert "Traceback" not in daemon.log


def test_lean_daemon_refuses_arguments_it_was_not_given_by_the_cli() -> None:
    """`python -m nixlog.service` without `--config PATH` is one usage line and exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "nixlog.service", "--bogus"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: usage: python -m nixlog.service --config PATH [--verbose] "
        "(started by `nixlog daemon`)"
    ]


def test_lean_daemon_reports_a_config_gone_since_the_check_in_one_line(tmp_path: Path) -> None:
    """A config failing in the lean process (changed since the CLI's check): 78, one line."""
    missing = tmp_path / "gone.toml"
    done = subprocess.run(
        [sys.executable, "-m", "nixlog.service", "--config", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 78
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: ") and str(missing) in line
    assert not (tmp_path / "nixlog.db").exists()


def test_lean_daemon_command_keeps_the_interpreter_and_the_verbosity() -> None:
    """The exec'd argv is this interpreter, the lean module, the absolute config and -v."""
    from nixlog.service import command

    argv = command(Path("/etc/nixlog/config.toml"), verbose=True)
    assert argv[0] == sys.executable
    assert argv[-5:] == ["-m", "nixlog.service", "--config", "/etc/nixlog/config.toml", "--verbose"]
    assert "--verbose" not in command(Path("/c.toml"), verbose=False)
