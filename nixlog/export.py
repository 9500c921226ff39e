"""CSV export of stored readings (``nixlog export``), streamed in constant memory.

Columns: ``id,timestamp,device_id,<register names in config order, then any others>,sent``;
with plant devices ``id,timestamp,device_id,device,...``: the ``device`` column appears when
the config is a plant (``[[bus]]``), when ``--device`` selects one, or when some stored reading
carries a device (a flat config's export of a flat database stays exactly as it was).
"Any others" are value keys found in the selected rows that the config does not list (a
register renamed or removed since): a first pass asks SQLite for the distinct keys of the
same selection (``database.value_keys``), so memory grows with the number of keys, never
with the number of rows. Values are written as stored: numbers in their JSON form, booleans
as ``true``/``false``, strings as they are; a missing value is an empty cell.

Formula injection: a spreadsheet runs a cell starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return as a formula, so a device string ``=cmd|' /C calc'!A0`` must not reach it
verbatim. Text cells (string values, the device id, header names) that start so get a
leading ``'``. Numbers stay numbers: a stored ``-3.5`` is written ``-3.5`` (it is a float in
the database, never text, so it cannot carry a formula).
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, TextIO

from nixlog import database
from nixlog.config import Config
from nixlog.errors import UsageError
from nixlog.model import StoredReading

_SPAN_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_SPAN_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PROGRESS_EVERY: Final = 1000
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
# Past these, datetime arithmetic and SQLite's text timestamps stop working.
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


def parse_when(text: str, now: datetime | None = None, option: str = "--since") -> datetime:
    """Read ``--since``/``--until``: an ISO date or date-time, or a span back from ``now``.

    ``2026-11-26``, ``2026-11-26T08:00``, ``2026-11-26 08:00:00+02:00``, ``90m``, ``24h``,
    ``7d`` (also ``s`` and ``w``). Without an offset a date-time is the machine's local time.
    Returns an aware datetime; raises ``UsageError`` (exit 2) with one line otherwise.
    """
    current = (now or datetime.now().astimezone()).astimezone()
    shown = text if len(text) <= 60 else text[:60] + "…"
    out_of_range = UsageError(
        f'{option}: "{shown}" is out of range (from 1970-01-01 to 9998-12-31 UTC)'
    )
    match = _SPAN_RE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        try:
            moment = current - timedelta(seconds=amount * _SPAN_SECONDS[unit])
        except OverflowError:  # "99999999999999d": past what a timedelta or datetime holds
            raise out_of_range from None
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f'{option}: cannot read "{shown}": expected an ISO date or date-time '
                "(2026-11-26, 2026-11-26T08:00, with an optional +02:00) or a span "
                "like 90m, 24h, 7d"
            ) from None
    try:
        # astimezone() on a naive datetime takes it as local time, as users mean it.
        if moment.tzinfo is None:
            moment = moment.astimezone()
        in_range = _EARLIEST <= moment.astimezone(UTC) < _LATEST
    except (OverflowError, ValueError, OSError):  # 0001-01-01 or 9999-12-31T23:59-12:00
        in_range = False
    if not in_range:
        raise out_of_range
    return moment


def csv_columns(
    register_names: Sequence[str], found_keys: set[str], *, with_device: bool = False
) -> list[str]:
    """The header: fixed columns, registers in config order, other keys sorted, ``sent``."""
    known = set(register_names)
    others = sorted(found_keys - known)
    fixed = ["id", "timestamp", "device_id", *(["device"] if with_device else [])]
    return [*fixed, *register_names, *others, "sent"]


def register_names(config: Config, device: str | None = None) -> list[str]:
    """Value columns in config order: every device's registers (names once), or one's.

    A plant config refuses a device it does not know (``ConfigError`` with the nearest
    name); a flat config may still filter its database by a device name.
    """
    chosen = device is not None and config.is_plant
    devices = [config.find_device(device)[1]] if chosen and device else config.devices()
    names: dict[str, None] = {}
    for plant_device in devices:
        names.update((register.name, None) for register in plant_device.registers)
    return list(names)


def safe_text(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (a leading ``'`` when needed).

    A carriage return becomes a line feed: with ``\n`` as the row terminator the csv module
    quotes a cell holding a line feed but not one holding a lone CR, which a reader then takes
    for the end of the row, shifting every later column.
    """
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def format_value(value: object) -> str:
    """One cell, as stored: JSON numbers and booleans, raw strings, empty for missing/null."""
    # Fast paths by exact type (this runs once per cell of millions of rows); repr of a
    # finite float is its JSON text, and stored floats are always finite.
    kind = type(value)
    if value is None:
        return ""
    if kind is str:
        return safe_text(value)  # type: ignore[arg-type]
    if kind is bool:
        return "true" if value else "false"
    if kind is float or kind is int:
        return repr(value)
    return json.dumps(value)


def csv_row(
    reading: StoredReading, value_columns: Sequence[str], *, with_device: bool = False
) -> list[str]:
    """One CSV record for ``reading`` with the value columns in header order."""
    values = reading.values
    device = [safe_text(reading.device or "")] if with_device else []
    return [
        str(reading.id),
        reading.timestamp,
        safe_text(reading.device_id),
        *device,
        *(format_value(values.get(name)) for name in value_columns),
        str(reading.sent_flag),
    ]


def export_csv(
    conn: sqlite3.Connection,
    out: TextIO,
    register_names: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    unsent_only: bool = False,
    on_progress: Callable[[int], None] | None = None,
    units: Mapping[str, str] | None = None,
    device: str | None = None,
    with_device: bool = False,
) -> int:
    """Write the selected readings to ``out`` as CSV; return the number of rows written.

    ``units`` (register name → unit) labels those columns ``voltage_l1 [V]`` in the header.

    ``on_progress(id)`` is called every ``PROGRESS_EVERY`` rows and at the end with the id
    just written (ids grow with insertion order, so the id span is a cheap progress total).
    ``device`` keeps one plant device's readings; ``with_device`` adds the ``device`` column.
    """
    found = database.value_keys(conn, since, until, unsent_only, device)
    columns = csv_columns(register_names, found, with_device=with_device)
    value_columns = columns[4 if with_device else 3 : -1]
    writer = csv.writer(out, lineterminator="\n")
    labels = [
        f"{column} [{units[column]}]" if units and units.get(column) else column
        for column in columns
    ]
    writer.writerow([safe_text(label) for label in labels])
    written = 0
    last_id = 0
    for reading in database.iter_readings(conn, since, until, unsent_only, device=device):
        writer.writerow(csv_row(reading, value_columns, with_device=with_device))
        written += 1
        last_id = reading.id
        if on_progress is not None and written % PROGRESS_EVERY == 0:
            on_progress(last_id)
    if on_progress is not None and written:
        on_progress(last_id)
    return written
