"""The records that travel the conveyor belt: a polled reading and a stored one.

Kept apart from the stations so that every module (poll, store, ship) can share them without
importing each other's I/O libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Value = int | float | bool | str
"""A decoded register value, after scale and offset."""

SENT_UNSENT = 0
SENT_DELIVERED = 1
SENT_REJECTED = 2


@dataclass(frozen=True)
class Reading:
    """One poll cycle: values that were read and errors for registers that failed.

    ``timestamp`` is UTC ISO 8601 with microseconds, taken when the cycle's first request was
    sent. A register is in ``values`` or in ``errors``, never both.
    """

    timestamp: str
    values: dict[str, Value]
    errors: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    """The plant device this reading is from; None for the flat ``[modbus]`` form."""


@dataclass(frozen=True)
class StoredReading:
    """A reading as the database holds it; ``id`` is its queue position (never reused)."""

    id: int
    timestamp: str
    device_id: str
    values: dict[str, Value]
    errors: dict[str, str]
    sent_flag: int = SENT_UNSENT
    device: str | None = None
    """The plant device this reading is from; None for the flat ``[modbus]`` form."""
