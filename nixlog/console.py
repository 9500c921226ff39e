"""What every nixlog process prints on stderr, whichever front it started by.

The Typer CLI (``cli.py``), the lean daemon (``service.py``) and the console script's fast path
(``entry.py``) must look the same to the person reading the terminal or the journal: log lines
in one format, a user-facing error as one ``Error:`` line, sizes in the same units. This module
holds those rules and imports only the standard library, so that the lean fronts can use it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable

from nixlog.errors import EXIT_INTERRUPTED, NixlogError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""No time stamp: journald adds its own, and a terminal user reads the line at once."""


def setup_logging(level: int) -> None:
    """Send the ``nixlog`` loggers' records at ``level`` and above to stderr, plainly."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("nixlog")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def error_line(exc: NixlogError) -> str:
    """The one line that reports ``exc`` to a user (a newline in an OS message would split it)."""
    return f"Error: {' '.join(exc.message.splitlines())}"


def format_size(size: int) -> str:
    """A size as people read it: ``512 B``, ``36 kB``, ``4.2 MB``, ``1.5 GB`` (SI units)."""
    if size < 1000:
        return f"{size} B"
    if size < 1_000_000:
        return f"{size / 1000:.0f} kB"
    if size < 1_000_000_000:
        return f"{size / 1_000_000:.1f} MB"
    return f"{size / 1_000_000_000:.1f} GB"


def silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit flush does not hit a closed pipe again.

    For ``nixlog ... | head -1``: the reader went away, which is not an error of ours.
    """
    # Not a real file descriptor (CliRunner): nothing to silence.
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def exit_code_of(work: Callable[[], int]) -> int:
    """Run ``work`` and return its exit code, reporting what a user may cause as Typer would.

    A ``NixlogError`` is its one line and exit code, Ctrl-C is "Interrupted." and 130, and a
    closed stdout pipe is not an error (0). For the fronts that run without Typer.
    """
    try:
        return work()
    except NixlogError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return 0
