"""Helpers shared by the benchmark scripts: the simulator process, free ports, /proc readings.

Not a benchmark itself. Everything here is standard library plus ``nixlog`` (no pymodbus), so
the start-up and daemon benchmarks can use it without paying for imports they measure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "examples" / "config.toml"


def example_config(replacements: dict[str, str]) -> str:
    """The example config's text with each ``old`` line part replaced by ``new``, once each.

    Only the site-specific lines change, so every benchmark measures the same map and batch;
    a replacement that no longer matches exactly once is an error, not a silent drift.
    """
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise RuntimeError(f"examples/config.toml changed: cannot find {old!r} once")
        text = text.replace(old, new)
    return text


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port the OS just handed out on 127.0.0.1 (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nixlog_env() -> dict[str, str]:
    """The environment for a child ``nixlog``: no config picked up from the caller's setup,
    bytecode cached as in an installed package."""
    env = {**os.environ, "NIXLOG_CONFIG": ""}
    env.pop("NIXLOG_API_KEY", None)
    # Measured as installed: pip compiles bytecode, so imports read it instead of compiling
    # every module each run (which costs start-up time and megabytes of resident memory).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@contextmanager
def simulator_process() -> Iterator[str]:
    """``nixlog simulate`` (the example map) in its own process; yields ``tcp://127.0.0.1:N``.

    A separate process, like a real device: it must not share the measuring process's GIL.
    """
    address = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "nixlog", "simulate", "--port", address]
    # No ./config.toml in the temporary directory: it serves the example map.
    with serving(command, address, cwd=Path(tempfile.gettempdir())):
        yield address


@contextmanager
def serving(command: list[str], address: str, cwd: Path | None = None) -> Iterator[str]:
    """Run a simulator ``command`` until its "Simulating" line (printed once it listens) and
    yield ``address``; stop it afterwards, killing it if it will not stop."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=nixlog_env(),
        cwd=cwd,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        if "Simulating" not in banner:
            raise RuntimeError(f"simulator did not start: {banner.strip()!r}")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


@dataclass(frozen=True)
class ProcSample:
    """One look at a running process: CPU seconds used so far, resident memory, fds, threads."""

    at: float
    cpu_sec: float
    rss_kb: int
    fds: int
    threads: int


def sample_process(pid: int) -> ProcSample:
    """utime+stime (all threads) from /proc/PID/stat; VmRSS and Threads from /proc/PID/status."""
    at = time.monotonic()
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = handle.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_kb = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(at, (utime + stime) / CLOCK_TICKS, rss_kb, fds, threads)
