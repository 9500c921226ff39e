"""Fixtures of the fault suite: a slow receiver, a small disk of a test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import TMPFS, SlowReceiver, SmallDisk, namespaces_work
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 24 MiB tmpfs over tmp_path/disk, in a mount namespace of its own."""
    why = namespaces_work()
    if why is not None:
        pytest.skip(f"no mount namespaces here: {why}")
    disk = SmallDisk(tmp_path / "disk", TMPFS)
    try:
        yield disk
    finally:
        disk.close()
