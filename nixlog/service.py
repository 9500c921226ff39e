"""The lean ``nixlog daemon`` process: what the CLI execs into once it has checked the config.

``nixlog daemon`` parses its options and validates the config in the Typer CLI (so a bad
option or config is one line and its exit code, like every other command), then replaces its
own image with ``python -m nixlog.service --config PATH [--verbose]``. ``exec`` keeps the PID,
the environment and the open stdio, so systemd's ``Type=notify``, ``NOTIFY_SOCKET``, the
watchdog and the journal see the same process; only the modules change. This module imports
what the service runs and nothing of the CLI: no typer, click, pydantic or rich, which would
otherwise stay resident for the daemon's whole life (a quarter of its memory).

The arguments are a private contract with ``cli.py`` (not a user interface), so they are
parsed by hand rather than by a parser that would cost an import.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nixlog.console import exit_code_of, setup_logging
from nixlog.errors import EXIT_USAGE

MODULE = "nixlog.service"


def command(config: Path, verbose: bool) -> list[str]:
    """The argv that runs the lean daemon on ``config`` with this interpreter."""
    # Interpreter flags that change what gets imported or from where must survive the exec.
    flags = [
        flag
        for flag, on in (
            ("-E", sys.flags.ignore_environment),
            ("-s", sys.flags.no_user_site),
            ("-I", sys.flags.isolated),
        )
        if on
    ]
    argv = [sys.executable, *flags, "-m", MODULE, "--config", str(config)]
    return [*argv, "--verbose"] if verbose else argv


def exec_daemon(config: Path, verbose: bool) -> None:
    """Replace this process with the lean daemon (same PID); returns only if exec fails."""
    # Whatever is still buffered would be lost with this image.
    sys.stdout.flush()
    sys.stderr.flush()
    argv = command(config.absolute(), verbose)
    os.execv(argv[0], argv)  # noqa: S606 -- our own interpreter, no shell


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon on ``--config PATH``; return its exit code (errors are one line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    if verbose:
        args.remove("--verbose")
    if len(args) != 2 or args[0] != "--config":
        print(
            "Error: usage: python -m nixlog.service --config PATH [--verbose] "
            "(started by `nixlog daemon`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # A service logs its start, stop and trouble; journald keeps it.
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    return exit_code_of(lambda: _serve(Path(args[1]), verbose))


def _serve(config_path: Path, verbose: bool) -> int:
    # Imported here, after the logging set-up, so that only the service's modules load.
    from nixlog.config import load_config
    from nixlog.daemon import run_daemon

    # Loaded again rather than passed along: the CLI already validated this very file.
    config = load_config(config_path)
    if verbose:
        loaded = sorted(name for name in sys.modules if "." not in name)
        logging.getLogger(MODULE).debug("top-level modules loaded: %s", " ".join(loaded))
    return run_daemon(config)

if __name__ == "__main__":
    sys.exit(main())
