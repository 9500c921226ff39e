"""Plant devices over the wire: `poll --device`, RTU frames over TCP, the demo's plant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from nixlog import database
from nixlog.cli import app
from nixlog.config import load_config
from nixlog.demo import DemoRig
from nixlog.simulator import SimulatorServer, build_simulator_context, bus_registers

PLANT = """
[database]
path = "{db}"

[[bus]]
name = "gw"
port = "{port}"
timeout_sec = 0.5
retries = 0

[[bus.device]]
name = "meter1"
unit_id = 1
profile = "pm"

[[bus.device]]
name = "meter2"
unit_id = 2
profile = "pm"

[profile.pm]
registers = [
  {{name = "voltage", address = 0, kind = "input", type = "float32", units = "V"}},
  {{name = "energy", address = 100, type = "uint32"}},
]
"""


def plant_with_simulator(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer], scheme: str
) -> Path:
    """Write the two-meter plant, serve it (meter2 pinned apart) on ``scheme`` ://; the path."""
    path = tmp_path / "plant.toml"
    path.write_text(PLANT.format(db=tmp_path / "p.db", port="tcp://127.0.0.1:1"), "utf-8")
    context = build_simulator_context(bus_registers(load_config(path, env={}).buses[0]))
    context.pin("voltage", 230.5, unit_id=1)
    context.pin("voltage", 400.25, unit_id=2)
    server = start_simulator(context, port=f"{scheme}://127.0.0.1:0")
    path.write_text(PLANT.format(db=tmp_path / "p.db", port=server.address), "utf-8")
    return path


def test_poll_device_reads_that_unit_and_names_it(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer]
) -> None:
    """`poll --device meter2 --once --json` reads unit 2 and the record carries its name."""
    path = plant_with_simulator(tmp_path, start_simulator, "tcp")
    result = CliRunner().invoke(
        app, ["poll", "--once", "--json", "--device", "meter2", "-c", str(path)]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["device"] == "meter2"
    assert record["values"]["voltage"] == 400.25
    assert set(record["values"]) == {"voltage", "energy"}


def test_rtu_frames_over_tcp(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer]
) -> None:
    """rtu+tcp:// speaks RTU frames (CRC, no MBAP) through a TCP serial server."""
    path = plant_with_simulator(tmp_path, start_simulator, "rtu+tcp")
    assert "rtu+tcp://" in path.read_text("utf-8")
    result = CliRunner().invoke(
        app, ["poll", "--once", "--json", "--device", "meter1", "--save", "-c", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["values"]["voltage"] == 230.5
    conn = database.open_db(tmp_path / "p.db")
    try:
        (row,) = database.get_unsent_readings(conn, 10)
    finally:
        database.close(conn)
    assert row.device == "meter1" and row.values["voltage"] == 230.5


def test_demo_plant_over_tcp_fallback(tmp_path: Path) -> None:
    """Without the pty line the demo's meters answer over TCP: all three devices store."""
    with DemoRig(workdir=tmp_path, serial=False) as rig:
        rig.start()
        assert rig.line_port.startswith("tcp://")
        time.sleep(3)
        summary = rig.finish()
    devices = {row.device: row.rows for row in summary.stats.devices}
    assert set(devices) == {"meter1", "meter2", "plc"}
    assert summary.received == summary.stats.rows > 0


def test_daemon_status_merges_a_devices_interval_groups(
    tmp_path: Path, start_simulator: Callable[..., SimulatorServer]
) -> None:
    """The dashboard's per-device values hold every group's registers, not the last group's."""
    from nixlog.daemon import Daemon

    path = tmp_path / "plant.toml"
    slow_energy = '{{name = "energy", address = 100, type = "uint32", interval_sec = 0.5}}'
    two_rates = PLANT.replace(
        '{{name = "energy", address = 100, type = "uint32"}}', slow_energy
    ).replace('profile = "pm"\n', 'profile = "pm"\npoll_interval_sec = 0.1\n', 1)
    path.write_text(two_rates.format(db=tmp_path / "p.db", port="tcp://127.0.0.1:1"), "utf-8")
    context = build_simulator_context(bus_registers(load_config(path, env={}).buses[0]))
    server = start_simulator(context, port="tcp://127.0.0.1:0")
    path.write_text(two_rates.format(db=tmp_path / "p.db", port=server.address), "utf-8")
    config = load_config(path, env={})
    assert len({r.interval_sec for r in config.buses[0].devices[0].registers}) == 2
    daemon = Daemon(config)
    daemon.start()
    try:
        time.sleep(1.5)  # several fast passes after the last slow one
        seen = daemon.status().devices["meter1"]
    finally:
        daemon.request_stop()
        assert daemon.join(timeout=10)
    assert set(seen) == {"voltage", "energy"}
