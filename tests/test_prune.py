"""Station 4 (maintain): pruning order, targets, hysteresis, dry run, vacuum, `nixlog prune`."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import core, database
from nixlog.cli import app
from nixlog.config import DatabaseConfig
from nixlog.database import Budget, Measurement, bytes_to_free, plan_prune
from nixlog.errors import DatabaseError
from nixlog.model import SENT_DELIVERED, SENT_UNSENT
from tests.fixtures_db import fill, flags

MB = 1_000_000


def _disk(capacity: int, db_path: Path) -> Callable[[Path], int]:
    """A small filesystem holding only the database: DELETEs never raise its free space."""

    def free(_: Path) -> int:
        used = sum(
            p.stat().st_size
            for p in (db_path, db_path.with_name(db_path.name + "-wal"))
            if p.exists()
        )
        return capacity - used

    return free


def _ship(conn: sqlite3.Connection, upto: int, rejected: list[int]) -> None:
    ids = list(range(1, upto + 1))
    database.mark_readings_rejected(conn, rejected)
    database.mark_readings_as_sent(conn, [i for i in ids if i not in rejected])


def test_bytes_to_free_triggers_then_overshoots_by_hysteresis() -> None:
    """Idle above floor+headroom; below it, frees up to 5 % beyond; the cap works the same."""
    budget = Budget(floor_bytes=100 * MB, max_live_bytes=None, headroom_bytes=0)
    assert bytes_to_free(Measurement(free_bytes=100 * MB, live_bytes=1), budget) == 0
    assert bytes_to_free(Measurement(99 * MB, 1), budget) == 6 * MB
    # While pruning, 103 MB free is not enough yet: the target is 105 MB.
    assert bytes_to_free(Measurement(103 * MB, 1), budget, pruning=True) == 2 * MB
    assert bytes_to_free(Measurement(103 * MB, 1), budget) == 0
    capped = Budget(floor_bytes=0, max_live_bytes=10 * MB, headroom_bytes=0)
    assert bytes_to_free(Measurement(10**12, 10 * MB), capped) == 0
    assert bytes_to_free(Measurement(10**12, 11 * MB), capped) == 1_500_000
    headroom = Budget(floor_bytes=0, max_live_bytes=None, headroom_bytes=16 * MB)
    assert bytes_to_free(Measurement(15 * MB, 1), headroom) > 0


def test_plan_takes_sent_then_rejected_then_unsent() -> None:
    """The pure plan fills the need from sent rows first, then rejected, then unsent."""
    budget = Budget(floor_bytes=0, max_live_bytes=1000, headroom_bytes=0)
    plan = plan_prune(
        Measurement(10**9, 1000 + 700), budget, sent=30, rejected=5, unsent=100, bytes_per_row=10
    )
    assert (plan.sent, plan.rejected, plan.unsent) == (30, 5, 40)
    calm = plan_prune(Measurement(10**9, 10), budget, sent=3, rejected=0, unsent=0, bytes_per_row=1)
    assert (calm.bytes_to_free, calm.sent, calm.unsent) == (0, 0, 0)


def test_prune_order_sent_then_rejected_then_unsent(
    db: sqlite3.Connection, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent rows go first, then rejected, then the oldest unsent, counted in meta and the log."""
    fill(db, 3000)
    _ship(db, 1000, rejected=[10, 500, 999])
    live = db.execute("PRAGMA page_count").fetchone()[0] * 4096
    config = DatabaseConfig(path=db_path, storage_limit_gb=0, max_db_mb=live * 0.5 / MB)
    with caplog.at_level(logging.INFO, logger="nixlog.database"):
        report = database.prune_database(db, config, headroom_bytes=0, max_chunk_rows=300)
    assert report.deleted_sent == 997
    assert report.deleted_rejected == 3
    assert 400 < report.deleted_unsent < 1000
    remaining = flags(db)
    assert set(remaining.values()) == {SENT_UNSENT}
    first_left = min(remaining)
    assert first_left == 1001 + report.deleted_unsent
    assert remaining == {i: SENT_UNSENT for i in range(first_left, 3001)}
    assert report.unsent_ranges[0][0] == 1001
    assert report.unsent_ranges[-1][1] == first_left - 1
    got = database.stats(db)
    assert (got.pruned_sent, got.pruned_unsent) == (997, report.deleted_unsent)
    ranges = json.loads(
        db.execute("SELECT value FROM meta WHERE key='pruned_unsent_ranges'").fetchone()[0]
    )
    assert ranges[0][:2] == [1001, report.unsent_ranges[0][1]]
    assert "UNSENT" in caplog.text
    # The queue carries on after the dropped range.
    assert [r.id for r in database.get_unsent_readings(db, 2)] == [first_left, first_left + 1]


def test_prune_stops_at_target_on_a_disk_whose_free_space_never_rises(
    db: sqlite3.Connection, db_path: Path
) -> None:
    """Free disk does not rise after DELETE; counting free pages, pruning stops at the target."""
    fill(db, 4000)
    _ship(db, 4000, rejected=[])
    database.checkpoint(db)
    used = db_path.stat().st_size
    floor = 2 * MB
    disk = _disk(capacity=floor + used // 2, db_path=db_path)  # about half must go
    config = DatabaseConfig(path=db_path, storage_limit_gb=floor / 1e9)
    report = database.prune_database(
        db, config, free_disk=disk, headroom_bytes=0, max_chunk_rows=200
    )
    assert report.warning is None
    left = database.stats(db).rows
    assert left >= 500, left  # far from everything
    wal = db_path.with_name(db_path.name + "-wal").stat().st_size
    after = disk(db_path) + db.execute("PRAGMA freelist_count").fetchone()[0] * 4096 + wal
    target = floor * 1.05  # hysteresis: 5 % beyond the floor
    assert target <= after < target + 2 * 200 * 130, (after, target)  # stopped within a chunk
    assert set(flags(db).values()) == {SENT_DELIVERED}
    # A second pass right away has nothing to do (hysteresis).
    assert database.prune_database(db, config, free_disk=disk, headroom_bytes=0).idle


def test_prune_gives_up_when_deleting_frees_nothing(db: sqlite3.Connection, db_path: Path) -> None:
    """Another process eating the disk as fast as we free it: stop after one chunk, warn."""
    fill(db, 3000)
    _ship(db, 3000, rejected=[])
    eaten = [0]

    def shrinking(_: Path) -> int:
        eaten[0] += 10 * MB
        return 50 * MB - eaten[0]

    config = DatabaseConfig(path=db_path, storage_limit_gb=0.1)
    report = database.prune_database(
        db, config, free_disk=shrinking, headroom_bytes=0, max_chunk_rows=500
    )
    assert report.warning is not None
    assert "freed no space" in report.warning
    assert report.deleted_sent == 500
    assert database.stats(db).rows == 2500


def test_dry_run_deletes_nothing(db: sqlite3.Connection, db_path: Path) -> None:
    """--dry-run reports the estimate per class and leaves every row in place."""
    fill(db, 2000)
    _ship(db, 500, rejected=[7])
    before = flags(db)
    live = db.execute("PRAGMA page_count").fetchone()[0] * 4096
    config = DatabaseConfig(path=db_path, storage_limit_gb=0, max_db_mb=live * 0.5 / MB)
    report = core.maintain(db, config, dry_run=True)
    assert report.dry_run
    assert report.plan is not None
    assert report.plan.sent == 499
    assert report.plan.rejected == 1
    assert report.plan.unsent > 0
    assert flags(db) == before


def test_vacuum_refuses_without_room(db: sqlite3.Connection, db_path: Path) -> None:
    """--vacuum needs about twice the live size free; without it nothing changes."""
    fill(db, 2000)
    _ship(db, 2000, rejected=[])
    live = db.execute("PRAGMA page_count").fetchone()[0] * 4096
    config = DatabaseConfig(path=db_path, storage_limit_gb=0, max_db_mb=live * 0.5 / MB)
    assert core.maintain(db, config).deleted_sent > 0
    with pytest.raises(DatabaseError, match="not enough free disk for VACUUM"):
        database.vacuum_database(db, free_disk=lambda _: 1 * MB)
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    assert db.execute("PRAGMA freelist_count").fetchone()[0] > 0
    assert pages * 4096 == live


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def _config_with(config_file: Path, extra: str) -> Path:
    text = config_file.read_text().replace(
        "flush_interval_sec = 10", f"flush_interval_sec = 10\n{extra}"
    )
    config_file.write_text(text)
    return config_file


def test_cli_prune_is_silent_when_nothing_to_do(config_file: Path, db_path: Path) -> None:
    """Cron: no database yet, or within budget, prints nothing and exits 0."""
    assert _cli("prune", "-c", str(config_file)) == (0, "", "")
    conn = database.open_db(db_path)
    fill(conn, 100)
    conn.close()
    assert _cli("prune", "-c", str(config_file)) == (0, "", "")


def test_cli_prune_prints_deletions_dry_run_and_vacuum(config_file: Path, db_path: Path) -> None:
    """Over max_db_mb: --dry-run only says what it would do; a real run says what it did."""
    conn = database.open_db(db_path)
    fill(conn, 3000)
    _ship(conn, 3000, rejected=[])
    conn.close()
    _config_with(config_file, "max_db_mb = 0.2")
    code, out, _ = _cli("prune", "--dry-run", "-c", str(config_file))
    assert code == 0
    assert "Would delete about" in out
    assert "Dry run" in out
    assert database.stats(database.open_db(db_path)).rows == 3000
    code, out, _ = _cli("prune", "--vacuum", "-c", str(config_file))
    assert code == 0
    assert "Pruned " in out
    assert " sent, 0 rejected and 0 unsent readings" in out
    assert "Vacuumed: gave" in out
    conn = database.open_db(db_path)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_rejected_phase_waits_for_older_sent_rows(db: sqlite3.Connection) -> None:
    """Rejected rows are pruned only below the first other row: the table never gets holes."""
    fill(db, 10)
    _ship(db, 10, rejected=[5])
    assert database._delete_chunk(db, "rejected", 100) is None
    assert database._delete_chunk(db, "sent", 100) is not None
    chunk = database._delete_chunk(db, "rejected", 100)
    assert chunk is not None
    assert chunk.rejected == 1
    assert database.stats(db).rows == 0
