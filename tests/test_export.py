"""`nixlog export`: WHEN parsing, CSV shape, filters, constant-memory streaming, the CLI."""

from __future__ import annotations

import csv
import io
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.errors import EXIT_USAGE, UsageError
from nixlog.export import csv_columns, export_csv, format_value, parse_when, safe_text
from nixlog.model import Reading
from tests.fixtures_db import BASE_TIME, REGISTER_NAMES, fill, make_reading

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW - timedelta(minutes=90)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2026-11-20T08:00:00+02:00", datetime(2026, 11, 20, 6, 0, tzinfo=UTC)),
        ("2026-11-20T08:00Z", datetime(2026, 11, 20, 8, 0, tzinfo=UTC)),
    ],
)
def test_parse_when_relative_and_absolute_with_offset(text: str, expected: datetime) -> None:
    """Spans count back from now; an ISO time with an offset means exactly that instant."""
    assert parse_when(text, NOW) == expected


def test_parse_when_without_offset_is_local_time() -> None:
    """A date or date-time without an offset is the machine's local time."""
    got = parse_when("2026-11-20", NOW)
    assert got == datetime(2026, 11, 20).astimezone()
    assert got.tzinfo is not None
    assert parse_when("2026-11-20 08:30", NOW) == datetime(2026, 11, 20, 8, 30).astimezone()


@pytest.mark.parametrize("text", ["yesterday", "7x", "2026-13-01", "", "-5h"])
def test_parse_when_refuses_nonsense(text: str) -> None:
    """A bad WHEN is a UsageError (exit 2) naming the option and the accepted forms."""
    with pytest.raises(UsageError, match="--until: cannot read") as caught:
        parse_when(text, NOW, option="--until")
    assert caught.value.exit_code == EXIT_USAGE
    assert "24h" in caught.value.message


def test_csv_columns_registers_in_config_order_then_others_sorted() -> None:
    """Header: id,timestamp,device_id, config order, then unknown keys sorted, then sent."""
    got = csv_columns(["b_reg", "a_reg"], {"a_reg", "zz_old", "b_reg", "aa_old"})
    assert got == ["id", "timestamp", "device_id", "b_reg", "a_reg", "aa_old", "zz_old", "sent"]


def test_format_value_as_stored() -> None:
    """Numbers keep their JSON form, booleans are true/false, missing/null is empty."""
    assert [format_value(v) for v in (230.5, 3, True, False, "ok", None)] == [
        "230.5",
        "3",
        "true",
        "false",
        "ok",
        "",
    ]


def _export(conn: sqlite3.Connection, **kwargs: object) -> list[list[str]]:
    out = io.StringIO()
    export_csv(conn, out, list(REGISTER_NAMES), **kwargs)  # type: ignore[arg-type]
    return list(csv.reader(io.StringIO(out.getvalue())))


def test_export_shape_values_missing_cells_and_sent_column(db: sqlite3.Connection) -> None:
    """Every row has every column; a failed register is an empty cell; sent is 0/1/2."""
    database.batch_insert_readings(
        db, "dev-1", [make_reading(0), make_reading(1, errors=True), make_reading(2)]
    )
    database.batch_insert_readings(
        db, "dev-1", [Reading("2026-11-26T12:00:03.000000+00:00", {"old_name": "x,y"})]
    )
    database.mark_readings_rejected(db, [2])
    database.mark_readings_as_sent(db, [1])
    rows = _export(db)
    assert rows[0] == [
        "id",
        "timestamp",
        "device_id",
        "voltage_l1",
        "current_l1",
        "breaker_closed",
        "old_name",
        "sent",
    ]
    assert rows[1] == ["1", make_reading(0).timestamp, "dev-1", "230.0", "0", "true", "", "1"]
    assert rows[2][4] == ""  # current_l1 failed in reading 1
    assert rows[2][-1] == "2"
    assert rows[3][-1] == "0"
    assert rows[4][3:] == ["", "", "", "x,y", "0"]
    assert all(len(row) == 8 for row in rows)


def test_export_since_until_and_unsent_filters(db: sqlite3.Connection) -> None:
    """since is inclusive, until exclusive; --unsent drops sent and rejected rows."""
    fill(db, 100)
    database.mark_readings_as_sent(db, list(range(1, 51)))
    since = BASE_TIME + timedelta(seconds=10)
    until = BASE_TIME + timedelta(seconds=20)
    ids = [int(r[0]) for r in _export(db, since=since, until=until)[1:]]
    assert ids == list(range(11, 21))
    # The same instant given in another zone selects the same rows.
    other_zone = since.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert [int(r[0]) for r in _export(db, since=other_zone, until=until)[1:]] == ids
    unsent = [int(r[0]) for r in _export(db, unsent_only=True)[1:]]
    assert unsent == list(range(51, 101))


def test_export_filters_by_timestamp_even_when_the_clock_jumped(db: sqlite3.Connection) -> None:
    """Timestamps out of id order (a Pi without RTC) are still filtered by time, in id order."""
    times = [BASE_TIME + timedelta(hours=h) for h in (5, 6, 0, 1, 7)]
    database.batch_insert_readings(
        db, "dev-1", [make_reading(i, at=t) for i, t in enumerate(times)]
    )
    ids = [int(r[0]) for r in _export(db, since=BASE_TIME + timedelta(hours=5, minutes=30))[1:]]
    assert ids == [2, 5]


def test_export_streams_in_chunks(db: sqlite3.Connection) -> None:
    """iter_readings pages by id, so every row comes exactly once across chunk boundaries."""
    fill(db, 2345)
    got = [r.id for r in database.iter_readings(db, chunk_rows=100)]
    assert got == list(range(1, 2346))


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_cli_export_to_stdout(config_file: Path, db_path: Path) -> None:
    """`nixlog export --since` writes CSV on stdout and nothing else."""
    conn = database.open_db(db_path)
    fill(conn, 30)
    conn.close()
    code, out, err = _cli("export", "-c", str(config_file), "--since", "2026-11-26T12:00:20Z")
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "id,timestamp,device_id,voltage_l1,current_l1,breaker_closed,sent"
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(21, 31)]


def test_cli_export_to_file_with_relative_since(
    config_file: Path, db_path: Path, tmp_path: Path
) -> None:
    """--output writes the file (no .part left) and reports on stderr; 24h selects recent rows."""
    conn = database.open_db(db_path)
    now = datetime.now(UTC)
    database.batch_insert_readings(
        conn,
        "dev-1",
        [
            make_reading(0, at=now - timedelta(hours=30)),
            make_reading(1, at=now - timedelta(hours=1)),
        ],
    )
    conn.close()
    target = tmp_path / "out.csv"
    code, out, err = _cli("export", "-c", str(config_file), "--since", "24h", "-o", str(target))
    assert code == 0
    assert out == ""
    assert "Wrote 1 reading to" in err
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [row[0] for row in rows[1:]] == ["2"]
    assert not target.with_name("out.csv.part").exists()


def test_cli_export_bad_since_is_a_usage_error(config_file: Path) -> None:
    """A bad --since exits 2 with one Error line, before touching the database."""
    code, out, err = _cli("export", "-c", str(config_file), "--since", "last tuesday")
    assert code == EXIT_USAGE
    assert out == ""
    assert err.startswith("Error: --since: cannot read")
    assert len(err.strip().splitlines()) == 1


def test_cli_export_unwritable_output(config_file: Path, db_path: Path, tmp_path: Path) -> None:
    """An --output in a missing directory is one clear line, exit 2."""
    database.open_db(db_path).close()
    code, _, err = _cli("export", "-c", str(config_file), "-o", str(tmp_path / "no" / "x.csv"))
    assert code == EXIT_USAGE
    assert "cannot write" in err


@pytest.mark.parametrize(
    "text", ["99999999999999d", "3000000d", "0001-01-01", "9999-12-31T23:59:59-12:00"]
)
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_cli_export_out_of_range_times_are_one_usage_line(
    config_file: Path, text: str, option: str
) -> None:
    """A --since/--until past what a date can hold is one `out of range` line, exit 2."""
    code, out, err = _cli("export", "-c", str(config_file), option, text)
    assert code == EXIT_USAGE
    assert out == ""
    assert err.strip() == (
        f'Error: {option}: "{text}" is out of range (from 1970-01-01 to 9998-12-31 UTC)'
    )


def test_cli_export_to_a_directory_is_refused_before_reading(tmp_path: Path) -> None:
    """`export -o DIR` is one usage line (exit 2), checked before the config is even read."""
    code, out, err = _cli("export", "-c", str(tmp_path / "missing.toml"), "-o", str(tmp_path))
    assert code == EXIT_USAGE
    assert out == ""
    assert err.strip() == f"Error: --output: {tmp_path} is a directory; give a file name"


def test_csv_text_cells_that_look_like_formulas_get_a_quote(db: sqlite3.Connection) -> None:
    """Strings and header names starting =, +, -, @, tab or CR get a leading ', numbers do not."""
    hostile = ["=cmd|' /C calc'!A0", "+1", "-2-3", "@SUM(A1)", "\tx", "plain", "a=b"]
    values: dict[str, int | float | bool | str] = {
        f"s{i}": text for i, text in enumerate(hostile)
    }
    values.update({"neg": -3.5, "negint": -7, "-old": "x"})
    database.batch_insert_readings(db, "-dev", [Reading(timestamp=NOW.isoformat(), values=values)])
    out = io.StringIO()
    export_csv(db, out, [f"s{i}" for i in range(len(hostile))] + ["neg", "negint"])
    header, row = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    cells = dict(zip(header, row, strict=True))
    assert [cells[f"s{i}"] for i in range(len(hostile))] == [
        "'=cmd|' /C calc'!A0",
        "'+1",
        "'-2-3",
        "'@SUM(A1)",
        "'\tx",
        "plain",
        "a=b",
    ]
    assert (cells["neg"], cells["negint"]) == ("-3.5", "-7")  # numbers stay numbers
    assert cells["device_id"] == "'-dev"
    assert "'-old" in header  # a key no longer in the map, named like a formula


def test_safe_text_covers_every_formula_start() -> None:
    """Each of = + - @ tab CR at the start gets the quote; elsewhere in the text it does not."""
    for start in ("=", "+", "-", "@", "\t"):
        assert safe_text(f"{start}x") == f"'{start}x"
        assert safe_text(f"x{start}") == f"x{start}"
    assert safe_text("\rx") == "'\nx"  # quoted for the CR, which then becomes a line feed
    assert safe_text("") == ""


def test_a_carriage_return_in_a_text_cell_keeps_the_row_whole(db: sqlite3.Connection) -> None:
    """A CR (alone or in CRLF) inside a string is a line feed in a quoted cell, not a row end."""
    values: dict[str, int | float | bool | str] = {"a": "one\rtwo", "b": "x\r\ny", "c": 1}
    database.batch_insert_readings(db, "dev", [Reading(timestamp=NOW.isoformat(), values=values)])
    out = io.StringIO()
    export_csv(db, out, ["a", "b", "c"])
    header, row = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    cells = dict(zip(header, row, strict=True))
    assert (cells["a"], cells["b"], cells["c"]) == ("one\ntwo", "x\ny", "1")
    assert "\r" not in out.getvalue()
