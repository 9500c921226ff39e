"""Where readings go: one module per output, each the only importer of its client library.

- ``http``: ``[api]`` (``nixlog.api_client``, httpx), in the nixlog, thingsboard or influx format;
- ``mqtt``: ``[mqtt]`` (paho-mqtt), in the nixlog or thingsboard format;
- ``formats``: the bodies, pure.

Every output offers what ``core.publish_pending`` needs (``core.Shipper``): ``publish_data(rows)``
sends one batch and classifies the answer into a ``PublishResult`` without raising for anything
a network or a peer can do; ``close()`` ends it. Each output has its own cursor in the
database, named after it (``api``, ``mqtt``); see ARCHITECTURE.md, "Outputs".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nixlog.config import Config
    from nixlog.model import StoredReading

ResultKind = Literal["delivered", "temporary", "auth", "endpoint", "too_large", "refused"]


@dataclass(frozen=True)
class PublishResult:
    """What became of one POST: ``kind`` decides the rows' fate, the rest explains it.

    ``retry_after`` is the server's ``Retry-After`` in seconds (already clamped) or None.
    ``detail`` is one line for logs and errors; it never contains the API key.
    """

    kind: ResultKind
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the server acknowledged the batch (2xx)."""
        return self.kind == "delivered"


class Output(Protocol):
    """One output: a name (its cursor), one batch at a time, and close."""

    name: str

    def publish_data(self, rows: Sequence[StoredReading]) -> PublishResult:
        """Send one batch; classify the outcome; never raise for network trouble."""
        ...

    def close(self) -> None:
        """Release the connection (a broker is told ``offline`` first)."""
        ...


def batch_size(config: Config, name: str) -> int:
    """The configured batch size of output ``name``."""
    section: Any = config.api if name == "api" else config.mqtt
    assert section is not None, name
    return int(section.batch_size)


def interval(config: Config, name: str) -> float:
    """How long output ``name`` sleeps when caught up."""
    section: Any = config.api if name == "api" else config.mqtt
    assert section is not None, name
    return float(section.publish_interval_sec)


def open_output(
    config: Config,
    name: str,
    device_id: str,
    epoch: str,
    *,
    cancel: threading.Event | None = None,
) -> Output:
    """Create output ``name`` (``api`` or ``mqtt``); its client library is imported here."""
    if name == "mqtt":
        assert config.mqtt is not None
        from nixlog.outputs.mqtt import MqttOutput

        return MqttOutput(config.mqtt, device_id, epoch, cancel=cancel)
    from nixlog.outputs.http import ApiClient

    return ApiClient(config.require_api(), device_id, epoch, cancel=cancel)
