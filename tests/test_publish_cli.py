"""`nixlog publish`: exit codes, stdout/stderr, --once, --dry-run, and the key never shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog import database
from nixlog.api_client import transform_for_api
from nixlog.cli import app
from nixlog.model import Reading
from tests.fixtures_http import TEST_API_KEY
from tests.receiver import ScriptedReceiver, Step

DEVICE = "cli-test-logger"


def write_config(
    tmp_path: Path, endpoint: str, *, key: str = TEST_API_KEY, api: bool = True
) -> Path:
    """A minimal config with its database in tmp_path and [api] pointing at ``endpoint``."""
    text = f"""
[device]
id = "{DEVICE}"

[database]
path = "nixlog.db"

[modbus]
port = "tcp://127.0.0.1:5020"

[[modbus.registers_to_read]]
name = "voltage_l1"
address = 0
"""
    if api:
        text += f"""
[api]
endpoint = "{endpoint}"
api_key = "{key}"
batch_size = 100
timeout_sec = 0.5
"""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def fill(tmp_path: Path, count: int) -> None:
    """Store ``count`` readings in the config's database."""
    conn = database.open_db(tmp_path / "nixlog.db")
    try:
        readings = [
            Reading(f"2026-11-26T16:00:00.{i:06d}+00:00", {"voltage_l1": 230.0 + i})
            for i in range(count)
        ]
        database.batch_insert_readings(conn, DEVICE, readings)
    finally:
        conn.close()


def unsent(tmp_path: Path) -> int:
    conn = database.open_db(tmp_path / "nixlog.db")
    try:
        return database.count_unsent(conn)
    finally:
        conn.close()


def run(*args: str) -> tuple[int, str, str]:
    """Invoke the CLI; assert no traceback and no key anywhere in its output."""
    result = CliRunner().invoke(app, list(args))
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text
        assert TEST_API_KEY not in text
    return result.exit_code, result.stdout, result.stderr


def test_publish_until_caught_up_exits_0(tmp_path: Path, receiver: ScriptedReceiver) -> None:
    """A backlog of 250 is delivered in three batches; exit 0 and a one-line summary."""
    config = write_config(tmp_path, receiver.url)
    fill(tmp_path, 250)
    code, stdout, stderr = run("publish", "-c", str(config))
    assert code == 0, stderr
    assert "Delivered 250 readings in 3 requests" in stdout and "0 unsent remain" in stdout
    assert stderr == ""
    assert receiver.stats.unique == 250 and unsent(tmp_path) == 0


def test_publish_once_sends_one_batch(tmp_path: Path, receiver: ScriptedReceiver) -> None:
    """--once sends a single batch and reports what remains."""
    config = write_config(tmp_path, receiver.url)
    fill(tmp_path, 250)
    code, stdout, _ = run("publish", "-c", str(config), "--once")
    assert code == 0
    assert "Delivered 100 readings" in stdout and "150 unsent remain" in stdout
    assert len(receiver.requests) == 1 and unsent(tmp_path) == 150


def test_dry_run_prints_the_payload_and_sends_nothing(
    tmp_path: Path, receiver: ScriptedReceiver
) -> None:
    """--dry-run: the next batch's JSON on stdout, masked headers on stderr, no request."""
    config = write_config(tmp_path, receiver.url)
    fill(tmp_path, 150)
    code, stdout, stderr = run("-v", "publish", "-c", str(config), "--dry-run")
    assert code == 0
    payload = json.loads(stdout)
    conn = database.open_db(tmp_path / "nixlog.db")
    try:
        expected = transform_for_api(
            DEVICE, database.get_epoch(conn), database.get_unsent_readings(conn, 100)
        )
    finally:
        conn.close()
    assert payload == expected and len(payload["readings"]) == 100
    assert "Would POST 100 readings" in stderr and "Bearer ********" in stderr
    assert receiver.requests == [] and unsent(tmp_path) == 150


def test_empty_outbox_says_so_and_exits_0(tmp_path: Path, receiver: ScriptedReceiver) -> None:
    """Nothing unsent: one line, exit 0, no request."""
    config = write_config(tmp_path, receiver.url)
    code, stdout, _ = run("publish", "-c", str(config))
    assert code == 0 and "Nothing to send" in stdout and receiver.requests == []


def test_dry_run_with_nothing_to_send(tmp_path: Path, receiver: ScriptedReceiver) -> None:
    """--dry-run on an empty outbox says so on stderr and prints nothing on stdout."""
    config = write_config(tmp_path, receiver.url)
    code, stdout, stderr = run("publish", "-c", str(config), "--dry-run")
    assert (code, stdout) == (0, "")
    assert "Nothing to send" in stderr


@pytest.mark.parametrize("step", [Step(503), Step(429, retry_after="60"), Step(502)])
def test_temporary_failure_exits_75_with_nothing_marked(
    tmp_path: Path, receiver: ScriptedReceiver, step: Step
) -> None:
    """5xx or 429: exit 75, one Error line naming the status, every reading still unsent."""
    config = write_config(tmp_path, receiver.url)
    fill(tmp_path, 50)
    receiver.always(step)
    code, _, stderr = run("publish", "-c", str(config))
    assert code == 75
    error_lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and f"HTTP {step.status}" in error_lines[0]
    assert unsent(tmp_path) == 50


def test_server_down_exits_75(tmp_path: Path, dead_url: str) -> None:
    """Nothing listening: exit 75 and "cannot reach the API"."""
    config = write_config(tmp_path, dead_url)
    fill(tmp_path, 5)
    code, _, stderr = run("publish", "-c", str(config))
    assert code == 75 and "cannot reach the API" in stderr
    assert unsent(tmp_path) == 5


def test_rejected_readings_exit_1(tmp_path: Path, receiver: ScriptedReceiver) -> None:
    """One reading refused with 400: the rest delivered, the summary names it, exit 1."""
    config = write_config(tmp_path, receiver.url)
    fill(tmp_path, 100)
    conn = database.open_db(tmp_path / "nixlog.db")
    epoch = database.get_epoch(conn)
    conn.close()
    receiver.poison = {f"{DEVICE}-{epoch}-42"}
    code, stdout, _ = run("publish", "-c", str(config))
    assert code == 1
    assert "Delivered 99 readings" in stdout and "1 rejected by the API (seq 42)" in stdout
    assert unsent(tmp_path) == 0


def test_wrong_key_exits_78_naming_the_key_setting(
    tmp_path: Path, receiver: ScriptedReceiver
) -> None:
    """401: exit 78 (fix the config), the error names api.api_key, readings are kept."""
    config = write_config(tmp_path, receiver.url, key="not-the-right-key")
    fill(tmp_path, 5)
    code, _, stderr = run("publish", "-c", str(config))
    assert code == 78
    assert "api.api_key: the API refused the key (HTTP 401" in stderr
    assert "not-the-right-key" not in stderr and unsent(tmp_path) == 5


def test_missing_api_section_exits_78(tmp_path: Path) -> None:
    """A config without [api] cannot publish: exit 78 with one line."""
    config = write_config(tmp_path, "", api=False)
    code, _, stderr = run("publish", "-c", str(config))
    assert code == 78 and "api: section missing" in stderr


def test_subprocess_verbose_output_never_contains_the_key(
    tmp_path: Path, receiver: ScriptedReceiver
) -> None:
    """A real process with --verbose, a 401 then a dry run: the key is in no output at all."""
    receiver.queue(Step(401, body=f"bad key {TEST_API_KEY}"))
    config = write_config(tmp_path, receiver.url)
    fill(tmp_path, 3)
    env = {**os.environ, "NIXLOG_CONFIG": str(config)}
    outputs = []
    for args in (["publish"], ["publish", "--dry-run"]):
        proc = subprocess.run(
            [sys.executable, "-m", "nixlog", "--verbose", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        outputs.append(proc)
    assert outputs[0].returncode == 78 and outputs[1].returncode == 0
    for proc in outputs:
        assert TEST_API_KEY not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
