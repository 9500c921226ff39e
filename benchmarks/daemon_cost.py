"""Daemon cost: CPU per reading and resident memory of the real ``nixlog daemon`` process.

Runs ``python -m nixlog daemon`` as its own process with the example config's 12-register map
at 10 Hz, batch 100, against ``nixlog simulate`` (another process) and a local HTTP receiver
(in this process), for N seconds. The CPU figure is steady state: utime+stime (all threads,
/proc/PID/stat) between the first and the last batch write observed in the database, divided by
the readings those writes stored, so start-up imports and the partial last bin do not count.
Resident memory (VmRSS), open fds and threads are sampled at every batch write; the RSS slope
is a least-squares fit over the second half of those samples, given only for runs of 5 minutes
or more (flat is the goal). A run too short for two batch writes (under ~21 s) reports the
daemon's whole life instead, start-up included (a smoke test, not a figure to quote).

    python benchmarks/daemon_cost.py [--seconds 60] [--poll-rate-hz 10]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rig import (
    ProcSample,
    example_config,
    nixlog_env,
    sample_process,
    simulator_process,
)
from nixlog import database
from nixlog.receiver import Receiver

KEY = "bench-key"
PUBLISH_INTERVAL_SEC = 10
"""Shorter than the example's 60 s so that shipping falls inside even a one-minute window."""
WATCH_SEC = 0.05
RSS_TARGET_MB = 32.0
"""Issue 17: resident memory after 60 s at 10 Hz with the example map."""


@dataclass(frozen=True)
class DaemonCost:
    """What one daemon run measured.

    ``steady``: the window runs from the first to the last batch write; otherwise (a run too
    short for two writes) it is the daemon's whole life, start-up included.
    """

    seconds: float
    window_sec: float
    readings: int
    cpu_sec: float
    steady: bool
    rss_mb_first: float
    rss_mb_last: float
    rss_slope_kb_per_h: float
    rss_kb_per_1000_readings: float
    """RSS growth per 1000 stored readings over the second half of the batch writes (NaN
    with fewer than three): the leak measure of a compressed soak."""
    fds: tuple[int, int]
    threads: tuple[int, int]
    shipped: int
    lifetime_cpu_sec: float
    polled: int
    summary: str
    rss_trace: tuple[tuple[float, float], ...]
    """(seconds since start, VmRSS MB) at about every tenth of the run."""

    @property
    def cpu_ms_per_reading(self) -> float:
        """Steady-state CPU time (all threads) per stored reading."""
        return 1000 * self.cpu_sec / self.readings

    @property
    def cpu_percent(self) -> float:
        """Share of one core over the window."""
        return 100 * self.cpu_sec / self.window_sec

    @property
    def readings_per_sec(self) -> float:
        """Stored readings per second over the window (10 expected)."""
        return self.readings / self.window_sec


def write_config(
    directory: Path, modbus_port: str, endpoint: str, poll_rate_hz: float = 10.0
) -> Path:
    """The example config with only the site-specific lines changed (same map, batch)."""
    text = example_config(
        {
            '# id = "plant7-logger"': 'id = "bench-logger"',
            'path = "/var/lib/nixlog/datalog.db"': f'path = "{directory / "datalog.db"}"',
            'port = "/dev/ttyUSB0"': f'port = "{modbus_port}"',
            'endpoint = "https://api.example.com/v1/data"': f'endpoint = "{endpoint}"',
            'api_key = "replace-me"': f'api_key = "{KEY}"',
            "publish_interval_sec = 60": f"publish_interval_sec = {PUBLISH_INTERVAL_SEC}",
            "poll_rate_hz = 10\n": f"poll_rate_hz = {poll_rate_hz:g}\n",
        }
    )
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it holds an API key: nixlog warns about a world-readable one
    return path


def _last_id(db: Path, conn_box: list[object]) -> int:
    """Highest stored id (0 before the first write); opens the database once it exists."""
    if not conn_box:
        if not db.exists():
            return 0
        conn_box.append(database.open_db(db, create=False))
    span = database.id_span(conn_box[0])  # type: ignore[arg-type]
    return 0 if span is None else span[1]


SLOPE_MIN_SEC = 300.0
"""Shorter runs give no RSS slope: warm-up growth (allocator arenas, the first HTTP
connection) would be extrapolated to a nonsense figure per hour."""


def rss_slope_kb_per_h(samples: list[ProcSample]) -> float:
    """Least-squares RSS slope over the second half of the run, or NaN on a short run."""
    if not samples or samples[-1].at - samples[0].at < SLOPE_MIN_SEC:
        return math.nan
    middle = (samples[0].at + samples[-1].at) / 2
    late = [s for s in samples if s.at >= middle]
    if len(late) < 3:
        return math.nan
    fit = statistics.linear_regression([s.at for s in late], [float(s.rss_kb) for s in late])
    return fit.slope * 3600


def _trace(samples: list[ProcSample], started: float) -> tuple[tuple[float, float], ...]:
    """About ten evenly spaced (seconds, RSS MB) points: the shape of the memory curve."""
    step = max(1, len(samples) // 10)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return tuple((s.at - started, s.rss_kb / 1024) for s in picked)


def rss_per_1000_readings(flushes: list[tuple[int, ProcSample]]) -> float:
    """Least-squares RSS growth per 1000 readings over the second half of the batch writes.

    Per reading rather than per hour, so that a soak at a high poll rate stands for hours at
    10 Hz; the first half is left out because the SQLite page caches and the allocator grow
    to a plateau first.
    """
    if not flushes:
        return math.nan
    middle = (flushes[0][1].at + flushes[-1][1].at) / 2
    late = [(last_id, s) for last_id, s in flushes if s.at >= middle]
    if len(late) < 3:
        return math.nan
    fit = statistics.linear_regression(
        [float(last_id) for last_id, _ in late], [float(s.rss_kb) for _, s in late]
    )
    return fit.slope * 1000


def _reap(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for the exit; return (exit code, CPU seconds of its whole life, µs resolution)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise RuntimeError(f"daemon did not stop within {timeout:g} s of SIGTERM")


IN_CLI_PROCESS = (
    "import sys, nixlog.service\n"
    "nixlog.service.exec_daemon = lambda config, verbose: None\n"
    "from nixlog.cli import main\n"
    "sys.argv = ['nixlog', *sys.argv[1:]]\n"
    "main()\n"
)
"""``nixlog daemon`` as it ran before it execs into the lean ``nixlog.service`` process: the
same command with the exec switched off, so the daemon runs on inside the CLI's process with
typer, pydantic and rich still loaded (the memory baseline)."""


def daemon_command(config: Path, in_cli_process: bool = False) -> list[str]:
    """``python -m nixlog daemon -c CONFIG``, or the same kept in the CLI's process."""
    if in_cli_process:
        return [sys.executable, "-c", IN_CLI_PROCESS, "daemon", "-c", str(config)]
    return [sys.executable, "-m", "nixlog", "daemon", "-c", str(config)]


def measure(
    seconds: float, poll_rate_hz: float = 10.0, *, in_cli_process: bool = False
) -> DaemonCost:
    """Run the daemon for ``seconds`` and measure its steady-state cost.

    ``poll_rate_hz`` above 10 compresses a long soak (memory per reading) into a short run;
    ``in_cli_process`` measures the baseline of ``IN_CLI_PROCESS``.
    """
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator_process() as modbus_port,
        Receiver(api_key=KEY, keep_readings=False) as receiver,
    ):
        directory = Path(tmp)
        config = write_config(directory, modbus_port, receiver.url, poll_rate_hz)
        log_path = directory / "daemon.log"
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                daemon_command(config, in_cli_process),
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=nixlog_env(),
            )
        started = time.monotonic()
        deadline = started + seconds
        flushes: list[tuple[int, ProcSample]] = []
        conn_box: list[object] = []
        try:
            seen = 0
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"daemon exited early:\n{log_path.read_text()}")
                newest = _last_id(directory / "datalog.db", conn_box)
                if newest != seen:
                    # Sample right after a batch write: windows end on whole batches.
                    flushes.append((newest, sample_process(process.pid)))
                    seen = newest
                time.sleep(WATCH_SEC)
            final = sample_process(process.pid)
        finally:
            for conn in conn_box:
                database.close(conn)  # type: ignore[arg-type]
            process.send_signal(signal.SIGTERM)
            code, lifetime_cpu = _reap(process, timeout=60)
        elapsed = time.monotonic() - started
        text = log_path.read_text(encoding="utf-8")
        if code != 0 or "Traceback" in text:
            raise RuntimeError(f"daemon exited {code}:\n{text}")
        shipped = receiver.stats.unique
    stopped = re.search(r"stopped: (.*)", text)
    polled = re.search(r"stopped: polled (\d+)", text)
    polled_count = int(polled.group(1)) if polled else 0
    samples = [sample for _, sample in flushes] + [final]
    rss_slope = rss_slope_kb_per_h(samples)
    common = {
        "seconds": elapsed,
        "rss_mb_first": samples[0].rss_kb / 1024,
        "rss_mb_last": final.rss_kb / 1024,
        "rss_slope_kb_per_h": rss_slope,
        "rss_kb_per_1000_readings": rss_per_1000_readings(flushes),
        "fds": (samples[0].fds, final.fds),
        "threads": (samples[0].threads, final.threads),
        "shipped": shipped,
        "lifetime_cpu_sec": lifetime_cpu,
        "polled": polled_count,
        "summary": stopped.group(1) if stopped else "(no stop line in the log)",
        "rss_trace": _trace(samples, started),
    }
    if len(flushes) >= 2:
        (first_id, first), (last_id, last) = flushes[0], flushes[-1]
        return DaemonCost(
            window_sec=last.at - first.at,
            readings=last_id - first_id,
            cpu_sec=last.cpu_sec - first.cpu_sec,
            steady=True,
            **common,  # type: ignore[arg-type]
        )
    # Too short for two batch writes (a smoke run): fall back to the whole life.
    if polled_count == 0:
        raise RuntimeError(f"the daemon polled nothing in {seconds:g} s:\n{text}")
    return DaemonCost(
        window_sec=elapsed,
        readings=polled_count,
        cpu_sec=lifetime_cpu,
        steady=False,
        **common,  # type: ignore[arg-type]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--poll-rate-hz", type=float, default=10.0, help="compress a soak (the table uses 10)"
    )
    parser.add_argument(
        "--in-cli-process",
        action="store_true",
        help="the baseline: the daemon kept in the CLI's process (typer, pydantic, rich loaded)",
    )
    args = parser.parse_args()
    cost = measure(args.seconds, args.poll_rate_hz, in_cli_process=args.in_cli_process)
    window = "first to last batch write" if cost.steady else "whole life, start-up included"
    print(
        f"daemon, example map (12 registers), {args.poll_rate_hz:g} Hz, batch 100, publish every "
        f"{PUBLISH_INTERVAL_SEC} s; run {cost.seconds:.0f} s, window {cost.window_sec:.1f} s "
        f"({window})"
    )
    print(
        f"readings in window : {cost.readings} ({cost.readings_per_sec:.2f}/s); "
        f"delivered to the receiver: {cost.shipped}"
    )
    print(
        f"CPU                : {cost.cpu_sec:.2f} s = {cost.cpu_ms_per_reading:.2f} ms/reading "
        f"({cost.cpu_percent:.1f} % of one core)"
    )
    print(
        f"resident memory    : {cost.rss_mb_first:.1f} MB -> {cost.rss_mb_last:.1f} MB "
        f"(slope over the second half {cost.rss_slope_kb_per_h:+.0f} KB/h; NaN under "
        f"{SLOPE_MIN_SEC:.0f} s)"
    )
    print(
        f"RSS growth         : {cost.rss_kb_per_1000_readings:+.1f} KB per 1000 readings "
        f"(second half of the batch writes)"
    )
    print("RSS MB over time   : " + ", ".join(f"{t:.0f}s {mb:.1f}" for t, mb in cost.rss_trace))
    print(
        f"open fds, threads  : {cost.fds[0]}->{cost.fds[1]}, {cost.threads[0]}->{cost.threads[1]}"
    )
    print(
        f"whole life         : {cost.lifetime_cpu_sec:.2f} s CPU for {cost.polled} readings "
        f"(start-up and shutdown included)"
    )
    print(f"daemon's own count : {cost.summary}")


if __name__ == "__main__":
    main()
