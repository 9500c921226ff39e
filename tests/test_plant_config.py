"""The plant form of the config ([[bus]], [[bus.device]], [profile.NAME]) and `config check`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.config import load_config
from nixlog.errors import EXIT_CONFIG, ConfigError
from nixlog.scheduler import build_groups, bus_load

REPO = Path(__file__).resolve().parent.parent
PLANT_EXAMPLE = REPO / "examples" / "plant.toml"

TWO_METERS = """
[database]
path = "plant.db"
batch_size = 20

[[bus]]
name = "rs485"
port = "/dev/ttyUSB0"
baudrate = 19200

[[bus.device]]
name = "meter1"
unit_id = 1
profile = "pm"

[[bus.device]]
name = "meter2"
unit_id = 2
profile = "pm"
poll_interval_sec = 2.0
deadband = 1.0

[profile.pm]
poll_interval_sec = 0.5
heartbeat_sec = 60
registers = [
  {name = "voltage", address = 0, kind = "input", type = "float32", units = "V"},
  {name = "energy", address = 100, type = "uint32", interval_sec = 30, deadband = 0},
]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_profile_is_reused_with_each_devices_unit_and_defaults(tmp_path: Path) -> None:
    """Both meters get the profile's registers on their own unit; register > device > profile."""
    config = load_config(write(tmp_path, TWO_METERS), env={})
    assert config.is_plant
    (bus,) = config.buses
    meter1, meter2 = bus.devices
    assert [r.unit_id for r in meter1.registers] == [1, 1]
    assert [r.unit_id for r in meter2.registers] == [2, 2]
    voltage1, energy1 = meter1.registers
    voltage2, energy2 = meter2.registers
    assert (meter1.poll_interval_sec, voltage1.interval_sec, energy1.interval_sec) == (0.5, 0.5, 30)
    assert (meter2.poll_interval_sec, voltage2.interval_sec) == (2.0, 2.0)
    assert voltage1.deadband is None and voltage1.heartbeat_sec == 60
    assert voltage2.deadband == 1.0 and energy2.deadband == 0  # the register's own wins
    assert config.modbus.batch_size == 20
    assert config.modbus.port == "/dev/ttyUSB0" and config.modbus.baudrate == 19200


def test_devices_split_into_groups_by_interval(tmp_path: Path) -> None:
    """Each device's registers form one group per interval, each with its own plan."""
    config = load_config(write(tmp_path, TWO_METERS), env={})
    groups = build_groups(config.buses[0])
    assert [(g.device, g.interval_sec, [r.name for r in g.registers]) for g in groups] == [
        ("meter1", 0.5, ["voltage"]),
        ("meter1", 30.0, ["energy"]),
        ("meter2", 2.0, ["voltage"]),
        ("meter2", 30.0, ["energy"]),
    ]
    assert all(len(g.plan) == 1 for g in groups)


def test_flat_form_is_one_bus_with_one_unnamed_device(tmp_path: Path) -> None:
    """[modbus] means one bus, one device named None, its interval 1 / poll_rate_hz."""
    config = load_config(REPO / "examples" / "config.toml", env={"NIXLOG_API_KEY": "k"})
    (bus,) = config.buses
    (device,) = bus.devices
    assert not config.is_plant
    assert device.name is None
    assert device.registers == config.modbus.registers
    assert device.poll_interval_sec == pytest.approx(1 / config.modbus.poll_rate_hz)
    assert bus.link is config.modbus


def test_find_device_suggests_a_close_name(tmp_path: Path) -> None:
    """An unknown device name is refused with the nearest known one."""
    config = load_config(write(tmp_path, TWO_METERS), env={})
    with pytest.raises(ConfigError, match=r'no device "meter3" \(did you mean "meter2"\?\)'):
        config.find_device("meter3")


def test_rtu_over_tcp_port_is_accepted(tmp_path: Path) -> None:
    """rtu+tcp://host:port is a serial line behind a TCP serial server."""
    text = TWO_METERS.replace('"/dev/ttyUSB0"', '"rtu+tcp://gw.local:4001"')
    config = load_config(write(tmp_path, text), env={})
    link = config.buses[0].link
    assert link.is_rtu_over_tcp and not link.is_tcp
    assert link.tcp_address == ("gw.local", 4001)


def test_line_share_counts_wire_time_at_the_baud_rate(tmp_path: Path) -> None:
    """Two float32 reads at 2 Hz and 19200 baud: (8+5+4+7) chars x 10 bits each, per pass."""
    config = load_config(write(tmp_path, TWO_METERS), env={})
    load = bus_load(config.buses[0])
    per_request = (8 + 5 + 4 + 7) * 10 / 19200
    assert load.requests_per_sec == pytest.approx(2 + 0.5 + 2 / 30)
    energy = (8 + 5 + 4 + 7) * 10 / 19200  # uint32: also two registers
    assert load.busy_share == pytest.approx(per_request * (2 + 0.5) + energy * 2 / 30)
    assert not load.overloaded


def test_config_check_of_the_plant_example(tmp_path: Path) -> None:
    """examples/plant.toml checks OK and prints devices, per-bus figures and the backlog days."""
    result = CliRunner().invoke(app, ["config", "check", "-c", str(PLANT_EXAMPLE)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "4 devices on 3 buses" in out
    for name in ("meter1", "meter2", "plc", "oven-controller"):
        assert name in out
    assert "bus rs485: 2 devices, 2.03 requests/s, line 13 % busy" in out
    assert "bus plc: 1 device, 4.1 requests/s, 22.3 MB/day stored" in out  # TCP: no line share
    assert "bus oven: 1 device, 0.4 requests/s, line 0.5 % busy" in out
    assert "the disk budget (max_db_mb 2048) holds" in out
    assert result.stderr == ""


def test_config_check_warns_when_a_line_is_over_80_percent_busy(tmp_path: Path) -> None:
    """Ten meters at 10 Hz on a 9600-baud line (25 ms a read): a warning names bus and share."""
    devices = "".join(
        f'[[bus.device]]\nname = "m{i}"\nunit_id = {i}\nprofile = "pm"\n' for i in range(1, 11)
    )
    text = (
        '[database]\npath = "p.db"\n[[bus]]\nname = "rs485"\nport = "/dev/ttyUSB0"\n'
        + devices
        + '[profile.pm]\npoll_interval_sec = 0.1\n'
        'registers = [ {name = "v", address = 0, kind = "input", type = "float32"} ]\n'
    )
    result = CliRunner().invoke(app, ["config", "check", "-c", str(write(tmp_path, text))])
    assert result.exit_code == 0, result.output
    assert "Warning: rs485 is 250 % busy: raise intervals or the baud rate" in result.stderr
    assert "Traceback" not in result.output


def test_poll_without_device_on_a_plant_names_the_choices(tmp_path: Path) -> None:
    """`nixlog poll` on a plant with several devices asks for --device and lists them."""
    result = CliRunner().invoke(app, ["poll", "--once", "-c", str(write(tmp_path, TWO_METERS))])
    assert result.exit_code == 2, result.output
    assert "choose one with --device (meter1, meter2)" in result.stderr
    assert "Traceback" not in result.output


def test_poll_unknown_device_is_a_config_error(tmp_path: Path) -> None:
    """`poll --device` with a typo exits 78 naming the nearest device."""
    path = write(tmp_path, TWO_METERS)
    result = CliRunner().invoke(app, ["poll", "--once", "--device", "meter9", "-c", str(path)])
    assert result.exit_code == EXIT_CONFIG, result.output
    assert 'no device "meter9"' in result.stderr


def test_readme_shows_the_config_check_figures_of_the_plant_example() -> None:
    """README's expected `config check` output has today's per-bus figures, line by line."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    starts = ("bus rs485:", "bus plc:", "bus oven:", "stored:")
    shown = [line for line in readme.splitlines() if line.startswith(starts)]
    result = CliRunner().invoke(app, ["config", "check", "-c", str(PLANT_EXAMPLE)])
    printed = [
        line for line in result.stdout.splitlines() if line.startswith(("bus ", "stored:"))
    ]
    assert len(shown) == 4
    assert [line.split(" holds ")[0] for line in shown] == [
        line.split(" holds ")[0] for line in printed
    ]


def test_config_check_with_an_unmeasurable_database_path_still_checks(tmp_path: Path) -> None:
    """A database name too long to stat: the figures are printed, the backlog days left out."""
    long_path = tmp_path / ("a" * 300) / "x.db"
    text = TWO_METERS.replace('path = "plant.db"', f'path = "{long_path}"')
    result = CliRunner().invoke(app, ["config", "check", "-c", str(write(tmp_path, text))])
    assert result.exit_code == 0, result.output
    assert "bus rs485:" in result.stdout
    assert "days of backlog" not in result.stdout
