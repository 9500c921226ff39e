"""The ``nixlog`` console script: ``db stats`` on a fast path, every other command through Typer.

``nixlog db stats`` is what a monitoring check runs every minute and what a technician types
first. Most of a Typer command's start-up on a Pi is importing Typer, pydantic (through which
Typer coerces option values) and rich, none of which ``db stats`` needs; on its own that is
about three times a bare interpreter's start. So the console script looks at argv first: the
plain spellings of ``db stats`` run here, on the same library call (``dbstats.collect``), the
same renderer and the same error line (``console.error_line``) as the Typer command. Anything
else (``--help``, ``-v``, an option or spelling not listed in ``parse_db_stats``) goes to
the Typer CLI, which stays the one parser of record: this path only recognises, it never
reports a usage error. See ARCHITECTURE.md, "Start-up cost".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DbStatsArgs:
    """A ``db stats`` command line the fast path can run."""

    config: Path | None
    json_output: bool


def parse_db_stats(argv: Sequence[str]) -> DbStatsArgs | None:
    """``DbStatsArgs`` for ``db stats [-c PATH | --config PATH | --config=PATH] [--json]``.

    ``None`` for any other command line, including every one Typer would reject or explain:
    those go to Typer. A repeated option takes its last value, as Typer does.
    """
    if list(argv[:2]) != ["db", "stats"]:
        return None
    config: Path | None = None
    json_output = False
    rest = list(argv[2:])
    while rest:
        arg = rest.pop(0)
        if arg == "--json":
            json_output = True
            continue
        if arg in ("-c", "--config") and rest:
            value = rest.pop(0)
        elif arg.startswith("--config="):
            value = arg.removeprefix("--config=")
        else:
            return None
        # An empty value, an option-like value or a directory: Typer's message, not ours.
        if not value or value.startswith("-") or Path(value).is_dir():
            return None
        config = Path(value)
    return DbStatsArgs(config=config, json_output=json_output)


def run_db_stats(args: DbStatsArgs) -> int:
    """Run ``db stats`` as the Typer command does; return the exit code."""
    import logging

    from nixlog.console import exit_code_of, setup_logging

    setup_logging(logging.WARNING)
    return exit_code_of(lambda: _print_db_stats(args))


def _print_db_stats(args: DbStatsArgs) -> int:
    from nixlog import dbstats

    stats = dbstats.collect(args.config)
    print(dbstats.render_json(stats) if args.json_output else dbstats.render_text(stats))
    sys.stdout.flush()  # here, so that a closed pipe is met inside exit_code_of
    return 0


def main() -> None:
    """Console-script entry point."""
    args = parse_db_stats(sys.argv[1:])
    if args is not None:
        sys.exit(run_db_stats(args))
    from nixlog.cli import main as cli_main

    cli_main()
