"""The performance report: every benchmark in one run, one markdown table on stdout.

Each row sets a nixlog figure next to a baseline measured in the same run on the same machine
(a bare pymodbus loop, the row's content size, the seed's storage design, the production rate,
``python -c pass``...), so the ratio holds even on a noisy shared machine where the absolute
figures wander. Progress goes to stderr. ``benchmarks/run`` is the command; the single
benchmark scripts next to this one print more detail on their own.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import daemon_cost, drain, export_rate, poll_rate, rtu_rate, startup, wear

T = TypeVar("T")
DASH = "—"


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is (``--quick`` shrinks them, options override one by one)."""

    poll_seconds: float
    wear_readings: int
    drain_readings: int
    export_rows: int
    daemon_seconds: float
    soak_seconds: float
    startup_runs: int
    scan: bool
    rtu_seconds: float
    peers: bool = False
    """Append ``peers.py``'s table: modbus2mqtt, modbus4mqtt and Node-RED beside the daemon
    (installs them outside the repository on first use; about five more minutes)."""


FULL = Sizes(3.0, 50_000, 100_000, 1_000_000, 60.0, 120.0, 11, True, 4.0)
QUICK = Sizes(1.0, 5_000, 10_000, 100_000, 25.0, 30.0, 5, False, 1.0)
SOAK_RATE_HZ = 200.0
"""The compressed soak polls 20x faster than the example: 2 minutes stand for 40 at 10 Hz."""
READINGS_PER_HOUR = 36_000  # at 10 Hz


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, its baseline, and their ratio."""

    figure: str
    nixlog: float
    baseline: float | None
    baseline_is: str
    ratio: float | None = None

    def cells(self) -> list[str]:
        """The row's cells as printed."""
        ratio = self.ratio
        if ratio is None and self.baseline:
            ratio = self.nixlog / self.baseline
        return [
            self.figure,
            _number(self.nixlog),
            DASH if self.baseline is None else _number(self.baseline),
            self.baseline_is,
            DASH if ratio is None else _number(ratio),
        ]


HEADER = ["figure", "nixlog", "baseline", "baseline is", "ratio"]


def _number(value: float) -> str:
    """Three significant figures, whole numbers without a decimal point, no thousands commas
    (the table must stay machine-readable)."""
    if math.isnan(value):
        return DASH
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _step(name: str, run: Callable[[], T]) -> T:
    """Run one measurement, saying on stderr what and how long."""
    print(f"measuring {name} ...", end="", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = run()
    print(f" {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def measure(sizes: Sizes, directory: Path | None) -> tuple[list[Row], list[str]]:
    """Run every benchmark at ``sizes``; return the table's rows and notes for under it."""
    rows: list[Row] = []
    notes: list[str] = []

    poll = _step("poll rate", lambda: poll_rate.measure(sizes.poll_seconds))
    rows += [
        Row(
            "poll cycles/s, 12-register example map, loopback TCP",
            poll.ours,
            poll.bare,
            f"bare pymodbus loop, same {poll.planned_requests} requests",
        ),
        Row(
            f"poll CPU us per cycle, example map, loopback TCP "
            f"(target: bare ÷ nixlog ≥ {poll_rate.CPU_RATIO_TARGET:g})",
            poll.ours_cpu_sec * 1e6,
            poll.bare_cpu_sec * 1e6,
            f"bare pymodbus loop, same {poll.planned_requests} requests; ratio is bare ÷ nixlog",
            ratio=poll.cpu_ratio,
        ),
        Row(
            "poll cycles/s against one request per register",
            poll.ours,
            poll.bare_one_per_register,
            f"bare pymodbus loop, {poll.one_per_register} requests",
        ),
        Row(
            "Modbus requests per poll cycle",
            poll.planned_requests,
            poll.one_per_register,
            "one request per register",
        ),
    ]

    if shutil.which("socat") is None:
        notes.append("RTU line time: left out (the paced line needs socat: apt-get install socat)")
    else:
        rtu = _step("RTU line time", lambda: rtu_rate.measure(sizes.rtu_seconds))
        rows += rtu_rows(rtu)
        notes += rtu_notes(rtu)

    payload, designs = _step(
        "SD-card wear", lambda: wear.measure(sizes.wear_readings, 100, directory)
    )
    ours = next(d for d in designs if d.design == "nixlog")
    seed = next(d for d in designs if d.design == "naive")
    rows += [
        Row(
            "bytes written per reading over its life (insert, mark sent, prune)",
            ours.bytes_per_reading,
            payload,
            "row content: timestamp + device id + data",
        ),
        Row(
            "bytes written per reading over its life, against the seed design",
            ours.bytes_per_reading,
            seed.bytes_per_reading,
            "seed: per-row sent_flag UPDATE, secure_delete on",
        ),
        Row(
            "fsyncs per reading over its life (batches of 100)",
            ours.fsyncs_per_reading,
            seed.fsyncs_per_reading,
            "seed design, same batches",
        ),
    ]
    if ours.bytes_per_reading == 0:
        notes.append("wear: 0 bytes written: the databases were on tmpfs; use --dir on a disk")

    drained = _step("drain", lambda: drain.measure(sizes.drain_readings, [(500, False)])[0])
    rows.append(
        Row(
            f"drain readings/s from a {sizes.drain_readings} backlog, batches of 500",
            drained.rate,
            drain.PRODUCTION_RATE,
            "production rate at 10 Hz",
        )
    )

    exports = _step("export", lambda: export_rate.measure(sizes.export_rows, directory, ("full",)))
    small, big = exports[0], exports[-1]
    rows += [
        Row(
            f"export rows/s, {big.rows} rows to CSV",
            big.rate,
            small.rate,
            f"same export of {small.rows} rows",
        ),
        Row(
            f"export peak memory MB (VmHWM), {big.rows} rows",
            big.peak_mb,
            small.peak_mb,
            f"same export of {small.rows} rows",
        ),
    ]

    # The baseline daemon (kept in the CLI's process, as before) runs at the same time as the
    # measured one, against its own simulator and receiver: one wait instead of two.
    with ThreadPoolExecutor(1) as pool:
        before = pool.submit(daemon_cost.measure, sizes.daemon_seconds, in_cli_process=True)
        cost = _step(
            f"daemon for {sizes.daemon_seconds:g} s (and the in-CLI baseline beside it)",
            lambda: daemon_cost.measure(sizes.daemon_seconds),
        )
        baseline = before.result()
    soak = _step(
        f"daemon soak for {sizes.soak_seconds:g} s at {SOAK_RATE_HZ:g} Hz",
        lambda: daemon_cost.measure(sizes.soak_seconds, SOAK_RATE_HZ),
    )
    boot = _step("start-up", lambda: startup.measure(sizes.startup_runs))
    window = (
        f"{cost.window_sec:.0f} s steady state"
        if cost.steady
        else f"{cost.window_sec:.0f} s whole life incl. start-up"
    )
    rows += [
        Row(
            f"daemon CPU ms per reading, 10 Hz, {window}",
            cost.cpu_ms_per_reading,
            100.0,
            "time between readings at 10 Hz (ms)",
        ),
        Row(
            f"daemon resident memory MB after {cost.seconds:.0f} s "
            f"(target ≤ {daemon_cost.RSS_TARGET_MB:g} at 60 s)",
            cost.rss_mb_last,
            baseline.rss_mb_last,
            "the daemon kept in the CLI's process (before: typer, pydantic, rich loaded)",
        ),
        Row(
            f"daemon resident memory MB after {cost.seconds:.0f} s, against the interpreter",
            cost.rss_mb_last,
            boot.python_rss_mb,
            "bare python interpreter",
        ),
        Row(
            f"daemon memory growth after warm-up, KB/h at 10 Hz "
            f"(soak: {soak.readings} readings at {SOAK_RATE_HZ:g} Hz)",
            soak.rss_kb_per_1000_readings * READINGS_PER_HOUR / 1000,
            None,
            "flat is 0 (the warm-up to a plateau is left out)",
        ),
        Row(
            f"start-up ms, nixlog --help (median of {boot.runs})",
            boot.help * 1000,
            boot.python_pass * 1000,
            "python -c pass",
        ),
        Row(
            f"start-up ms, nixlog db stats (median of {boot.runs}; "
            f"target ≤ {startup.STARTUP_TARGET:g}× python)",
            boot.db_stats * 1000,
            boot.python_pass * 1000,
            "python -c pass",
        ),
        Row(
            f"start-up ms, nixlog db stats (median of {boot.runs})",
            boot.db_stats * 1000,
            boot.db_stats_typer * 1000,
            "the same command through the Typer CLI",
        ),
    ]
    notes.append(
        f"daemon: {cost.readings} readings in the window ({cost.readings_per_sec:.2f}/s), "
        f"{cost.shipped} delivered; fds {cost.fds[0]}->{cost.fds[1]}, "
        f"threads {cost.threads[0]}->{cost.threads[1]}; its own count: {cost.summary}"
    )
    notes.append(
        "daemon RSS MB over the run: "
        + ", ".join(f"{t:.0f} s {mb:.1f}" for t, mb in cost.rss_trace)
    )
    notes.append(
        f"soak at {SOAK_RATE_HZ:g} Hz: {soak.readings} readings "
        f"({soak.readings_per_sec:.0f}/s), RSS MB: "
        + ", ".join(f"{t:.0f} s {mb:.1f}" for t, mb in soak.rss_trace)
        + f"; fds {soak.fds[0]}->{soak.fds[1]}, threads {soak.threads[0]}->{soak.threads[1]}"
    )
    if sizes.scan:
        notes += _step("scan speed", _scan_speed)
    return rows, notes


def rtu_rows(rtu: rtu_rate.RtuRate) -> list[Row]:
    """Per baud rate: nixlog's % of the wire-time limit against each baseline, and its gap."""
    rows: list[Row] = []
    libmodbus = rtu.missing.get("libmodbus")
    for result in rtu.results:
        baud = result.baud
        target = rtu_rate.TARGETS.get(baud)
        aim = f" (target ≥ {target:g})" if target else ""
        lib_percent = result.percent("libmodbus")
        rows += [
            Row(
                f"RTU {baud} baud: % of wire-time limit, example map{aim}",
                result.percent("nixlog"),
                result.percent("pymodbus"),
                f"bare pymodbus ModbusSerialClient, same {rtu.requests} requests",
            ),
            Row(
                f"RTU {baud} baud: % of wire-time limit, against libmodbus",
                result.percent("nixlog"),
                None if math.isnan(lib_percent) else lib_percent,
                "libmodbus RTU client (ctypes), same requests"
                + (f" — left out: {libmodbus}" if libmodbus else ""),
            ),
            Row(
                f"RTU {baud} baud: median ms from answer to next request "
                f"(target < {rtu_rate.GAP_TARGET_MS:g})",
                result.gap_ms("nixlog"),
                result.gap_ms("pymodbus"),
                "bare pymodbus ModbusSerialClient, same line",
            ),
        ]
    return rows


def rtu_notes(rtu: rtu_rate.RtuRate) -> list[str]:
    """The absolute RTU figures behind the percentages, and how true the paced line ran."""
    notes = []
    for result in rtu.results:
        runs = result.runs
        rates = ", ".join(f"{name} {run.rate:.2f}" for name, run in runs.items())
        gaps = ", ".join(f"{name} {run.median_gap_ms:.2f}" for name, run in runs.items())
        handover = max((r.line.median_handover for r in runs.values()), default=math.nan) * 1e6
        late = sum(run.line.late_answers for run in runs.values())
        answers = sum(run.line.answers for run in runs.values())
        notes.append(
            f"RTU {result.baud} baud (slave turnaround {rtu.turnaround_sec * 1000:g} ms): "
            f"wire-time limit {result.limit:.2f} cycles/s; measured cycles/s: {rates}; "
            f"median gap ms: {gaps}; the relay handed answers on {handover:.0f} us after "
            f"their wire time (median, worst master), {late} of {answers} answers late"
        )
    for master, why in rtu.missing.items():
        notes.append(f"RTU: {master} left out ({why})")
    return notes


def _scan_speed() -> list[str]:
    """The register-scan figures of ``scan_speed.py`` (TCP, no unit sweep), as it prints them.

    The unit sweep is left out: 247 ids × the 0.3 s scan timeout is a minute of waiting per
    transport, which measures the timeout, not nixlog.
    """
    script = Path(__file__).with_name("scan_speed.py")
    if not script.exists():
        return ["scan speed: benchmarks/scan_speed.py not present"]
    done = subprocess.run(
        [sys.executable, str(script), "--transports", "tcp", "--skip-sweep"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return [f"scan speed: benchmarks/scan_speed.py failed (exit {done.returncode})"]
    return [f"scan speed: {line.strip()}" for line in done.stdout.splitlines() if line.strip()]


def render(rows: list[Row]) -> str:
    """The rows as a markdown table (numbers right-aligned)."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|---|---:|---:|---|---:|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming what the figures were measured on."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    # x86 names its CPU in "model name"; a Raspberry Pi names the board in "Model".
    model = fields.get("model name") or fields.get("model", "")
    if not model or model.isdigit():
        model = platform.machine()
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def parse_args(argv: list[str] | None = None) -> tuple[Sizes, Path | None]:
    """Sizes from ``--quick`` or the full defaults, overridden option by option."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Run every nixlog benchmark and print one table (markdown) on stdout.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: the whole run takes about a minute"
    )
    parser.add_argument(
        "--daemon-seconds",
        type=float,
        help=f"how long the daemon runs (default {FULL.daemon_seconds:g}, "
        f"--quick {QUICK.daemon_seconds:g}; 600 for a ten-minute run)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        help=f"the {SOAK_RATE_HZ:g} Hz memory soak (default {FULL.soak_seconds:g}, "
        f"--quick {QUICK.soak_seconds:g})",
    )
    parser.add_argument("--poll-seconds", type=float, help="seconds per poll loop measured")
    parser.add_argument("--wear-readings", type=int, help="readings through the wear lifecycle")
    parser.add_argument("--drain-readings", type=int, help="backlog size drained")
    parser.add_argument("--export-rows", type=int, help="rows exported (and a tenth of them)")
    parser.add_argument("--startup-runs", type=int, help="runs per start-up command")
    parser.add_argument("--no-scan", action="store_true", help="leave out scan_speed.py")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also measure modbus2mqtt, modbus4mqtt and Node-RED as the daemon is measured "
        "(benchmarks/peers.py for --daemon-seconds each; installs them in ~/.cache)",
    )
    parser.add_argument(
        "--rtu-seconds",
        type=float,
        help=f"seconds per master and baud rate on the paced RTU line (default "
        f"{FULL.rtu_seconds:g}, --quick {QUICK.rtu_seconds:g}; 9 runs)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp") if Path("/var/tmp").is_dir() else None,
        help="disk-backed directory for the wear and export databases (default /var/tmp; "
        "tmpfs shows no writes)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        poll_seconds=args.poll_seconds or base.poll_seconds,
        wear_readings=args.wear_readings or base.wear_readings,
        drain_readings=args.drain_readings or base.drain_readings,
        export_rows=args.export_rows or base.export_rows,
        daemon_seconds=args.daemon_seconds or base.daemon_seconds,
        soak_seconds=args.soak_seconds or base.soak_seconds,
        startup_runs=args.startup_runs or base.startup_runs,
        scan=base.scan and not args.no_scan,
        rtu_seconds=args.rtu_seconds or base.rtu_seconds,
        peers=args.peers,
    )
    return sizes, args.dir


def main(argv: list[str] | None = None) -> int:
    """Measure, then print the table, the command line and the notes."""
    sizes, directory = parse_args(argv)
    started = time.monotonic()
    rows, notes = measure(sizes, directory)
    command = " ".join(["benchmarks/run", *(sys.argv[1:] if argv is None else argv)])
    print(render(rows))
    print()
    print(f"`{command}` on {machine()}; {time.monotonic() - started:.0f} s in all.")
    for note in notes:
        print(f"- {note}")
    if sizes.peers:
        from benchmarks import peers

        print()
        print("Peer reference (benchmarks/peers.py), the daemon beside other loggers:")
        print()
        sys.stdout.flush()
        return peers.main(["--seconds", f"{sizes.daemon_seconds:g}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
