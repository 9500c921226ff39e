"""The ``nixlog`` command line: parse options, call one library function, render, exit.

This is the only module that imports typer and rich. Station modules that pull in pymodbus or
httpx are imported inside the commands that need them, so ``nixlog --help`` and ``nixlog db
stats`` start fast on a Pi. ``NixlogError`` becomes ``Error: <message>`` and its exit code in
exactly one place, ``_command``.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nixlog import __version__
from nixlog.config import Config, load_config, resolve_config_path
from nixlog.errors import EXIT_INTERRUPTED, NixlogError

_F = TypeVar("_F", bound=Callable[..., Any])

app = typer.Typer(
    name="nixlog",
    help="Industrial Modbus data logger: poll devices, buffer in SQLite, ship to an HTTP API.",
    no_args_is_help=True,
    add_completion=False,
    # A bug keeps its traceback, but never with local variables: they could hold the API key.
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Inspect the local database.", no_args_is_help=True)
config_app = typer.Typer(help="Validate configuration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")


def _console(err: bool = False) -> Console:
    """A console on the current stdout/stderr (CliRunner swaps them per call).

    Off a terminal (a pipe, a log file) lines are not cut at 80 columns: a register name
    truncated to "voltag…" is useless to whoever reads the file later.
    """
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() else 200
    return Console(file=stream, highlight=False, width=width)


class _State:
    verbose = False


_state = _State()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file. Default: $NIXLOG_CONFIG, ./config.toml, /etc/nixlog/config.toml.",
        show_default=False,
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _setup_logging(verbose: bool) -> None:
    """Plain log lines on stderr: journald adds the time, so we add none."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("nixlog")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False


def _fail(exc: NixlogError) -> typer.Exit:
    """Report a user-facing error as one line on stderr and return the exit to raise."""
    if _state.verbose and exc.__cause__ is not None:
        detail = "".join(traceback.format_exception(exc.__cause__)).rstrip()
        typer.echo(detail, err=True)
    # One physical line: a newline in a message (e.g. from an OS error) would split it.
    typer.echo(f"Error: {' '.join(exc.message.splitlines())}", err=True)
    return typer.Exit(exc.exit_code)


def _command(group: typer.Typer, name: str) -> Callable[[_F], _F]:
    """Register a command whose ``NixlogError``s and Ctrl-C become one line and an exit code."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except NixlogError as exc:
                raise _fail(exc) from None
            except KeyboardInterrupt:
                typer.echo("Interrupted.", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None

        group.command(name)(wrapper)
        return function

    return decorate


def _load(config_path: Path | None) -> Config:
    return load_config(resolve_config_path(config_path))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nixlog {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show debug logs and error details.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Industrial Modbus data logger: poll devices, buffer in SQLite, ship to an HTTP API."""
    _state.verbose = verbose
    _setup_logging(verbose)


def _not_built(command: str) -> NixlogError:
    return NixlogError(f"`nixlog {command}` is not available in nixlog {__version__} yet")


# --------------------------------------------------------------------------- config check


@_command(config_app, "check")
def config_check(config: ConfigOption = None) -> None:
    """Validate a config and print the resolved register map."""
    cfg = _load(config)
    stdout = _console()
    modbus = cfg.modbus
    transport = "Modbus TCP" if modbus.is_tcp else f"Modbus RTU {modbus.baudrate} baud"
    stdout.print(
        f"[bold]{escape(str(cfg.path))}[/bold]: OK — {len(modbus.registers)} registers on "
        f"{escape(modbus.port)} ({transport}), {modbus.poll_rate_hz:g} Hz, "
        f"batches of {modbus.batch_size}"
    )
    table = Table(title="Register map")
    for column in ("name", "unit", "kind", "address", "type", "order", "scale", "offset", "units"):
        table.add_column(column)
    for reg in modbus.registers:
        type_text = reg.type
        if reg.bit is not None:
            type_text += f" (bit {reg.bit})"
        elif reg.length is not None:
            type_text += f" ({reg.length} regs)"
        table.add_row(
            escape(reg.name),
            str(reg.unit_id),
            reg.kind,
            str(reg.address),
            type_text,
            reg.byte_order,
            f"{reg.scale:g}",
            f"{reg.offset:g}",
            escape(reg.units or ""),
        )
    stdout.print(table)
    api = cfg.api
    stdout.print(
        f"database: {escape(str(cfg.database.path))}; api: "
        + (escape(api.endpoint) if api else "not configured (no [api] section)")
    )


# --------------------------------------------------------------------------- poll


@_command(app, "poll")
def poll(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Read the map once and exit.")] = False,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Read the map N times and exit.")
    ] = None,
    save: Annotated[
        bool, typer.Option("--save", help="Store the readings in the database too.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Read the register map and show readings live; stores nothing unless --save."""
    raise _not_built("poll")


# --------------------------------------------------------------------------- publish


@_command(app, "publish")
def publish(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Send one batch and exit.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the next payload; send nothing.")
    ] = False,
) -> None:
    """Ship unsent readings now, until caught up or the first failure."""
    raise _not_built("publish")


# --------------------------------------------------------------------------- prune


@_command(app, "prune")
def prune(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
    ] = False,
    vacuum: Annotated[
        bool, typer.Option("--vacuum", help="Also shrink the database file (needs free space).")
    ] = False,
) -> None:
    """Run maintenance once: keep the database within its disk budget. Quiet when idle."""
    raise _not_built("prune")


# --------------------------------------------------------------------------- daemon


@_command(app, "daemon")
def daemon(config: ConfigOption = None) -> None:
    """Poll, store, ship and prune until SIGTERM or SIGINT (the systemd service)."""
    raise _not_built("daemon")


# --------------------------------------------------------------------------- scan-registers


@_command(app, "scan-registers")
def scan_registers(
    config: ConfigOption = None,
    port: Annotated[
        str | None,
        typer.Option("--port", help="Serial path (/dev/ttyUSB0) or tcp://host:port."),
    ] = None,
    baudrate: Annotated[int | None, typer.Option("--baudrate", help="Serial speed.")] = None,
    parity: Annotated[str | None, typer.Option("--parity", help="N, E or O.")] = None,
    stopbits: Annotated[int | None, typer.Option("--stopbits", help="1 or 2.")] = None,
    units: Annotated[
        str, typer.Option("--units", help="Unit ids to probe: 1-247, or a list like 1-5,10.")
    ] = "1-247",
    kind: Annotated[
        str, typer.Option("--kind", help="holding, input, coil, discrete or all.")
    ] = "holding",
    start: Annotated[int, typer.Option("--start", min=0, max=65535, help="First address.")] = 0,
    count: Annotated[
        int, typer.Option("--count", min=1, max=65536, help="Addresses to scan.")
    ] = 100,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait for each answer.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write a registers_to_read TOML draft here.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Commissioning: find responding unit ids and registers, show every interpretation."""
    raise _not_built("scan-registers")


# --------------------------------------------------------------------------- export


@_command(app, "export")
def export(
    config: ConfigOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="ISO date/time (local time unless an offset is given) or 90m, 24h, 7d.",
        ),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Same forms as --since.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV file to write (default stdout).")
    ] = None,
    unsent: Annotated[
        bool, typer.Option("--unsent", help="Only readings not yet shipped.")
    ] = False,
) -> None:
    """Stream stored readings as CSV."""
    raise _not_built("export")


# --------------------------------------------------------------------------- db stats


@_command(db_app, "stats")
def db_stats(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Rows, backlog, oldest and newest reading, file size, free space, last publish."""
    raise _not_built("db stats")


# --------------------------------------------------------------------------- simulate


@_command(app, "simulate")
def simulate(
    config: ConfigOption = None,
    port: Annotated[
        str,
        typer.Option("--port", help="tcp://127.0.0.1:5020 or a serial path (e.g. a socat pty)."),
    ] = "tcp://127.0.0.1:5020",
) -> None:
    """Serve a simulated device for the configured (or the example) register map."""
    raise _not_built("simulate")


# --------------------------------------------------------------------------- demo


@_command(app, "demo")
def demo(
    seconds: Annotated[
        float, typer.Option("--seconds", min=1, help="How long to run before the summary.")
    ] = 20,
) -> None:
    """Simulator + local receiver + daemon on a temporary database, with a live dashboard."""
    raise _not_built("demo")


def main() -> None:
    """Console-script entry point."""
    app()
