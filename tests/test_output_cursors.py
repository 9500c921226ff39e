"""One cursor per output: migration of the old mark, pruning waits for all, stats, publish."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.config import DatabaseConfig
from tests.fixtures_db import fill, flags
from tests.fixtures_http import TEST_API_KEY
from tests.fixtures_mqtt import Broker, Subscriber, free_port
from tests.receiver import ScriptedReceiver

MB = 1_000_000


def test_an_existing_mark_is_the_api_cursor_and_a_new_output_starts_at_the_oldest(
    db: sqlite3.Connection,
) -> None:
    """The old ``sent_upto`` stays the api's; mqtt, new, owes every stored reading."""
    fill(db, 300)
    database.mark_readings_as_sent(db, list(range(1, 101)))  # as a database of last year
    assert database.count_unsent(db) == 200
    assert database.count_unsent(db, "mqtt") == 300
    assert [r.id for r in database.get_unsent_readings(db, 3, "mqtt")] == [1, 2, 3]
    database.mark_readings_as_sent(db, list(range(1, 251)), "mqtt")
    assert database.count_unsent(db, "mqtt") == 50
    assert database.count_unsent(db) == 200  # independent
    assert sum(1 for f in flags(db).values() if f == 1) == 100  # sent_flag stays the api's


def _config(db_path: Path, db: sqlite3.Connection, share: float) -> DatabaseConfig:
    live = db.execute("PRAGMA page_count").fetchone()[0] * 4096
    return DatabaseConfig(path=db_path, storage_limit_gb=0, max_db_mb=live * share / MB)


def test_pruning_never_deletes_what_mqtt_still_lacks_unless_forced(
    db: sqlite3.Connection, db_path: Path
) -> None:
    """API has all, MQTT the first 1000: only those go as sent; a forced rest counts for mqtt."""
    fill(db, 3000)
    database.mark_readings_as_sent(db, list(range(1, 3001)))
    database.mark_readings_as_sent(db, list(range(1, 1001)), "mqtt")
    report = database.prune_database(
        db, _config(db_path, db, 0.8), headroom_bytes=0, outputs=("api", "mqtt")
    )
    assert 0 < report.deleted_sent <= 1000 and report.deleted_unsent == 0
    first = db.execute("SELECT min(id) FROM reading_rows").fetchone()[0]
    assert first == report.deleted_sent + 1
    # A much smaller budget: the sent ones are not enough, mqtt's backlog must give.
    report = database.prune_database(
        db, _config(db_path, db, 0.3), headroom_bytes=0, outputs=("api", "mqtt")
    )
    first = db.execute("SELECT min(id) FROM reading_rows").fetchone()[0]
    assert first > 1001 and report.deleted_unsent == first - 1001
    stats = database.output_stats(db, ("api", "mqtt"))
    assert stats["mqtt"]["pruned_unsent"] == first - 1001
    assert stats["api"]["pruned_unsent"] == 0
    assert stats["mqtt"]["unsent"] == 3000 - (first - 1)
    assert database.count_unsent(db, "mqtt") == 3000 - (first - 1)
    assert database.count_unsent(db) == 0


def test_with_the_api_alone_the_mqtt_mark_does_not_hold_pruning(
    db: sqlite3.Connection, db_path: Path
) -> None:
    """An output no longer configured does not keep readings for ever."""
    fill(db, 2000)
    database.mark_readings_as_sent(db, list(range(1, 2001)))
    report = database.prune_database(db, _config(db_path, db, 0.3), headroom_bytes=0)
    assert report.deleted_sent > 1000 and report.deleted_unsent == 0


MQTT_SECTION = '\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\ntimeout_sec = 1\n'
API_SECTION = '\n[api]\nendpoint = "{url}"\napi_key = "{key}"\ntimeout_sec = 2\n'


def _stats(config_file: Path) -> dict[str, object]:
    result = CliRunner().invoke(app, ["db", "stats", "--json", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_publish_ships_every_output_and_output_picks_one(
    config_file: Path,
    db: sqlite3.Connection,
    receiver: ScriptedReceiver,
    broker: Broker,
    subscriber: Subscriber,
) -> None:
    """``publish`` ships api and mqtt; ``--output api`` moves only the api's cursor."""
    fill(db, 40)
    config_file.write_text(
        config_file.read_text()
        + API_SECTION.format(url=receiver.url, key=TEST_API_KEY)
        + MQTT_SECTION.format(port=broker.port)
    )
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file), "--output", "api"])
    assert result.exit_code == 0, result.output
    outputs = _stats(config_file)["outputs"]
    assert isinstance(outputs, dict)
    assert outputs["api"]["unsent"] == 0 and outputs["mqtt"]["unsent"] == 40
    assert outputs["api"]["last_delivery"] and outputs["mqtt"]["last_delivery"] is None
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "api: Nothing to send" in result.stdout and "mqtt: Delivered 40" in result.stdout
    assert subscriber.wait_for(lambda: len(subscriber.reading_ids()) == 40, 5)
    after = _stats(config_file)["outputs"]
    assert isinstance(after, dict)
    assert after["api"] == outputs["api"]
    assert after["mqtt"]["unsent"] == 0 and after["mqtt"]["failures"] == 0
    assert after["mqtt"]["last_delivery"] is not None


def test_a_dead_broker_counts_failures_and_does_not_hold_up_the_api(
    config_file: Path, db: sqlite3.Connection, receiver: ScriptedReceiver
) -> None:
    """Broker gone: the api still delivers; mqtt exits 75, its backlog and failures shown."""
    fill(db, 10)
    config_file.write_text(
        config_file.read_text()
        + API_SECTION.format(url=receiver.url, key=TEST_API_KEY)
        + MQTT_SECTION.format(port=free_port())
    )
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file)])
    assert result.exit_code == 75, result.output
    assert "api: Delivered 10 readings" in result.stdout
    assert "MQTT broker unavailable" in result.stderr and "Traceback" not in result.stderr
    outputs = _stats(config_file)["outputs"]
    assert isinstance(outputs, dict)
    assert outputs["api"]["unsent"] == 0
    assert outputs["mqtt"] == {
        "unsent": 10,
        "last_delivery": None,
        "failures": 1,
        "pruned_unsent": 0,
    }
    table = CliRunner().invoke(app, ["db", "stats", "-c", str(config_file)])
    assert "output mqtt" in table.stdout and "10 unsent" in table.stdout


def test_output_names_an_output_that_is_configured(config_file: Path) -> None:
    """``--output mqtt`` without ``[mqtt]`` is exit 78; an unknown name is a usage error."""
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file), "--output", "mqtt"])
    assert result.exit_code == 78, result.output
    assert "mqtt: section missing" in result.stderr and "Traceback" not in result.stderr
    result = CliRunner().invoke(app, ["publish", "-c", str(config_file), "--output", "kafka"])
    assert result.exit_code == 2, result.output
    assert "--output" in result.stderr
