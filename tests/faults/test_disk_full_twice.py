"""The disk fills up twice, and at a stop: handled like the first time, nothing lost silently.

A 24 MiB tmpfs in a private mount namespace (``SmallDisk``), the API down, the disk filled to
the last byte by a ballast file, twice. The books must balance after each: polled = stored +
LOST, and LOST (if any) is the exit code 74, the last status line and ``meta.lost_unwritten``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from nixlog.simulator import SimulatorServer
from tests.daemon_helpers import DaemonProcess, wait_until
from tests.faults.helpers import CommandDaemon, SmallDisk, read_meta, report
from tests.faults.test_disk_full import Books, disk_config, fill
from tests.receiver import ScriptedReceiver, Step


def stopped_line(log: str) -> str:
    """The daemon's last ``stopped:`` line."""
    lines = [line for line in log.splitlines() if "stopped: polled" in line]
    assert lines, log[-2000:]
    return lines[-1]


def figures(line: str) -> tuple[int, int, int]:
    """(polled, stored, LOST) of a ``stopped:`` line."""
    polled = int(re.search(r"polled (\d+)", line).group(1))  # type: ignore[union-attr]
    stored = int(re.search(r"stored (\d+)", line).group(1))  # type: ignore[union-attr]
    lost = re.search(r"LOST (\d+)", line)
    return polled, stored, int(lost.group(1)) if lost else 0


def db_stats(config: Path, disk: SmallDisk) -> dict[str, object]:
    """``nixlog db stats --json`` run inside the namespace."""
    done = subprocess.run(
        [*disk.enter, sys.executable, "-m", "nixlog", "db", "stats", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


def test_a_second_full_disk_is_handled_like_the_first(
    tmp_path: Path,
    small_disk: SmallDisk,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """API down, disk filled, cleaned, filled again: handled both times; books balance."""
    receiver.always(Step(503))
    config = disk_config(tmp_path, small_disk.directory, tcp_simulator, receiver.url)
    books = Books(small_disk, tmp_path)
    reserve = small_disk.inside(small_disk.directory / "nixlog.db.reserve")
    daemon = CommandDaemon(config, prefix=small_disk.enter)
    processes.append(daemon)
    wait_until(lambda: "ready" in daemon.log, 20, "the daemon to start", daemon)
    wait_until(lambda: books.stored() >= 200, 20, "the first rows", daemon)
    wait_until(reserve.exists, 20, "the reserve file", daemon)
    for round_ in (1, 2):
        ballast = small_disk.inside(small_disk.directory / f"ballast{round_}")
        fill(ballast)
        failures = daemon.log.count("cannot write")
        wait_until(
            lambda f=failures: daemon.log.count("cannot write") > f, 20, "a failed write", daemon
        )
        wait_until(lambda: not reserve.exists(), 20, f"the reserve used by fill {round_}", daemon)
        top = books.stored()
        wait_until(
            lambda t=top: books.stored() >= t + 100, 20, f"storing after fill {round_}", daemon
        )
        # Someone cleans up: the reserve comes back within seconds, ready for the next fill.
        ballast.unlink()
        wait_until(reserve.exists, 10, f"the reserve after fill {round_}", daemon)
    code, seconds = daemon.terminate()
    line = stopped_line(daemon.log)
    polled, stored, lost = figures(line)
    report(f"disk full twice: {line.split('stopped: ')[1]}; exit {code} in {seconds:.1f} s")
    assert seconds < 5.0
    assert polled == stored + lost
    assert code == (74 if lost else 0), daemon.log[-3000:]
    assert "Traceback" not in daemon.log
    final = books.read(None)
    assert final.stored == stored and final.lost == 0, final.line()
    assert db_stats(config, small_disk)["lost_unwritten"] == lost


def test_disk_still_full_at_stop_says_lost_and_exits_74(
    tmp_path: Path,
    small_disk: SmallDisk,
    tcp_simulator: SimulatorServer,
    receiver: ScriptedReceiver,
    processes: list[DaemonProcess],
) -> None:
    """No reserve, disk full, SIGTERM: LOST n in the last line, exit 74, n kept in meta."""
    receiver.always(Step(503))
    config = disk_config(tmp_path, small_disk.directory, tcp_simulator, receiver.url)
    books = Books(small_disk, tmp_path)
    reserve = small_disk.inside(small_disk.directory / "nixlog.db.reserve")
    daemon = CommandDaemon(config, prefix=small_disk.enter)
    processes.append(daemon)
    wait_until(lambda: "ready" in daemon.log, 20, "the daemon to start", daemon)
    wait_until(reserve.exists, 20, "the reserve file", daemon)
    wait_until(lambda: books.stored() >= 200, 20, "the first rows", daemon)
    # Another program took the reserve's room too: nothing is left to give back.
    reserve.unlink()
    ballast = small_disk.inside(small_disk.directory / "ballast")
    fill(ballast)
    wait_until(lambda: "cannot write" in daemon.log, 20, "a failed write", daemon)
    code, seconds = daemon.terminate()
    line = stopped_line(daemon.log)
    polled, stored, lost = figures(line)
    report(f"disk full at stop: {line.split('stopped: ')[1]}; exit {code} in {seconds:.1f} s")
    assert seconds < 5.0
    assert polled == stored + lost, line
    assert code == (74 if lost else 0), daemon.log[-3000:]
    assert "Traceback" not in daemon.log
    at_stop = books.read(None)
    in_meta = read_meta(books.copy).get("lost_unwritten", "0")
    report(f"lost_unwritten in meta at the stop: {in_meta}; {at_stop.line()}")
    # Room again: the count reaches meta (at the stop, or at the next start at the latest).
    ballast.unlink()
    again = CommandDaemon(config, prefix=small_disk.enter)
    processes.append(again)
    wait_until(lambda: "ready" in again.log, 20, "the daemon to start again", again)
    code, _ = again.terminate()
    assert code == 0, again.log[-3000:]
    assert db_stats(config, small_disk)["lost_unwritten"] == lost
    final = books.read(None)
    assert final.lost == 0, final.line()
