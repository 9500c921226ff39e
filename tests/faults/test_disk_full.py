"""The disk fills up: polling continues, the pruner makes room oldest first, nothing wedges.

A real small filesystem: a tmpfs in a private mount namespace (``unshare --mount``; the daemon joins
it with ``nsenter``), filled to the last byte by a ballast file, as a runaway log of another program
would. The guarantee (README: Guarantees): pruning "deletes oldest first, sent before unsent, and
says what it deleted"; the database is never corrupted.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nixlog import database
from nixlog.core import utc_timestamp
from nixlog.model import Reading
from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import DaemonProcess, daemon_config, wait_until
from tests.faults.helpers import (
    DEVICE_ID,
    TMPFS,
    Accounting,
    CommandDaemon,
    SmallDisk,
    account,
    assert_all_settled,
    read_meta,
    report,
)
from tests.fixtures_modbus import EXAMPLE_PINNED
from tests.receiver import ScriptedReceiver, Step

FLOOR_GB = 0.001


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem says ENOSPC; return the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as ballast:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    ballast.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
                written += chunk
    return written


def disk_config(directory: Path, db_dir: Path, simulator: SimulatorServer, endpoint: str) -> Path:
    """A daemon config in ``directory`` with its database in ``db_dir`` and a 1 MB floor."""
    config = daemon_config(directory, simulator.address, endpoint, poll_rate_hz=50)
    text = config.read_text(encoding="utf-8")
    text = text.replace(f'path = "{directory / "nixlog.db"}"', f'path = "{db_dir / "nixlog.db"}"')
    text = text.replace("storage_limit_gb = 0.0", f"storage_limit_gb = {FLOOR_GB}")
    config.write_text(text, encoding="utf-8")
    return config


def nixlog(config: Path, *command: str, prefix: Sequence[str] = ()) -> None:
    """Run ``nixlog COMMAND -c CONFIG`` (inside the namespace with ``prefix``); must exit 0."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "nixlog", *command, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def prefill(db_path: Path, count: int) -> None:
    """Store ``count`` readings as the daemon would (one transaction per 500)."""
    conn = database.open_db(db_path)
    try:
        for start in range(0, count, 500):
            bin_ = [
                Reading(utc_timestamp(), dict(EXAMPLE_PINNED))
                for _ in range(min(500, count - start))
            ]
            database.batch_insert_readings(conn, DEVICE_ID, bin_)
    finally:
        database.close(conn)


class Books:
    """The accounting of the database on the small disk, read from a fresh snapshot."""

    def __init__(self, disk: SmallDisk, tmp_path: Path) -> None:
        self.disk = disk
        self.db = disk.directory / "nixlog.db"
        self.copy = tmp_path / "snapshot.db"

    def read(self, receiver: ScriptedReceiver | None) -> Accounting:
        """Snapshot, then ``account`` (the receiver's ids read before the snapshot, too)."""
        seen_before = set(receiver.seen_ids()) if receiver is not None else None
        return account(self.disk.snapshot(self.db, self.copy), receiver, seen_before=seen_before)

    def stored(self) -> int:
        """The highest id issued so far."""
        return self.read(None).stored


def test_nearly_full_disk_prunes_oldest_sent_first(
    tmp_path: Path,
    small_disk: SmallDisk,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Disk below the floor: oldest sent go first, then oldest unsent, counted; polling goes on."""
    # History, built outside: 1000 readings delivered, then 3000 not acknowledged yet.
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    seed_config = daemon_config(seed_dir, tcp_simulator.address, receiver.url)
    prefill(seed_dir / "nixlog.db", 1000)
    nixlog(seed_config, "publish")
    assert receiver.stats.unique == 1000
    prefill(seed_dir / "nixlog.db", 3000)
    books = Books(small_disk, tmp_path)
    small_disk.copy_in(seed_dir / "nixlog.db", books.db)
    config = disk_config(tmp_path, small_disk.directory, tcp_simulator, receiver.url)
    # Another program fills the disk to just below the pruner's low-water mark.
    low_water = int(FLOOR_GB * database.GB) + database.DEFAULT_HEADROOM_BYTES
    ballast = small_disk.inside(small_disk.directory / "ballast")
    ballast.write_bytes(b"\0" * max(0, small_disk.free_bytes() - low_water + 64 * 1024))
    assert small_disk.free_bytes() < low_water
    receiver.always(Step(503))

    daemon = CommandDaemon(config, prefix=small_disk.enter)
    processes.append(daemon)
    wait_until(lambda: "UNSENT" in daemon.log, 20, "the start-up prune", daemon)
    after_prune = books.read(receiver)
    # Oldest first, sent before unsent: all 1000 sent went, then the oldest unsent.
    assert after_prune.pruned_sent == 1000, after_prune.line()
    assert 0 < after_prune.pruned_unsent < 3000, after_prune.line()
    ranges = json.loads(read_meta(books.copy)["pruned_unsent_ranges"])
    assert ranges[0][0] == 1001, ranges
    # Polling goes on: new readings are stored above the pruned range.
    wait_until(lambda: books.stored() >= 4000 + 100, 20, "polling after the prune", daemon)
    receiver.always(None)
    wait_until(lambda: books.read(receiver).unsent < 30, 60, "the backlog to drain", daemon)
    code, _ = daemon.terminate()
    assert code == 0, daemon.log[-3000:]
    assert "Traceback" not in daemon.log
    nixlog(config, "publish", prefix=small_disk.enter)
    final = books.read(receiver)
    assert_all_settled(final)
    polled, stored = _stopped(daemon.log)
    assert polled == stored
    report(
        f"nearly full disk ({TMPFS} tmpfs, room below floor + headroom): pruned "
        f"{final.pruned_sent} sent, then {final.pruned_unsent} oldest unsent (ids "
        f"{ranges[0][0]}-{ranges[-1][1]}); daemon polled {polled}, stored {stored}; "
        f"{final.line()}"
    )


@dataclass(frozen=True)
class FullDisk:
    """A daemon storing on the small disk, after someone else filled it to the last byte."""

    config: Path
    books: Books
    daemon: CommandDaemon
    ballast: Path
    filled: int  # bytes of ballast written


def fill_under_a_running_daemon(
    tmp_path: Path,
    small_disk: SmallDisk,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> FullDisk:
    """Start the daemon, let it deliver, fill the disk, and wait for its first failed write."""
    config = disk_config(tmp_path, small_disk.directory, tcp_simulator, receiver.url)
    daemon = CommandDaemon(config, prefix=small_disk.enter)
    processes.append(daemon)
    wait_until(lambda: receiver.stats.unique >= 100, 20, "the first deliveries", daemon)
    ballast = small_disk.inside(small_disk.directory / "ballast")
    filled = fill(ballast)
    wait_until(lambda: "cannot write" in daemon.log, 20, "a failed write", daemon)
    return FullDisk(config, Books(small_disk, tmp_path), daemon, ballast, filled)


def test_full_disk_makes_room_and_keeps_storing(
    tmp_path: Path,
    small_disk: SmallDisk,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Disk filled to the last byte by someone else: the pruner frees room, storing goes on."""
    full = fill_under_a_running_daemon(tmp_path, small_disk, tcp_simulator, receiver, processes)
    books, daemon = full.books, full.daemon
    top = books.stored()
    # Within a few seconds the oldest (sent) readings make room and batches are stored again.
    wait_until(lambda: books.stored() >= top + 50, 4, "batches stored again", daemon)
    assert "Traceback" not in daemon.log


def test_full_disk_for_a_while_loses_nothing(
    tmp_path: Path,
    small_disk: SmallDisk,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """Full for 3 s, then freed: polling never stopped, the held bin is written, no corruption."""
    full = fill_under_a_running_daemon(tmp_path, small_disk, tcp_simulator, receiver, processes)
    config, books, daemon, ballast = full.config, full.books, full.daemon, full.ballast
    requests = tcp_simulator.context.request_count()
    time.sleep(3.0)
    assert tcp_simulator.context.request_count() > requests + 100, "polling stopped"
    assert daemon.process.poll() is None, "the daemon died of a full disk"
    ballast.unlink()
    stuck_at = books.stored()
    wait_until(lambda: books.stored() > stuck_at + 100, 30, "writes again", daemon)
    wait_until(lambda: books.read(receiver).unsent < 30, 60, "the backlog to drain", daemon)
    code, _ = daemon.terminate()
    assert code == 0, daemon.log[-3000:]
    nixlog(config, "publish", prefix=small_disk.enter)
    final = books.read(receiver)
    assert_all_settled(final)
    polled, stored = _stopped(daemon.log)
    assert polled == stored, "readings polled while the disk was full never reached the database"
    report(
        f"full disk for 3 s ({full.filled / 1e6:.1f} MB ballast): polled {polled}, "
        f"stored {stored}; {final.line()}"
    )


def _stopped(log: str) -> tuple[int, int]:
    line = [x for x in log.splitlines() if "stopped: polled" in x][-1]
    return int(line.split("polled ")[1].split(" ")[0]), int(line.split("stored ")[1].split(",")[0])
