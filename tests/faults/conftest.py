"""Fixtures of the fault suite: daemons that are always reaped, a slow receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon_helpers import DaemonProcess
from tests.faults.helpers import SlowReceiver
from tests.fixtures_http import TEST_API_KEY


@pytest.fixture
def processes() -> Iterator[list[DaemonProcess]]:
    """Daemons started by a test; SIGKILLed if the test left one running."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.stop_quietly()


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    """A receiver requiring ``TEST_API_KEY`` that takes 0.2 s to answer each batch."""
    rx = SlowReceiver(api_key=TEST_API_KEY, delay_sec=0.2)
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()
