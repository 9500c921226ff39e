"""SQLite storage: the only module with SQL (ARCHITECTURE.md: Storage).

What users and scripts query is the seed's ``readings`` with ``sent_flag`` (0 unsent, 1 sent,
2 rejected). Underneath, "sent" is NOT a per-row flag: rewriting a row to flip its flag costs
the SD card about 4× the row's size again, and the partial index that finds unsent rows costs
every insert too. Instead:

* ``reading_rows`` holds what was polled (id, timestamp, cpu_id, data, errors), append-only
  until pruned;
* ``meta.sent_upto`` is a high-water mark: every id at or below it is settled (delivered, or
  rejected when listed in ``rejected_ids``);
* ``rejected_ids`` lists readings the API refused (rare, small);
* ``sent_ahead_ids`` lists ids delivered out of order above the mark (after a 413 split, say);
  it empties itself as soon as the mark catches up;
* the view ``readings`` derives ``sent_flag`` from the three.

Marking a batch of 500 sent therefore rewrites one meta page instead of ~40 row pages.

Several outputs (ARCHITECTURE.md: Outputs): each has its own cursor. The ``api`` output's is
the machinery above (so an existing database keeps its mark as the api's cursor, with no
migration). Every other output (``mqtt``) delivers whole batches in id order and never
refuses a single reading, so its cursor is a bare high-water mark, ``meta['sent_upto.<name>']``
(absent = 0: a newly configured output starts with everything still stored). ``sent_flag`` in
the ``readings`` view stays the api's. Pruning treats a reading as sent only when every
configured output has it; what the disk budget forces out unsent is counted per output
(``meta['pruned_unsent.<name>']``).

Invariant the cheap counters rely on (kept by insert and by every prune phase): let ``lo`` be
the smallest id that is not rejected; every row below ``lo`` is rejected and every id from
``lo`` to the largest id is present. Inserts append; pruning removes "everything at or below X
except rejected rows", or rejected rows below ``lo``, or everything at or below X.

Each thread opens its own connection with ``open_db``; connections run in autocommit mode and
every write is an explicit ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sqlite3
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from nixlog.config import DatabaseConfig
from nixlog.errors import DatabaseError
from nixlog.model import SENT_DELIVERED, SENT_REJECTED, SENT_UNSENT, Reading, StoredReading, Value

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
BUSY_TIMEOUT_MS: Final = 5000
WAL_AUTOCHECKPOINT_PAGES: Final = 1000  # ~4 MB of WAL at 4 KiB pages, then a checkpoint
JOURNAL_SIZE_LIMIT_BYTES: Final = 8 * 1024 * 1024  # a WAL is truncated back to this size
CACHE_SIZE_KIB: Final = -512
"""Page cache per connection (negative: KiB), sized for the job: appends touch the right edge
of each B-tree and reads walk recent rows by index, so 512 KiB holds every hot page, where
SQLite's default 2 MiB per connection would creep into the daemon's resident memory."""
DEFAULT_HEADROOM_BYTES: Final = 16 * 1024 * 1024  # WAL bound + a batch + slack: never 100 % full
RESERVE_BYTES: Final = 2 * 1024 * 1024
AUTO_VACUUM_INCREMENTAL: Final = 2
"""``PRAGMA auto_vacuum`` of the files this version creates (and converts at a VACUUM)."""
"""A file kept beside the database and given back when the disk is full, so that a prune can
commit: even a DELETE must write its pages to the WAL first (SQLITE_FULL otherwise)."""
HYSTERESIS: Final = 0.05  # once pruning, free 5 % more than the bare minimum
MIN_CHUNK_ROWS: Final = 200
MAX_CHUNK_ROWS: Final = 5000
MAX_RECORDED_RANGES: Final = 50
GB: Final = 1_000_000_000
MB: Final = 1_000_000
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_EXPORT_CHUNK_ROWS: Final = 1000
_KEYS_CHUNK_IDS: Final = 50_000
_MEASURABLE_BYTES: Final = 32 * 1024  # a prune chunk this big must free at least a page

# --------------------------------------------------------------------------- schema

_SCHEMA_V1: Final = (
    """CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)""",
    """CREATE TABLE reading_rows(
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue position; never reused
        timestamp TEXT NOT NULL,               -- UTC ISO 8601 with microseconds
        cpu_id TEXT NOT NULL,
        data TEXT NOT NULL,                    -- JSON object of values
        errors TEXT                            -- JSON object of failed registers, or NULL
    )""",
    """CREATE TABLE rejected_ids(id INTEGER PRIMARY KEY)""",
    """CREATE TABLE sent_ahead_ids(id INTEGER PRIMARY KEY)""",
    # The seed's logical table. Both subqueries are uncorrelated: SQLite evaluates them once
    # per statement, so scanning the view costs no more than scanning reading_rows.
    """CREATE VIEW readings AS
        SELECT r.id AS id, r.timestamp AS timestamp, r.cpu_id AS cpu_id, r.data AS data,
               r.errors AS errors,
               CASE WHEN r.id IN (SELECT id FROM rejected_ids) THEN 2
                    WHEN r.id <= (SELECT CAST(value AS INTEGER) FROM meta
                                  WHERE key = 'sent_upto')
                         OR r.id IN (SELECT id FROM sent_ahead_ids) THEN 1
                    ELSE 0 END AS sent_flag
        FROM reading_rows AS r""",
)

# Version 2: the plant device a reading is from (NULL for the flat [modbus] form). ADD
# COLUMN rewrites no row: every row, id and the sent mark stay as they were.
_SCHEMA_V2: Final = (
    """ALTER TABLE reading_rows ADD COLUMN device TEXT""",
    """DROP VIEW readings""",
    """CREATE VIEW readings AS
        SELECT r.id AS id, r.timestamp AS timestamp, r.cpu_id AS cpu_id, r.data AS data,
               r.errors AS errors,
               CASE WHEN r.id IN (SELECT id FROM rejected_ids) THEN 2
                    WHEN r.id <= (SELECT CAST(value AS INTEGER) FROM meta
                                  WHERE key = 'sent_upto')
                         OR r.id IN (SELECT id FROM sent_ahead_ids) THEN 1
                    ELSE 0 END AS sent_flag,
               r.device AS device
        FROM reading_rows AS r""",
)

# Each migration brings the schema from version N-1 to N inside one write transaction.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}

_COUNTER_KEYS: Final = ("pruned_sent", "pruned_rejected", "pruned_unsent")


# Connections this process has open, per database file. POSIX advisory locks belong to the
# process, and closing ANY descriptor of a file drops all of them: reading the header of a
# file that another thread's connection holds would silently unlock it, and another process
# (`nixlog db stats` from cron) would then take itself for the last user, checkpoint and
# DELETE the WAL the daemon is still writing to — every later batch lost. So the header is
# read only while no connection of ours has the file open (sqlite.org/howtocorrupt.html §2.2).
_open_files: dict[str, int] = {}
_open_files_lock = threading.RLock()


class _Connection(sqlite3.Connection):
    """A connection that remembers its file, so that errors can name it."""

    nixlog_path: Path = Path("database")
    _registered_as: str | None = None

    def close(self) -> None:
        """Close, and forget this connection in the per-process registry."""
        super().close()
        key, self._registered_as = self._registered_as, None
        if key is not None:
            with _open_files_lock:
                remaining = _open_files.get(key, 1) - 1
                if remaining > 0:
                    _open_files[key] = remaining
                else:
                    _open_files.pop(key, None)


def _path_of(conn: sqlite3.Connection) -> Path:
    return getattr(conn, "nixlog_path", Path("database"))


# --------------------------------------------------------------------------- errors


def _translate(exc: sqlite3.Error, path: Path, doing: str) -> DatabaseError:
    """Turn a sqlite3 error into one line a technician can act on."""
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return DatabaseError(
            f"{path}: database is locked by another process (gave up waiting while {doing}); "
            "is another nixlog writing to it?"
        )
    if "not a database" in lowered or "file is encrypted" in lowered:
        return DatabaseError(
            f"{path}: not a SQLite database; refusing to touch it "
            "(move it aside or point database.path elsewhere)"
        )
    if "malformed" in lowered or "corrupt" in lowered:
        return DatabaseError(
            f"{path}: database is damaged ({text}); move it aside, nixlog then starts a new one "
            "(the old file may be recoverable with `sqlite3 OLD .recover`)"
        )
    if "full" in lowered:
        return DatabaseError(f"{path}: disk full while {doing}; free space or lower the budget")
    if "readonly" in lowered or "unable to open" in lowered:
        return DatabaseError(f"{path}: cannot write the database while {doing} ({text})")
    return DatabaseError(f"{path}: database error while {doing}: {text}")


@contextmanager
def _transaction(conn: sqlite3.Connection, doing: str, begin: str) -> Iterator[None]:
    """Run the block in one transaction opened by ``begin``; translate sqlite3 errors."""
    try:
        conn.execute(begin)
        yield
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise _translate(exc, _path_of(conn), doing) from exc
    except BaseException:
        _rollback(conn)
        raise


def _reading(conn: sqlite3.Connection, doing: str) -> AbstractContextManager[None]:
    """Run reads in one snapshot."""
    return _transaction(conn, doing, "BEGIN")


def _writing(conn: sqlite3.Connection, doing: str) -> AbstractContextManager[None]:
    """One ``BEGIN IMMEDIATE`` write transaction: takes the write lock up front.

    A deferred transaction that upgrades to a writer mid-way can fail with "database is
    locked" without the busy timeout helping; IMMEDIATE waits for the lock instead.
    """
    return _transaction(conn, doing, "BEGIN IMMEDIATE")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # If even ROLLBACK fails the connection is unusable; the caller reports the first error.
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- open


def open_db(
    path: Path, *, create: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """Open (or create) the database at ``path``, apply pragmas and migrations.

    A missing parent directory is created. A zero-byte file becomes a fresh database (with a
    warning). Locked, foreign, truncated or damaged files raise ``DatabaseError`` (exit 74);
    nothing is ever overwritten. With ``create=False`` a missing file raises too (read-only
    commands must not leave empty databases behind).
    """
    path = Path(path)
    with _open_files_lock:
        return _open_registered(path, create, busy_timeout_ms)


def _open_registered(path: Path, create: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    """``open_db`` under the registry lock: check the file only if nothing of ours holds it."""
    if "\0" in str(path):
        raise DatabaseError(f"{path!r}: a database path cannot contain a NUL character")
    try:
        key = os.path.realpath(path)
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as exc:  # ENAMETOOLONG: is_dir() and exists() let it through
        raise DatabaseError(f"{_shorten(path)}: cannot open the database: {exc.strerror}") from exc
    if is_dir:
        raise DatabaseError(f"{path}: is a directory, expected a database file")
    if exists and not path.is_file():
        # A FIFO would block the first read forever; a device is nobody's database.
        raise DatabaseError(f"{path}: not a regular file, expected a database file")
    if exists:
        if key not in _open_files:
            _check_file(path)
        _tighten_mode(path)
    elif not create:
        raise DatabaseError(f"{path}: no database here yet (nothing has been stored)")
    else:
        _create_private(path)
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit: we issue BEGIN IMMEDIATE/COMMIT ourselves
            factory=_Connection,
        )
    except sqlite3.Error as exc:
        raise _translate(exc, path, "opening") from exc
    conn.nixlog_path = path
    try:
        _configure(conn, busy_timeout_ms)
        _migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise _translate(exc, path, "opening") from exc
    except BaseException:
        conn.close()
        raise
    conn._registered_as = key
    _open_files[key] = _open_files.get(key, 0) + 1
    return conn


init_db = open_db
"""The seed's name for ``open_db``."""

FILE_MODE: Final = 0o640
"""Database, its -wal and -shm, exports: the service group may read, others nothing."""
DIR_MODE: Final = 0o750


def _shorten(path: Path, keep: int = 120) -> str:
    text = str(path)
    return text if len(text) <= keep else f"{text[: keep // 2]}…{text[-keep // 2 :]}"


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0750 whatever the umask (existing ones are
    left as they are: /var/lib is not ours). Raises ``OSError``."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(path, DIR_MODE)  # mkdir's mode is cut by the umask


def create_private_file(path: Path) -> int:
    """Create ``path`` (which must not exist) as 0640 whatever the umask; return its fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def _create_private(path: Path) -> None:
    """Make the directory and an empty 0640 database file before SQLite creates it.

    SQLite gives the -wal and -shm files the database file's mode (even under a wider umask),
    so a private database file is enough for all three.
    """
    try:
        make_private_dirs(path.parent)
    except OSError as exc:
        raise DatabaseError(
            f"{path.parent}: cannot create the database directory: {exc.strerror}"
        ) from exc
    try:
        os.close(create_private_file(path))
    except FileExistsError:
        pass  # another process created it between our check and now: SQLite opens it
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot create the database: {exc.strerror}") from exc


def _tighten_mode(path: Path) -> None:
    """An existing database readable by everyone (made under umask 022) loses those bits."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with suppress(OSError):  # not ours to change, or gone: leave it
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o027:
                os.chmod(file, mode & ~0o027)


def _check_file(path: Path) -> None:
    """Refuse files that are not (whole) SQLite databases before SQLite touches them."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read the database: {exc.strerror}") from exc
    if size == 0:
        # SQLite treats an empty file as an empty database; say so, since it may be a mistake.
        log.warning("%s is empty (0 bytes): starting a fresh database in it", path)
        return
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise DatabaseError(
            f"{path}: not a SQLite database; refusing to touch it "
            "(move it aside or point database.path elsewhere)"
        )
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    change_counter, page_count = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    wal = path.with_name(path.name + "-wal")
    wal_has_frames = wal.exists() and wal.stat().st_size > 32
    # The in-header size is trustworthy only when valid_for matches the change counter; with
    # a WAL holding frames an interrupted checkpoint may legitimately leave the file short.
    if page_count and change_counter == valid_for and not wal_has_frames:
        expected = page_count * page_size
        if size < expected:
            raise DatabaseError(
                f"{path}: database is truncated ({size} bytes, its header says {expected}); "
                "move it aside, nixlog then starts a new one"
            )


def _configure(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        # A new file: incremental, so that pages pruning frees can go back to the filesystem
        # when a full disk needs them for the reserve (_give_back_free_pages), at about 3 %
        # more bytes written per reading (benchmarks/wear.py). Only here: on an existing file
        # setting it would wait for a writer's lock, and a reader must never wait.
        conn.execute(f"PRAGMA auto_vacuum = {AUTO_VACUUM_INCREMENTAL}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise DatabaseError(f"{_path_of(conn)}: cannot switch to WAL journal mode (got {mode})")
    # FULL: the WAL is fsynced at each commit, one per batch: a power cut loses at most the bin.
    conn.execute("PRAGMA synchronous = FULL")
    # Debian builds default to ON, which overwrites deleted content with zeros: pure wear.
    conn.execute("PRAGMA secure_delete = OFF")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"PRAGMA cache_size = {CACHE_SIZE_KIB}")


def _schema_version(conn: sqlite3.Connection) -> int:
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if not row or row[0] is None:
        return 0
    text = str(row[0])
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise DatabaseError(
            f"{_path_of(conn)}: meta.schema_version is {shown!r}, not a nixlog schema version; "
            "refusing to touch it (point database.path elsewhere)"
        )
    return int(text)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to ``SCHEMA_VERSION``; cheap read when it already is (the usual case)."""
    version = _schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{_path_of(conn)}: database schema version {version} was written by a newer "
            f"nixlog (this one knows up to {SCHEMA_VERSION}); upgrade nixlog"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(conn)  # another process may have migrated meanwhile
        if version == 0:
            _refuse_foreign_tables(conn)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                conn.execute(statement)
            if target == 1:
                _seed_meta(conn)
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(target),),
            )
            log.info("%s: schema migrated to version %d", _path_of(conn), target)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _refuse_foreign_tables(conn: sqlite3.Connection) -> None:
    """A SQLite file with other tables and no nixlog schema is someone else's: leave it."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%'"
        )
    ]
    if names:
        shown = ", ".join(sorted(names)[:5])
        raise DatabaseError(
            f"{_path_of(conn)}: holds tables nixlog did not create ({shown}); refusing to "
            "touch it (point database.path elsewhere)"
        )


def _seed_meta(conn: sqlite3.Connection) -> None:
    import secrets  # here, not at the top: only a new file needs it, and it costs start-up

    now = datetime.now(UTC).isoformat(timespec="seconds")
    rows = [
        # 8 hex digits: a new random epoch each time the file is created, so that ids of a
        # recreated database never collide with the ones a receiver already has.
        ("epoch", secrets.token_hex(4)),
        ("created_at", now),
        ("sent_upto", "0"),
        ("pruned_unsent_ranges", "[]"),
        *((key, "0") for key in _COUNTER_KEYS),
    ]
    conn.executemany("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", rows)


def close(conn: sqlite3.Connection) -> None:
    """Close a connection (its WAL stays for the next opener; see ``checkpoint``)."""
    conn.close()


def checkpoint(conn: sqlite3.Connection, *, truncate: bool = True) -> None:
    """Copy the WAL into the database file (and truncate it): the daemon's last act.

    A busy checkpoint (a reader holds an old snapshot) is not an error: the next one finishes.
    """
    mode = "TRUNCATE" if truncate else "PASSIVE"
    try:
        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
    except sqlite3.Error as exc:
        raise _translate(exc, _path_of(conn), "checkpointing the WAL") from exc


# --------------------------------------------------------------------------- meta


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))


def _sent_upto(conn: sqlite3.Connection) -> int:
    return int(_meta(conn, "sent_upto") or 0)


API_OUTPUT: Final = "api"


def _output_mark(conn: sqlite3.Connection, output: str) -> int:
    """An output's high-water mark (for ``api`` the one with rejected/ahead lists beside it)."""
    key = "sent_upto" if output == API_OUTPUT else f"sent_upto.{output}"
    return int(_meta(conn, key) or 0)


def _set_output_mark(conn: sqlite3.Connection, output: str, mark: int) -> None:
    _set_meta(conn, "sent_upto" if output == API_OUTPUT else f"sent_upto.{output}", str(mark))


def _suffix(output: str) -> str:
    """Meta keys of the api output keep their old names (existing databases, scripts)."""
    return "" if output == API_OUTPUT else f".{output}"


def get_epoch(conn: sqlite3.Connection) -> str:
    """The random token created with this database (part of every reading's global id)."""
    with _reading(conn, "reading the epoch"):
        epoch = _meta(conn, "epoch")
    if not epoch:
        raise DatabaseError(f"{_path_of(conn)}: no epoch in meta (damaged database?)")
    return epoch


def record_publish(conn: sqlite3.Connection, when_iso: str, output: str = API_OUTPUT) -> None:
    """Remember the time of the last successful publish (shown by ``db stats``)."""
    with _writing(conn, "recording the last publish"):
        _set_meta(conn, f"last_publish{_suffix(output)}", when_iso)
        _set_meta(conn, f"publish_failures{_suffix(output)}", "0")


def record_publish_failure(conn: sqlite3.Connection, output: str = API_OUTPUT) -> None:
    """Count a failed attempt since the last delivery (one meta write; backoff spaces them)."""
    key = f"publish_failures{_suffix(output)}"
    with _writing(conn, "recording a failed publish"):
        count = int(_meta(conn, key) or 0)
        _set_meta(conn, key, str(count + 1))


# --------------------------------------------------------------------------- insert


def _finite(values: dict[str, Value]) -> dict[str, Value | None]:
    # JSON has no NaN/Infinity: a float32 register can decode to one; store null instead.
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in values.items()
    }


def _encode(mapping: dict[str, Any]) -> str:
    # Compact separators: every byte here is written to the card ~3 times.
    return json.dumps(mapping, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def batch_insert_readings(
    conn: sqlite3.Connection, device_id: str, readings: Sequence[Reading]
) -> tuple[int, int] | None:
    """Insert a whole bin in ONE transaction (one fsync); return (first id, last id).

    Returns None for an empty bin (nothing written). Ids of one bin are consecutive.
    """
    if not readings:
        return None
    rows = [
        (
            reading.timestamp,
            device_id,
            _encode(_finite(reading.values)),
            _encode(reading.errors) if reading.errors else None,
            reading.device,
        )
        for reading in readings
    ]
    with _writing(conn, f"writing a batch of {len(rows)} readings"):
        conn.executemany(
            "INSERT INTO reading_rows(timestamp, cpu_id, data, errors, device) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        if any(reading.device is not None for reading in readings):
            # Lets `db stats` and export skip a table scan on a database without devices.
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('has_devices', '1')")
    return last - len(rows) + 1, last


# --------------------------------------------------------------------------- outbox

_UNSENT_WHERE: Final = (
    "id > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'sent_upto') "
    "AND id NOT IN (SELECT id FROM sent_ahead_ids) AND id NOT IN (SELECT id FROM rejected_ids)"
)


_OUTPUT_UNSENT_WHERE: Final = (
    "id > coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = :key), 0)"
)


def _stored(row: sqlite3.Row | tuple[Any, ...], sent_flag: int = SENT_UNSENT) -> StoredReading:
    """A row of (id, timestamp, cpu_id, data, errors, device[, sent_flag])."""
    rid, timestamp, cpu_id, data, errors, device = row[:6]
    return StoredReading(
        id=int(rid),
        timestamp=timestamp,
        device_id=cpu_id,
        values=json.loads(data),
        errors=json.loads(errors) if errors else {},
        sent_flag=int(row[6]) if len(row) > 6 else sent_flag,
        device=device,
    )


def get_unsent_readings(
    conn: sqlite3.Connection, limit: int, output: str = API_OUTPUT
) -> list[StoredReading]:
    """Up to ``limit`` readings ``output`` lacks, oldest first by id (never sent or rejected)."""
    # One statement for every output: an output's mark is read in the same snapshot.
    where = _UNSENT_WHERE if output == API_OUTPUT else _OUTPUT_UNSENT_WHERE
    with _reading(conn, "reading unsent readings"):
        rows = conn.execute(
            f"SELECT id, timestamp, cpu_id, data, errors, device FROM reading_rows "
            f"WHERE {where} ORDER BY id LIMIT :limit",
            {"limit": int(limit), "key": f"sent_upto.{output}"},
        ).fetchall()
    return [_stored(row) for row in rows]


def _json_ids(ids: Sequence[int] | set[int]) -> str:
    # One bound parameter however many ids: SQLITE_MAX_VARIABLE_NUMBER differs between builds.
    return json.dumps(sorted({int(i) for i in ids}))


def mark_readings_as_sent(
    conn: sqlite3.Connection, ids: Sequence[int], output: str = API_OUTPUT
) -> None:
    """Mark these readings delivered; any set of ids, in any order, is handled.

    The common case (a batch right above the high-water mark) rewrites one meta row. For an
    output other than ``api`` the ids are a whole batch in id order (see the module
    docstring): its mark moves to the largest.
    """
    if not ids:
        return
    if output != API_OUTPUT:
        _advance_output(conn, output, ids)
        return
    with _writing(conn, "marking readings sent"):
        payload = _json_ids(ids)
        # A reading delivered after all (a later retry succeeded) is no longer rejected, but
        # only from the oldest row that is not rejected on: below it, pruning may have left a
        # gap, and a row there that is neither rejected nor followed by every id up to the
        # newest would break the invariant the cheap counts rely on (module docstring). Below
        # that line a rejected reading stays rejected: it was judged, and it is kept for export.
        conn.execute(
            "DELETE FROM rejected_ids WHERE id IN (SELECT value FROM json_each(?)) AND id >= "
            "(SELECT min(id) FROM reading_rows WHERE id NOT IN (SELECT id FROM rejected_ids))",
            (payload,),
        )
        upto = _sent_upto(conn)
        above = {int(i) for i in ids if int(i) > upto}
        if not above:
            return
        new_upto = _advance_mark(conn, upto, above)
        conn.execute(
            "INSERT OR IGNORE INTO sent_ahead_ids(id) SELECT id FROM reading_rows "
            "WHERE id > ? AND id IN (SELECT value FROM json_each(?))",
            (new_upto, _json_ids(above)),
        )


def mark_readings_rejected(
    conn: sqlite3.Connection, ids: Sequence[int], output: str = API_OUTPUT
) -> None:
    """Mark these readings refused by the API: kept for export, never sent again."""
    if not ids:
        return
    if output != API_OUTPUT:
        _advance_output(conn, output, ids)  # settled for this output: never offered again
        return
    with _writing(conn, "marking readings rejected"):
        payload = _json_ids(ids)
        conn.execute(
            "INSERT OR IGNORE INTO rejected_ids(id) SELECT id FROM reading_rows "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (payload,),
        )
        conn.execute(
            "DELETE FROM sent_ahead_ids WHERE id IN (SELECT value FROM json_each(?))", (payload,)
        )
        upto = _sent_upto(conn)
        above = {int(i) for i in ids if int(i) > upto}
        if above:
            _advance_mark(conn, upto, above)


def _advance_output(conn: sqlite3.Connection, output: str, ids: Sequence[int]) -> None:
    with _writing(conn, f"marking readings sent to {output}"):
        if max(ids) > _output_mark(conn, output):
            _set_output_mark(conn, output, int(max(ids)))


def _advance_mark(conn: sqlite3.Connection, upto: int, newly_settled: set[int]) -> int:
    """Move ``sent_upto`` over the run of settled rows right above it; return the new mark."""
    settled = set(newly_settled)
    settled.update(
        r[0] for r in conn.execute("SELECT id FROM sent_ahead_ids WHERE id > ?", (upto,))
    )
    settled.update(r[0] for r in conn.execute("SELECT id FROM rejected_ids WHERE id > ?", (upto,)))
    following = conn.execute(
        "SELECT id FROM reading_rows WHERE id > ? ORDER BY id LIMIT ?", (upto, len(settled) + 1)
    ).fetchall()
    new_upto = upto
    for (rid,) in following:
        if rid not in settled:
            break
        new_upto = rid
    if new_upto != upto:
        _set_meta(conn, "sent_upto", str(new_upto))
        conn.execute("DELETE FROM sent_ahead_ids WHERE id <= ?", (new_upto,))
    return new_upto


# --------------------------------------------------------------------------- counts & stats


@dataclass(frozen=True)
class _Counts:
    rows: int
    unsent: int
    sent: int
    rejected: int
    first_id: int | None
    last_id: int | None
    sent_upto: int


def _counts(conn: sqlite3.Connection) -> _Counts:
    """Row counts in O(rejected + ahead + log n), from the invariant in the module docstring.

    A ``count(*)`` would read every page of the table: seconds on a Pi for a million rows.
    """
    upto = _sent_upto(conn)
    first_id, last_id = conn.execute("SELECT min(id), max(id) FROM reading_rows").fetchone()
    rejected_total = conn.execute("SELECT count(*) FROM rejected_ids").fetchone()[0]
    if last_id is None:
        return _Counts(0, 0, 0, 0, None, None, upto)
    row = conn.execute(
        "SELECT id FROM reading_rows WHERE id NOT IN (SELECT id FROM rejected_ids) "
        "ORDER BY id LIMIT 1"
    ).fetchone()
    if row is None:  # every row left is a rejected one
        return _Counts(rejected_total, 0, 0, rejected_total, first_id, last_id, upto)
    lo = int(row[0])
    rejected_below = conn.execute(
        "SELECT count(*) FROM rejected_ids WHERE id < ?", (lo,)
    ).fetchone()[0]
    skipped = _skipped_ranges(conn)
    rows = (last_id - lo + 1) - _skipped_within(skipped, lo, last_id) + rejected_below
    start = max(upto + 1, lo)
    settled_above = conn.execute(
        "SELECT (SELECT count(*) FROM sent_ahead_ids WHERE id >= :s) "
        "+ (SELECT count(*) FROM rejected_ids WHERE id >= :s)",
        {"s": start},
    ).fetchone()[0]
    unsent = max(0, last_id - start + 1) - _skipped_within(skipped, start, last_id) - settled_above
    return _Counts(
        rows=rows,
        unsent=unsent,
        sent=rows - unsent - rejected_total,
        rejected=rejected_total,
        first_id=first_id,
        last_id=last_id,
        sent_upto=upto,
    )


def _skipped_ranges(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """Id ranges never issued (jumped over after an unclean stop): holes the counts skip."""
    text = _meta(conn, "skipped_id_ranges")
    return [(int(r[0]), int(r[1])) for r in json.loads(text)] if text else []


def _skipped_within(ranges: Sequence[tuple[int, int]], low: int, high: int) -> int:
    return sum(max(0, min(high, last) - max(low, first) + 1) for first, last in ranges)


def count_unsent(conn: sqlite3.Connection, output: str = API_OUTPUT) -> int:
    """How many readings wait to be shipped to ``output`` (cheap: no table scan)."""
    with _reading(conn, "counting unsent readings"):
        if output != API_OUTPUT:
            return _count_above(conn, _output_mark(conn, output))
        return int(_counts(conn).unsent)


def _count_above(conn: sqlite3.Connection, mark: int) -> int:
    """Rows with an id above ``mark``, from the module's invariant (no table scan)."""
    last_id = conn.execute("SELECT max(id) FROM reading_rows").fetchone()[0]
    if last_id is None or last_id <= mark:
        return 0
    row = conn.execute(
        "SELECT id FROM reading_rows WHERE id NOT IN (SELECT id FROM rejected_ids) "
        "ORDER BY id LIMIT 1"
    ).fetchone()
    lo = int(row[0]) if row is not None else last_id + 1
    start = max(mark + 1, lo)
    # Rejected rows below ``lo`` are the only rows there; above it every id is present.
    below = conn.execute(
        "SELECT count(*) FROM rejected_ids WHERE id > ? AND id < ?", (mark, lo)
    ).fetchone()[0]
    span: int = max(0, last_id - start + 1) - _skipped_within(_skipped_ranges(conn), start, last_id)
    return int(below) + span


def output_stats(conn: sqlite3.Connection, outputs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per output: ``unsent``, ``last_delivery``, ``failures`` (since the last delivery)."""
    result: dict[str, dict[str, Any]] = {}
    with _reading(conn, "reading output statistics"):
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        for output in outputs:
            unsent = (
                _counts(conn).unsent
                if output == API_OUTPUT
                else _count_above(conn, _output_mark(conn, output))
            )
            result[output] = {
                "unsent": unsent,
                "last_delivery": meta.get(f"last_publish{_suffix(output)}"),
                "failures": int(meta.get(f"publish_failures{_suffix(output)}") or 0),
                "pruned_unsent": int(meta.get(f"pruned_unsent.{output}") or 0),
            }
    return result


@dataclass(frozen=True)
class DbStats:
    """What ``nixlog db stats`` shows; ``as_dict`` has the stable JSON keys."""

    rows: int
    unsent: int
    sent: int
    rejected: int
    oldest: str | None
    newest: str | None
    oldest_unsent: str | None
    db_bytes: int
    free_pages_bytes: int
    free_disk_bytes: int
    last_publish: str | None
    pruned_sent: int
    pruned_unsent: int
    epoch: str
    pruned_rejected: int = 0
    path: str = ""
    lost_unwritten: int = 0
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per configured output: its backlog, last delivery and failures (``output_stats``)."""
    devices: tuple[DeviceRows, ...] = ()
    """Rows per plant device (empty when no reading carries a device)."""

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document: these keys are a contract with outside scripts.

        ``devices`` (a list of per-device rows) appears only when readings carry devices.
        """
        keys = (
            "rows",
            "unsent",
            "sent",
            "rejected",
            "oldest",
            "newest",
            "oldest_unsent",
            "db_bytes",
            "free_pages_bytes",
            "free_disk_bytes",
            "last_publish",
            "pruned_sent",
            "pruned_rejected",
            "pruned_unsent",
            "epoch",
            "lost_unwritten",
            "outputs",
        )
        document: dict[str, Any] = {key: getattr(self, key) for key in keys}
        if self.devices:
            document["devices"] = [device.as_dict() for device in self.devices]
        return document


@dataclass(frozen=True)
class DeviceRows:
    """One device's share of the database (``device`` None: readings of the flat form)."""

    device: str | None
    rows: int
    unsent: int
    newest: str | None

    def as_dict(self) -> dict[str, Any]:
        """Its ``db stats --json`` entry."""
        return {
            "device": self.device,
            "rows": self.rows,
            "unsent": self.unsent,
            "newest": self.newest,
        }


def _device_rows(conn: sqlite3.Connection) -> tuple[DeviceRows, ...]:
    """Rows, unsent rows and newest timestamp per device; () when no row has a device.

    A scan of the table (``db stats`` is run by hand, not on the hot path).
    """
    if not _has_devices(conn):
        return ()
    result = conn.execute(
        "SELECT device, count(*), "
        f"sum(CASE WHEN {_UNSENT_WHERE} THEN 1 ELSE 0 END), max(id) "
        "FROM reading_rows GROUP BY device ORDER BY device IS NULL, device"
    ).fetchall()
    return tuple(
        DeviceRows(device, int(rows), int(unsent or 0), _timestamp_of(conn, last))
        for device, rows, unsent, last in result
    )


def any_device(conn: sqlite3.Connection) -> bool:
    """True when some reading carries a plant device (export then adds the column)."""
    with _reading(conn, "looking for device readings"):
        return _has_devices(conn)


def _has_devices(conn: sqlite3.Connection) -> bool:
    """A reading with a device was ever stored (``meta.has_devices``, set by the insert): a
    flat database never pays for a scan. Pruning may have removed them since: then check."""
    if _meta(conn, "has_devices") is None:
        return False
    probe = "SELECT 1 FROM reading_rows WHERE device IS NOT NULL LIMIT 1"
    return conn.execute(probe).fetchone() is not None


def free_disk_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on the filesystem holding ``path``."""
    try:
        st = os.statvfs(path.parent if not path.is_dir() else path)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot measure free disk space: {exc.strerror}") from exc
    return st.f_bavail * st.f_frsize


def _file_bytes(path: Path) -> int:
    total = 0
    for candidate in (path, path.with_name(path.name + "-wal")):
        with suppress(OSError):  # no WAL file is fine
            total += candidate.stat().st_size
    return total


def _page_figures(conn: sqlite3.Connection) -> tuple[int, int, int]:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(page_size), int(page_count), int(freelist)


def stats(
    conn: sqlite3.Connection,
    *,
    free_disk: Callable[[Path], int] = free_disk_bytes,
    outputs: Sequence[str] = (API_OUTPUT,),
) -> DbStats:
    """Counts, ages, sizes and counters; safe while another process writes (one snapshot).

    ``unsent``/``sent``/``rejected`` are the api output's; ``outputs`` has each configured
    output's own backlog.
    """
    path = _path_of(conn)
    with _reading(conn, "reading statistics"):
        counts = _counts(conn)
        page_size, _, freelist = _page_figures(conn)
        oldest = newest = oldest_unsent = None
        if counts.first_id is not None:
            oldest = _timestamp_of(conn, counts.first_id)
            newest = _timestamp_of(conn, counts.last_id)
            row = conn.execute(
                f"SELECT timestamp FROM reading_rows WHERE {_UNSENT_WHERE} ORDER BY id LIMIT 1"
            ).fetchone()
            oldest_unsent = row[0] if row else None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        devices = _device_rows(conn)
    return DbStats(
        rows=counts.rows,
        unsent=counts.unsent,
        sent=counts.sent,
        rejected=counts.rejected,
        oldest=oldest,
        newest=newest,
        oldest_unsent=oldest_unsent,
        db_bytes=_file_bytes(path),
        free_pages_bytes=freelist * page_size,
        free_disk_bytes=free_disk(path),
        last_publish=meta.get("last_publish"),
        pruned_sent=int(meta.get("pruned_sent") or 0),
        pruned_unsent=int(meta.get("pruned_unsent") or 0),
        epoch=str(meta.get("epoch") or ""),
        pruned_rejected=int(meta.get("pruned_rejected") or 0),
        path=str(path),
        lost_unwritten=int(meta.get("lost_unwritten") or 0),
        outputs=output_stats(conn, outputs),
        devices=devices,
    )


def _timestamp_of(conn: sqlite3.Connection, rid: int | None) -> str | None:
    row = conn.execute("SELECT timestamp FROM reading_rows WHERE id = ?", (rid,)).fetchone()
    return None if row is None else str(row[0])


# --------------------------------------------------------------------------- export rows


def _utc_text(moment: datetime) -> str:
    """The stored timestamp format, so that SQLite can compare the text directly."""
    if moment.tzinfo is None:
        raise ValueError("export bounds must be timezone-aware datetimes")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _export_filter(
    since: datetime | None,
    until: datetime | None,
    unsent_only: bool,
    device: str | None = None,
) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if device is not None:
        clauses.append("device = :device")
        params["device"] = device
    if since is not None:
        clauses.append("timestamp >= :since")
        params["since"] = _utc_text(since)
    if until is not None:
        clauses.append("timestamp < :until")
        params["until"] = _utc_text(until)
    if unsent_only:
        clauses.append("sent_flag = 0")
    return "".join(f" AND {clause}" for clause in clauses), params


def iter_readings(
    conn: sqlite3.Connection,
    since: datetime | None = None,
    until: datetime | None = None,
    unsent_only: bool = False,
    *,
    chunk_rows: int = _EXPORT_CHUNK_ROWS,
    device: str | None = None,
) -> Iterator[StoredReading]:
    """Stream readings in id order with ``since <= timestamp < until``, in constant memory.

    Reads in chunks of ``chunk_rows`` by id (keyset paging), each in its own short snapshot:
    one long read transaction would stop checkpoints and let the daemon's WAL grow for the
    whole export. There is deliberately no timestamp index (it would cost every insert); the
    filter runs inside SQLite over the table in id order, which is also correct when the clock
    jumped and timestamps are not monotonic. ``device`` keeps one plant device's readings.
    """
    where, params = _export_filter(since, until, unsent_only, device)
    after = 0
    if unsent_only:  # nothing at or below the high-water mark is unsent: skip it
        with _reading(conn, "exporting readings"):
            after = _sent_upto(conn)
    while True:
        with _reading(conn, "exporting readings"):
            rows = conn.execute(
                "SELECT id, timestamp, cpu_id, data, errors, device, sent_flag FROM readings "
                f"WHERE id > :after{where} ORDER BY id LIMIT :limit",
                {**params, "after": after, "limit": chunk_rows},
            ).fetchall()
        if not rows:
            return
        for row in rows:
            yield _stored(row)
        after = int(rows[-1][0])


def value_keys(
    conn: sqlite3.Connection,
    since: datetime | None = None,
    until: datetime | None = None,
    unsent_only: bool = False,
    device: str | None = None,
) -> set[str]:
    """Every value key found in the readings the same filter selects (a cheap first pass).

    Memory grows with the number of distinct keys, not rows; SQLite's ``json_each`` does the
    parsing in C, in id windows so that no snapshot is held for the whole pass.
    """
    where, params = _export_filter(since, until, unsent_only, device)
    keys: set[str] = set()
    with _reading(conn, "listing value keys"):
        first, last = conn.execute("SELECT min(id), max(id) FROM reading_rows").fetchone()
    if first is None:
        return keys
    low = first - 1
    if unsent_only:
        with _reading(conn, "listing value keys"):
            low = max(low, _sent_upto(conn))
    while low < last:
        high = low + _KEYS_CHUNK_IDS
        with _reading(conn, "listing value keys"):
            keys.update(
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT j.key FROM readings AS r, json_each(r.data) AS j "
                    # Only r has timestamp/sent_flag columns; json_each has its own "id".
                    f"WHERE r.id > :low AND r.id <= :high{where}",
                    {**params, "low": low, "high": high},
                )
            )
        low = high
    return keys


def id_span(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(first id, last id) stored, or None when empty: a cheap progress measure for export."""
    with _reading(conn, "reading the id span"):
        first, last = conn.execute("SELECT min(id), max(id) FROM reading_rows").fetchone()
    return None if first is None else (int(first), int(last))


# --------------------------------------------------------------------------- one writer

ID_JUMP_AFTER_UNCLEAN_STOP: Final = 1_000_000
"""How far the id sequence moves after an unclean stop (kill -9, power cut).

A lost or cut WAL takes back every id issued since the last checkpoint, and a new reading
would then reuse an id a receiver already has (and drop the new reading as a duplicate). The
mark "running" is checkpointed into the main file at start, so only ids issued since then
can be lost. A WAL holds at most ``WAL_AUTOCHECKPOINT_PAGES`` pages before SQLite
checkpoints it (4 MiB); a 4 KiB page holds at most ~100 readings (a row is >= 40 bytes), so
one WAL between checkpoints holds ~100,000 ids. A reader that starves the checkpoints lets the
WAL grow further: 1,000,000 is ten such WALs, or 5.5 hours at 50 Hz without one checkpoint.
Ids are 64-bit: a jump per crash is free."""
_LOCK_FILE_BYTES: Final = 64
"""The lock file is written once at this size; later writes overwrite it in place and so need
no new block (they work on a full disk)."""


def lock_path(path: Path) -> Path:
    """Where the one-writer lock of the database at ``path`` lives."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


class WriterLock:
    """The advisory lock (``flock``) that makes this process the database's only writer.

    ``flock`` on a separate ``<db>.lock`` file, not POSIX locks on the database: those belong
    to the process and any close of the database file drops them (see ``_open_files``). The
    file holds the holder's PID (for the error of a second writer) and, after a stop on a full
    disk, the count of readings lost unwritten until the next start can put it in ``meta``.
    """

    def __init__(self, db_path: Path, fd: int, carried_lost: int) -> None:
        self.db_path = db_path
        self.fd = fd
        self.carried_lost = carried_lost

    def write(self, lost: int = 0) -> None:
        """Rewrite the file in place: PID, and ``lost`` readings not yet counted in meta."""
        text = f"{os.getpid()}\nlost_unwritten {lost}\n".ljust(_LOCK_FILE_BYTES - 1) + "\n"
        os.pwrite(self.fd, text.encode("ascii")[:_LOCK_FILE_BYTES], 0)
        os.fsync(self.fd)

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race a new holder)."""
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _read_lock_file(fd: int) -> tuple[str, int]:
    """(holder PID text, lost count carried over) from a lock file's content."""
    try:
        text = os.pread(fd, _LOCK_FILE_BYTES * 2, 0).decode("ascii", errors="replace")
    except OSError:
        return "?", 0
    lines = text.split("\n")
    pid = lines[0].strip() or "?"
    carried = 0
    for line in lines[1:]:
        name, _, value = line.strip().partition(" ")
        if name == "lost_unwritten" and value.isdigit() and value.isascii():
            carried = int(value)
    return pid, carried


def acquire_writer_lock(path: Path) -> WriterLock:
    """Take the one-writer lock of the database at ``path`` or raise ``DatabaseError`` (74).

    The error names the PID that holds it: ``<db> is in use by nixlog (PID 1234)``.
    """
    path = Path(path)
    target = lock_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise DatabaseError(f"{target}: cannot open the lock file: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid, _ = _read_lock_file(fd)
        os.close(fd)
        raise DatabaseError(
            f"{path} is in use by nixlog (PID {pid}); only one daemon or poll --save may "
            "write a database"
        ) from None
    with suppress(OSError):
        os.fchmod(fd, 0o640)
    _, carried = _read_lock_file(fd)
    lock = WriterLock(path, fd, carried)
    try:
        lock.write(carried)
    except OSError as exc:
        # Disk full: the PID is not written, the lock is held all the same.
        log.warning("%s: cannot write the lock file: %s", target, exc.strerror)
    return lock


def start_writing(conn: sqlite3.Connection, lock: WriterLock) -> tuple[int, int] | None:
    """Mark the database "running"; after an unclean stop first move the id sequence on.

    Returns the skipped id range (first, last) after an unclean stop, else None. Also adds
    a lost count carried in the lock file to ``meta.lost_unwritten``. The mark is checkpointed
    into the main file, so a WAL lost later cannot take it back.
    """
    skipped: tuple[int, int] | None = None
    with _writing(conn, "marking the database in use"):
        if _meta(conn, "writer_state") == "running":
            row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'reading_rows'"
            ).fetchone()
            top = max(
                int(row[0]) if row else 0,
                int(conn.execute("SELECT coalesce(max(id), 0) FROM reading_rows").fetchone()[0]),
            )
            skipped = (top + 1, top + ID_JUMP_AFTER_UNCLEAN_STOP)
            if row is None:
                conn.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ('reading_rows', ?)",
                    (skipped[1],),
                )
            else:
                conn.execute(
                    "UPDATE sqlite_sequence SET seq = ? WHERE name = 'reading_rows'",
                    (skipped[1],),
                )
            ranges = json.loads(_meta(conn, "skipped_id_ranges") or "[]")
            ranges.append([skipped[0], skipped[1]])
            _set_meta(conn, "skipped_id_ranges", json.dumps(ranges))
        if lock.carried_lost:
            _add_lost(conn, lock.carried_lost)
        _set_meta(conn, "writer_state", "running")
    if lock.carried_lost:
        lock.carried_lost = 0
        with suppress(OSError):
            lock.write(0)
    try:
        conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
    except sqlite3.Error as exc:
        raise _translate(exc, _path_of(conn), "checkpointing the WAL") from exc
    if skipped is not None:
        log.warning(
            "%s: the last writer did not stop cleanly: ids %d-%d are skipped so that no id "
            "is ever issued twice",
            _path_of(conn),
            *skipped,
        )
    return skipped


def _add_lost(conn: sqlite3.Connection, count: int) -> None:
    if _meta(conn, "lost_unwritten") is None:
        _set_meta(conn, "lost_unwritten", "0")
    _bump(conn, "lost_unwritten", count)


def stop_writing(conn: sqlite3.Connection, lost: int = 0) -> None:
    """Record ``lost`` readings (never written) and the clean-stop mark in one transaction.

    Raises ``DatabaseError`` when that cannot be written (disk still full): then nothing of
    it was recorded. Checkpointing is the caller's next step.
    """
    with _writing(conn, "marking a clean stop"):
        if lost:
            _add_lost(conn, lost)
        _set_meta(conn, "writer_state", "stopped")


# --------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class Measurement:
    """What the pruner measures: room to write (disk free + reusable pages) and live size."""

    free_bytes: int
    live_bytes: int


@dataclass(frozen=True)
class Budget:
    """The limits of ``[database]`` in bytes, plus the headroom kept above the floor."""

    floor_bytes: int
    max_live_bytes: int | None
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES

    @classmethod
    def from_config(
        cls, config: DatabaseConfig, headroom_bytes: int = DEFAULT_HEADROOM_BYTES
    ) -> Budget:
        """Budget of a ``DatabaseConfig`` (GB = 10^9 bytes, MB = 10^6 bytes)."""
        max_live = None if config.max_db_mb is None else int(config.max_db_mb * MB)
        return cls(int(config.storage_limit_gb * GB), max_live, headroom_bytes)


def backlog_budget_bytes(
    config: DatabaseConfig, free_disk: Callable[[Path], int] = free_disk_bytes
) -> tuple[int, str]:
    """How many bytes of readings the disk budget holds, and what limits it (for a forecast).

    The smaller of ``max_db_mb`` and the free disk above ``storage_limit_gb`` and the headroom
    (measured where the database is, or its nearest existing parent directory).
    """
    where = Path(config.path)
    try:
        while not where.exists() and where.parent != where:
            where = where.parent
    except OSError as exc:  # a name longer than the file system allows
        raise DatabaseError(f"{_shorten(config.path)}: cannot measure: {exc.strerror}") from exc
    budget = Budget.from_config(config)
    free = max(0, free_disk(where) - budget.floor_bytes - budget.headroom_bytes)
    if budget.max_live_bytes is not None and budget.max_live_bytes <= free:
        return budget.max_live_bytes, f"max_db_mb {config.max_db_mb:g}"
    return free, f"free disk above storage_limit_gb {config.storage_limit_gb:g}"


def bytes_to_free(measurement: Measurement, budget: Budget, *, pruning: bool = False) -> int:
    """Pure: how many bytes of readings must go, 0 when within budget.

    Pruning starts when room drops below floor + headroom, or the live size exceeds the cap.
    Once pruning (``pruning=True``) it goes on to 5 % beyond either limit, so that it does not
    fire again on the very next batch (hysteresis).
    """
    need = 0
    low_water = budget.floor_bytes + budget.headroom_bytes
    target = low_water + int(low_water * HYSTERESIS)
    if measurement.free_bytes < (target if pruning else low_water):
        need = target - measurement.free_bytes
    if budget.max_live_bytes is not None:
        cap = budget.max_live_bytes
        cap_target = cap - int(cap * HYSTERESIS)
        if measurement.live_bytes > (cap_target if pruning else cap):
            need = max(need, measurement.live_bytes - cap_target)
    return need


@dataclass(frozen=True)
class PrunePlan:
    """Pure estimate of what a prune would delete, oldest first in each class."""

    bytes_to_free: int
    sent: int
    rejected: int
    unsent: int


def plan_prune(
    measurement: Measurement,
    budget: Budget,
    *,
    sent: int,
    rejected: int,
    unsent: int,
    bytes_per_row: float,
) -> PrunePlan:
    """Pure: rows to delete per class, sent first, then rejected, then unsent."""
    need = bytes_to_free(measurement, budget)
    if need == 0:
        return PrunePlan(0, 0, 0, 0)
    rows = math.ceil(need / max(bytes_per_row, 1.0))
    take_sent = min(sent, rows)
    take_rejected = min(rejected, rows - take_sent)
    take_unsent = min(unsent, rows - take_sent - take_rejected)
    return PrunePlan(need, take_sent, take_rejected, take_unsent)


@dataclass(frozen=True)
class PruneReport:
    """What one maintenance pass did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    bytes_to_free: int = 0
    deleted_sent: int = 0
    deleted_rejected: int = 0
    deleted_unsent: int = 0
    unsent_ranges: tuple[tuple[int, int], ...] = ()
    freed_bytes: int = 0
    reason: str = ""
    warning: str | None = None
    vacuumed_bytes: int | None = None
    plan: PrunePlan | None = None

    @property
    def deleted(self) -> int:
        """Readings deleted (or, for a dry run, that would be)."""
        if self.dry_run and self.plan is not None:
            return self.plan.sent + self.plan.rejected + self.plan.unsent
        return self.deleted_sent + self.deleted_rejected + self.deleted_unsent

    @property
    def idle(self) -> bool:
        """True when nothing was needed: ``nixlog prune`` stays silent."""
        return self.bytes_to_free == 0 and self.vacuumed_bytes is None and self.warning is None


def _measure(conn: sqlite3.Connection, free_disk: Callable[[Path], int]) -> Measurement:
    with _reading(conn, "measuring the database"):
        page_size, page_count, freelist = _page_figures(conn)
    path = _path_of(conn)
    wal = path.with_name(path.name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    # Deleting rows does not shrink the file: its free pages are room too, or a pruner that
    # watches only the disk would delete everything. The WAL is room as well: it is bounded
    # (autocheckpoint, journal_size_limit), reused after each checkpoint, and paid for by
    # the headroom; without this, the WAL growing under a DELETE would look like a loss.
    # The reserve is ours to give back, so releasing or restoring it is no loss or gain.
    return Measurement(
        free_bytes=free_disk(path) + freelist * page_size + wal_bytes + _reserve_size(path),
        live_bytes=(page_count - freelist) * page_size,
    )


def _reason(measurement: Measurement, budget: Budget) -> str:
    low_water = budget.floor_bytes + budget.headroom_bytes
    parts = []
    if measurement.free_bytes < low_water:
        parts.append(
            f"free space {measurement.free_bytes / MB:.1f} MB is below "
            f"{budget.floor_bytes / MB:.1f} MB + {budget.headroom_bytes / MB:.1f} MB headroom"
        )
    if budget.max_live_bytes is not None and measurement.live_bytes > budget.max_live_bytes:
        parts.append(
            f"database holds {measurement.live_bytes / MB:.1f} MB, over max_db_mb "
            f"{budget.max_live_bytes / MB:.1f}"
        )
    return "; ".join(parts)


def reserve_path(path: Path) -> Path:
    """Where the disk-full reserve of the database at ``path`` lives."""
    return path.with_name(path.name + ".reserve")


def _reserve_size(path: Path) -> int:
    try:
        return reserve_path(path).stat().st_size
    except OSError:
        return 0


def _release_reserve(path: Path) -> bool:
    """Give the reserve back to the filesystem; True when there was one."""
    try:
        reserve_path(path).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("%s: cannot release the disk reserve: %s", path, exc.strerror)
        return False
    log.warning(
        "%s: disk full: released the %d MiB reserve so that pruning can commit",
        path,
        RESERVE_BYTES // (1024 * 1024),
    )
    return True


def ensure_reserve(path: Path, free_disk: Callable[[Path], int] = free_disk_bytes) -> bool:
    """Create the reserve file if it is missing and the disk has room for it twice over.

    Written with zeros and fsynced (a sparse file would reserve nothing). True when a reserve
    exists afterwards. Never raises: a missing reserve only matters on a full disk.
    """
    reserve = reserve_path(path)
    if reserve.exists():
        return True
    try:
        if free_disk(path) < 2 * RESERVE_BYTES:
            return False
        fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except (OSError, DatabaseError):
        return False
    try:
        os.write(fd, bytes(RESERVE_BYTES))
        os.fsync(fd)
    except OSError:
        os.close(fd)
        reserve.unlink(missing_ok=True)
        return False
    os.close(fd)
    return True


def _restore_reserve(conn: sqlite3.Connection, free_disk: Callable[[Path], int]) -> bool:
    """``ensure_reserve``, giving free pages back to the filesystem first if it needs room.

    When our own database filled the disk, pruning frees pages inside the file but not on the
    disk, so the reserve could never come back. An incremental database (every one created
    since auto_vacuum was set) hands just enough pages back for the reserve to fit.
    """
    path = _path_of(conn)
    if reserve_path(path).exists():
        return True
    if free_disk(path) < 2 * RESERVE_BYTES:
        _give_back_free_pages(conn, free_disk)
    return ensure_reserve(path, free_disk)


def _give_back_free_pages(conn: sqlite3.Connection, free_disk: Callable[[Path], int]) -> int:
    """Truncate free pages off the file until the reserve fits twice; return the bytes given.

    Only an incremental database can (``PRAGMA auto_vacuum`` 2); an older one returns 0
    until a VACUUM (``nixlog prune --vacuum``) converts it. Never raises: on a disk too full
    even for this, the reserve simply stays missing, as before.
    """
    path = _path_of(conn)
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != AUTO_VACUUM_INCREMENTAL:
            return 0
        # The WAL first: the prune's own deletes may be what holds the room.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        missing = 2 * RESERVE_BYTES - free_disk(path)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        pages = min(free_pages, math.ceil(missing / page_size))
        if pages <= 0:
            return 0
        # executescript steps the pragma to its end; execute() stops after its first step,
        # which frees a single page.
        conn.executescript(f"PRAGMA incremental_vacuum({pages});")
        # The file shrinks when the WAL is copied back into it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except (sqlite3.Error, OSError, DatabaseError) as exc:
        log.warning("%s: cannot give free pages back to the disk: %s", path, exc)
        return 0
    log.info("%s: gave %d free pages back to the disk for the reserve", path, pages)
    return int(pages * page_size)


def prune_database(
    conn: sqlite3.Connection,
    config: DatabaseConfig,
    *,
    dry_run: bool = False,
    free_disk: Callable[[Path], int] = free_disk_bytes,
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
    max_chunk_rows: int = MAX_CHUNK_ROWS,
    outputs: Sequence[str] = (API_OUTPUT,),
) -> PruneReport:
    """One maintenance pass: delete oldest readings until the budget holds again.

    Sent first, then rejected, then (only if it must) unsent, each in chunks by id range of
    one transaction, re-measuring after each. Unsent losses are counted in ``meta`` and
    logged. A reading is sent only when every output in ``outputs`` has it; an unsent one
    dropped is counted for each output that lacked it. Stops early, with a warning, when a
    chunk frees nothing measurable (something else is filling the disk: deleting more of our
    data would not help). Never VACUUMs; an incremental file may hand free pages back to the
    disk when the reserve needs the room (``_restore_reserve``).
    """
    budget = Budget.from_config(config, headroom_bytes)
    measurement = _measure(conn, free_disk)
    need = bytes_to_free(measurement, budget)
    if need == 0:
        if not dry_run:
            _restore_reserve(conn, free_disk)
        return PruneReport(dry_run=dry_run)
    reason = _reason(measurement, budget)
    with _reading(conn, "planning the prune"):
        counts = _counts(conn)
    bytes_per_row = measurement.live_bytes / max(counts.rows, 1)
    if dry_run:
        plan = plan_prune(
            measurement,
            budget,
            sent=counts.sent,
            rejected=counts.rejected,
            unsent=counts.unsent,
            bytes_per_row=bytes_per_row,
        )
        return PruneReport(dry_run=True, bytes_to_free=need, reason=reason, plan=plan)

    path = _path_of(conn)
    if free_disk(path) < RESERVE_BYTES:
        _release_reserve(path)
    total = _Chunk()
    chunks: list[_Chunk] = []
    warning: str | None = None
    start = measurement
    need = bytes_to_free(measurement, budget, pruning=True)
    for phase in ("sent", "rejected", "unsent"):
        while need > 0:
            rows = max(MIN_CHUNK_ROWS, min(max_chunk_rows, math.ceil(need / bytes_per_row)))
            chunk = _delete_chunk(conn, phase, rows, outputs)
            if chunk is None:
                break  # this class is exhausted: on to the next one
            chunks.append(chunk)
            total = total + chunk
            measurement = _measure(conn, free_disk)
            still_needed = bytes_to_free(measurement, budget, pruning=True)
            # A few rows may share a page that stays in use; many rows must bring the goal
            # closer, or deleting more of our data would not help: something else is eating
            # the disk. Never delete everything on a measurement that does not move.
            if still_needed >= need and chunk.total * bytes_per_row >= _MEASURABLE_BYTES:
                warning = (
                    f"deleting {chunk.total} readings freed no space (something else is "
                    "filling the disk?): stopped pruning"
                )
                log.warning("%s: %s", _path_of(conn), warning)
                need = 0
                break
            need = still_needed
    unsent_ranges = tuple((c.first, c.last) for c in chunks if c.unsent)
    _restore_reserve(conn, free_disk)
    if total.unsent:
        log.warning(
            "%s: disk budget forced dropping %d UNSENT readings (ids %s)",
            _path_of(conn),
            total.unsent,
            ", ".join(f"{a}-{b}" for a, b in unsent_ranges),
        )
    if total.sent or total.rejected:
        log.info(
            "%s: pruned %d sent and %d rejected readings (%s)",
            _path_of(conn),
            total.sent,
            total.rejected,
            reason,
        )
    return PruneReport(
        bytes_to_free=bytes_to_free(start, budget),
        deleted_sent=total.sent,
        deleted_rejected=total.rejected,
        deleted_unsent=total.unsent,
        unsent_ranges=unsent_ranges,
        freed_bytes=max(0, measurement.free_bytes - start.free_bytes),
        reason=reason,
        warning=warning,
    )


@dataclass(frozen=True)
class _Chunk:
    """Readings one prune transaction deleted, by class, and the id range it covered."""

    sent: int = 0
    rejected: int = 0
    unsent: int = 0
    first: int = 0
    last: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.rejected + self.unsent

    def __add__(self, other: _Chunk) -> _Chunk:
        return _Chunk(
            self.sent + other.sent,
            self.rejected + other.rejected,
            self.unsent + other.unsent,
            self.first or other.first,
            other.last,
        )


def _delete_chunk(
    conn: sqlite3.Connection, phase: str, rows: int, outputs: Sequence[str] = (API_OUTPUT,)
) -> _Chunk | None:
    """Delete up to ``rows`` oldest readings of one class in one transaction.

    Returns None when the class has nothing left. Each phase keeps the module's invariant.
    "Sent" means every output in ``outputs`` has the reading.
    """
    with _writing(conn, f"pruning {phase} readings"):
        upto = _sent_upto(conn)
        others = {o: _output_mark(conn, o) for o in outputs if o != API_OUTPUT}
        api_on = API_OUTPUT in outputs or not others
        floor = min(others.values(), default=upto)  # what every other output has
        sent_bound = min(upto, floor) if api_on else floor
        if phase == "sent":
            bounds = _chunk_bounds(
                conn, "id <= :upto AND id NOT IN (SELECT id FROM rejected_ids)", sent_bound, rows
            )
            if bounds is None:
                return None
            cursor = conn.execute(
                "DELETE FROM reading_rows WHERE id <= ? "
                "AND id NOT IN (SELECT id FROM rejected_ids)",
                (bounds[1],),
            )
            _bump(conn, "pruned_sent", cursor.rowcount)
            return _Chunk(sent=cursor.rowcount, first=bounds[0], last=bounds[1])
        if phase == "rejected":
            # Only rejected rows below the first row that is not rejected: after the sent
            # phase that is all of them up to the mark, and the table keeps no holes.
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM rejected_ids WHERE id <= :upto AND id <= :floor "
                    "AND id < coalesce(("
                    "SELECT id FROM reading_rows WHERE id NOT IN (SELECT id FROM rejected_ids) "
                    "ORDER BY id LIMIT 1), :upto + 1) ORDER BY id LIMIT :rows",
                    {"upto": upto, "rows": rows, "floor": floor},
                )
            ]
            if not ids:
                return None
            payload = json.dumps(ids)
            cursor = conn.execute(
                "DELETE FROM reading_rows WHERE id IN (SELECT value FROM json_each(?))",
                (payload,),
            )
            conn.execute(
                "DELETE FROM rejected_ids WHERE id IN (SELECT value FROM json_each(?))",
                (payload,),
            )
            _bump(conn, "pruned_rejected", cursor.rowcount)
            return _Chunk(rejected=cursor.rowcount, first=ids[0], last=ids[-1])
        bounds = _chunk_bounds(conn, "id > :upto", sent_bound, rows)
        if bounds is None:
            return None
        first, last = bounds
        window = {"upto": sent_bound, "last": last}
        rejected = conn.execute(
            "SELECT count(*) FROM rejected_ids WHERE id > :upto AND id <= :last", window
        ).fetchone()[0]
        lost: dict[str, int] = {}
        if api_on:
            lost[API_OUTPUT] = _lacking(conn, upto, last, api=True)
        for output, mark in others.items():
            lost[output] = _lacking(conn, mark, last, api=False)
        cursor = conn.execute("DELETE FROM reading_rows WHERE id <= ?", (last,))
        conn.execute("DELETE FROM sent_ahead_ids WHERE id <= ?", (last,))
        conn.execute("DELETE FROM rejected_ids WHERE id <= ?", (last,))
        # Dropped readings are settled for good: every mark moves past them.
        _set_meta(conn, "sent_upto", str(max(upto, last)))
        for output, mark in others.items():
            _set_output_mark(conn, output, max(mark, last))
        # The overall count is the worst output's: the readings some output never got.
        unsent = max(lost.values(), default=0)
        sent = max(0, cursor.rowcount - unsent - rejected)
        _bump(conn, "pruned_sent", sent)
        _bump(conn, "pruned_rejected", rejected)
        _bump(conn, "pruned_unsent", unsent)
        for output, count in lost.items():
            if count:
                key = f"pruned_unsent.{output}"
                _set_meta(conn, key, str(int(_meta(conn, key) or 0) + count))
        recorded = json.loads(_meta(conn, "pruned_unsent_ranges") or "[]")
        recorded.append([first, last, unsent, datetime.now(UTC).isoformat(timespec="seconds")])
        _set_meta(conn, "pruned_unsent_ranges", json.dumps(recorded[-MAX_RECORDED_RANGES:]))
        return _Chunk(sent=sent, rejected=rejected, unsent=unsent, first=first, last=last)


def _lacking(conn: sqlite3.Connection, mark: int, last: int, *, api: bool) -> int:
    """Rows in ``(mark, last]`` an output does not have (for api: not ahead, not rejected)."""
    if last <= mark:
        return 0
    window = {"mark": mark, "last": last}
    count = int(
        conn.execute(
            "SELECT count(*) FROM reading_rows WHERE id > :mark AND id <= :last", window
        ).fetchone()[0]
    )
    if api:
        count -= int(
            conn.execute(
                "SELECT (SELECT count(*) FROM sent_ahead_ids WHERE id > :mark AND id <= :last)"
                " + (SELECT count(*) FROM rejected_ids WHERE id > :mark AND id <= :last)",
                window,
            ).fetchone()[0]
        )
    return max(0, count)


def _chunk_bounds(
    conn: sqlite3.Connection, where: str, upto: int, rows: int
) -> tuple[int, int] | None:
    """(first, last) id of the oldest ``rows`` rows matching ``where``, walking by id."""
    first_row = conn.execute(
        f"SELECT id FROM reading_rows WHERE {where} ORDER BY id LIMIT 1", {"upto": upto}
    ).fetchone()
    if first_row is None:
        return None
    last_row = conn.execute(
        f"SELECT id FROM reading_rows WHERE {where} ORDER BY id LIMIT 1 OFFSET :skip",
        {"upto": upto, "skip": rows - 1},
    ).fetchone()
    if last_row is None:
        last_row = conn.execute(
            f"SELECT max(id) FROM reading_rows WHERE {where}", {"upto": upto}
        ).fetchone()
    return int(first_row[0]), int(last_row[0])


def _bump(conn: sqlite3.Connection, key: str, amount: int) -> None:
    if amount:
        conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (amount, key)
        )


def vacuum_database(
    conn: sqlite3.Connection,
    *,
    free_disk: Callable[[Path], int] = free_disk_bytes,
) -> int:
    """Shrink the file by VACUUM, on request only; return the bytes given back to the disk.

    VACUUM writes a full copy of the live data to a temporary file and again through the WAL,
    so it needs about twice the live size free: refuse (``DatabaseError``) without it.
    """
    path = _path_of(conn)
    with _reading(conn, "measuring before VACUUM"):
        page_size, page_count, freelist = _page_figures(conn)
    if freelist == 0:
        return 0
    live = (page_count - freelist) * page_size
    room = free_disk(path)
    needed = 2 * live + DEFAULT_HEADROOM_BYTES
    if room < needed:
        raise DatabaseError(
            f"{path}: not enough free disk for VACUUM (needs about {needed / MB:.0f} MB, "
            f"{room / MB:.0f} MB free); nothing was changed"
        )
    before = _file_bytes(path)
    try:
        # An older file becomes incremental here (see _give_back_free_pages).
        conn.execute(f"PRAGMA auto_vacuum = {AUTO_VACUUM_INCREMENTAL}")
        conn.execute("VACUUM")
    except sqlite3.Error as exc:
        raise _translate(exc, path, "vacuuming") from exc
    checkpoint(conn, truncate=True)
    return max(0, before - _file_bytes(path))


__all__ = [
    "SENT_DELIVERED",
    "SENT_REJECTED",
    "SENT_UNSENT",
    "Budget",
    "DbStats",
    "Measurement",
    "PrunePlan",
    "PruneReport",
    "batch_insert_readings",
    "bytes_to_free",
    "checkpoint",
    "close",
    "count_unsent",
    "free_disk_bytes",
    "get_epoch",
    "get_unsent_readings",
    "id_span",
    "init_db",
    "iter_readings",
    "mark_readings_as_sent",
    "mark_readings_rejected",
    "open_db",
    "plan_prune",
    "prune_database",
    "record_publish",
    "stats",
    "vacuum_database",
    "value_keys",
]
