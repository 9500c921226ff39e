"""MQTT peers: a real mosquitto on 127.0.0.1 (config written by the test) and a paho subscriber."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from nixlog.config import MqttConfig, Secret

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A mosquitto process on 127.0.0.1 only; ``stop``/``start`` keep its port and its store.

    ``persistence`` keeps sessions and retained messages across restarts (as a real broker
    is configured); ``users`` turns on password authentication; ``tls`` = (ca, cert, key,
    require_certificate) serves TLS on the port.
    """

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path, Path, bool] | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {directory}/",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"log_dest file {directory}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto drops to the "mosquitto" user, which cannot read tmp_path.
            lines.append("user root")
        if users:
            password_file = directory / "passwd"
            password_file.write_text(
                "".join(f"{user}:{password}\n" for user, password in users.items())
            )
            password_file.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(password_file)], check=True)
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            ca, cert, key, require = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            if require:
                lines += ["require_certificate true"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        """Start the broker and wait until its port answers."""
        self._stderr = (self.directory / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(kill=True)
                log = (self.directory / "stderr.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mosquitto did not start: {log}")
            time.sleep(0.05)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop it (SIGTERM: it saves its store; ``kill``: SIGKILL, a crash)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=10)
        self.process = None
        self._stderr.close()

    @property
    def url(self) -> str:
        """The mqtt:// URL of the broker."""
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A started anonymous mosquitto on a free local port."""
    if not os.path.exists(MOSQUITTO):
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


class Subscriber:
    """A paho client subscribed to ``topic`` at QoS 1, collecting (topic, payload) pairs."""

    def __init__(self, port: int, topic: str = "#", **tls: Any) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False
        )
        if tls:
            self.client.tls_set(**tls)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, topic_prefix: str = "") -> list[Any]:
        """The JSON payloads received so far on topics starting with ``topic_prefix``."""
        with self._lock:
            return [
                json.loads(p) for t, p, _ in self.messages if t.startswith(topic_prefix) and p
            ]

    def readings(self, topic_suffix: str = "/readings") -> list[dict[str, Any]]:
        """Every reading received in nixlog-format messages, duplicates included."""
        with self._lock:
            bodies = [json.loads(p) for t, p, _ in self.messages if t.endswith(topic_suffix)]
        return [r for body in bodies for r in body["readings"]]

    def reading_ids(self, topic_suffix: str = "/readings") -> list[str]:
        """Every reading ``id`` received in nixlog-format messages, duplicates included."""
        return [r["id"] for r in self.readings(topic_suffix)]

    def retained(self, topic: str) -> list[bytes]:
        """Payloads received on exactly ``topic``, in order."""
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, check: Callable[[], bool], timeout: float) -> bool:
        """Poll ``check`` until it is true or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return check()

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    """A subscriber to every topic of ``broker``."""
    sub = Subscriber(broker.port)
    try:
        yield sub
    finally:
        sub.close()


@pytest.fixture
def make_mqtt_config() -> Callable[..., MqttConfig]:
    """Build an ``MqttConfig`` for a port with short test timeouts; keywords override fields."""

    def build(port: int, **overrides: Any) -> MqttConfig:
        fields: dict[str, Any] = {
            "url": f"mqtt://127.0.0.1:{port}",
            "host": "127.0.0.1",
            "port": port,
            "tls": False,
            "timeout_sec": 3.0,
            "batch_size": 100,
            "publish_interval_sec": 0.5,
        }
        fields.update(overrides)
        if isinstance(fields.get("password"), str):
            fields["password"] = Secret(fields["password"])
        return MqttConfig(**fields)

    return build
