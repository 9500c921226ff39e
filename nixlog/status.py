"""Device status readings: a device that goes silent, or comes back, is itself a reading.

A dead device stores nothing, and silence is not something a platform can alarm on. So when
a device's passes stop yielding any value and any answer (``OFFLINE_AFTER`` passes in a row of
timeouts, a lost link, a skipped unit, another unit answering; the same grace the poller gives
a silent unit before backing it off) one reading is stored with
``{"nixlog:status": "offline", "nixlog:reason": "<why>"}``; the first pass with a value or
an answer after that stores ``{"nixlog:status": "online"}``. One reading per transition,
never per cycle; a device healthy from the start gets none. The keys hold a colon, which a register
name cannot (config names are letters, digits, ``_ . -``), so they never collide with a
register; they are plain string values, so every output and the CSV export carry them as
they carry any string register (ARCHITECTURE.md: How a reading flows).

Pure: no I/O. The scheduler (daemon) and ``run_poll_loop`` (``nixlog poll``) feed it every
pass's full reading and store what it returns next to the data, past report by exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from nixlog.model import Reading, Value

STATUS_KEY: Final = "nixlog:status"
REASON_KEY: Final = "nixlog:reason"
OFFLINE: Final = "offline"
ONLINE: Final = "online"
OFFLINE_AFTER: Final = 2
"""Passes in a row without any value before a device is reported offline (one is noise)."""

_SKIPPED: Final = "skipped:"


def is_status(reading: Reading) -> bool:
    """True for a device status reading (not register values)."""
    return STATUS_KEY in reading.values


class StatusWatch:
    """Remembers each device's state and turns a change into one status reading.

    ``observe`` takes every pass's reading (``Poller.last_cycle``: failed registers
    included) and returns the status reading to store, or None. Devices are keyed by
    ``Reading.device`` (None: the flat form's one device).
    """

    def __init__(self, offline_after: int = OFFLINE_AFTER) -> None:
        self._offline_after = offline_after
        self._offline: set[str | None] = set()
        self._down_passes: dict[str | None, int] = {}
        self._reason: dict[str | None, str] = {}

    def offline(self, device: str | None) -> bool:
        """True while ``device`` is reported offline."""
        return device in self._offline

    def observe(self, cycle: Reading) -> Reading | None:
        """The status reading ``cycle`` causes (a transition), or None."""
        device = cycle.device
        if not cycle.values and not cycle.errors:
            return None  # a pass that read nothing (an empty group) says nothing
        # A pass with a value, or an answer (if only an exception), proves the device is there:
        # counting a refused request as silence would flap a device with one bad group.
        if cycle.values or not all(_silence(error) for error in cycle.errors.values()):
            self._down_passes.pop(device, None)
            self._reason.pop(device, None)
            if device not in self._offline:
                return None
            self._offline.discard(device)
            return self._reading(cycle, {STATUS_KEY: ONLINE})
        count = self._down_passes[device] = self._down_passes.get(device, 0) + 1
        reason = _reason(cycle.errors.values())
        # The first real cause of the streak: later passes only say the unit is skipped.
        if device not in self._reason or self._reason[device].startswith(_SKIPPED):
            self._reason[device] = reason
        if device in self._offline or count < self._offline_after:
            return None
        self._offline.add(device)
        return self._reading(cycle, {STATUS_KEY: OFFLINE, REASON_KEY: self._reason[device]})

    @staticmethod
    def _reading(cycle: Reading, values: dict[str, Value]) -> Reading:
        return Reading(timestamp=cycle.timestamp, values=values, device=cycle.device)


_ANSWERED: Final = (
    "exception ",  # the device refused the request: it is there
    "late answer",  # it answered, too late
    "skipped: block",  # one block backed off while the unit answers the others
    "invalid value",  # it answered something that does not decode
    "not a number",
)
_GATEWAY_SILENCE: Final = ("exception 10 ", "exception 11 ")  # a gateway: no answer behind it


def _silence(error: str) -> bool:
    """True for an error that means no answer from the device (timeout, lost link, ...).

    An answer from another unit id counts as silence too: the device asked for is not it.
    """
    if error.startswith(_GATEWAY_SILENCE):
        return True
    return not error.startswith(_ANSWERED)


def _reason(errors: Iterable[str]) -> str:
    """The most telling error of a failed pass: a cause rather than "skipped: ..."."""
    texts = list(errors)
    for text in texts:
        if not text.startswith(_SKIPPED):
            return text
    return texts[0]
