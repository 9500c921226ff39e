"""The process under hostile peers: a stop deadline, one writer, ids never reused.

The real ``nixlog daemon`` process against the simulator, raw-socket HTTP servers that
trickle or hang (``tests.faults.hostile``), a Modbus "device" that accepts the connection and
never answers, a second daemon on the same database, and a WAL cut after kill -9.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixlog.receiver import ReceivedRequest, Reply
from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import (
    DaemonProcess,
    assert_duplicates_are_identical,
    daemon_config,
    read_ledger,
    row_count,
    skipped_id_ranges,
    stopped_counts,
    wait_until,
)
from tests.faults.helpers import (
    account,
    assert_all_settled,
    backoff_attempt_bound,
    read_meta,
    report,
)
from tests.faults.hostile import (
    HostileServer,
    hang,
    retry_after,
    trickle,
    trickle_head,
    wait_for_requests,
)
from tests.faults.test_kill9 import publish_rest
from tests.receiver import ScriptedReceiver

STOP_LIMIT_SEC = 5.0


def run_cli(config: Path, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``nixlog COMMAND -c CONFIG`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "nixlog", *command, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------------ shutdown is a deadline


@pytest.mark.parametrize("server_kind", ["trickle-body", "trickle-head", "hang"])
def test_sigterm_with_a_post_in_flight_exits_within_5_s(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    processes: list[DaemonProcess],
    server_kind: str,
) -> None:
    """A post stuck on a trickling or silent server (timeout 30 s): exit 0 in 5 s, rows unsent."""
    answer = {
        "trickle-body": trickle(interval_sec=2.0, status=500),
        "trickle-head": trickle_head(interval_sec=2.0),
        "hang": hang(),
    }[server_kind]
    with HostileServer(answer) as server:
        config = daemon_config(tmp_path, tcp_simulator.address, server.url, api_timeout_sec=30)
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_for_requests(server, 1, 20)
        time.sleep(0.5)
        code, seconds = daemon.terminate()
    report(f"SIGTERM with a {server_kind} post in flight: exit {code} after {seconds:.2f} s")
    assert code == 0, daemon.log
    assert seconds < STOP_LIMIT_SEC, f"SIGTERM took {seconds:.1f} s"
    counts = stopped_counts(daemon.log)
    ledger = read_ledger(tmp_path / "nixlog.db")
    assert counts["polled"] == counts["stored"] == len(ledger.ids) > 0
    assert ledger.unsent == ledger.ids, "an abandoned post marks nothing sent"
    assert "Traceback" not in daemon.log and "LOST" not in daemon.log


def test_sigterm_with_the_poll_thread_stuck_in_a_device_read(
    tmp_path: Path, processes: list[DaemonProcess]
) -> None:
    """A device that accepts and never answers, 10 s timeout: exit 0 within 5 s of SIGTERM."""
    # HostileServer waits for an HTTP header end that a Modbus frame never contains: silent.
    with HostileServer(hang()) as silent:
        config = daemon_config(tmp_path, f"tcp://127.0.0.1:{silent.port}", None)
        text = config.read_text(encoding="utf-8").replace("timeout_sec = 0.3", "timeout_sec = 10")
        config.write_text(text, encoding="utf-8")
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(lambda: "ready" in daemon.log or "started" in daemon.log, 20, "start", daemon)
        time.sleep(1.0)  # the first read is now waiting for its 10 s timeout
        code, seconds = daemon.terminate()
    report(f"SIGTERM with the poll thread in a 10 s read: exit {code} after {seconds:.2f} s")
    assert seconds < STOP_LIMIT_SEC, f"SIGTERM took {seconds:.1f} s"
    assert code == 0, daemon.log
    assert "Traceback" not in daemon.log


# ------------------------------------------------------------------ one writer per database


def test_a_second_daemon_is_refused_naming_the_first(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Two daemons, one database: the second exits 74 with one line naming the first's PID."""
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url)
    first = DaemonProcess(config)
    processes.append(first)
    db_path = tmp_path / "nixlog.db"
    wait_until(lambda: row_count(db_path) >= 20, 20, "the first daemon stores", first)
    lock = db_path.with_name("nixlog.db.lock")
    assert lock.stat().st_mode & 0o777 == 0o640
    second = DaemonProcess(config)
    processes.append(second)
    code = second.process.wait(20)
    lines = [line for line in second.log.splitlines() if line.strip()]
    assert code == 74, second.log
    assert lines == [
        f"Error: {db_path} is in use by nixlog (PID {first.process.pid}); "
        "only one daemon or poll --save may write a database"
    ], lines
    # poll --save is a writer too; export, db stats and prune are not.
    save = run_cli(config, "poll", "--once", "--save")
    assert save.returncode == 74 and f"(PID {first.process.pid})" in save.stderr, save.stderr
    for command in (["db", "stats", "--json"], ["export"], ["prune"]):
        done = run_cli(config, *command)
        assert done.returncode == 0, (command, done.stderr)
        assert "Traceback" not in done.stderr
    code, seconds = first.terminate()
    assert code == 0 and seconds < STOP_LIMIT_SEC, first.log
    publish_rest(config)
    books = account(db_path, receiver)
    assert_all_settled(books)
    assert receiver.stats.duplicates == 0, "one daemon ships, nothing is delivered twice"
    # The lock goes with its holder: a new daemon starts at once.
    again = DaemonProcess(config)
    processes.append(again)
    wait_until(lambda: row_count(db_path) > books.stored, 20, "a new daemon stores", again)
    code, _ = again.terminate()
    assert code == 0, again.log


# ------------------------------------------------------------------ ids never reused


def test_ids_are_never_reused_after_a_wal_cut(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """kill -9, the WAL deleted, restart: every new reading reaches an id-deduplicating receiver."""
    config = daemon_config(tmp_path, tcp_simulator.address, receiver.url)
    db_path = tmp_path / "nixlog.db"
    daemon = DaemonProcess(config)
    processes.append(daemon)
    wait_until(lambda: receiver.stats.unique >= 40, 20, "deliveries before the crash", daemon)
    daemon.kill()
    before = set(receiver.seen_ids())
    highest_delivered = max(int(rid.rsplit("-", 1)[1]) for rid in before)
    # The crash took the WAL with it (a damaged card, a cut file): only the main file is left.
    for suffix in ("-wal", "-shm"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
    restarted = DaemonProcess(config)
    processes.append(restarted)
    wait_until(lambda: row_count(db_path) >= 60, 20, "rows after the restart", restarted)
    code, _ = restarted.terminate()
    assert code == 0, restarted.log
    publish_rest(config)
    ledger = read_ledger(db_path)
    skipped = skipped_id_ranges(db_path)
    report(
        f"WAL cut: {len(before)} delivered before, ids now from {ledger.ids[0]}, skipped {skipped}"
    )
    assert ledger.ids[0] > highest_delivered, "an id the receiver already has was issued again"
    assert skipped and skipped[-1][0] <= highest_delivered + 1
    # The receiver deduplicates on id: every new reading must still count as new.
    new_ids = {f"test-logger-{ledger.epoch}-{i}" for i in ledger.ids}
    assert new_ids <= receiver.seen_ids()
    assert receiver.stats.unique == len(before) + len(ledger.ids)
    assert_duplicates_are_identical(receiver)
    assert "did not stop cleanly" in restarted.log


def test_a_clean_stop_moves_no_ids(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    processes: list[DaemonProcess],
) -> None:
    """SIGTERM then restart: the next id follows the last one (no jump without a crash)."""
    config = daemon_config(tmp_path, tcp_simulator.address, None)
    db_path = tmp_path / "nixlog.db"
    for _ in range(2):
        daemon = DaemonProcess(config)
        processes.append(daemon)
        floor = row_count(db_path)
        wait_until(lambda f=floor: row_count(db_path) >= f + 20, 20, "rows", daemon)
        code, _ = daemon.terminate()
        assert code == 0, daemon.log
    ids = read_ledger(db_path).ids
    assert ids == list(range(1, len(ids) + 1)) and skipped_id_ranges(db_path) == []
    assert read_meta(db_path)["writer_state"] == "stopped"


# ------------------------------------------------------------------ backoff under random failures


class FlakyReceiver(ScriptedReceiver):
    """Half the requests fail with 500 after a random short delay; the rest are stored.

    At random, but never more than ``max_run`` failures in a row: a run of n failures costs
    about 2^n s of backoff under any exponential policy (that is the point of one); what this
    receiver tests is that the backoff starts over after every delivery.
    """

    def __init__(self, api_key: str | None = None, seed: int = 12, max_run: int = 3) -> None:
        super().__init__(api_key)
        self.rng = random.Random(seed)
        self.max_run = max_run
        self.failed = 0
        self._run = 0

    def handle(self, request: ReceivedRequest) -> Reply:
        """500 (after 0-0.2 s) with probability 1/2, else answer normally."""
        with self.lock:
            fail = self.rng.random() < 0.5 and self._run < self.max_run
            self._run = self._run + 1 if fail else 0
            delay = self.rng.uniform(0.0, 0.2)
        time.sleep(delay)
        if fail:
            with self.lock:
                self.requests.append(request)
                self.failed += 1
            return Reply(500)
        return super().handle(request)


@pytest.mark.parametrize(
    ("seconds", "max_run"),
    [
        pytest.param(12.0, 2, id="12s"),
        pytest.param(30.0, 4, id="30s", marks=pytest.mark.slow),
    ],
)
def test_a_half_failing_api_still_drains_a_third_of_the_production(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    processes: list[DaemonProcess],
    seconds: float,
    max_run: int,
) -> None:
    """Random 500s on about half the posts: the backoff restarts after each delivery."""
    from tests.fixtures_http import TEST_API_KEY

    receiver = FlakyReceiver(api_key=TEST_API_KEY, max_run=max_run).start()
    try:
        config = daemon_config(
            tmp_path, tcp_simulator.address, receiver.url, poll_rate_hz=50, batch_size=25
        )
        text = config.read_text(encoding="utf-8")
        config.write_text(
            text.replace("publish_interval_sec =", "batch_size = 100\npublish_interval_sec ="),
            encoding="utf-8",
        )
        daemon = DaemonProcess(config)
        processes.append(daemon)
        db_path = tmp_path / "nixlog.db"
        wait_until(lambda: row_count(db_path) > 0, 20, "the first rows", daemon)
        time.sleep(seconds)
        code, _ = daemon.terminate()
        assert code == 0, daemon.log
        counts = stopped_counts(daemon.log)
        delivered = receiver.stats.unique
        failed, requests = receiver.failed, len(receiver.requests)
        report(
            f"50 % failing API (runs <= {max_run}) for {seconds:g} s: produced {counts['stored']}, "
            f"delivered {delivered}, failed posts {failed} of {requests}"
        )
        assert failed >= requests / 3, "the receiver did not fail often enough to test anything"
        assert delivered >= counts["stored"] / 3, (delivered, counts)
        books = account(db_path, receiver)
        assert books.stored == counts["stored"] and books.lost == 0
    finally:
        receiver.stop()


@pytest.mark.parametrize("header", [b"\xc2\xb2", b"9" * 400], ids=["superscript", "400-digits"])
def test_a_garbage_retry_after_never_bypasses_the_backoff(
    tmp_path: Path,
    tcp_simulator: SimulatorServer,
    processes: list[DaemonProcess],
    header: bytes,
) -> None:
    """503 with a Retry-After of any shape for 4 s: no traceback, attempts within the backoff."""
    with HostileServer(retry_after(header)) as server:
        config = daemon_config(tmp_path, tcp_simulator.address, server.url)
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_for_requests(server, 1, 20)
        started = time.monotonic()
        time.sleep(4.0)
        attempts = server.requests
        elapsed = time.monotonic() - started
        code, _ = daemon.terminate()
    bound = backoff_attempt_bound(elapsed) + 1
    report(f"Retry-After {header[:12]!r}: {attempts} attempts in {elapsed:.1f} s (bound {bound})")
    assert code == 0, daemon.log
    assert 1 <= attempts <= bound
    if header == b"9" * 400:
        assert attempts == 1, "clamped to an hour: no second attempt"
    assert "Traceback" not in daemon.log
