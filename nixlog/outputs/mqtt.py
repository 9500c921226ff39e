"""The MQTT output (``[mqtt]``): the only module that imports paho-mqtt.

A batch is delivered only when the broker has acknowledged every message of it (QoS 1
PUBACK); "written to the socket" proves nothing. The session is persistent (clean session
off, client id = the device id unless configured), so the broker keeps what it acknowledged
and paho sends again what was in flight when the link dropped: readings may arrive twice,
always with the same ``id`` (receivers deduplicate, as with HTTP).

paho runs its own network thread (``loop_start``) that reconnects with a doubling delay
(1 s to 60 s). ``publish_data`` never publishes while disconnected (paho would queue the
messages in memory for ever), waits for the connection at most ``mqtt.timeout_sec``, and
classifies: no connection or no PUBACK in time is ``temporary``; a broker that refuses the
login is ``auth`` (the log names ``mqtt.password``; the password itself is never shown).

A retained ``online`` on ``status_topic`` after each connect, a retained ``offline`` on a
clean close, and the same ``offline`` as the last will when the link dies.

Formats: ``nixlog`` publishes the JSON body of ``[api]`` to ``topic`` (one message per
device of the batch when the template has ``{device}``); ``thingsboard`` uses the gateway API:
``v1/gateway/connect`` once per device and connection, ``v1/gateway/telemetry`` for readings
of plant devices, ``v1/devices/me/telemetry`` for the gateway's own (no device).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from nixlog.config import MqttConfig
from nixlog.errors import ConfigError
from nixlog.model import StoredReading
from nixlog.outputs import PublishResult, ResultKind, formats

_WAIT_STEP_SEC: Final = 0.05
"""How often a waiting caller looks at its cancel event (shutdown latency)."""
_CLOSE_SEC: Final = 1.0
"""At a close, how long the ``offline`` status and the network thread are waited for."""
RECONNECT_MIN_SEC: Final = 1
RECONNECT_MAX_SEC: Final = 60
_AUTH_REASONS: Final = frozenset({4, 5, 134, 135})
"""CONNACK codes for a bad login: 3.1.1's 4/5 and MQTT 5's 134/135 (paho maps the former)."""
TB_CONNECT: Final = "v1/gateway/connect"
TB_GATEWAY_TELEMETRY: Final = "v1/gateway/telemetry"
TB_DEVICE_TELEMETRY: Final = "v1/devices/me/telemetry"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _tls_context(mqtt: MqttConfig) -> ssl.SSLContext:
    """The default trust store plus ``ca_file``; a client certificate when configured."""
    context = ssl.create_default_context()
    if mqtt.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(mqtt.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.ca_file: cannot use {mqtt.ca_file} as a CA certificate file ({exc})"
            ) from None
    if mqtt.cert_file is not None and mqtt.key_file is not None:
        try:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.cert_file: cannot use {mqtt.cert_file} with {mqtt.key_file} as a "
                f"client certificate ({exc})"
            ) from None
    return context


class MqttOutput:
    """Publishes batches for one device and database epoch to ``[mqtt]``'s broker.

    The connection starts with the first batch. A set ``cancel`` event (the daemon's stop
    event) ends a wait at once; the batch stays unsent. Use as a context manager or ``close()``.
    """

    name = "mqtt"

    def __init__(
        self,
        mqtt: MqttConfig,
        device_id: str,
        epoch: str,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.device_id = device_id
        self.epoch = epoch
        self.cancel = cancel
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._connected = False
        self._refused: Any = None
        self._announced: set[str] = set()
        self._started = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=mqtt.client_id or device_id,
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        if mqtt.username is not None:
            password = mqtt.password.reveal() if mqtt.password is not None else None
            client.username_pw_set(mqtt.username, password)
        if mqtt.tls:
            client.tls_set_context(_tls_context(mqtt))
        status = self._status_topic()
        if status:
            client.will_set(status, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_SEC, RECONNECT_MAX_SEC)
        client.connect_timeout = min(mqtt.timeout_sec, 5.0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self._client = client

    def __enter__(self) -> MqttOutput:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ topics and bodies

    def _status_topic(self) -> str:
        template = self.mqtt.status_topic
        return template.format(device_id=self.device_id, device=self.device_id) if template else ""

    def topic(self, device: str | None) -> str:
        """The topic of a reading of ``device`` (None: the gateway's own, its device id)."""
        return self.mqtt.topic.format(device_id=self.device_id, device=device or self.device_id)

    def messages(self, rows: Sequence[StoredReading]) -> list[tuple[str, bytes]]:
        """The (topic, payload) messages that carry ``rows``, in the order they are sent."""
        if self.mqtt.format == "thingsboard":
            return self._thingsboard(rows)
        groups: dict[str, list[StoredReading]] = {}
        for row in rows:
            groups.setdefault(self.topic(row.device), []).append(row)
        return [
            (topic, _json(formats.transform_for_api(self.device_id, self.epoch, group)))
            for topic, group in groups.items()
        ]

    def _thingsboard(self, rows: Sequence[StoredReading]) -> list[tuple[str, bytes]]:
        messages: list[tuple[str, bytes]] = []
        own = [row for row in rows if row.device is None]
        if own:
            messages.append((TB_DEVICE_TELEMETRY, _json(formats.thingsboard_telemetry(own))))
        gateway = formats.thingsboard_gateway(rows)
        for device in gateway:
            if device not in self._announced:
                messages.append((TB_CONNECT, _json({"device": device})))
        if gateway:
            messages.append((TB_GATEWAY_TELEMETRY, _json(gateway)))
        return messages

    def payload(self, rows: Sequence[StoredReading]) -> list[dict[str, Any]]:
        """What ``publish --dry-run`` shows: each message's topic and JSON body."""
        return [{"topic": t, "payload": json.loads(p)} for t, p in self.messages(rows)]

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        with self._lock:
            if reason.is_failure:
                self._connected = False
                self._refused = reason
            else:
                self._connected = True
                self._refused = None
                self._announced.clear()
        if not reason.is_failure:
            status = self._status_topic()
            if status:
                client.publish(status, b"online", qos=1, retain=True)
        self._changed.set()

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        with self._lock:
            self._connected = False
        self._changed.set()

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, _mid: int, _reason: Any, _props: Any
    ) -> None:
        self._changed.set()

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._changed.set()

    # ------------------------------------------------------------------ publishing

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            self._client.connect_async(self.mqtt.host, self.mqtt.port, self.mqtt.keepalive_sec)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"mqtt.url: cannot use {self.mqtt.url}: {exc}") from None
        self._client.loop_start()

    def _wait(self, done: Any, deadline: float, cancel: threading.Event | None) -> str | None:
        """Wait until ``done()``; return why not ("timeout", "cancel", "disconnected")."""
        while True:
            self._changed.clear()
            if done():
                return None
            if cancel is not None and cancel.is_set():
                return "cancel"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            self._changed.wait(min(remaining, _WAIT_STEP_SEC))

    def publish_data(
        self, rows: Sequence[StoredReading], cancel: threading.Event | None = None
    ) -> PublishResult:
        """Publish ``rows`` at QoS 1; ``delivered`` only once every PUBACK is in."""
        cancel = cancel if cancel is not None else self.cancel
        self._start()
        deadline = time.monotonic() + self.mqtt.timeout_sec
        where = f"{self.mqtt.host}:{self.mqtt.port}"
        why = self._wait(lambda: self._connected or self._refused is not None, deadline, cancel)
        with self._lock:
            refused, connected = self._refused, self._connected
        if refused is not None and not connected:
            kind: ResultKind = "auth" if refused.value in _AUTH_REASONS else "temporary"
            return PublishResult(kind, detail=f"the broker at {where} refused the login: {refused}")
        if why == "cancel":
            return PublishResult("temporary", detail="publish abandoned: shutting down")
        if not connected:
            return PublishResult(
                "temporary",
                detail=f"no connection to the broker at {where} within {self.mqtt.timeout_sec:g} s",
            )
        infos = []
        announced = []
        for topic, payload in self.messages(rows):
            info = self._client.publish(topic, payload, qos=self.mqtt.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The link dropped under us: what paho queued is sent again on reconnect.
                return PublishResult(
                    "temporary", detail=f"lost the connection to the broker at {where}"
                )
            if topic == TB_CONNECT:
                announced.append(json.loads(payload)["device"])
            infos.append(info)
        why = self._wait(
            lambda: all(info.is_published() for info in infos) or not self._connected,
            deadline,
            cancel,
        )
        if all(info.is_published() for info in infos):
            with self._lock:
                self._announced.update(announced)
            return PublishResult("delivered")
        if why == "cancel":
            return PublishResult("temporary", detail="publish abandoned: shutting down")
        if why == "timeout":
            return PublishResult(
                "temporary",
                detail=f"no PUBACK from the broker at {where} within {self.mqtt.timeout_sec:g} s",
            )
        return PublishResult(
            "temporary", detail=f"lost the connection to the broker at {where} before its PUBACK"
        )

    def close(self) -> None:
        """Say ``offline`` (retained) when connected, disconnect, stop the network thread.

        Bounded: a broker that does not answer costs at most about a second.
        """
        if not self._started:
            return
        self._started = False
        status = self._status_topic()
        if status and self._connected:
            info = self._client.publish(status, b"offline", qos=1, retain=True)
            self._wait(info.is_published, time.monotonic() + _CLOSE_SEC, None)
        self._client.disconnect()
        # loop_stop joins paho's thread, which may sit in a connect attempt: not on our time.
        stopper = threading.Thread(
            target=self._client.loop_stop, name="nixlog-mqtt-stop", daemon=True
        )
        stopper.start()
        stopper.join(_CLOSE_SEC)
