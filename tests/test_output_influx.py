"""The HTTP output's other formats: InfluxDB line protocol (a real influxd 1.x; the 2.x API
and ThingsBoard's device API against local receivers that check what their docs require)."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nixlog import core, database
from nixlog.api_client import ApiClient
from nixlog.cli import app
from nixlog.config import ApiConfig, Secret
from nixlog.model import Reading, StoredReading
from nixlog.outputs import formats
from nixlog.receiver import ReceivedRequest, Receiver, Reply
from tests.fixtures_db import fill
from tests.fixtures_influx import Influx


def _row(values: dict[str, Any], **kw: Any) -> StoredReading:
    fields: dict[str, Any] = {
        "id": 7,
        "timestamp": "2026-11-26T12:00:00.123456+00:00",
        "device_id": "gw-1",
        "values": values,
        "errors": {},
    }
    fields.update(kw)
    return StoredReading(**fields)


def test_line_protocol_types_escaping_and_nanoseconds() -> None:
    """Integers get ``i``, booleans true/false, strings quoted and escaped, ns exact."""
    line = formats.influx_line(
        _row(
            {"p": 1.5, "n": -3, "b": True, "s": 'say "hi", a=b \\ ok\nnext', "big": 1e20},
            device="meter 1,a=b",
        )
    )
    assert line == (
        "nixlog,device_id=gw-1,device=meter\\ 1\\,a\\=b "
        'p=1.5,n=-3i,b=true,s="say \\"hi\\", a=b \\\\ ok\nnext",big=1e+20 '
        "1795694400123456000"
    )


def test_line_protocol_leaves_out_what_it_cannot_carry() -> None:
    """NaN/inf values are left out; a reading with no value left is no line at all."""
    assert formats.influx_line(_row({"x": math.nan, "y": 2})) == (
        "nixlog,device_id=gw-1 y=2i 1795694400123456000"
    )
    assert formats.influx_line(_row({"x": math.inf}, errors={"y": "timeout"})) is None
    assert formats.influx_lines([_row({"x": math.nan})]) == ""


def test_timestamps_before_1970_and_far_ahead_are_exact() -> None:
    """Integer arithmetic, not floats: the microseconds survive at any date."""
    assert formats.timestamp_ns("1969-12-31T23:59:59.999999+00:00") == -1000
    assert formats.timestamp_ns("2200-01-01T00:00:00.000001+00:00") == 7258118400000001000


INFLUX_API = """
[api]
endpoint = "{url}"
format = "influx"
influx_db = "plant"
batch_size = {batch}
timeout_sec = 10
"""


def _export(config_file: Path) -> list[dict[str, str]]:
    result = CliRunner().invoke(app, ["export", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _ns(timestamp: str) -> int:
    moment = datetime.fromisoformat(timestamp)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def ship_and_compare(
    config_file: Path, db: sqlite3.Connection, influx: Influx, count: int, batch: int
) -> None:
    """Ship ``count`` readings with ``nixlog publish``; every point equals ``nixlog export``."""
    fill(db, count - 3, batch=1000)
    odd = 'quote " comma , equals = space  backslash \\ newline \n end'
    database.batch_insert_readings(
        db,
        "dev-1",
        [
            Reading("2030-01-01T00:00:00.000001+00:00", {"voltage_l1": 1.0, "label": odd}),
            Reading("2030-01-01T00:00:01.5+00:00", {"current_l1": -7}, {"voltage_l1": "timeout"}),
            Reading("2030-01-01T00:00:02+00:00", {"breaker_closed": False, "label": ""}),
        ],
    )
    config_file.write_text(
        config_file.read_text() + INFLUX_API.format(url=influx.url, batch=batch)
    )
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    assert f"Delivered {count} readings" in result.stdout
    points = {p["time"]: p for p in influx.rows("SELECT * FROM nixlog", "plant")}
    exported = _export(config_file)
    assert len(points) == len(exported) == count
    types = {
        r["fieldKey"]: r["fieldType"] for r in influx.rows("SHOW FIELD KEYS FROM nixlog", "plant")
    }
    assert types == {
        "voltage_l1": "float",
        "current_l1": "integer",
        "breaker_closed": "boolean",
        "label": "string",
    }
    for row in exported:
        point = points[_ns(row["timestamp"])]
        assert point["device_id"] == row["device_id"]
        for name in ("voltage_l1", "current_l1", "breaker_closed", "label"):
            cell, value = row.get(name, ""), point[name]
            if cell == "":
                assert value is None or (name == "label" and value == ""), (row, point)
            elif types[name] == "boolean":
                assert value is (cell == "true"), (row, point)
            elif types[name] == "string":
                assert value == cell.removeprefix("'"), (row, point)
            else:
                assert value == float(cell), (row, point)


def test_influx_1x_gets_every_value_tag_and_timestamp_as_export_shows_them(
    config_file: Path, db: sqlite3.Connection, influx: Influx
) -> None:
    """2,000 readings into a real InfluxDB 1.x equal ``nixlog export``, field by field."""
    ship_and_compare(config_file, db, influx, 2000, 500)


@pytest.mark.slow
def test_influx_1x_ten_thousand_readings(
    config_file: Path, db: sqlite3.Connection, influx: Influx
) -> None:
    """10,000 readings, batches of 1,000: the same, point for point."""
    ship_and_compare(config_file, db, influx, 10_000, 1000)


def test_influx_missing_database_is_an_endpoint_problem_rows_kept(
    config_file: Path, db: sqlite3.Connection, influx: Influx
) -> None:
    """``influx_db`` names no database: exit 78 naming api.endpoint, nothing marked sent."""
    fill(db, 5)
    config_file.write_text(
        config_file.read_text()
        + INFLUX_API.format(url=influx.url, batch=100).replace('"plant"', '"nosuch"')
    )
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file)])
    assert result.exit_code == 78, result.output
    assert "api.endpoint" in result.stderr and "database not found" in result.stderr
    assert database.count_unsent(db) == 5


class DocumentedApi(Receiver):
    """Answers as InfluxDB 2.x's write API or ThingsBoard's device API would, and records.

    Influx 2.x: ``POST /api/v2/write?org=&bucket=&precision=ns``, ``Authorization: Token``,
    a text body, 204. ThingsBoard: ``POST /api/v1/<token>/telemetry``, a JSON array of
    ``{"ts", "values"}``, 200; a wrong token is 401.
    """

    def __init__(self, check: Callable[[ReceivedRequest], int]) -> None:
        super().__init__(None)
        self.check_request = check
        self.seen: list[ReceivedRequest] = []
        self.seen_lock = threading.Lock()

    def handle(self, request: ReceivedRequest) -> Reply:
        """Record, then answer what the documented API answers."""
        with self.seen_lock:
            self.seen.append(request)
        return Reply(self.check_request(request))


def _api(endpoint: str, **kw: Any) -> ApiConfig:
    return ApiConfig(endpoint=endpoint, timeout_sec=2.0, **kw)


def test_influx_2x_write_api(db: sqlite3.Connection) -> None:
    """2.x: org and bucket in the query, ns precision, ``Authorization: Token``, 204 delivers."""

    def influx2(request: ReceivedRequest) -> int:
        path, _, query = request.path.partition("?")
        if path != "/api/v2/write":
            return 404
        if request.headers.get("authorization") != "Token tok-123":
            return 401
        expected = {"org": "acme", "bucket": "plant%2Fline1", "precision": "ns"}
        if dict(p.split("=") for p in query.split("&")) != expected:
            return 400
        return 204 if request.headers["content-type"].startswith("text/plain") else 400

    server = DocumentedApi(influx2).start()
    try:
        fill(db, 30)
        api = _api(
            f"http://127.0.0.1:{server.port}/",
            api_key=Secret("tok-123"),
            format="influx",
            influx_org="acme",
            influx_bucket="plant/line1",
        )
        with ApiClient(api, "dev-1", database.get_epoch(db)) as client:
            summary = core.publish_pending(db, client, batch_size=10)
        assert summary.delivered == 30 and summary.requests == 3
        lines = b"".join(r.body for r in server.seen).decode().splitlines()
        assert len(lines) == 30 and lines[0].startswith("nixlog,device_id=dev-1 voltage_l1=230.0,")
    finally:
        server.stop()


def test_thingsboard_device_http_api(db: sqlite3.Connection, tmp_path: Path) -> None:
    """ThingsBoard: the token in the path (never a header), ``[{"ts", "values"}]``, 401 is auth."""

    def thingsboard(request: ReceivedRequest) -> int:
        if request.path == "/api/v1/A1%2Fb2/telemetry":
            body = json.loads(request.body)
            shaped = isinstance(body, list) and all(set(e) == {"ts", "values"} for e in body)
            return 200 if shaped and "authorization" not in request.headers else 400
        return 401 if request.path.endswith("/telemetry") else 404

    server = DocumentedApi(thingsboard).start()
    try:
        fill(db, 12)
        base = f"http://127.0.0.1:{server.port}"
        api = _api(base, api_key=Secret("A1/b2"), format="thingsboard")
        with ApiClient(api, "dev-1", database.get_epoch(db)) as client:
            assert "A1" not in client.url() and client.url().endswith("/********/telemetry")
            summary = core.publish_pending(db, client, batch_size=5)
        assert summary.delivered == 12
        entries = [e for r in server.seen for e in json.loads(r.body)]
        first = {"voltage_l1": 230.0, "current_l1": 0, "breaker_closed": True}
        assert entries[0] == {"ts": 1795694400000, "values": first}
        fill(db, 3, start=12)
        wrong = _api(base, api_key=Secret("nope"), format="thingsboard")
        with ApiClient(wrong, "dev-1", database.get_epoch(db)) as client:
            summary = core.publish_pending(db, client, batch_size=5)
        assert summary.failure is not None and summary.failure.kind == "auth"
        assert "nope" not in summary.failure.detail
        assert database.count_unsent(db) == 3
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('format = "influx"', "api.influx_db: format influx needs influx_db"),
        ('format = "influx"\ninflux_db = "a"\ninflux_org = "o"', "not both"),
        ('format = "influx"\ninflux_org = "o"', "api.influx_db: format influx needs"),
        ('influx_db = "a"', 'api.influx_db: only used with format = "influx"'),
        ('format = "prometheus"', "api.format: unknown format"),
    ],
)
def test_bad_api_format_config_is_one_line(config_file: Path, toml: str, message: str) -> None:
    """Each mistake in the format keys of ``[api]`` is exit 78 with one line naming the key."""
    config_file.write_text(
        config_file.read_text() + f'\n[api]\nendpoint = "http://127.0.0.1:1"\n{toml}\n'
    )
    result = CliRunner().invoke(
        app, ["config", "check", "-c", str(config_file)], env={"NIXLOG_API_KEY": "k"}
    )
    assert result.exit_code == 78, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def test_influx_without_a_key_sends_no_authorization(config_file: Path) -> None:
    """InfluxDB 1.x without auth: no key needed, none sent; the dry run shows line protocol."""
    config_file.write_text(
        config_file.read_text() + INFLUX_API.format(url="http://127.0.0.1:1", batch=10)
    )
    conn = database.open_db(Path(config_file.parent / "data" / "nixlog.db"))
    try:
        fill(conn, 2)
    finally:
        conn.close()
    result = CliRunner().invoke(app, ["publish", "--dry-run", "-c", str(config_file)], env={})
    assert result.exit_code == 0, result.output
    assert "Authorization" not in result.stderr and "/write?db=plant&precision=ns" in result.stderr
    assert result.stdout.startswith("nixlog,device_id=dev-1 voltage_l1=230.0,current_l1=0i,")
