"""systemd notify protocol: datagrams on $NOTIFY_SOCKET, silence without it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixlog.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_messages_arrive_as_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    """READY, STATUS, WATCHDOG and STOPPING each arrive as one datagram."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("polling 12 registers")
    assert sock.recv(4096) == b"READY=1\nSTATUS=polling 12 registers"
    assert notifier.status("backlog 0")
    assert sock.recv(4096) == b"STATUS=backlog 0"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket_address() -> None:
    """An "@name" NOTIFY_SOCKET is the Linux abstract namespace."""
    name = f"nixlog-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        notifier.close()
        sock.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    """No NOTIFY_SOCKET: nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval_sec is None


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """A notify socket that went away is logged at debug level, never raised."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.ready()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """Ping at half of WATCHDOG_USEC, only when the watchdog is meant for this process."""
    assert Notifier(env).watchdog_interval_sec == expected
