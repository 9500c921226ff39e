"""Fixtures of the fault suite: daemons that are always reaped, a slow receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.helpers import SlowReceiver
from tests.fixtures_http import TEST_API_KEY


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    """A receiver requiring ``TEST_API_KEY`` that takes 0.2 s to answer each batch."""
    rx = SlowReceiver(api_key=TEST_API_KEY, delay_sec=0.2)
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()
