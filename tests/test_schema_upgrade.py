"""Schema 2 (the device column): a version-1 database with data is upgraded in place.

The version-1 file is built with the version-1 schema statements and plain SQL, as nixlog 1
wrote it; ``V1_EXPORT`` is what nixlog's version-1 code exported from exactly this file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from nixlog import database
from nixlog.api_client import transform_for_api
from nixlog.cli import app
from nixlog.model import Reading

V1_ROWS = [
    (1, "2026-11-01T10:00:00.000001+00:00", "logger7", '{"voltage":230.5,"on":true}', None),
    (2, "2026-11-01T10:00:01.000001+00:00", "logger7", '{"voltage":-1.25}', '{"on":"timeout"}'),
    (3, "2026-11-01T10:00:02.000001+00:00", "logger7", '{"voltage":231,"label":"=SUM(A1)"}', None),
    (4, "2026-11-01T10:00:03.000001+00:00", "logger7", '{"voltage":null,"on":false}', None),
    (5, "2026-11-01T10:00:04.000001+00:00", "logger7", '{"voltage":229.0}', None),
    (6, "2026-11-01T10:00:05.000001+00:00", "logger7", '{"old_name":7}', None),
]
V1_EXPORT = """\
id,timestamp,device_id,voltage,on,label,old_name,sent
1,2026-11-01T10:00:00.000001+00:00,logger7,230.5,true,,,1
2,2026-11-01T10:00:01.000001+00:00,logger7,-1.25,,,,1
3,2026-11-01T10:00:02.000001+00:00,logger7,231,,'=SUM(A1),,2
4,2026-11-01T10:00:03.000001+00:00,logger7,,false,,,1
5,2026-11-01T10:00:04.000001+00:00,logger7,229.0,,,,0
6,2026-11-01T10:00:05.000001+00:00,logger7,,,,7,1
"""
FLAT_CONFIG = """
[database]
path = "{db}"
[modbus]
port = "/dev/ttyUSB0"
[[modbus.registers_to_read]]
name = "voltage"
address = 0
[[modbus.registers_to_read]]
name = "on"
address = 0
kind = "coil"
"""


def make_v1_database(path: Path) -> None:
    """A version-1 file: 6 readings, sent up to 4, #3 rejected, #6 delivered ahead."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in database._SCHEMA_V1:
        conn.execute(statement)
    meta = {
        "epoch": "0badcafe",
        "created_at": "2026-11-01T00:00:00+00:00",
        "sent_upto": "4",
        "pruned_unsent_ranges": "[]",
        "pruned_sent": "0",
        "pruned_rejected": "0",
        "pruned_unsent": "0",
        "schema_version": "1",
    }
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
    conn.executemany(
        "INSERT INTO reading_rows(id, timestamp, cpu_id, data, errors) VALUES (?, ?, ?, ?, ?)",
        V1_ROWS,
    )
    conn.execute("INSERT INTO rejected_ids(id) VALUES (3)")
    conn.execute("INSERT INTO sent_ahead_ids(id) VALUES (6)")
    conn.execute("COMMIT")
    conn.close()


def test_upgrade_keeps_every_row_id_and_sent_mark(tmp_path: Path) -> None:
    """Opened by the new code: version 2, the same rows, ids, sent flags; devices None."""
    path = tmp_path / "v1.db"
    make_v1_database(path)
    conn = database.open_db(path)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version[0] == "2"
        rows = conn.execute(
            "SELECT id, timestamp, cpu_id, data, errors, sent_flag, device FROM readings"
        ).fetchall()
        assert [row[:5] for row in rows] == V1_ROWS
        assert [row[5] for row in rows] == [1, 1, 2, 1, 0, 1]
        assert {row[6] for row in rows} == {None}
        assert database.get_epoch(conn) == "0badcafe"
        assert [r.id for r in database.get_unsent_readings(conn, 10)] == [5]
        # A new plant reading continues the id sequence and keeps its device.
        first, last = database.batch_insert_readings(
            conn, "logger7", [Reading("2026-11-02T00:00:00.000000+00:00", {"v": 1}, device="m1")]
        ) or (0, 0)
        assert first == last == 7
        unsent = database.get_unsent_readings(conn, 10)
        assert [(r.id, r.device) for r in unsent] == [(5, None), (7, "m1")]
        body = transform_for_api("logger7", "0badcafe", unsent)
        assert "device" not in body["readings"][0]
        assert body["readings"][1]["device"] == "m1"
    finally:
        database.close(conn)


def test_export_of_the_old_rows_is_unchanged(tmp_path: Path) -> None:
    """`nixlog export` (flat config) after the upgrade prints exactly what version 1 did."""
    path = tmp_path / "v1.db"
    make_v1_database(path)
    config = tmp_path / "config.toml"
    config.write_text(FLAT_CONFIG.format(db=path), encoding="utf-8")
    result = CliRunner().invoke(app, ["export", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout == V1_EXPORT


def test_device_column_export_filter_and_stats(tmp_path: Path) -> None:
    """With device readings stored: CSV gains `device`, --device filters, db stats per device."""
    path = tmp_path / "v1.db"
    make_v1_database(path)
    conn = database.open_db(path)
    try:
        database.batch_insert_readings(
            conn,
            "logger7",
            [
                Reading("2026-11-02T00:00:00.000000+00:00", {"voltage": 1.5}, device="m1"),
                Reading("2026-11-02T00:00:01.000000+00:00", {"voltage": 2.5}, device="m2"),
                Reading("2026-11-02T00:00:02.000000+00:00", {"voltage": 3.5}, device="m1"),
            ],
        )
    finally:
        database.close(conn)
    config = tmp_path / "config.toml"
    config.write_text(FLAT_CONFIG.format(db=path), encoding="utf-8")
    result = CliRunner().invoke(app, ["export", "-c", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "id,timestamp,device_id,device,voltage,on,label,old_name,sent"
    assert lines[1] == "1,2026-11-01T10:00:00.000001+00:00,logger7,,230.5,true,,,1"
    assert lines[-1] == "9,2026-11-02T00:00:02.000000+00:00,logger7,m1,3.5,,,,0"
    result = CliRunner().invoke(app, ["export", "-c", str(config), "--device", "m1"])
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in result.stdout.splitlines()[1:]] == ["7", "9"]
    assert result.stdout.splitlines()[0] == "id,timestamp,device_id,device,voltage,on,sent"
    result = CliRunner().invoke(app, ["db", "stats", "--json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    devices = json.loads(result.stdout)["devices"]
    assert devices == [
        {"device": "m1", "rows": 2, "unsent": 2, "newest": "2026-11-02T00:00:02.000000+00:00"},
        {"device": "m2", "rows": 1, "unsent": 1, "newest": "2026-11-02T00:00:01.000000+00:00"},
        {"device": None, "rows": 6, "unsent": 1, "newest": "2026-11-01T10:00:05.000001+00:00"},
    ]
    human = CliRunner().invoke(app, ["db", "stats", "-c", str(config)])
    assert human.exit_code == 0, human.output
    assert "device m1" in human.stdout and "2 readings, 2 unsent" in human.stdout
