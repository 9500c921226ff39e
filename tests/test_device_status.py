"""Device status readings: one ``offline``/``online`` reading per transition, shipped like data."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.config import load_config
from nixlog.daemon import Daemon
from nixlog.errors import ConfigError
from nixlog.export import export_csv, register_names
from nixlog.model import Reading, StoredReading
from nixlog.outputs import formats
from nixlog.receiver import Receiver
from nixlog.scheduler import build_bus_scheduler
from nixlog.simulator import SimulatorServer, build_simulator_context, bus_registers
from nixlog.status import OFFLINE, ONLINE, REASON_KEY, STATUS_KEY, StatusWatch
from tests.daemon_helpers import wait_until
from tests.fixtures_http import TEST_API_KEY
from tests.fixtures_modbus import write_config

runner = CliRunner()

TS = "2026-11-30T00:00:00.000000+00:00"


def cycle(
    values: dict[str, float], errors: dict[str, str] | None = None, device: str = "m"
) -> Reading:
    """One pass's full reading of ``device``."""
    return Reading(TS, dict(values), errors or {}, device=device)


# ------------------------------------------------------------------ pure rules


def test_watch_reports_offline_once_after_the_grace_and_online_once() -> None:
    """Two silent passes give one offline (with the cause), more give none; a value gives online."""
    watch = StatusWatch()
    assert watch.observe(cycle({"v": 1.0})) is None  # healthy from the start: nothing
    assert watch.observe(cycle({}, {"v": "timeout"})) is None  # one lost answer is noise
    offline = watch.observe(cycle({}, {"v": "skipped: unit 1 not responding"}))
    assert offline is not None and offline.device == "m" and offline.timestamp == TS
    assert offline.values == {STATUS_KEY: OFFLINE, REASON_KEY: "timeout"}
    assert offline.errors == {}
    for _ in range(5):
        assert watch.observe(cycle({}, {"v": "skipped: unit 1 not responding"})) is None
    online = watch.observe(cycle({"v": 2.0}))
    assert online is not None and online.values == {STATUS_KEY: ONLINE}
    assert watch.observe(cycle({"v": 2.0})) is None


def test_watch_keeps_devices_apart_and_a_single_miss_is_not_offline() -> None:
    """One device's silence is its own; a miss between answers never reports anything."""
    watch = StatusWatch()
    changes = []
    for _ in range(4):
        changes.append(watch.observe(cycle({}, {"v": "disconnected"}, device="dead")))
        changes.append(watch.observe(cycle({"v": 1.0}, device="good")))
        changes.append(watch.observe(cycle({}, {"v": "timeout"}, device="good")))
        changes.append(watch.observe(cycle({"v": 1.0}, device="good")))
    reported = [c for c in changes if c is not None]
    assert [(c.device, c.values[STATUS_KEY]) for c in reported] == [("dead", OFFLINE)]
    assert reported[0].values[REASON_KEY] == "disconnected"
    assert watch.offline("dead") and not watch.offline("good")


def test_status_keys_cannot_be_register_names(tmp_path: Path) -> None:
    """A register named like the status key is a config error: the keys are outside the names."""
    path = tmp_path / "c.toml"
    path.write_text(
        f'[modbus]\nport = "tcp://127.0.0.1:1"\nregisters_to_read = [{{name = "{STATUS_KEY}", '
        "address = 0}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="name"):
        load_config(path, env={})


# ------------------------------------------------------------------ payload shapes


def stored_status(device: str | None = "meter") -> StoredReading:
    """A stored offline status reading."""
    return StoredReading(
        7, TS, "gw-1", {STATUS_KEY: OFFLINE, REASON_KEY: "timeout"}, {}, device=device
    )


def test_status_reading_in_every_body() -> None:
    """The nixlog body, ThingsBoard (direct and gateway) and line protocol all carry it."""
    row = stored_status()
    body = formats.transform_for_api("gw-1", "e1", [row])
    expected = {"nixlog:status": "offline", "nixlog:reason": "timeout"}
    assert body["readings"][0]["values"] == expected
    assert body["readings"][0]["device"] == "meter"
    assert formats.thingsboard_telemetry([row])[0]["values"][STATUS_KEY] == OFFLINE
    gateway = formats.thingsboard_gateway([row])
    assert gateway["meter"][0]["values"][REASON_KEY] == "timeout"
    line = formats.influx_line(row)
    assert line == (
        'nixlog,device_id=gw-1,device=meter nixlog:status="offline",nixlog:reason="timeout" '
        "1795996800000000000"
    )


# ------------------------------------------------------------------ a real plant


PLANT_TOML = """
[device]
id = "status-test"

[database]
path = "{db}"
flush_interval_sec = 0.2
batch_size = 10

[api]
endpoint = "{endpoint}"
api_key = "{key}"
publish_interval_sec = 0.2
timeout_sec = 2

[[bus]]
name = "tcp"
port = "{port}"
timeout_sec = 0.1
retries = 0

[[bus.device]]
name = "good"
unit_id = 1
poll_interval_sec = 0.1
registers = [
  {{name = "level", address = 0, kind = "input", type = "float32", units = "m", deadband = 1000}},
]

[[bus.device]]
name = "meter"
unit_id = 2
poll_interval_sec = 0.1
registers = [
  {{name = "voltage", address = 0, kind = "input", type = "float32", units = "V"}},
]
"""


def test_silent_device_yields_one_offline_and_one_online_stored_shipped_exported(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer]
) -> None:
    """A unit silenced then healed: one offline (timeout) and one online, in DB, API and CSV."""
    config_path = tmp_path / "plant.toml"
    db = tmp_path / "plant.db"
    with Receiver(TEST_API_KEY) as receiver:
        config_path.write_text(
            PLANT_TOML.format(
                db=db, key=TEST_API_KEY, endpoint=receiver.url, port="tcp://127.0.0.1:1"
            ),
            encoding="utf-8",
        )
        draft = load_config(config_path, env={})
        context = build_simulator_context(bus_registers(draft.buses[0]))
        server = start_simulator(context)
        config_path.write_text(
            PLANT_TOML.format(db=db, key=TEST_API_KEY, endpoint=receiver.url, port=server.address),
            encoding="utf-8",
        )
        config = load_config(config_path, env={})

        def statuses() -> list[dict[str, object]]:
            return [r for r in receiver.readings() if STATUS_KEY in r["values"]]

        daemon = Daemon(config)
        daemon.start()
        try:
            wait_until(lambda: len(receiver.readings()) >= 5, 15, "the first readings")
            context.silence(2)
            wait_until(lambda: len(statuses()) >= 1, 15, "the offline reading")
            time.sleep(1.0)  # more silent passes: still one offline
            context.heal(2)
            wait_until(lambda: len(statuses()) >= 2, 15, "the online reading")
            time.sleep(0.5)
        finally:
            daemon.request_stop()
            assert daemon.join(timeout=10)
        shipped = statuses()
    assert [(r["device"], r["values"]) for r in shipped] == [
        ("meter", {STATUS_KEY: OFFLINE, REASON_KEY: "timeout"}),
        ("meter", {STATUS_KEY: ONLINE}),
    ]
    conn = database.open_db(db)
    try:
        rows = list(database.iter_readings(conn))
        stored = [r for r in rows if STATUS_KEY in r.values]
        assert [(r.device, r.values[STATUS_KEY]) for r in stored] == [
            ("meter", OFFLINE),
            ("meter", ONLINE),
        ]
        # The healthy device's deadband suppressed its steady values; the others' status did
        # not suffer it, and the healthy device got no status at all.
        assert all(r.device == "meter" for r in stored)
        out = io.StringIO()
        export_csv(conn, out, register_names(config), with_device=True)
    finally:
        database.close(conn)
    lines = out.getvalue().splitlines()
    header = lines[0].split(",")
    assert STATUS_KEY in header and REASON_KEY in header
    offline_rows = [line for line in lines if ",offline," in line]
    assert len(offline_rows) == 1 and ",meter," in offline_rows[0]
    assert ",timeout," in offline_rows[0]
    assert json.dumps(shipped)  # plain JSON all the way


# ------------------------------------------------------------------ nixlog poll


def test_poll_save_stores_and_shows_the_offline_status(
    tcp_simulator: SimulatorServer, tmp_path: Path
) -> None:
    """`poll --save` on a silent unit: one offline reading shown (JSON and table) and stored."""
    config = write_config(tmp_path, tcp_simulator.address, unit_id=7)
    result = runner.invoke(app, ["poll", "-c", str(config), "--json", "--count", "4", "--save"])
    assert result.exit_code == 69, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    status = [r for r in records if STATUS_KEY in r["values"]]
    assert status == [
        {
            "timestamp": status[0]["timestamp"],
            "values": {STATUS_KEY: OFFLINE, REASON_KEY: "timeout"},
        }
    ]
    assert "Saved 1 reading to" in result.stderr
    conn = database.open_db(tmp_path / "nixlog.db", create=False)
    try:
        rows = database.get_unsent_readings(conn, 10)
    finally:
        database.close(conn)
    assert [(r.values, r.device) for r in rows] == [
        ({STATUS_KEY: OFFLINE, REASON_KEY: "timeout"}, None)
    ]
    table = runner.invoke(app, ["poll", "-c", str(config), "--count", "3"])
    assert table.exit_code == 69
    assert table.stdout.count("device offline: timeout") == 1
    assert "Traceback" not in table.stdout + table.stderr


def test_lost_link_yields_one_offline_and_one_online_per_device(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer]
) -> None:
    """The TCP device stopped, then restarted on its port: each device one offline, one online."""
    config_path = tmp_path / "plant.toml"
    text = PLANT_TOML.split("[[bus]]")[1].replace(", deadband = 1000", "")
    draft_text = '[database]\npath = "{db}"\n[[bus]]' + text
    config_path.write_text(draft_text.format(db=tmp_path / "p.db", port="tcp://127.0.0.1:1"))
    draft = load_config(config_path, env={})
    context = build_simulator_context(bus_registers(draft.buses[0]))
    server = start_simulator(context)
    address = server.address
    config_path.write_text(draft_text.format(db=tmp_path / "p.db", port=address))
    config = load_config(config_path, env={})
    bus_scheduler = build_bus_scheduler(config, config.buses[0])
    stored: list[Reading] = []
    stop = threading.Event()
    thread = threading.Thread(target=bus_scheduler.run, args=(stored.append, stop), daemon=True)
    thread.start()

    def changes() -> list[tuple[str | None, object]]:
        return [(r.device, r.values[STATUS_KEY]) for r in list(stored) if STATUS_KEY in r.values]

    try:
        wait_until(lambda: len(stored) >= 4, 10, "the first readings")
        server.stop()
        wait_until(lambda: len(changes()) >= 2, 15, "two offline readings")
        time.sleep(1.0)
        start_simulator(context, port=address)
        wait_until(lambda: len(changes()) >= 4, 30, "two online readings")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
        bus_scheduler.poller.close()
    seen = changes()
    assert len(seen) == 4
    assert sorted(seen[:2]) == [("good", OFFLINE), ("meter", OFFLINE)]
    assert sorted(seen[2:]) == [("good", ONLINE), ("meter", ONLINE)]
    offline = [r for r in stored if r.values.get(STATUS_KEY) == OFFLINE]
    assert [r.values[REASON_KEY] for r in offline] == ["disconnected", "disconnected"]


def test_watch_counts_answers_as_there_and_a_wrong_unit_as_silence() -> None:
    """Exceptions or a backed-off block are an answer (never offline); another unit id is not."""
    watch = StatusWatch()
    refused = {"v": "exception 2 (illegal data address)", "w": "skipped: block not responding"}
    assert all(watch.observe(cycle({}, refused)) is None for _ in range(5))
    assert (
        watch.observe(cycle({}, {"v": "exception 11 (gateway target failed to respond)"})) is None
    )
    gone = watch.observe(cycle({}, {"v": "answer from unit 255 (asked 1)"}))
    assert gone is not None
    assert gone.values == {
        STATUS_KEY: OFFLINE,
        REASON_KEY: "exception 11 (gateway target failed to respond)",
    }
    back = watch.observe(cycle({}, refused))
    assert back is not None and back.values == {STATUS_KEY: ONLINE}
