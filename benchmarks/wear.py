"""SD-card wear of one reading over its whole life: insert, mark sent, prune.

Prints, per phase, bytes written to the block layer (``/proc/self/io`` ``write_bytes``) per
reading, next to the row's content size (timestamp + device id + data JSON) and the ratio,
and fsync/fdatasync calls per reading (counted with ``strace -c`` when it is installed).
Side by side in the same run: nixlog's storage (high-water mark for "sent", range DELETE,
secure_delete off) and the naive seed design (per-row ``sent_flag`` UPDATE with a partial
index, ``secure_delete`` left at Debian's ON).

    python benchmarks/wear.py [--readings 50000] [--batch 100] [--dir /var/tmp]

Run it on the filesystem you care about: tmpfs reports 0 bytes written.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixlog import database
from nixlog.config import DatabaseConfig
from nixlog.model import Reading

DEVICE_ID = "10000000a3b2c1d0"
SHIP_BATCH = 500


def _io() -> dict[str, int]:
    with open("/proc/self/io", encoding="ascii") as handle:
        return {k: int(v) for k, v in (line.split(":") for line in handle)}


def _f32(value: float) -> float:
    # What a decoded float32 register looks like in Python (long repr, like the real thing).
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def make_readings(count: int, seed: int = 1) -> list[Reading]:
    """Readings shaped like the 12-register example map."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 26, tzinfo=UTC)
    out = []
    for i in range(count):
        values: dict[str, int | float | bool | str] = {
            "voltage_l1": _f32(230 + rng.uniform(-3, 3)),
            "voltage_l2": _f32(230 + rng.uniform(-3, 3)),
            "voltage_l3": _f32(230 + rng.uniform(-3, 3)),
            "current_l1": _f32(rng.uniform(0, 60)),
            "power_total": rng.randint(0, 40000),
            "frequency": round(50 + rng.uniform(-0.1, 0.1), 2),
            "energy_total": 123_456_789 + i,
            "temperature": round(rng.uniform(20, 45), 1),
            "status_word": rng.randint(0, 65535),
            "alarm_active": rng.random() < 0.01,
            "breaker_closed": True,
            "door_open": False,
        }
        moment = start + timedelta(milliseconds=100 * i)
        out.append(Reading(moment.isoformat(timespec="microseconds"), values))
    return out


def payload_bytes(readings: list[Reading]) -> float:
    """Average row content: timestamp + device id + data JSON as stored."""
    total = sum(
        len(r.timestamp) + len(DEVICE_ID) + len(json.dumps(r.values, separators=(",", ":")))
        for r in readings
    )
    return total / len(readings)


# --------------------------------------------------------------------------- phases (child)


def phase_nixlog(name: str, path: Path, count: int, batch: int) -> None:
    conn = database.open_db(path)
    if name == "insert":
        readings = make_readings(count)
        for first in range(0, count, batch):
            database.batch_insert_readings(conn, DEVICE_ID, readings[first : first + batch])
    elif name == "mark_sent":
        # As core.publish_pending does: mark each batch, record the publish once at the end.
        while rows := database.get_unsent_readings(conn, SHIP_BATCH):
            database.mark_readings_as_sent(conn, [r.id for r in rows])
        database.record_publish(conn, datetime.now(UTC).isoformat())
    elif name == "prune":
        # A tiny cap forces pruning of every (sent) row through the real chunked path.
        config = DatabaseConfig(path=path, storage_limit_gb=0, max_db_mb=0.001)
        database.prune_database(conn, config, headroom_bytes=0)
    database.checkpoint(conn)  # the phase pays for the database-file writes it caused
    conn.close()


def _naive(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")  # Debian's default
    conn.execute(
        "CREATE TABLE IF NOT EXISTS readings(id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "timestamp TEXT NOT NULL, cpu_id TEXT NOT NULL, data TEXT NOT NULL, errors TEXT, "
        "sent_flag INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS unsent ON readings(id) WHERE sent_flag = 0")
    return conn


def phase_naive(name: str, path: Path, count: int, batch: int) -> None:
    conn = _naive(path)
    if name == "insert":
        readings = make_readings(count)
        for first in range(0, count, batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO readings(timestamp, cpu_id, data) VALUES (?, ?, ?)",
                [
                    (r.timestamp, DEVICE_ID, json.dumps(r.values, separators=(",", ":")))
                    for r in readings[first : first + batch]
                ],
            )
            conn.execute("COMMIT")
    elif name == "mark_sent":
        while ids := [
            row[0]
            for row in conn.execute(
                "SELECT id FROM readings WHERE sent_flag = 0 ORDER BY id LIMIT ?", (SHIP_BATCH,)
            )
        ]:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE readings SET sent_flag = 1 WHERE id = ?", [(i,) for i in ids])
            conn.execute("COMMIT")
    elif name == "prune":
        last = conn.execute("SELECT max(id) FROM readings").fetchone()[0]
        for upto in range(5000, last + 5000, 5000):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM readings WHERE id <= ? AND sent_flag = 1", (upto,))
            conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def child(args: argparse.Namespace) -> None:
    before = _io()
    run = phase_nixlog if args.design == "nixlog" else phase_naive
    started = time.perf_counter()
    run(args.phase, Path(args.db), args.readings, args.batch)
    elapsed = time.perf_counter() - started
    after = _io()
    print(
        json.dumps(
            {
                "write_bytes": after["write_bytes"] - before["write_bytes"],
                "wchar": after["wchar"] - before["wchar"],
                "seconds": elapsed,
            }
        )
    )


# --------------------------------------------------------------------------- driver


def _strace_counts(path: Path) -> int:
    calls = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls += int(parts[3])
    return calls


def run_phase(design: str, phase: str, db: Path, count: int, batch: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--design",
        design,
        "--phase",
        phase,
        "--db",
        str(db),
        "--readings",
        str(count),
        "--batch",
        str(batch),
    ]
    trace = db.with_name(f"strace-{design}-{phase}.txt")
    strace = shutil.which("strace")
    if strace:
        command = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace), *command]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["fsyncs"] = _strace_counts(trace) if strace else float("nan")
    return result


@dataclass(frozen=True)
class Wear:
    """One design's lifetime: per phase and in total, bytes written and fsyncs per reading."""

    design: str
    phases: dict[str, dict[str, float]]
    bytes_per_reading: float
    fsyncs_per_reading: float


def measure(
    readings: int = 50_000, batch: int = 100, directory: Path | None = None
) -> tuple[float, list[Wear]]:
    """Row content in bytes, and the lifetime wear of nixlog's storage and the seed design.

    ``directory`` must be on a block device (tmpfs reports nothing written).
    """
    payload = payload_bytes(make_readings(1000))
    designs = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for design in ("nixlog", "naive"):
            db = Path(tmp) / f"{design}.db"
            phases = {}
            for phase in ("insert", "mark_sent", "prune"):
                got = run_phase(design, phase, db, readings, batch)
                phases[phase] = {
                    "bytes": got["write_bytes"] / readings,
                    "fsyncs": got["fsyncs"] / readings,
                    "seconds": got["seconds"],
                }
            designs.append(
                Wear(
                    design,
                    phases,
                    sum(p["bytes"] for p in phases.values()),
                    sum(p["fsyncs"] for p in phases.values()),
                )
            )
        if os.environ.get("NIXLOG_WEAR_KEEP"):
            input(f"databases in {tmp}; press Enter to delete them")
    return payload, designs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--design", default="nixlog", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="insert", help=argparse.SUPPRESS)
    parser.add_argument("--db", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    payload, designs = measure(args.readings, args.batch, args.dir)
    print(
        f"{args.readings} readings of 12 registers, batches of {args.batch}, "
        f"row content {payload:.0f} bytes (timestamp + device id + data)"
    )
    if not shutil.which("strace"):
        print("(strace not found: fsyncs not counted)")
    header = f"{'design':8} {'phase':10} {'bytes/reading':>14} {'× content':>10} "
    header += f"{'fsync/reading':>14} {'seconds':>8}"
    print(header)
    for wear in designs:
        for phase, got in wear.phases.items():
            print(
                f"{wear.design:8} {phase:10} {got['bytes']:14.0f} {got['bytes'] / payload:10.2f} "
                f"{got['fsyncs']:14.4f} {got['seconds']:8.2f}"
            )
        print(
            f"{wear.design:8} {'LIFETIME':10} {wear.bytes_per_reading:14.0f} "
            f"{wear.bytes_per_reading / payload:10.2f} {wear.fsyncs_per_reading:14.4f}"
        )


if __name__ == "__main__":
    main()
