"""Start-up time: ``nixlog --help`` and ``nixlog db stats`` next to ``python -c pass``.

``db stats`` is timed twice: as the console script runs it (the fast path of ``entry.py``,
without Typer, pydantic or rich) and through the Typer CLI, where every other command goes.

Wall time of whole subprocesses (interpreter start, imports, work, exit), the median of N runs,
the commands taking turns so that each sees the same share of a noisy machine. On a Pi every
import shows up here; ``--help`` and ``db stats`` must not import pymodbus or httpx.
``db stats`` reads a small database (1,000 readings) through a config in a temporary directory.

    python benchmarks/startup.py [--runs 11]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.daemon_cost import write_config
from benchmarks.rig import nixlog_env
from benchmarks.wear import DEVICE_ID, make_readings
from nixlog import database


@dataclass(frozen=True)
class Startup:
    """Median wall seconds per command, and the bare interpreter's resident memory."""

    runs: int
    python_pass: float
    help: float
    db_stats: float
    python_rss_mb: float
    db_stats_typer: float
    """The same ``db stats`` run through the Typer CLI, as every other command is: what the
    console script's fast path (``nixlog/entry.py``) saves, measured beside it."""


STARTUP_TARGET = 3.0
"""Issue 17: ``nixlog db stats`` within this many times ``python -c pass``."""
TYPER_CLI = "from nixlog.cli import main; main()"
"""``python -c`` code that runs the Typer CLI on the arguments after it, skipping entry.py."""


def nixlog_command() -> list[str]:
    """The console script installed next to this interpreter, else ``python -m nixlog``."""
    script = Path(sys.executable).with_name("nixlog")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nixlog"]


def _interpreter_rss_mb() -> float:
    """VmRSS of a bare interpreter (the floor under any Python process's memory)."""
    done = subprocess.run(
        [sys.executable, "-c", "print(open('/proc/self/status').read())"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def compile_nixlog() -> None:
    """Write nixlog's bytecode, as ``pip install`` of a wheel does.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (or from a read-only tree)
    never writes its ``.pyc`` files, so every run would compile nixlog's source again: the
    compiler, not the start-up a user sees on an installed gateway.
    """
    import compileall

    import nixlog

    compileall.compile_dir(Path(nixlog.__file__).parent, quiet=1)


def measure(runs: int = 11) -> Startup:
    """Time the four commands, interleaved, ``runs`` times each; return the medians."""
    compile_nixlog()
    env = nixlog_env()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = write_config(directory, "tcp://127.0.0.1:1", "http://127.0.0.1:1/v1/data")
        conn = database.open_db(directory / "datalog.db")
        try:
            database.batch_insert_readings(conn, DEVICE_ID, make_readings(1000))
            database.checkpoint(conn)
        finally:
            database.close(conn)
        commands = {
            "python_pass": [sys.executable, "-c", "pass"],
            "help": [*nixlog_command(), "--help"],
            "db_stats": [*nixlog_command(), "db", "stats", "-c", str(config)],
            "db_stats_typer": [sys.executable, "-c", TYPER_CLI, "db", "stats", "-c", str(config)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():  # warm the page cache: we time imports, not the disk
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        for _ in range(runs):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
                times[name].append(time.perf_counter() - started)
    return Startup(
        runs=runs,
        python_pass=statistics.median(times["python_pass"]),
        help=statistics.median(times["help"]),
        db_stats=statistics.median(times["db_stats"]),
        python_rss_mb=_interpreter_rss_mb(),
        db_stats_typer=statistics.median(times["db_stats_typer"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    got = measure(args.runs)
    print(f"median of {got.runs} runs each, wall time of the whole process")
    for label, seconds in (
        ("python -c pass", got.python_pass),
        ("nixlog --help", got.help),
        ("nixlog db stats", got.db_stats),
        ("db stats through Typer", got.db_stats_typer),
    ):
        print(f"{label:28} {seconds * 1000:7.0f} ms  ({seconds / got.python_pass:4.1f}x python)")
    print(f"target: nixlog db stats <= {STARTUP_TARGET:g}x python -c pass")


if __name__ == "__main__":
    main()
