"""The daemon against an RTU line where three units misbehave in three ways at once.

What the operator sees: each kind of fault named once in the daemon log, no traceback, the
healthy units read in every cycle, and every stored value the one the device holds.
"""

from __future__ import annotations

import time
from pathlib import Path

from nixlog.frames import rtu_answer
from nixlog.modbus_client import ANSWERED_TWICE, LATE_ANSWER
from tests.daemon_helpers import DaemonProcess, row_count, wait_until
from tests.faults.helpers import read_values
from tests.peers.devices import Request, RtuDevice, Send, value_of
from tests.peers.harness import holding, peer_config

REGISTERS = (
    holding("u1_late", 0, unit=1),  # answered 0.45 s late (timeout 0.3 s)
    holding("u1_ok", 100, unit=1),
    holding("u2_a", 0, unit=2),  # unit 2 answers everything twice, 20 ms apart
    holding("u2_b", 100, unit=2),
    holding("u3_a", 0, unit=3),  # unit 3's gateway rewrites the unit id to 255
    holding("u4_a", 0, unit=4),  # unit 4 is healthy
    holding("u4_b", 100, unit=4),
)


def behaviour(request: Request) -> list[Send]:
    """Each unit's way of misbehaving (unit 4 behaves)."""
    frame = rtu_answer(request.unit, request.function, request.values())
    if request.unit == 1 and request.start == 0:
        return [(0.45, frame)]
    if request.unit == 2:
        return [(0.0, frame), (0.02, frame)]
    if request.unit == 3:
        return [(0.0, rtu_answer(255, request.function, request.values()))]
    return [(0.0, frame)]


def test_daemon_names_each_fault_once_and_stores_only_right_values(
    pty_pair: tuple[str, str], tmp_path: Path, processes: list[DaemonProcess]
) -> None:
    """Late, doubled and mislabelled answers on one line: one log line each, no wrong value."""
    server_end, client_end = pty_pair
    device = RtuDevice(server_end, {1, 2, 3, 4}, behaviour).start()
    try:
        config = peer_config(tmp_path, client_end, REGISTERS, poll_rate_hz=5)
        db_path = tmp_path / "nixlog.db"
        daemon = DaemonProcess(config)
        processes.append(daemon)
        wait_until(lambda: row_count(db_path) >= 3, 30, "the first readings", daemon)
        time.sleep(5.0)
        code, _ = daemon.terminate()
    finally:
        device.stop()
    log = daemon.log
    assert code == 0, log[-2000:]
    assert "Traceback" not in log
    assert log.count(f"unit 1 {LATE_ANSWER}") == 1, log
    assert log.count(f"unit 2 {ANSWERED_TWICE}") == 1, log
    assert log.count("answer from unit 255 (asked 3)") == 1, log
    rows = read_values(db_path)
    by_name = {register.name: register for register in REGISTERS}
    healthy = 0
    for _, values, errors in rows:
        for name, value in values.items():
            register = by_name[name]
            assert value == value_of(register.unit_id, register.address), (name, value)
        assert "u1_late" not in values and "u3_a" not in values
        assert errors.get("u3_a") == "answer from unit 255 (asked 3)"
        healthy += {"u2_a", "u2_b", "u4_a", "u4_b", "u1_ok"} <= values.keys()
    # Every cycle reads the healthy units (the late block's bus time is its own cost: the
    # cycles it slows down are skipped slots, counted in the daemon's stop line).
    assert len(rows) >= 10 and healthy == len(rows)
