"""HTTP peers: a real threaded receiver on 127.0.0.1 whose behaviour each test switches."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nixlog.config import ApiConfig, Secret
from tests.receiver import ScriptedReceiver

TEST_API_KEY = "nxk-TOPSECRET-5e1f-key"
"""Recognisable, so a test can grep every output for it."""


@pytest.fixture
def receiver() -> Iterator[ScriptedReceiver]:
    """A started ScriptedReceiver on a free port that requires ``TEST_API_KEY``."""
    rx = ScriptedReceiver(api_key=TEST_API_KEY).start()
    try:
        yield rx
    finally:
        rx.stop()


@pytest.fixture
def dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/data"


@pytest.fixture
def make_api_config() -> Callable[..., ApiConfig]:
    """Build an ``ApiConfig`` for a URL with short test timeouts; keywords override fields."""

    def build(endpoint: str, **overrides: Any) -> ApiConfig:
        fields: dict[str, Any] = {
            "endpoint": endpoint,
            "api_key": Secret(TEST_API_KEY),
            "timeout_sec": 2.0,
            "batch_size": 100,
            "publish_interval_sec": 1.0,
        }
        fields.update(overrides)
        return ApiConfig(**fields)

    return build
