"""systemd's notify protocol, spoken directly over its datagram socket (no extra dependency).

``READY=1``, ``STATUS=...``, ``STOPPING=1`` and ``WATCHDOG=1`` are single datagrams sent to
``$NOTIFY_SOCKET``; outside systemd (no variable) every call is a no-op, so the daemon runs the
same in a terminal, under a test, or as a service.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to systemd when it asked for them, and nothing otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is a Linux abstract socket: the leading "@" stands for a NUL byte.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._socket: socket.socket | None = None
        self.watchdog_interval_sec = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) listens on ``$NOTIFY_SOCKET``."""
        return bool(self._address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one datagram; False (and a debug log) when it failed.

        A notify failure must never take the logger down: systemd may be restarting, and the
        watchdog will tell if we really are stuck.
        """
        if not self._address:
            return False
        message = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                self._socket = socket.socket(socket.AF_UNIX, kind)
            self._socket.sendto(message, self._address)
        except OSError as exc:
            log.debug("systemd notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd the service is up (``Type=notify`` waits for this)."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """Show ``text`` in ``systemctl status``."""
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        """Tell systemd the shutdown has begun."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """Pet the watchdog: call only when every loop has shown progress."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings we must keep, or None when no watchdog is armed.

    systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID`` for the process it means); we ping at
    half the period, as sd_watchdog_enabled(3) advises.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
