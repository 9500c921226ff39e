"""The logger's identity: Pi serial from the device tree or cpuinfo, else the machine id."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixlog import hardware
from nixlog.config import Config, DeviceConfig, ModbusConfig, RegisterConfig
from nixlog.errors import ConfigError

CPUINFO_PI = """processor\t: 0
model name\t: ARMv7 Processor rev 3 (v7l)
Hardware\t: BCM2835
Revision\t: c03111
Serial\t\t: 10000000A3B2C1D0
Model\t\t: Raspberry Pi 4 Model B Rev 1.1
"""


def files(
    tmp_path: Path,
    device_tree: bytes | None = None,
    cpuinfo: str | None = None,
    machine_id: str | None = None,
) -> tuple[Path, Path, Path]:
    paths = (tmp_path / "serial-number", tmp_path / "cpuinfo", tmp_path / "machine-id")
    if device_tree is not None:
        paths[0].write_bytes(device_tree)
    if cpuinfo is not None:
        paths[1].write_text(cpuinfo, encoding="ascii")
    if machine_id is not None:
        paths[2].write_text(machine_id, encoding="ascii")
    return paths


def test_device_tree_serial_first(tmp_path: Path) -> None:
    """The NUL-terminated device-tree serial wins over cpuinfo and machine-id."""
    paths = files(tmp_path, b"10000000a3b2c1d0\x00", CPUINFO_PI.replace("A3B2", "FFFF"), "m\n")
    assert hardware.read_cpu_serial(*paths) == "10000000a3b2c1d0"


def test_cpuinfo_serial_when_no_device_tree(tmp_path: Path) -> None:
    """Older kernels: the `Serial` line of /proc/cpuinfo, lower-cased."""
    paths = files(tmp_path, None, CPUINFO_PI, "abc\n")
    assert hardware.read_cpu_serial(*paths) == "10000000a3b2c1d0"


def test_all_zero_serial_falls_through_to_machine_id(tmp_path: Path) -> None:
    """An all-zero serial (VMs, some boards) is no identity: /etc/machine-id is used."""
    paths = files(
        tmp_path,
        b"0000000000000000\x00",
        "Serial\t: 0000000000000000\n",
        "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
    )
    assert hardware.read_cpu_serial(*paths) == "3d1219c7c4c5404aaa1f6d2a48adfda4"


def test_nothing_at_all(tmp_path: Path) -> None:
    """No serial and no machine id: None, and resolve_device_id refuses with 78."""
    assert hardware.read_cpu_serial(*files(tmp_path)) is None


def config(device_id: str | None) -> Config:
    return Config(
        path=Path("config.toml"),
        device=DeviceConfig(id=device_id),
        modbus=ModbusConfig(port="/dev/ttyUSB0", registers=(RegisterConfig("v", 0),)),
    )


def test_device_id_in_config_overrides_hardware() -> None:
    """`device.id` wins over whatever the hardware says."""
    assert hardware.resolve_device_id(config("plant7-logger")) == "plant7-logger"


def test_no_identity_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without device.id and without any hardware serial: exit 78 naming device.id."""
    monkeypatch.setattr(hardware, "get_cpu_serial", lambda: None)
    with pytest.raises(ConfigError, match=r"config.toml: device.id: missing"):
        hardware.resolve_device_id(config(None))


def test_serial_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_cpu_serial caches: the files are read on the first call only."""
    calls: list[int] = []

    def fake_read() -> str:
        calls.append(1)
        return "cafe"

    hardware.get_cpu_serial.cache_clear()
    monkeypatch.setattr(hardware, "read_cpu_serial", fake_read)
    try:
        assert hardware.get_cpu_serial() == "cafe"
        assert hardware.get_cpu_serial() == "cafe"
        assert len(calls) == 1
    finally:
        hardware.get_cpu_serial.cache_clear()
