"""A plant against real peers: two socat RTU lines and a TCP device, 8 devices, 3 rates.

The real ``Daemon`` (one poll thread per bus, one store thread) runs in-process against
simulators; the database it wrote is the evidence: each device's achieved rate, the device
column, and the simulators' own record that no two requests were ever outstanding at once on
a line.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from nixlog import database
from nixlog.config import Config, load_config
from nixlog.daemon import Daemon
from nixlog.demo import PtyPair
from nixlog.model import StoredReading
from nixlog.simulator import SimulatorServer, build_simulator_context, bus_registers

SHORT_SEC = 12.0
LONG_SEC = 60.0
INTERVALS = {"fast": 0.1, "medium": 1.0, "slow": 10.0}
# (device, bus, unit, profile)
LAYOUT = [
    ("d1", "line1", 1, "fast"),
    ("d2", "line1", 2, "fast"),
    ("d3", "line1", 3, "medium"),
    ("d4", "line2", 1, "fast"),
    ("d5", "line2", 2, "medium"),
    ("d6", "line2", 3, "slow"),
    ("d7", "tcp", 1, "medium"),
    ("d8", "tcp", 2, "slow"),
]


def plant_toml(db: Path, ports: dict[str, str]) -> str:
    """The 8-device plant with three profiles, one per rate."""
    parts = [
        f'[device]\nid = "plant-test"\n[database]\npath = "{db}"\nflush_interval_sec = 1\n'
        "batch_size = 50\n"
    ]
    for bus in ("line1", "line2", "tcp"):
        parts.append(
            f'[[bus]]\nname = "{bus}"\nport = "{ports[bus]}"\nbaudrate = 115200\n'
            "timeout_sec = 0.1\nretries = 0\n"
        )
        for name, on_bus, unit, profile in LAYOUT:
            if on_bus == bus:
                parts.append(
                    f'[[bus.device]]\nname = "{name}"\nunit_id = {unit}\nprofile = "{profile}"\n'
                )
    parts.append(
        "[profile.fast]\npoll_interval_sec = 0.1\nregisters = [\n"
        '  {name = "voltage", address = 0, kind = "input", type = "float32", units = "V"},\n'
        '  {name = "current", address = 6, kind = "input", type = "float32", units = "A"},\n]\n'
        "[profile.medium]\npoll_interval_sec = 1.0\nregisters = [\n"
        '  {name = "energy", address = 100, type = "uint64", scale = 0.001, units = "kWh"},\n]\n'
        "[profile.slow]\npoll_interval_sec = 10.0\nregisters = [\n"
        '  {name = "temperature", address = 110, type = "int16", scale = 0.1, units = "°C"},\n]\n'
    )
    return "".join(parts)


class PlantRig:
    """Two pty lines and a TCP port, each with a simulator serving its bus's devices."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.lines = [PtyPair(tmp_path / "a"), PtyPair(tmp_path / "b")]
        self.servers: dict[str, SimulatorServer] = {}
        self.config: Config | None = None

    def start(self) -> Config:
        """Start lines and simulators; write and load the config with the real addresses."""
        for pair in self.lines:
            pair.server_end.parent.mkdir(exist_ok=True)
            pair.start()
        path = self.tmp_path / "config.toml"
        db = self.tmp_path / "plant.db"
        client_ports = {
            "line1": str(self.lines[0].client_end),
            "line2": str(self.lines[1].client_end),
            "tcp": "tcp://127.0.0.1:1",  # replaced once the TCP simulator listens
        }
        path.write_text(plant_toml(db, client_ports), encoding="utf-8")
        draft = load_config(path, env={})
        serve_on = {
            "line1": str(self.lines[0].server_end),
            "line2": str(self.lines[1].server_end),
            "tcp": "tcp://127.0.0.1:0",
        }
        for bus in draft.buses:
            context = build_simulator_context(bus_registers(bus))
            self.servers[bus.name] = SimulatorServer(serve_on[bus.name], context, bus.link).start()
        client_ports["tcp"] = self.servers["tcp"].address
        path.write_text(plant_toml(db, client_ports), encoding="utf-8")
        self.config = load_config(path, env={})
        return self.config

    def run_daemon(self, seconds: float) -> list[StoredReading]:
        """Run the real daemon for ``seconds``; every stored reading."""
        assert self.config is not None
        daemon = Daemon(self.config)
        daemon.start()
        try:
            time.sleep(seconds)
        finally:
            daemon.request_stop()
            assert daemon.join(timeout=10)
        assert daemon.lost == 0
        conn = database.open_db(self.config.database.path)
        try:
            return list(database.iter_readings(conn))
        finally:
            database.close(conn)

    def close(self) -> None:
        """Stop simulators and lines."""
        for server in self.servers.values():
            server.stop()
        for pair in self.lines:
            pair.stop()


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[PlantRig]:
    """The 8-device plant rig (skipped without socat)."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    rig = PlantRig(tmp_path)
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


def achieved_interval(rows: list[StoredReading], device: str, after: float = 0.0) -> float:
    """Mean seconds between a device's readings (from their timestamps), from ``after`` s on."""
    times = sorted(
        datetime.fromisoformat(r.timestamp).timestamp() for r in rows if r.device == device
    )
    assert times, f"no readings of {device}"
    first_of_all = min(datetime.fromisoformat(r.timestamp).timestamp() for r in rows)
    times = [t for t in times if t >= first_of_all + after]
    assert len(times) >= 2, f"{device}: {len(times)} readings"
    return (times[-1] - times[0]) / (len(times) - 1)


def check_rates(
    rows: list[StoredReading], tolerance: float, skip: frozenset[str] = frozenset()
) -> None:
    """Every device (but ``skip``) read at its profile's interval within ``tolerance``."""
    for name, _bus, _unit, profile in LAYOUT:
        if name in skip:
            continue
        wanted = INTERVALS[profile]
        got = achieved_interval(rows, name)
        assert abs(got - wanted) / wanted <= tolerance, f"{name}: every {got:.4f} s, want {wanted}"


def run_plant(plant: PlantRig, seconds: float, tolerance: float) -> None:
    """Run the plant; check rates, devices, no overlap on either line, no errors."""
    rows = plant.run_daemon(seconds)
    check_rates(rows, tolerance)
    assert {r.device for r in rows} == {name for name, *_ in LAYOUT}
    for line in ("line1", "line2"):
        context = plant.servers[line].context
        assert len(context.handled) > 100
        assert context.overlaps() == 0, f"{line}: requests overlapped"
    assert all(not r.errors for r in rows), [r.errors for r in rows if r.errors][:3]
    # Values are the device's own: each reading holds exactly its profile's registers.
    fast = next(r for r in rows if r.device == "d1")
    assert set(fast.values) == {"voltage", "current"}


def test_plant_rates_and_no_overlap_short(plant: PlantRig) -> None:
    """8 devices, 3 profiles at 0.1/1/10 s on 2 RTU lines + TCP: each rate within 10 %."""
    run_plant(plant, SHORT_SEC, 0.10)


@pytest.mark.slow
def test_plant_rates_and_no_overlap_minute(plant: PlantRig) -> None:
    """The same plant for a minute: each group's achieved rate within 5 % of its setting."""
    run_plant(plant, LONG_SEC, 0.05)


def test_dead_device_leaves_the_others_on_its_line_on_time(plant: PlantRig) -> None:
    """d2 silent on line1: d1 and d3 (same line) and everyone else keep within 10 %."""
    plant.servers["line1"].context.silence(2)
    rows = plant.run_daemon(SHORT_SEC)
    # Every register failed: no values stored, only the one status reading that says so.
    dead = [r.values for r in rows if r.device == "d2"]
    assert dead == [{"nixlog:status": "offline", "nixlog:reason": "timeout"}]
    for name, wanted in (("d1", 0.1), ("d3", 1.0)):
        got = achieved_interval(rows, name, after=2.0)
        assert abs(got - wanted) / wanted <= 0.10, f"{name}: every {got:.4f} s, want {wanted}"
    check_rates(rows, 0.10, skip=frozenset({"d1", "d2", "d3"}))
    assert plant.servers["line1"].context.overlaps() == 0
