"""Fixtures of the misbehaving-peer suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def nixlog_logging_restored() -> Iterator[None]:
    """Undo what a CLI run does to the "nixlog" logger (its own stderr handler, no propagation).

    CliRunner closes the stream that handler writes to; a later test logging through it would
    hit a closed file, and caplog would see nothing.
    """
    logger = logging.getLogger("nixlog")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers[:], logger.propagate, logger.level = [], True, logging.NOTSET
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]
