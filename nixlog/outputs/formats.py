"""The bodies the outputs send, built from stored readings: pure, no I/O.

- ``transform_for_api``: the nixlog JSON body (HTTP and MQTT), README "Shipping".
- ``thingsboard_telemetry``: ThingsBoard's device telemetry, ``[{"ts": ms, "values": {...}}]``
  (HTTP ``POST /api/v1/<token>/telemetry``, MQTT ``v1/devices/me/telemetry``).
- ``thingsboard_gateway``: ThingsBoard's gateway API, ``{"<device>": [{"ts": ..., ...}]}`` for
  ``v1/gateway/telemetry``; readings of the gateway's own device (no ``device``) are left to
  ``thingsboard_telemetry``.
- ``influx_lines``: InfluxDB line protocol, one line per reading: measurement ``nixlog``, tags
  ``device_id`` and ``device`` (left out when None), fields the values, a nanosecond timestamp.

Non-finite floats (a sensor fault decoded as float) are left out: neither JSON nor the line
protocol can carry them. Failed registers have no value to send; the nixlog format alone
carries ``errors``.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from nixlog.model import StoredReading, Value

MEASUREMENT: Final = "nixlog"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def reading_id(device_id: str, epoch: str, seq: int) -> str:
    """The global id of a stored reading: stable across retries, unique across databases."""
    return f"{device_id}-{epoch}-{seq}"


def _json_safe(
    values: Mapping[str, Value], errors: Mapping[str, str]
) -> tuple[dict[str, Value], dict[str, str]]:
    """Move non-finite floats (a sensor fault decoded as float) from values to errors.

    JSON has no NaN or Infinity; sending them produces a body a strict server refuses, which
    would get the reading rejected. As an error the fault stays visible and the reading ships.
    """
    clean: dict[str, Value] = {}
    extra: dict[str, str] = dict(errors)
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            extra[name] = f"non-finite value ({value})"
        else:
            clean[name] = value
    return clean, extra


def transform_for_api(device_id: str, epoch: str, rows: Sequence[StoredReading]) -> dict[str, Any]:
    """The JSON body of one batch for ``rows`` (pure).

    Every reading carries ``id`` (``<device_id>-<epoch>-<seq>``), ``seq`` (the row id),
    ``timestamp`` and ``values``; ``errors`` only when a register failed; ``device`` only
    for a plant device's reading.
    """
    readings: list[dict[str, Any]] = []
    for row in rows:
        values, errors = _json_safe(row.values, row.errors)
        item: dict[str, Any] = {
            "id": reading_id(device_id, epoch, row.id),
            "seq": row.id,
            "timestamp": row.timestamp,
            "values": values,
        }
        if row.device is not None:  # plant readings only: the flat payload stays as it was
            item["device"] = row.device
        if errors:
            item["errors"] = errors
        readings.append(item)
    return {"device_id": device_id, "readings": readings}


def encode_body(payload: Mapping[str, Any], *, compress: bool) -> bytes:
    """Serialise a payload compactly (strict JSON), gzipped when ``compress``."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    data = body.encode("utf-8")
    # mtime=0 keeps the same batch byte-identical across retries.
    return gzip_module.compress(data, compresslevel=6, mtime=0) if compress else data


def _finite(values: Mapping[str, Value]) -> dict[str, Value]:
    return {
        name: value
        for name, value in values.items()
        if not (isinstance(value, float) and not math.isfinite(value))
    }


def _parse(timestamp: str) -> datetime:
    moment = datetime.fromisoformat(timestamp)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def timestamp_ns(timestamp: str) -> int:
    """Nanoseconds since 1970 of a stored ISO 8601 timestamp, exactly (integer arithmetic)."""
    delta = _parse(timestamp) - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def timestamp_ms(timestamp: str) -> int:
    """Milliseconds since 1970 (ThingsBoard's ``ts``), truncated."""
    return timestamp_ns(timestamp) // 1_000_000


def thingsboard_telemetry(rows: Iterable[StoredReading]) -> list[dict[str, Any]]:
    """``[{"ts": ms, "values": {...}}]``, one entry per reading."""
    return [{"ts": timestamp_ms(row.timestamp), "values": _finite(row.values)} for row in rows]


def thingsboard_gateway(rows: Iterable[StoredReading]) -> dict[str, list[dict[str, Any]]]:
    """``{"<device>": [{"ts": ms, "values": {...}}, ...]}`` for rows that have a device."""
    body: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.device is not None:
            body.setdefault(row.device, []).append(
                {"ts": timestamp_ms(row.timestamp), "values": _finite(row.values)}
            )
    return body


# Line protocol escaping (docs.influxdata.com, "Line protocol", special characters).
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
# A string field value may hold a raw newline (InfluxDB stores it as such); names cannot.
_STRING_ESCAPES: Final = str.maketrans({'"': r"\"", "\\": "\\\\"})


def _key(text: str) -> str:
    """A tag key, tag value or field key (config rules keep backslashes out of all three)."""
    return text.translate(_KEY_ESCAPES)


def _field_value(value: Value) -> str | None:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return f'"{value.translate(_STRING_ESCAPES)}"'


def influx_line(row: StoredReading) -> str | None:
    """One reading as a line, or None when it has no value to write (all registers failed).

    The ``device_id`` tag is the one the reading was stored under (as ``nixlog export``).
    """
    fields = []
    for name, value in row.values.items():
        text = _field_value(value)
        if text is not None:
            fields.append(f"{_key(name)}={text}")
    if not fields:
        return None
    tags = f",device_id={_key(row.device_id)}"
    if row.device:
        tags += f",device={_key(row.device)}"
    return (
        f"{MEASUREMENT.translate(_MEASUREMENT_ESCAPES)}{tags} {','.join(fields)} "
        f"{timestamp_ns(row.timestamp)}"
    )


def influx_lines(rows: Sequence[StoredReading]) -> str:
    """The line protocol body for ``rows`` (readings without any value are left out).

    Empty when no reading has a value: there is then nothing to write.
    """
    lines = [line for line in (influx_line(row) for row in rows) if line is not None]
    return "".join(line + "\n" for line in lines)
