"""The MQTT output against a real mosquitto on 127.0.0.1: PUBACK, cursors, status, TLS, login."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import core, database
from nixlog.cli import app
from nixlog.config import MqttConfig
from nixlog.model import StoredReading
from nixlog.outputs.mqtt import MqttOutput
from tests.fixtures_db import fill
from tests.fixtures_mqtt import Broker, Subscriber, free_port

MakeMqtt = Callable[..., MqttConfig]


def test_batches_are_delivered_on_puback_and_only_the_mqtt_cursor_moves(
    db: sqlite3.Connection, broker: Broker, subscriber: Subscriber, make_mqtt_config: MakeMqtt
) -> None:
    """250 readings reach a subscriber exactly once, in order; the api's backlog is untouched."""
    fill(db, 250)
    with MqttOutput(make_mqtt_config(broker.port), "dev-1", database.get_epoch(db)) as out:
        summary = core.publish_pending(db, out, batch_size=100, output="mqtt")
    assert summary.delivered == 250 and summary.failure is None and summary.batches == 3
    assert database.count_unsent(db, "mqtt") == 0
    assert database.count_unsent(db) == 250  # the api output has its own cursor
    epoch = database.get_epoch(db)
    assert subscriber.wait_for(lambda: len(subscriber.reading_ids()) >= 250, 10)
    assert subscriber.reading_ids() == [f"dev-1-{epoch}-{i}" for i in range(1, 251)]
    first = subscriber.readings()[0]
    assert first["seq"] == 1 and first["values"]["voltage_l1"] == 230.0
    assert [t for t, _, _ in subscriber.messages if t.endswith("/readings")] == [
        "nixlog/dev-1/readings"
    ] * 3


def test_no_broker_is_temporary_within_the_timeout_and_keeps_rows(
    db: sqlite3.Connection, make_mqtt_config: MakeMqtt
) -> None:
    """Nothing listening: ``temporary`` after about timeout_sec, the mqtt cursor stays at 0."""
    fill(db, 10)
    config = make_mqtt_config(free_port(), timeout_sec=1.0)
    started = time.monotonic()
    with MqttOutput(config, "dev-1", database.get_epoch(db)) as out:
        summary = core.publish_pending(db, out, batch_size=100, output="mqtt")
    elapsed = time.monotonic() - started
    assert summary.failure is not None and summary.failure.kind == "temporary"
    assert "no connection to the broker" in summary.failure.detail
    assert elapsed < 4.0, elapsed
    assert database.count_unsent(db, "mqtt") == 10


def test_a_set_cancel_event_abandons_the_wait_at_once(
    db: sqlite3.Connection, make_mqtt_config: MakeMqtt
) -> None:
    """Shutdown: a publish waiting for a dead broker returns within a fraction of a second."""
    import threading

    fill(db, 5)
    cancel = threading.Event()
    cancel.set()
    config = make_mqtt_config(free_port(), timeout_sec=30.0)
    with MqttOutput(config, "dev-1", database.get_epoch(db), cancel=cancel) as out:
        started = time.monotonic()
        result = out.publish_data(database.get_unsent_readings(db, 5, "mqtt"))
        assert time.monotonic() - started < 1.0
    assert result.kind == "temporary" and "shutting down" in result.detail


def test_status_is_retained_online_then_offline(
    db: sqlite3.Connection, broker: Broker, make_mqtt_config: MakeMqtt
) -> None:
    """``online`` retained after connecting, ``offline`` retained after a clean close."""
    fill(db, 3)
    out = MqttOutput(make_mqtt_config(broker.port), "dev-1", database.get_epoch(db))
    assert out.publish_data(database.get_unsent_readings(db, 10, "mqtt")).ok
    late = Subscriber(broker.port, "nixlog/dev-1/status")
    try:
        assert late.wait_for(lambda: late.retained("nixlog/dev-1/status") == [b"online"], 5)
        assert late.messages[0][2] is True  # delivered as retained to a late subscriber
        out.close()
        assert late.wait_for(lambda: late.retained("nixlog/dev-1/status")[-1:] == [b"offline"], 5)
    finally:
        late.close()


LAST_WILL_SCRIPT = """
import sys, time
from nixlog.config import MqttConfig
from nixlog.model import StoredReading
from nixlog.outputs.mqtt import MqttOutput
port = int(sys.argv[1])
out = MqttOutput(MqttConfig(url="", host="127.0.0.1", port=port, tls=False), "dev-9", "ep")
row = StoredReading(1, "2026-11-26T12:00:00.000000+00:00", "dev-9", {"v": 1}, {})
assert out.publish_data([row]).ok
print("published", flush=True)
time.sleep(60)
"""


def test_a_killed_logger_leaves_its_last_will_offline(broker: Broker, tmp_path: Path) -> None:
    """SIGKILL of the publishing process: the broker publishes the retained ``offline`` will."""
    sub = Subscriber(broker.port, "nixlog/dev-9/status")
    script = tmp_path / "will.py"
    script.write_text(LAST_WILL_SCRIPT)
    child = subprocess.Popen(
        [sys.executable, str(script), str(broker.port)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"published"
        assert sub.wait_for(lambda: sub.retained("nixlog/dev-9/status") == [b"online"], 5)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        assert sub.wait_for(lambda: sub.retained("nixlog/dev-9/status")[-1:] == [b"offline"], 10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        sub.close()


def _rows_with_devices() -> list[StoredReading]:
    stamp = "2026-11-26T12:00:0{}.250000+00:00"
    return [
        StoredReading(1, stamp.format(1), "gw-1", {"v": 1.5}, {}, device="meter1"),
        StoredReading(2, stamp.format(2), "gw-1", {"v": 2.5, "ok": True}, {}, device="meter2"),
        StoredReading(3, stamp.format(3), "gw-1", {"t": 20}, {"x": "timeout"}, device=None),
        StoredReading(4, stamp.format(4), "gw-1", {"v": 4.5}, {}, device="meter1"),
    ]


def test_topic_template_puts_each_device_on_its_own_topic(
    broker: Broker, subscriber: Subscriber, make_mqtt_config: MakeMqtt
) -> None:
    """``{device}`` in the topic: one message per device; no device means the gateway's id."""
    config = make_mqtt_config(broker.port, topic="plant/{device_id}/{device}")
    with MqttOutput(config, "gw-1", "ep") as out:
        assert out.publish_data(_rows_with_devices()).ok
    assert subscriber.wait_for(lambda: len(subscriber.payloads("plant/")) == 3, 5)
    by_topic = {
        t: [r["seq"] for r in json.loads(p)["readings"]]
        for t, p, _ in subscriber.messages
        if t.startswith("plant/")
    }
    assert by_topic == {
        "plant/gw-1/meter1": [1, 4],
        "plant/gw-1/meter2": [2],
        "plant/gw-1/gw-1": [3],
    }


def test_thingsboard_gateway_api(
    broker: Broker, subscriber: Subscriber, make_mqtt_config: MakeMqtt
) -> None:
    """ThingsBoard: connect each device once, gateway telemetry by name, own telemetry apart."""
    config = make_mqtt_config(broker.port, format="thingsboard", status_topic="", username="tok")
    rows = _rows_with_devices()
    with MqttOutput(config, "gw-1", "ep") as out:
        assert out.publish_data(rows[:2]).ok
        assert out.publish_data(rows[2:]).ok
    assert subscriber.wait_for(lambda: len(subscriber.messages) >= 5, 5)
    got = [(t, json.loads(p)) for t, p, _ in subscriber.messages]
    ms = 1_795_694_401_250  # 2026-11-26T12:00:01.25Z (date -d ... +%s%3N)
    assert got == [
        ("v1/gateway/connect", {"device": "meter1"}),
        ("v1/gateway/connect", {"device": "meter2"}),
        (
            "v1/gateway/telemetry",
            {
                "meter1": [{"ts": ms, "values": {"v": 1.5}}],
                "meter2": [{"ts": ms + 1000, "values": {"v": 2.5, "ok": True}}],
            },
        ),
        ("v1/devices/me/telemetry", [{"ts": ms + 2000, "values": {"t": 20}}]),
        ("v1/gateway/telemetry", {"meter1": [{"ts": ms + 3000, "values": {"v": 4.5}}]}),
    ]


MQTT_CONFIG = """
[mqtt]
url = "mqtt://127.0.0.1:{port}"
username = "logger"
timeout_sec = 3
"""


def test_wrong_password_is_one_line_naming_mqtt_password_and_rows_stay(
    tmp_path: Path, config_file: Path, db: sqlite3.Connection
) -> None:
    """A refused login: exit 78, one ``Error:`` line naming mqtt.password, no password shown."""
    broker = Broker(tmp_path / "auth", users={"logger": "right-pass-123"}).start()
    try:
        fill(db, 7)
        mqtt = MQTT_CONFIG.format(port=broker.port) + 'password = "WRONGpw"\n'
        config_file.write_text(config_file.read_text() + mqtt)
        result = CliRunner().invoke(app, ["publish", "-c", str(config_file), "--output", "mqtt"])
        assert result.exit_code == 78, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert "mqtt.password" in lines[0] and "WRONGpw" not in result.output + result.stderr
        assert "Traceback" not in result.stderr
        assert database.count_unsent(db, "mqtt") == 7
        # The right password from the environment delivers them.
        config_file.write_text(config_file.read_text().replace('password = "WRONGpw"\n', ""))
        result = CliRunner().invoke(
            app,
            ["publish", "-c", str(config_file), "--output", "mqtt"],
            env={"NIXLOG_MQTT_PASSWORD": "right-pass-123"},
        )
        assert result.exit_code == 0, result.output
        assert "Delivered 7 readings" in result.stdout
        assert database.count_unsent(db, "mqtt") == 0
    finally:
        broker.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=directory,
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra, cwd=directory,
        )  # fmt: skip
    return {p.stem + p.suffix: p for p in directory.iterdir()}


def test_tls_with_a_client_certificate(
    tmp_path: Path, db: sqlite3.Connection, make_mqtt_config: MakeMqtt
) -> None:
    """mqtts with ca_file and a client certificate delivers; without the certificate, nothing."""
    certs = make_certificates(tmp_path / "pki")
    tls = (certs["ca.crt"], certs["server.crt"], certs["server.key"], True)
    broker = Broker(tmp_path / "tls", tls=tls).start()
    try:
        fill(db, 20)
        epoch = database.get_epoch(db)
        base = {"tls": True, "ca_file": certs["ca.crt"], "timeout_sec": 2.0}
        without = make_mqtt_config(broker.port, **base)
        with MqttOutput(without, "dev-1", epoch) as out:
            summary = core.publish_pending(db, out, batch_size=50, output="mqtt")
        assert summary.failure is not None and summary.delivered == 0
        assert database.count_unsent(db, "mqtt") == 20
        with_cert = make_mqtt_config(
            broker.port, cert_file=certs["client.crt"], key_file=certs["client.key"], **base
        )
        with MqttOutput(with_cert, "dev-1", epoch) as out:
            summary = core.publish_pending(db, out, batch_size=50, output="mqtt")
        assert summary.delivered == 20 and summary.failure is None
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('url = "http://x"', "mqtt.url: expected"),
        ('url = "mqtt://h"\ntopic = "a/#"', "mqtt.topic: not a topic"),
        ('url = "mqtt://h"\ntopic = "a/{serial}"', "only {device_id} and {device}"),
        ('url = "mqtt://h"\npassword = "x"', "mqtt.username: a password needs a username"),
        ('url = "mqtt://h"\ncert_file = "/etc/hostname"', "mqtt.key_file: give cert_file"),
        ('url = "mqtt://h"\nqos = 0', "mqtt.qos"),
        ('url = "mqtt://h"\nformat = "sparkplug"', "mqtt.format: unknown format"),
    ],
)
def test_bad_mqtt_config_is_one_line(config_file: Path, toml: str, message: str) -> None:
    """Each mistake in ``[mqtt]`` is exit 78 with one line naming the key."""
    config_file.write_text(config_file.read_text() + f"\n[mqtt]\n{toml}\n")
    result = CliRunner().invoke(app, ["config", "check", "-c", str(config_file)])
    assert result.exit_code == 78, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def test_dry_run_shows_each_message_and_connects_to_nothing(
    config_file: Path, db: sqlite3.Connection
) -> None:
    """``publish --output mqtt --dry-run``: topic and body of each message; no connection made."""
    fill(db, 3)
    port = free_port()  # nothing listens: a connection attempt would fail the publish
    config_file.write_text(config_file.read_text() + MQTT_CONFIG.format(port=port))
    result = CliRunner().invoke(
        app, ["publish", "-c", str(config_file), "--output", "mqtt", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert f"Would publish 3 readings (seq 1..3) to mqtt://127.0.0.1:{port}" in result.stderr
    messages = json.loads(result.stdout)
    assert [m["topic"] for m in messages] == ["nixlog/dev-1/readings"]
    assert [r["seq"] for r in messages[0]["payload"]["readings"]] == [1, 2, 3]
    assert database.count_unsent(db, "mqtt") == 3
