"""``nixlog db stats``: collect the figures and write them for a person or for a script.

Both fronts of the command call ``collect`` and a renderer from here: the Typer command in
``cli.py`` and the console script's fast path in ``entry.py``, which runs ``db stats`` without
importing Typer, pydantic or rich (ARCHITECTURE.md, "Start-up cost"). So the human view is
plain aligned text, built here, not a rich table: the same bytes whichever front ran it.
"""

from __future__ import annotations

import json
from pathlib import Path

from nixlog import database
from nixlog.config import load_config, resolve_config_path
from nixlog.console import format_size
from nixlog.database import DbStats

TITLE = "nixlog database"


def collect(config_path: Path | None) -> DbStats:
    """Load the config (``None``: the default search) and read its database's figures.

    Safe next to a running daemon: WAL readers never block its writer (nor the reverse).
    Raises ``ConfigError`` or ``DatabaseError`` (a missing database is not created).
    """
    config = load_config(resolve_config_path(config_path))
    conn = database.open_db(config.database.path, create=False)
    try:
        return database.stats(conn, outputs=config.output_names)
    finally:
        database.close(conn)


def rows(stats: DbStats) -> list[tuple[str, str]]:
    """The human view's (what, value) pairs, in the order they are shown."""
    shown = [
        ("file", stats.path),
        ("readings", str(stats.rows)),
        ("unsent", str(stats.unsent)),
        ("sent", str(stats.sent)),
        ("rejected by the API", str(stats.rejected)),
        ("oldest", stats.oldest or "-"),
        ("newest", stats.newest or "-"),
        ("oldest unsent", stats.oldest_unsent or "-"),
        ("file size (with WAL)", format_size(stats.db_bytes)),
        ("reusable free pages", format_size(stats.free_pages_bytes)),
        ("free disk", format_size(stats.free_disk_bytes)),
        ("last successful publish", stats.last_publish or "never"),
        (
            "pruned so far",
            f"{stats.pruned_sent} sent, {stats.pruned_rejected} rejected, "
            f"{stats.pruned_unsent} unsent",
        ),
        ("epoch", stats.epoch),
        ("lost unwritten (disk full at stop)", str(stats.lost_unwritten)),
    ]
    for name, output in stats.outputs.items():
        shown.append(
            (
                f"output {name}",
                f"{output['unsent']} unsent, last delivery {output['last_delivery'] or 'never'}, "
                f"{output['failures']} failures since, {output['pruned_unsent']} pruned unsent",
            )
        )
    shown += [
        (
            f"device {device.device or '(none)'}",
            f"{device.rows} readings, {device.unsent} unsent, newest {device.newest or '-'}",
        )
        for device in stats.devices
    ]
    return shown


def render_text(stats: DbStats) -> str:
    """Two aligned columns under a title: readable on a terminal, and ``grep``-able."""
    shown = rows(stats)
    width = max(len(what) for what, _ in shown)
    lines = [TITLE, *(f"  {what:<{width}}  {_printable(value)}" for what, value in shown)]
    return "\n".join(lines)


def render_json(stats: DbStats) -> str:
    """The ``--json`` document (``DbStats.as_dict``: keys that outside scripts rely on)."""
    return json.dumps(stats.as_dict())


def _printable(value: str) -> str:
    """A value with control characters escaped: a file name must not drive the terminal."""
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in value)
