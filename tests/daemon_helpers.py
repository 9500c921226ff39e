"""Run the real ``nixlog daemon`` process against the simulator and a local receiver.

Shared by the daemon tests and the fault suite (loaded as a pytest plugin for its
``processes`` fixture): a config writer, a process wrapper with SIGTERM timing, and the
"nothing lost" accounting over the database and the receiver.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_http import TEST_API_KEY
from tests.fixtures_modbus import write_config
from tests.receiver import ScriptedReceiver


def daemon_config(
    directory: Path,
    modbus_port: str,
    endpoint: str | None,
    *,
    poll_rate_hz: float = 20.0,
    batch_size: int = 10,
    flush_interval_sec: float = 0.5,
    publish_interval_sec: float = 0.3,
    api_timeout_sec: float = 2.0,
    extra_database: str = "",
) -> Path:
    """The example map on ``modbus_port``, quick batches, and ``[api]`` at ``endpoint``."""
    api = ""
    if endpoint is not None:
        api = (
            f'\n[api]\nendpoint = "{endpoint}"\napi_key = "{TEST_API_KEY}"\n'
            f"publish_interval_sec = {publish_interval_sec}\ntimeout_sec = {api_timeout_sec}\n"
        )
    path = write_config(directory, modbus_port, poll_rate_hz=poll_rate_hz, extra_toml=api)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^batch_size = 100$", f"batch_size = {batch_size}", text)
    text = re.sub(
        r"(?m)^flush_interval_sec = .*$", f"flush_interval_sec = {flush_interval_sec}", text
    )
    text = re.sub(r"(?m)^storage_limit_gb = .*$", "storage_limit_gb = 0.0", text)
    if extra_database:
        text = text.replace("[database]\n", f"[database]\n{extra_database}\n", 1)
    path.write_text(text, encoding="utf-8")
    return path


class DaemonProcess:
    """``python -m nixlog daemon -c CONFIG`` as a child process, its stderr kept in a file."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        front: tuple[str, ...] = ("-m", "nixlog"),
    ) -> None:
        """``front``: the interpreter arguments that start nixlog (``-c CODE`` to wrap it)."""
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, *front, "daemon", "-c", str(config), *(args or [])],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def log(self) -> str:
        """Everything the daemon printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds from the signal to the exit)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        self.process.kill()
        self.process.wait(10)
        self._log.close()

    def stop_quietly(self) -> None:
        """Cleanup for a test that failed half-way."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    daemon: DaemonProcess | None = None,
) -> None:
    """Poll ``condition`` every 50 ms; fail the test with ``what`` (and the log) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    log = f"\ndaemon log:\n{daemon.log[-3000:]}" if daemon is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{log}")


def row_count(db_path: Path) -> int:
    """Rows in the database (0 when it does not exist yet), read without disturbing writers."""
    if not db_path.exists():
        return 0
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@dataclass(frozen=True)
class Ledger:
    """What the database holds, read through the seed's ``readings`` view."""

    ids: list[int]
    flags: dict[int, int]
    timestamps: dict[int, str]
    integrity: str
    epoch: str

    @property
    def unsent(self) -> list[int]:
        return [i for i, f in self.flags.items() if f == 0]


def read_ledger(db_path: Path) -> Ledger:
    """Every row's id, flag and timestamp, the integrity check, and the epoch."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        rows = conn.execute("SELECT id, sent_flag, timestamp FROM readings ORDER BY id").fetchall()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    finally:
        conn.close()
    return Ledger(
        ids=[r[0] for r in rows],
        flags={r[0]: r[1] for r in rows},
        timestamps={r[0]: r[2] for r in rows},
        integrity=integrity,
        epoch=epoch,
    )


def skipped_id_ranges(db_path: Path) -> list[tuple[int, int]]:
    """The id ranges the database jumped over after unclean stops (``meta``)."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'skipped_id_ranges'").fetchone()
    finally:
        conn.close()
    return [(int(a), int(b)) for a, b in json.loads(row[0])] if row else []


def assert_one_run(ids: list[int], skipped: list[tuple[int, int]], first: int = 1) -> None:
    """``ids`` run from ``first`` without a hole, except exactly the recorded skipped ranges."""
    if not ids:
        return
    assert ids[0] == first or (first, ids[0] - 1) in skipped, f"ids start at {ids[0]}"
    for before, after in itertools.pairwise(ids):
        assert after == before + 1 or (before + 1, after - 1) in skipped, (
            f"a gap or a reused id between {before} and {after} (skipped: {skipped})"
        )


def delivered_by_id(receiver: ScriptedReceiver) -> dict[str, list[dict[str, Any]]]:
    """Every reading the receiver got, grouped by its global id (duplicates kept)."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for batch in receiver.batches():
        for reading in batch:
            seen.setdefault(reading["id"], []).append(reading)
    return seen


def assert_duplicates_are_identical(receiver: ScriptedReceiver) -> int:
    """At-least-once: a reading sent twice carries the same id AND the same content."""
    duplicates = 0
    for rid, copies in delivered_by_id(receiver).items():
        duplicates += len(copies) - 1
        for copy in copies[1:]:
            assert copy == copies[0], f"{rid} was delivered twice with different content"
    return duplicates


def stopped_counts(log: str) -> dict[str, int]:
    """The counters of the daemon's last "stopped: polled N ..., stored M, ..." line."""
    lines = [line for line in log.splitlines() if "stopped: polled" in line]
    assert lines, f"no 'stopped:' line in the daemon log:\n{log[-2000:]}"
    counts: dict[str, int] = {}
    line = lines[-1]
    for name in ("polled", "stored", "shipped", "backlog"):
        match = re.search(rf"{name} (\d+)", line)
        if match:
            counts[name] = int(match.group(1))
    return counts


@pytest.fixture
def processes() -> Iterator[list[DaemonProcess]]:
    """Daemons started by a test; SIGKILLed if the test left one running."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.stop_quietly()
