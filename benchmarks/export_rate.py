"""`nixlog export` throughput and memory: rows per second and peak RSS, 100 k vs 1 M rows.

Each export runs in a fresh child process so that its peak memory (VmHWM) is its own;
the same figures for 100 k and 1 M rows side by side show whether memory stays constant.
Also times the two passes separately (the key pass that finds "other" columns, and the rows)
and a `--since` export selecting the last 1 % (a full scan by design: no timestamp index).

    python benchmarks/export_rate.py [--rows 1000000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.wear import DEVICE_ID, make_readings
from nixlog import database
from nixlog.export import export_csv

REGISTERS = [
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "power_total",
    "frequency",
    "energy_total",
    "temperature",
    "status_word",
    "alarm_active",
    "breaker_closed",
    "door_open",
]


def build(path: Path, rows: int) -> None:
    """A database of ``rows`` readings (big transactions: setup speed, not wear)."""
    conn = database.open_db(path)
    template = make_readings(10_000)
    done = 0
    while done < rows:
        size = min(10_000, rows - done)
        database.batch_insert_readings(conn, DEVICE_ID, template[:size])
        done += size
    database.mark_readings_as_sent(conn, list(range(1, rows // 2 + 1)))
    database.checkpoint(conn)
    conn.close()


def child(path: Path, mode: str) -> None:
    conn = database.open_db(path)
    sink = open("/dev/null", "w", encoding="utf-8")  # noqa: SIM115
    started = time.perf_counter()
    if mode == "keys":
        database.value_keys(conn)
        count = 0
    elif mode == "rows":
        count = sum(1 for _ in database.iter_readings(conn))
    elif mode == "since":
        # make_readings spaces rows 100 ms apart from midnight; take the last 1 %.
        span = database.id_span(conn)
        assert span is not None
        last_ms = 100 * (min(span[1], 10_000) - 1)
        since = datetime(2026, 11, 26, tzinfo=UTC) + timedelta(milliseconds=last_ms * 0.99)
        count = export_csv(conn, sink, REGISTERS, since=since)
    else:
        count = export_csv(conn, io.TextIOWrapper(sink.buffer, encoding="utf-8"), REGISTERS)
    elapsed = time.perf_counter() - started
    print(json.dumps({"rows": count, "seconds": elapsed, "peak_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    # VmHWM is this process image's own peak. ru_maxrss is not: Linux carries the parent's
    # peak over fork+exec, so a child of a big parent reports the parent's figure.
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_child(path: Path, mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--db", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


MODES = (
    ("full", "export CSV (all)"),
    ("keys", "  key pass only"),
    ("rows", "  row pass only"),
    ("since", "export --since 1%"),
)


ALL_MODES = tuple(mode for mode, _label in MODES)


@dataclass(frozen=True)
class Export:
    """One export pass over a database of ``rows`` readings, in its own process."""

    rows: int
    mode: str
    seconds: float
    peak_mb: float
    file_mb: float

    @property
    def rate(self) -> float:
        """Rows of the database per second (all rows are scanned, even for --since)."""
        return self.rows / self.seconds


def measure(
    rows: int = 1_000_000,
    directory: Path | None = None,
    modes: tuple[str, ...] = ALL_MODES,
) -> list[Export]:
    """Export ``rows // 10`` and ``rows`` readings, each pass in a fresh child process."""
    results = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for size in (rows // 10, rows):
            path = Path(tmp) / f"export-{size}.db"
            build(path, size)
            file_mb = path.stat().st_size / 1e6
            for mode in modes:
                got = _measure_child(path, mode)
                results.append(Export(size, mode, got["seconds"], got["peak_mb"], file_mb))
            path.unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.db, args.child)
        return
    labels = dict(MODES)
    print(f"{'rows':>9} {'pass':18} {'seconds':>8} {'rows/s':>10} {'peak RSS MB':>12}")
    results = measure(args.rows, args.dir)
    for index, got in enumerate(results):
        print(
            f"{got.rows:9d} {labels[got.mode]:18} {got.seconds:8.2f} {got.rate:10.0f} "
            f"{got.peak_mb:12.1f}"
        )
        if index + 1 == len(results) or results[index + 1].rows != got.rows:
            print(f"{'':9} (database file {got.file_mb:.0f} MB)")


if __name__ == "__main__":
    main()
