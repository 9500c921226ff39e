"""The logger's identity: the Raspberry Pi CPU serial, else the systemd machine id."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from nixlog.config import Config
from nixlog.errors import ConfigError

DEVICE_TREE_SERIAL = Path("/sys/firmware/devicetree/base/serial-number")
CPUINFO = Path("/proc/cpuinfo")
MACHINE_ID = Path("/etc/machine-id")

_CPUINFO_SERIAL = re.compile(r"^Serial\s*:\s*([0-9A-Fa-f]+)\s*$", re.MULTILINE)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def read_cpu_serial(
    device_tree: Path = DEVICE_TREE_SERIAL, cpuinfo: Path = CPUINFO, machine_id: Path = MACHINE_ID
) -> str | None:
    """Read the serial from the given files (uncached); None when none of them has one.

    The Pi's device-tree serial is NUL-terminated; an all-zero serial (some boards and VMs)
    is no identity and falls through to the machine id.
    """
    text = _read_text(device_tree)
    if text:
        serial = text.strip("\x00 \n").lower()
        if serial and serial.strip("0"):
            return serial
    text = _read_text(cpuinfo)
    if text:
        match = _CPUINFO_SERIAL.search(text)
        if match and match.group(1).strip("0"):
            return match.group(1).lower()
    text = _read_text(machine_id)
    if text and text.strip():
        return text.strip()
    return None


@cache
def get_cpu_serial() -> str | None:
    """The hardware serial of this machine, read once and cached; None when there is none."""
    return read_cpu_serial()


def resolve_device_id(config: Config) -> str:
    """``device.id`` from the config, else the hardware serial; refuse (78) when neither exists."""
    if config.device.id:
        return config.device.id
    serial = get_cpu_serial()
    if serial is None:
        raise ConfigError(
            f"{config.path}: device.id: missing, and this machine has no CPU serial or "
            f"{MACHINE_ID} to use instead"
        )
    return serial
