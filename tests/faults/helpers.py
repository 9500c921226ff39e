"""Tools of the fault suite: the "nothing lost" accounting, and the faults themselves.

Built on ``tests.daemon_helpers`` (the daemon process, the ledger) and ``tests.receiver``;
everything here talks to real peers: a real process in a real mount namespace with a real
tmpfs, real socat ptys, a real TCP proxy that sends RSTs, libfaketime in the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixlog.config import load_config
from nixlog.demo import PtyPair
from nixlog.model import Value
from nixlog.receiver import ReceivedRequest, Reply
from nixlog.registers import plan_for_config
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorContext
from nixlog.status import REASON_KEY, STATUS_KEY
from tests.daemon_helpers import DaemonProcess, delivered_by_id
from tests.receiver import ScriptedReceiver

DEVICE_ID = "test-logger"
"""The ``[device] id`` that ``daemon_config`` writes."""

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/arm-linux-gnueabihf/faketime/libfaketime.so.1",
)


def report(line: str) -> None:
    """Print a figure for the full-mode summary (``pytest -s`` shows it; -ra keeps it quiet)."""
    sys.stderr.write(f"\n[faults] {line}\n")
    sys.stderr.flush()


# ============================================================ the "nothing lost" accounting


def read_meta(db_path: Path) -> dict[str, str]:
    """The ``meta`` table (counters, epoch, sent mark, pruned ranges)."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        return {k: v for k, v in conn.execute("SELECT key, value FROM meta")}
    finally:
        conn.close()


def read_values(db_path: Path) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
    """Every row's (id, values, errors), in id order."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        rows = conn.execute("SELECT id, data, errors FROM readings ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(r[0], json.loads(r[1]), json.loads(r[2]) if r[2] else {}) for r in rows]


@dataclass(frozen=True)
class Accounting:
    """Where every reading the daemon stored went: delivered, pruned, rejected or queued."""

    stored: int  # ids issued: 1..highest minus the skipped ranges, never reused
    first_present: int  # the lowest id still in the database
    present: int
    delivered: int  # distinct reading ids at the receiver
    duplicates: int  # extra copies at the receiver (at-least-once)
    pruned_sent: int
    pruned_unsent: int
    pruned_rejected: int
    rejected: int
    unsent: int
    dropped: int  # pruned before the receiver got them (each must be counted in meta)
    rejected_undelivered: int  # refused by the API, kept in the database
    lost: int  # dropped readings that meta does not count: must be 0
    integrity: str

    def line(self) -> str:
        """One line for the test output and the report."""
        return (
            f"stored {self.stored}, delivered {self.delivered}, pruned unsent "
            f"{self.pruned_unsent} (sent {self.pruned_sent}, rejected {self.pruned_rejected}), "
            f"rejected {self.rejected}, unsent {self.unsent}, duplicates {self.duplicates}, "
            f"dropped undelivered {self.dropped}, unaccounted {self.lost}, "
            f"integrity {self.integrity}"
        )


def account(
    db_path: Path,
    receiver: ScriptedReceiver | None,
    device_id: str = DEVICE_ID,
    seen_before: set[str] | None = None,
) -> Accounting:
    """Check the database against the receiver and return the books.

    Asserts what holds at any moment: integrity ok; the ids present form one run ending at
    the highest id (pruning removes a prefix; ids are never reused), the only holes being the
    ranges ``meta.skipped_id_ranges`` records (after an unclean stop the sequence jumps, so
    that an id lost with the WAL is never issued again); everything below that run was
    pruned AND counted in ``meta``; every delivered id is one the database issued, carrying
    this database's epoch.

    With a daemon still running, the receiver is read twice: before the database (``seen_before``,
    taken by the caller when the database is a snapshot it made) and after. Only the ids it had
    before must have been issued by the time of the database read; one delivered in between
    may be newer than that read. Rows marked sent are checked against the later reading.
    """
    if seen_before is None and receiver is not None:
        seen_before = set(receiver.seen_ids())
    conn = sqlite3.connect(db_path, timeout=5, isolation_level=None)
    try:
        # One read transaction, so one snapshot while the daemon goes on writing.
        conn.execute("BEGIN")
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT id, sent_flag FROM readings ORDER BY id").fetchall()
        meta = {k: v for k, v in conn.execute("SELECT key, value FROM meta")}
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'reading_rows'").fetchone()
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert integrity == "ok", f"integrity_check: {integrity}"
    ids = [r[0] for r in rows]
    flags = {r[0]: r[1] for r in rows}
    # AUTOINCREMENT's high-water mark: the highest id ever issued, even if pruned since.
    highest = int(seq[0]) if seq else (ids[-1] if ids else 0)
    skipped = [(int(a), int(b)) for a, b in json.loads(meta.get("skipped_id_ranges") or "[]")]

    def issued(low: int, high: int) -> list[int]:
        """Ids from low to high that were issued (not in a skipped range)."""
        out: list[int] = []
        at = low
        for a, b in sorted(skipped):
            if b < at or a > high:
                continue
            out.extend(range(at, min(a, high + 1)))
            at = max(at, b + 1)
        out.extend(range(at, high + 1))
        return out

    def was_skipped(number: int) -> bool:
        return any(a <= number <= b for a, b in skipped)

    stored = highest - sum(b - a + 1 for a, b in skipped if b <= highest)
    first = ids[0] if ids else highest + 1
    rejected_ids = {i for i, f in flags.items() if f == 2}
    # database.py's invariant: below the first id that is not rejected only rejected rows
    # remain; from it to the newest, every issued id is present.
    lo = next((i for i in ids if i not in rejected_ids), None)
    if lo is not None:
        assert [i for i in ids if i >= lo] == issued(lo, highest), "a hole in the queue"
    pruned = {k: int(meta.get(k) or 0) for k in ("pruned_sent", "pruned_unsent", "pruned_rejected")}
    assert len(issued(1, first - 1)) <= sum(pruned.values()) + len(rejected_ids), (
        f"ids 1..{first - 1} are gone but only {pruned} were counted as pruned"
    )
    epoch = meta["epoch"]
    prefix = f"{device_id}-{epoch}-"
    delivered_ids: set[int] = set()
    duplicates = 0
    if receiver is not None:
        # Every copy offered (failed attempts included) must carry the same content ...
        for rid, copies in delivered_by_id(receiver).items():
            for copy in copies[1:]:
                assert copy == copies[0], f"{rid} was offered twice with different content"
        # ... and what the receiver accepted is what counts as delivered.
        for rid in receiver.seen_ids():
            assert rid.startswith(prefix), f"{rid} does not carry this database's epoch"
            number = int(rid[len(prefix) :])
            if rid not in (seen_before or ()) and number > highest:
                continue  # stored and delivered after the database was read
            assert 1 <= number <= highest and not was_skipped(number), f"{rid} was never issued"
            delivered_ids.add(number)
        duplicates = receiver.stats.duplicates
    unsent = [i for i, f in flags.items() if f == 0]
    # Below the first row present: each id was delivered, or dropped unsent (counted).
    gone_undelivered = [i for i in issued(1, first - 1) if i not in delivered_ids]
    # A reading can be both counted as dropped unsent AND at the receiver (its post arrived,
    # the acknowledgement did not: kill -9 or a lost answer): at least once is not exactly
    # once. What must never happen is a reading gone undelivered and NOT counted.
    lost = len(gone_undelivered) - pruned["pruned_unsent"] - pruned["pruned_rejected"]
    rejected_undelivered = len([i for i in rejected_ids if i not in delivered_ids])
    # Present rows marked sent must really have reached the receiver.
    if receiver is not None:
        phantom = [i for i, f in flags.items() if f == 1 and i not in delivered_ids]
        assert not phantom, f"marked sent but never received: {phantom[:10]}"
    return Accounting(
        stored=stored,
        first_present=first,
        present=len(ids),
        delivered=len(delivered_ids),
        duplicates=duplicates,
        pruned_sent=pruned["pruned_sent"],
        pruned_unsent=pruned["pruned_unsent"],
        pruned_rejected=pruned["pruned_rejected"],
        rejected=len(rejected_ids),
        unsent=len(unsent),
        dropped=len(gone_undelivered),
        rejected_undelivered=rejected_undelivered,
        lost=max(0, lost),
        integrity=integrity,
    )


def assert_all_settled(books: Accounting) -> None:
    """Nothing lost: every stored reading delivered, or dropped and counted, or rejected.

    stored = delivered + dropped undelivered (<= counted in meta) + rejected undelivered,
    and nothing is left unsent.
    """
    assert books.unsent == 0, books.line()
    assert books.lost == 0, books.line()
    assert books.stored == books.delivered + books.dropped + books.rejected_undelivered, (
        books.line()
    )


def plan_length(config_path: Path) -> int:
    """Requests per poll cycle for a config (what the simulator counts per cycle)."""
    return len(plan_for_config(load_config(config_path)))


def seqs_in_arrival_order(receiver: ScriptedReceiver) -> list[int]:
    """The ``seq`` of every reading the receiver got, request after request."""
    return [reading["seq"] for batch in receiver.batches() for reading in batch]


# ============================================================ values: nothing stale stored


def assert_values_pinned(
    rows: Sequence[tuple[int, dict[str, Any], dict[str, str]]], pinned: dict[str, Value]
) -> tuple[int, int]:
    """Every stored value equals the value pinned for its register, or is absent (an error).

    Returns (rows with every value, rows with some failed registers).
    """
    complete = partial = 0
    for rid, values, errors in rows:
        if STATUS_KEY in values:  # a device status reading, not register values
            assert set(values) <= {STATUS_KEY, REASON_KEY} and not errors, f"reading {rid}"
            continue
        for name, value in values.items():
            expected = pinned[name]
            if isinstance(expected, float):
                ok = isinstance(value, float | int) and math.isclose(value, expected, rel_tol=1e-6)
            else:
                ok = value == expected and type(value) is type(expected)
            assert ok, f"reading {rid}: {name} = {value!r}, the device served {expected!r}"
        assert not set(values) & set(errors), f"reading {rid}: a register both read and failed"
        assert set(values) | set(errors) == set(pinned), f"reading {rid}: registers missing"
        if errors:
            partial += 1
        else:
            complete += 1
    return complete, partial


class LateContext(SimulatorContext):
    """The simulator, but answers to one function code arrive ``late_sec`` late when enabled.

    By default the coil read (function 1), the third request of the example plan: the
    holding and input reads before it succeed, so the cycle stores a partial reading, and
    the late coil answer is on the wire (or in the socket) while the next request waits for
    ITS answer: the classic way a stale value lands under the wrong register.
    """

    def __init__(
        self,
        *args: Any,
        late_function: int = 1,
        late_address: int | None = None,
        late_every: int = 1,
        slow_addresses: dict[int, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.slow_addresses = dict(slow_addresses or {})
        self.late_function = late_function
        self.late_address = late_address
        self.late_every = late_every
        self._matching = 0
        self.late_sec = 0.0
        self.late_answers = 0

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Any:
        """Answer; the slow function code (and address) after ``late_sec``, every
        ``late_every``-th time (a device that is slow now and then); ``slow_addresses``
        always answer after their delay."""
        late = 0.0
        if func_code == self.late_function and self.late_address in (None, address):
            self._matching += 1
            if self.late_sec > 0 and self._matching % self.late_every == 0:
                late = self.late_sec
        if late > 0:
            self.late_answers += 1
            await asyncio.sleep(late)
        elif address in self.slow_addresses:
            await asyncio.sleep(self.slow_addresses[address])  # slow, but within the timeout
        return await super().async_getValues(device_id, func_code, address, count)


def late_context(pinned: dict[str, Value]) -> LateContext:
    """A ``LateContext`` over the example map serving ``pinned``."""
    context = LateContext(EXAMPLE_REGISTERS)
    for name, value in pinned.items():
        context.pin(name, value)
    return context


# ============================================================ receivers


class SlowReceiver(ScriptedReceiver):
    """A receiver that takes ``delay_sec`` to answer: most kill moments land mid-publish."""

    def __init__(self, api_key: str | None = None, delay_sec: float = 0.2, **kw: Any) -> None:
        super().__init__(api_key, **kw)
        self.delay_sec = delay_sec

    def handle(self, request: ReceivedRequest) -> Reply:
        """Answer as ScriptedReceiver does, ``delay_sec`` later; poison wins over the script.

        (A scripted lost acknowledgement stores a batch without looking at the poison list;
        here a refused reading is refused every time, as a real API would.)
        """
        time.sleep(self.delay_sec)
        bad = [i for i in request.reading_ids if i in self.poison]
        if bad:
            with self.lock:
                self.requests.append(request)
            return Reply.json(400, {"error": f"reading {bad[0]} refused"})
        return super().handle(request)


class PoisonBySeq:
    """The poison "set" of a receiver: every reading of ``prefix`` whose seq is ``offset``
    modulo ``every``. Ids jump after each crash, so fixed ids might never be issued."""

    def __init__(self, prefix: str, every: int = 100, offset: int = 37) -> None:
        self.prefix = prefix
        self.every = every
        self.offset = offset

    def __contains__(self, rid: object) -> bool:
        if not isinstance(rid, str) or not rid.startswith(self.prefix):
            return False
        tail = rid[len(self.prefix) :]
        return tail.isdigit() and int(tail) % self.every == self.offset


# ============================================================ processes


class CommandDaemon(DaemonProcess):
    """``nixlog daemon`` started through a prefix command (``nsenter ...``), log in a file."""

    def __init__(
        self, config: Path, prefix: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> None:
        # Same attributes as DaemonProcess, whose __init__ cannot take a prefix.
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "nixlog", "daemon", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )


TMPFS = "24m"
"""The small disk's size: room for the 1 MB floor + the pruner's 16 MB headroom + some data."""


class SmallDisk:
    """A private mount namespace holding a ``size``-byte tmpfs over ``directory``.

    A holder process (``unshare --mount``, then ``sleep`` with its working directory on the
    tmpfs) keeps the namespace alive; the daemon joins it with ``nsenter``. The test writes
    plain files (the ballast) through ``/proc/<holder>/cwd``, a link to the tmpfs itself;
    SQLite cannot use that link (it resolves symlinks to the host path underneath), so
    databases are copied out with SQLite's backup API by a process inside the namespace
    (``snapshot``). The host never sees the tmpfs: nothing stays mounted if the test dies.
    """

    def __init__(self, directory: Path, size: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        script = (
            f"mount -t tmpfs -o size={size} nixlog-faults {directory} && cd {directory} "
            "&& echo mounted && exec sleep 3600"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "mounted":
            self.holder.kill()
            _, err = self.holder.communicate(timeout=5)  # reaps it and closes both pipes
            raise OSError(f"cannot mount a tmpfs in a mount namespace: {err.strip()}")

    def inside(self, path: Path) -> Path:
        """``path`` (under the tmpfs) as the test process can open it."""
        return Path(f"/proc/{self.holder.pid}/cwd") / path.relative_to(self.directory)

    @property
    def enter(self) -> list[str]:
        """The prefix that runs a command inside the namespace."""
        return ["nsenter", f"--target={self.holder.pid}", "--mount"]

    def snapshot(self, db_path: Path, out: Path) -> Path:
        """A consistent copy of the database ``db_path`` (inside) at ``out`` (outside)."""
        script = (
            "import sqlite3, sys\n"
            "src = sqlite3.connect(sys.argv[1], timeout=10)\n"
            "dst = sqlite3.connect(sys.argv[2])\n"
            "src.backup(dst)\n"
            "dst.close(); src.close()\n"
        )
        out.unlink(missing_ok=True)
        done = subprocess.run(
            [*self.enter, sys.executable, "-c", script, str(db_path), str(out)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return out

    def copy_in(self, source: Path, destination: Path) -> None:
        """Copy a database from outside to ``destination`` on the tmpfs (backup API)."""
        script = (
            "import sqlite3, sys\n"
            "src = sqlite3.connect(sys.argv[1])\n"
            "dst = sqlite3.connect(sys.argv[2])\n"
            "src.backup(dst)\n"
            "dst.execute('PRAGMA journal_mode=WAL')\n"
            "dst.close(); src.close()\n"
        )
        done = subprocess.run(
            [*self.enter, sys.executable, "-c", script, str(source), str(destination)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def free_bytes(self) -> int:
        """Free bytes on the tmpfs."""
        st = os.statvfs(self.inside(self.directory))
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        """End the namespace (the tmpfs goes with it)."""
        self.holder.kill()
        self.holder.communicate(timeout=5)  # reaps it and closes both pipes


def namespaces_work() -> str | None:
    """None when ``unshare --mount`` plus a tmpfs mount works here, else why not."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter (util-linux) not installed"
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m t /mnt && umount /mnt",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else f"cannot mount a tmpfs: {done.stderr.strip()}"


class SocatPair(PtyPair):
    """The demo's socat pty pair with chosen link names: ``stop()`` unplugs it, ``start()``
    replugs."""

    def __init__(self, server_end: Path, client_end: Path) -> None:
        super().__init__(server_end.parent)
        self.server_end = server_end
        self.client_end = client_end

    def stop(self) -> None:
        """Kill socat: both ptys (and their links) vanish, like a USB adapter pulled out."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        deadline = time.monotonic() + 5
        while self.client_end.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


class ResettingProxy:
    """A TCP proxy to a Modbus server that RESETs connections (SO_LINGER 0) now and then.

    Every ``reset_every``-th answer is cut: only its first half is forwarded, then both
    sides get an RST. The client sees a torn frame and a reset, as from a flaky
    gateway or a device rebooting mid-answer.
    """

    def __init__(self, upstream: tuple[str, int], reset_every: int = 7) -> None:
        self.upstream = upstream
        self.reset_every = reset_every
        self.resets = 0
        self.answers = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    @property
    def address(self) -> str:
        """``tcp://127.0.0.1:<port>``."""
        return f"tcp://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        client.settimeout(0.2)
        server.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    request = client.recv(4096)
                except TimeoutError:
                    continue
                if not request:
                    return
                server.sendall(request)
                try:
                    answer = server.recv(4096)
                except TimeoutError:
                    continue  # a late answer stays in the upstream socket: stale next time
                if not answer:
                    return
                with self._lock:
                    self.answers += 1
                    cut = self.answers % self.reset_every == 0
                    if cut:
                        self.resets += 1
                if cut:
                    client.sendall(answer[: len(answer) // 2])
                    return  # finally: RST both ways
                client.sendall(answer)
        except OSError:
            return
        finally:
            _reset(client)
            _reset(server)

    def close(self) -> None:
        """Stop accepting; open connections end with their next turn."""
        self._stop.set()
        self._listener.close()
        self._accept.join(2)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ============================================================ clock and resources


def faketime_env(offset_file: Path) -> dict[str, str] | None:
    """libfaketime settings whose wall-clock offset is read from ``offset_file`` on every call.

    Only the wall clock moves (``FAKETIME_DONT_FAKE_MONOTONIC``). None without libfaketime.
    """
    lib = next((p for p in FAKETIME_LIBS if Path(p).exists()), None)
    if lib is None:
        return None
    offset_file.write_text("+0\n", encoding="utf-8")
    return {
        "LD_PRELOAD": lib,
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@dataclass
class ResourceSamples:
    """Samples of one process: seconds since start, VmRSS (KiB), open fds, threads."""

    t: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)

    def take(self, pid: int, started: float) -> None:
        """Read /proc/<pid>/status, fd and task once."""
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        rss = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
        self.t.append(time.monotonic() - started)
        self.rss_kib.append(rss)
        self.fds.append(len(os.listdir(f"/proc/{pid}/fd")))
        self.threads.append(len(os.listdir(f"/proc/{pid}/task")))

    def after(self, seconds: float) -> ResourceSamples:
        """Only the samples taken after ``seconds`` (warm-up excluded)."""
        keep = [i for i, t in enumerate(self.t) if t >= seconds]
        return ResourceSamples(
            [self.t[i] for i in keep],
            [self.rss_kib[i] for i in keep],
            [self.fds[i] for i in keep],
            [self.threads[i] for i in keep],
        )


def slope_per_minute(t: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``y`` over ``t`` (seconds), per minute."""
    n = len(t)
    assert n >= 3, "too few samples for a slope"
    mean_t, mean_y = sum(t) / n, sum(y) / n
    var = sum((a - mean_t) ** 2 for a in t)
    cov = sum((a - mean_t) * (b - mean_y) for a, b in zip(t, y, strict=True))
    return cov / var * 60.0


def backoff_attempt_bound(seconds: float, base: float = 1.0, cap: float = 300.0) -> int:
    """Most failed attempts ``core.Backoff`` allows in ``seconds``: each wait at its minimum.

    After the n-th failure the wait is at least ``min(cap, base * 2**(n-1)) / 2``.
    """
    attempts, elapsed = 1, 0.0
    while True:
        wait = min(cap, base * 2.0 ** (attempts - 1)) / 2
        if elapsed + wait > seconds:
            return attempts
        elapsed += wait
        attempts += 1


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a child of ours if it is still running, and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
