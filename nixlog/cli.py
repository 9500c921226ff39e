"""The ``nixlog`` command line: parse options, call one library function, render, exit.

This is the only module that imports typer and rich. Station modules that pull in pymodbus or
httpx are imported inside the commands that need them, so ``nixlog --help`` and ``nixlog db
stats`` start fast on a Pi. ``NixlogError`` becomes ``Error: <message>`` and its exit code in
exactly one place, ``_command``; usage errors (typer's own) and a closed stdout pipe are
handled in one place too, ``_NixlogGroup.main``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from nixlog import __version__
from nixlog.config import Config, ModbusConfig, load_config, resolve_config_path
from nixlog.console import error_line, format_size, setup_logging, silence_stdout
from nixlog.errors import EXIT_INTERRUPTED, EXIT_USAGE, NixlogError

_F = TypeVar("_F", bound=Callable[..., Any])


def _flags_without_metavar(params: list[Any]) -> list[Any]:
    """On/off flags take no value: no ``<bool>`` next to them in the help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _NixlogCommand(TyperCommand):
    """A command whose help shows no ``<bool>`` for flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))


class _NixlogGroup(TyperGroup):
    """The root command: usage errors in one line, and a closed stdout pipe is no error.

    Typer's standalone mode prints usage errors as a multi-line box and turns EPIPE into exit
    1. Running the group with ``standalone_mode=False`` hands both to us instead; CliRunner
    calls this same ``main``, so tests see what a terminal sees.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            try:
                result = super().main(
                    args,
                    prog_name,
                    complete_var,
                    standalone_mode=False,
                    windows_expand_args=windows_expand_args,
                    **extra,
                )
                # Flush here: a closed pipe must show now, not in Python's exit flush.
                sys.stdout.flush()
            except BrokenPipeError:
                # `nixlog export | head -1`: the reader has all it wanted; exit 0 quietly.
                silence_stdout()
                result = 0
            except SystemExit as exc:
                # Typer turns EPIPE into exit 1 even outside standalone mode, and its rich
                # help pages exit 1 after pointing stdout at /dev/null: both are a reader
                # that had enough, so a quiet success too. Any other exit passes unchanged.
                if exc.code != 1 or not (
                    isinstance(exc.__context__, BrokenPipeError) or _stdout_is_devnull()
                ):
                    raise
                silence_stdout()
                result = 0
        except typer.TyperException as exc:  # typer's click: UsageError, BadParameter...
            result = _usage_error(exc)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            result = 1
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _usage_error(exc: Any) -> int:
    """Print a usage error as one ``Error:`` line; return its exit code (2)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `nixlog` or `nixlog db` alone: the help is the answer, as before.
        typer.echo(exc.format_message(), err=True)
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    message = " ".join(str(exc.format_message()).split())
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path if ctx is not None else 'nixlog'} --help)"
    typer.echo(f"Error: {message}{hint}", err=True)
    return int(getattr(exc, "exit_code", EXIT_USAGE))


app = typer.Typer(
    cls=_NixlogGroup,
    name="nixlog",
    help="Industrial Modbus data logger: poll devices, buffer in SQLite, ship to an HTTP API.",
    no_args_is_help=True,
    add_completion=False,
    # A bug keeps its traceback, but never with local variables: they could hold the API key.
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(cls=_NixlogGroup, help="Inspect the local database.", no_args_is_help=True)
config_app = typer.Typer(cls=_NixlogGroup, help="Validate configuration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")


class _PipeConsole(Console):
    """A rich console that reports a closed pipe like any other write (rich exits 1 itself)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def _console(err: bool = False) -> Console:
    """A console on the current stdout/stderr (CliRunner swaps them per call).

    Off a terminal (a pipe, a log file) lines are not cut at 80 columns: a register name
    truncated to "voltag…" is useless to whoever reads the file later.
    """
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() else 200
    return _PipeConsole(file=stream, highlight=False, width=width)


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    """``1 register``, ``2 registers``."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


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
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show debug logs and error details.")
]
# The line options of the commands that talk to a device without a config (scan, read, write).
PortOption = Annotated[
    str | None,
    typer.Option("--port", help="Serial path (/dev/ttyUSB0) or tcp://host:port."),
]
BaudrateOption = Annotated[int | None, typer.Option("--baudrate", help="Serial speed.")]
ParityOption = Annotated[str | None, typer.Option("--parity", help="N, E or O.")]
StopbitsOption = Annotated[int | None, typer.Option("--stopbits", help="1 or 2.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Seconds to wait for an answer.")
]
# What `read` and `write` address on the device.
UnitOption = Annotated[int, typer.Option("--unit", "-a", help="Unit id (slave address).")]
ByteOrderOption = Annotated[str, typer.Option("--byte-order", help="ABCD, CDAB, BADC or DCBA.")]


def _setup_logging(verbose: bool) -> None:
    setup_logging(logging.DEBUG if verbose else logging.WARNING)


def _fail(exc: NixlogError) -> typer.Exit:
    """Report a user-facing error as one line on stderr and return the exit to raise."""
    if _state.verbose and exc.__cause__ is not None:
        detail = "".join(traceback.format_exception(exc.__cause__)).rstrip()
        typer.echo(detail, err=True)
    typer.echo(error_line(exc), err=True)
    return typer.Exit(exc.exit_code)


def _command(group: typer.Typer, name: str) -> Callable[[_F], _F]:
    """Register a command whose ``NixlogError``s and Ctrl-C become one line and an exit code."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs.pop("verbose", False) and not _state.verbose:
                _state.verbose = True  # `nixlog poll -v` means what `nixlog -v poll` means
                _setup_logging(True)
            try:
                return function(*args, **kwargs)
            except NixlogError as exc:
                raise _fail(exc) from None
            except KeyboardInterrupt:
                typer.echo("Interrupted.", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except BrokenPipeError:
                # `nixlog poll --json | head -1`: the reader closed the pipe; not an error.
                silence_stdout()
                raise typer.Exit(0) from None

        _add_verbose_option(wrapper, function)
        group.command(name, cls=_NixlogCommand)(wrapper)
        return function

    return decorate


def _add_verbose_option(wrapper: Callable[..., Any], function: Callable[..., Any]) -> None:
    """Give the command's signature a ``--verbose/-v`` option that the wrapper consumes."""
    hints = typing.get_type_hints(function, include_extras=True)
    signature = inspect.signature(function)
    parameters = [
        parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
        for parameter in signature.parameters.values()
    ]
    parameters.append(
        inspect.Parameter(
            "verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VerboseOption
        )
    )
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**hints, "verbose": VerboseOption}


def _load(config_path: Path | None) -> Config:
    return load_config(resolve_config_path(config_path))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nixlog {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    verbose: VerboseOption = False,
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


# --------------------------------------------------------------------------- config check


def _print_plan(stdout: Console, cfg: Config) -> None:
    """The request plan: what one poll cycle sends on the bus."""
    from nixlog.registers import plan_for_config

    plan = plan_for_config(cfg)
    distinct = len({(r.unit_id, r.kind, r.address, r.count) for r in cfg.modbus.registers})
    table = Table(
        title=f"Request plan: {_plural(len(plan), 'request')} per cycle "
        f"({distinct} without coalescing)"
    )
    for column in ("unit", "kind", "start", "count", "unused", "registers"):
        table.add_column(column)
    for request in plan:
        table.add_row(
            str(request.unit_id),
            request.kind,
            str(request.start),
            str(request.count),
            str(request.bridged),
            escape(", ".join(r.name for r in request.registers)),
        )
    stdout.print(table)


def _percent(share: float) -> str:
    """``93 %``; below 10 % with one decimal (``0.5 %``), so a light line does not read 0."""
    return f"{share * 100:.0f} %" if share >= 0.1 else f"{share * 100:.1f} %"


def _print_bus_figures(stdout: Console, cfg: Config) -> None:
    """Per bus: requests/s, the line's busy share, MB/day; then the days of backlog held."""
    from nixlog import database, scheduler

    total = 0.0
    for bus in cfg.buses:
        load = scheduler.bus_load(bus)
        total += load.bytes_per_day
        busy = "" if load.busy_share is None else f", line {_percent(load.busy_share)} busy"
        stdout.print(
            f"bus {escape(bus.name)}: {load.devices} device{'s' if load.devices > 1 else ''}, "
            f"{load.requests_per_sec:.3g} requests/s{busy}, "
            f"{load.bytes_per_day / 1e6:.3g} MB/day stored",
            soft_wrap=True,
        )
        if load.overloaded:
            assert load.busy_share is not None
            _console(err=True).print(
                f"Warning: {escape(bus.name)} is {_percent(load.busy_share)} busy: "
                "raise intervals or the baud rate",
                soft_wrap=True,
            )
    try:
        budget, limit = database.backlog_budget_bytes(cfg.database)
    except NixlogError:
        return
    days = budget / total if total else float("inf")
    stdout.print(
        f"stored: {total / 1e6:.3g} MB/day (every pass; report by exception stores less); "
        f"the disk budget ({escape(limit)}) holds {days:.3g} days of backlog",
        soft_wrap=True,
    )


def _print_devices(stdout: Console, cfg: Config) -> None:
    """The plant: one row per device with its groups and requests per pass."""
    from dataclasses import replace

    from nixlog.scheduler import build_groups

    table = Table(title="Devices")
    for column in ("device", "bus", "unit", "profile", "registers", "intervals", "requests/pass"):
        table.add_column(column)
    for bus in cfg.buses:
        for group_device in bus.devices:
            groups = build_groups(replace(bus, devices=(group_device,)), cfg.path)
            table.add_row(
                escape(group_device.name or ""),
                escape(bus.name),
                str(group_device.unit_id),
                escape(group_device.profile or "(own)"),
                str(len(group_device.registers)),
                ", ".join(f"{g.interval_sec:g} s" for g in groups),
                str(sum(len(g.plan) for g in groups)),
            )
    stdout.print(table)


@_command(config_app, "check")
def config_check(config: ConfigOption = None) -> None:
    """Validate a config and print the resolved register map."""
    cfg = _load(config)
    stdout = _console()
    if cfg.is_plant:
        buses = ", ".join(f"{bus.name} ({bus.link.port})" for bus in cfg.buses)
        stdout.print(
            f"[bold]{escape(str(cfg.path))}[/bold]: OK — {len(cfg.devices())} devices on "
            f"{len(cfg.buses)} buses: {escape(buses)}; batches of {cfg.modbus.batch_size}",
            soft_wrap=True,
        )
        _print_devices(stdout, cfg)
        _print_bus_figures(stdout, cfg)
        api = cfg.api
        stdout.print(
            f"database: {escape(str(cfg.database.path))}; api: "
            + (escape(api.endpoint) if api else escape("not configured (no [api] section)"))
        )
        return
    modbus = cfg.modbus
    transport = "Modbus TCP" if modbus.is_tcp else f"Modbus RTU {modbus.baudrate} baud"
    stdout.print(
        f"[bold]{escape(str(cfg.path))}[/bold]: OK — "
        f"{_plural(len(modbus.registers), 'register')} on "
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
    _print_plan(stdout, cfg)
    _print_bus_figures(stdout, cfg)
    api = cfg.api
    stdout.print(
        f"database: {escape(str(cfg.database.path))}; api: "
        + (escape(api.endpoint) if api else escape("not configured (no [api] section)"))
    )


# --------------------------------------------------------------------------- poll


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _poll_table(poller: Any, reading: Any) -> Group:
    """The latest values with units, and the error of each register that failed."""
    stats = poller.stats
    header = (
        f"[bold]{escape(poller.link.description)}[/bold]  {reading.timestamp}  "
        f"cycle {stats.cycles} (all failed {stats.failed_cycles}, skipped slots "
        f"{stats.skipped_slots}), {_plural(stats.requests, 'request')}"
    )
    table = Table()
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_column("units")
    table.add_column("status")
    for register in poller.registers:
        if register.name in reading.values:
            value = _format_value(reading.values[register.name])
            status = "[green]ok[/green]"
        else:
            value = "—"
            status = f"[red]{escape(reading.errors.get(register.name, 'no value'))}[/red]"
        table.add_row(escape(register.name), escape(value), escape(register.units or ""), status)
    return Group(header, table)


def _status_line(reading: Any) -> str:
    """``meter1 offline: timeout`` for a device status reading (``nixlog.status``)."""
    from nixlog.status import OFFLINE, REASON_KEY, STATUS_KEY

    state = str(reading.values.get(STATUS_KEY))
    who = escape(reading.device or "device")
    reason = reading.values.get(REASON_KEY)
    colour = "red" if state == OFFLINE else "green"
    tail = f": {escape(str(reason))}" if reason is not None else ""
    return f"[{colour}]{who} {escape(state)}[/{colour}]{tail}"


def _poll_exit(outcome: Any, poller: Any, cfg: Config) -> None:
    """Exit 69 when nothing ever answered, 1 when some registers failed, else return."""
    from nixlog.errors import EXIT_PARTIAL, DeviceError

    if outcome.unreachable:
        units = sorted({r.unit_id for r in poller.registers})
        reason = poller.last_link_error or outcome.first_error
        if reason == "timeout":
            tries = cfg.modbus.retries + 1
            reason = (
                f"timeout ({cfg.modbus.timeout_sec:g} s × {tries} "
                f"{'try' if tries == 1 else 'tries'})"
            )
        raise DeviceError(
            f"no answer from unit {', '.join(map(str, units))} on "
            f"{poller.link.description}: {reason}"
        )
    if outcome.any_error:
        raise typer.Exit(EXIT_PARTIAL)


def _open_poll_store(cfg: Config) -> Any:
    """`nixlog poll --save`: the daemon's store station on this thread's connection."""
    from nixlog import core, database
    from nixlog.hardware import resolve_device_id

    # One writer per database: a running daemon makes this exit 74 naming its PID.
    lock = database.acquire_writer_lock(cfg.database.path)
    try:
        device_id = resolve_device_id(cfg)
        conn = database.open_db(cfg.database.path)
        database.start_writing(conn, lock)
    except BaseException:
        lock.release()
        raise
    store = core.BinWriter(conn, device_id, cfg.modbus.batch_size, cfg.database.flush_interval_sec)
    store.writer_lock = lock  # type: ignore[attr-defined]
    return store


def _close_poll_store(store: Any, cfg: Config) -> None:
    """Write what the bin holds (also on Ctrl-C), then close the database."""
    from nixlog import database

    try:
        store.close()
        database.stop_writing(store.conn)
    finally:
        database.close(store.conn)
        store.writer_lock.release()
    _console(err=True).print(
        f"Saved {_plural(store.stored, 'reading')} to {escape(str(cfg.database.path))}"
    )


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
    device: Annotated[
        str | None, typer.Option("--device", help="The plant device to poll (by name).")
    ] = None,
) -> None:
    """Read the register map and show readings live; stores nothing unless --save."""
    import json
    import threading
    from contextlib import nullcontext

    from rich.live import Live

    from nixlog import core

    cfg = _load(config)
    poller = core.build_poller(cfg, device=device)
    outcome = core.PollOutcome()
    max_cycles = 1 if once else count
    store: Any = None
    try:
        if save:  # a database in use by the daemon: exit 74 before the device is touched
            store = _open_poll_store(cfg)
        poller.link.connect()  # unreachable port: exit 69 with the reason
        on_reading = store.add if store is not None else (lambda reading: None)
        stdout = _console()
        live_view = stdout.is_terminal and not json_output
        # Into a pipe or file, without --json: no redrawing, one table per cycle as it comes.
        with Live(console=stdout, auto_refresh=False) if live_view else nullcontext() as live:

            def on_cycle(reading: Any) -> None:
                outcome.record(reading)
                if json_output:
                    record = {
                        "timestamp": reading.timestamp,
                        "values": reading.values,
                        "errors": reading.errors,
                    }
                    if reading.device is not None:
                        record["device"] = reading.device
                    typer.echo(json.dumps(record, ensure_ascii=False))
                elif live is not None:
                    live.update(_poll_table(poller, reading), refresh=True)
                else:
                    stdout.print(_poll_table(poller, reading))

            def on_status(reading: Any) -> None:
                if json_output:
                    record = {"timestamp": reading.timestamp, "values": reading.values}
                    if reading.device is not None:
                        record["device"] = reading.device
                    typer.echo(json.dumps(record, ensure_ascii=False))
                else:  # above the live table, or between the tables off a terminal
                    stdout.print(_status_line(reading))

            core.run_poll_loop(
                poller,
                on_reading,
                threading.Event(),
                poller.rate_hz or cfg.modbus.poll_rate_hz,
                on_cycle=on_cycle,
                on_status=on_status,
                max_cycles=max_cycles,
            )
    finally:
        poller.close()
        if store is not None:
            _close_poll_store(store, cfg)
    _poll_exit(outcome, poller, cfg)


# --------------------------------------------------------------------------- publish


def _publish_outcome(cfg: Config, summary: Any, output: str = "api") -> NixlogError | None:
    """The error a stopped publish reports (None when it was not stopped by a failure)."""
    from nixlog.errors import ApiError, ConfigError

    failure = summary.failure
    if failure is None:
        return None
    done = f" after delivering {summary.delivered}" if summary.delivered else ""
    if output == "mqtt":
        if failure.kind == "auth":
            return ConfigError(
                f"{cfg.path}: mqtt.password: the broker refused the login ({failure.detail}); "
                f"check mqtt.username and mqtt.password; readings are kept{done}"
            )
        return ApiError(
            f"MQTT broker unavailable: {failure.detail}; readings are kept for the next "
            f"attempt{done}"
        )
    if failure.kind == "auth":
        return ConfigError(
            f"{cfg.path}: api.api_key: the API refused the key ({failure.detail}); "
            f"readings are kept{done}"
        )
    if failure.kind == "endpoint":
        return ConfigError(
            f"{cfg.path}: api.endpoint: does not accept batches ({failure.detail}); "
            f"readings are kept{done}"
        )
    wait = ""
    if failure.retry_after is not None:
        wait = f" (the API asks to wait {failure.retry_after:.0f} s)"
    return ApiError(
        f"API unavailable: {failure.detail}{wait}; readings are kept for the next attempt{done}"
    )


def _publish_dry_run(client: Any, rows: list[Any], endpoint: str) -> None:
    """The next batch's body as JSON on stdout; where it would go on stderr (key masked)."""
    import json

    stderr = _console(err=True)
    if not rows:
        stderr.print("Nothing to send: no unsent readings.")
        return
    headers = client.headers(rows)  # masked: the key never reaches a terminal or a log
    stderr.print(
        f"Would POST {_plural(len(rows), 'reading')} (seq {rows[0].id}..{rows[-1].id}) to "
        f"{escape(endpoint)}"
    )
    for name, value in headers.items():
        stderr.print(f"  {escape(name)}: {escape(value)}")
    payload = client.payload(rows)
    if isinstance(payload, str):  # InfluxDB line protocol: shown as it is sent
        typer.echo(payload, nl=False)
        return
    typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def _render_publish(summary: Any, backlog: int, prefix: str = "") -> None:
    """One summary line on stdout: delivered, rejected (by seq), what remains."""
    remaining = max(backlog - summary.delivered - summary.rejected, 0)
    line = (
        f"{prefix}Delivered {_plural(summary.delivered, 'reading')} in "
        f"{_plural(summary.requests, 'request')}"
    )
    if summary.rejected:
        ids = ", ".join(str(i) for i in summary.rejected_ids[:10])
        more = ", ..." if len(summary.rejected_ids) > 10 else ""
        line += f"; {summary.rejected} rejected by the API (seq {ids}{more}), kept for export"
    _console().print(f"{line}; {remaining} unsent {'remains' if remaining == 1 else 'remain'}.")


@_command(app, "publish")
def publish(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Send one batch and exit.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the next payload; send nothing.")
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", help="Ship to this output only (api or mqtt); default: all."),
    ] = None,
) -> None:
    """Ship unsent readings now, until caught up or the first failure."""
    from nixlog.errors import ConfigError

    cfg = _load(config)
    names = cfg.output_names
    if output is not None:
        if output not in ("api", "mqtt"):
            raise typer.BadParameter("expected api or mqtt", param_hint="--output")
        if output not in names:
            raise ConfigError(f"{cfg.path}: {output}: section missing (--output {output})")
        names = (output,)
    elif not names:
        cfg.require_api()  # the one-line "api: section missing"
    errors: list[Exception] = []
    rejected = False
    for name in names:
        summary = _publish_output(cfg, name, once=once, dry_run=dry_run, label=len(names) > 1)
        if summary is None:
            continue
        error = _publish_outcome(cfg, summary, name)
        if error is not None:
            if len(names) > 1:
                _console(err=True).print(f"{name}: {escape(str(error))}")
            errors.append(error)
        rejected = rejected or bool(summary.rejected)
    if errors:
        raise errors[0]
    if rejected:
        raise typer.Exit(1)


def _publish_output(cfg: Config, name: str, *, once: bool, dry_run: bool, label: bool) -> Any:
    """Ship one output's backlog; the summary, or None when there was nothing to do."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from nixlog import core, database, outputs
    from nixlog.hardware import resolve_device_id

    device_id = resolve_device_id(cfg)
    batch_size = outputs.batch_size(cfg, name)
    prefix = f"{name}: " if label else ""
    # The station logs each failure for the daemon's journal; here the summary and the one
    # Error line say the same, so its log lines show only with --verbose.
    conn = database.open_db(cfg.database.path)
    ship_log = logging.getLogger("nixlog.ship")
    ship_level = ship_log.level
    if not _state.verbose:
        ship_log.setLevel(logging.CRITICAL)
    try:
        epoch = database.get_epoch(conn)
        client: Any = outputs.open_output(cfg, name, device_id, epoch)
        try:
            if dry_run:
                rows = database.get_unsent_readings(conn, batch_size, name)
                if name == "mqtt":
                    assert cfg.mqtt is not None
                    _publish_dry_run_mqtt(client, list(rows), cfg.mqtt.url)
                else:
                    _publish_dry_run(client, list(rows), client.url())
                return None
            backlog = database.count_unsent(conn, name)
            if backlog == 0:
                _console().print(f"{prefix}Nothing to send: no unsent readings.")
                return None
            stderr = _console(err=True)
            with Progress(
                TextColumn(f"{prefix}publishing"),
                BarColumn(),
                MofNCompleteColumn(),
                console=stderr,
                transient=True,
                disable=not stderr.is_terminal,
            ) as progress:
                task = progress.add_task(
                    "publish", total=min(backlog, batch_size) if once else backlog
                )
                summary = core.publish_pending(
                    conn,
                    client,
                    batch_size=batch_size,
                    once=once,
                    on_progress=lambda n: progress.advance(task, n),
                    output=name,
                )
        finally:
            client.close()
    finally:
        ship_log.setLevel(ship_level)
        conn.close()
    _render_publish(summary, backlog, prefix)
    return summary


def _publish_dry_run_mqtt(client: Any, rows: list[Any], url: str) -> None:
    """The next batch's messages (topic and body) as JSON on stdout; where on stderr."""
    import json

    stderr = _console(err=True)
    if not rows:
        stderr.print("Nothing to send: no unsent readings.")
        return
    stderr.print(
        f"Would publish {len(rows)} readings (seq {rows[0].id}..{rows[-1].id}) to "
        f"{escape(url)} at QoS 1"
    )
    typer.echo(json.dumps(client.payload(rows), indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- prune


def _render_prune(report: Any) -> None:
    """Quiet when nothing was needed (cron mails any output); else one line per fact."""
    stdout = _console()
    if report.dry_run:
        plan = report.plan
        if plan is None:
            stdout.print("Nothing to prune: the database is within its budget.")
            return
        stdout.print(
            f"Would delete about {plan.sent} sent, {plan.rejected} rejected and "
            f"{plan.unsent} unsent readings ({format_size(plan.bytes_to_free)}): "
            f"{escape(report.reason)}. Dry run: nothing deleted."
        )
        return
    if report.deleted:
        stdout.print(
            f"Pruned {report.deleted_sent} sent, {report.deleted_rejected} rejected and "
            f"{report.deleted_unsent} unsent readings: {escape(report.reason)}."
        )
    if report.deleted_unsent:
        ranges = ", ".join(f"{first}-{last}" for first, last in report.unsent_ranges)
        stdout.print(
            f"[bold red]Dropped {report.deleted_unsent} readings that were never shipped "
            f"(ids {ranges}).[/bold red]"
        )
    if report.vacuumed_bytes is not None:
        if report.vacuumed_bytes:
            stdout.print(f"Vacuumed: gave {format_size(report.vacuumed_bytes)} back to the disk.")
        else:
            stdout.print("Vacuum: nothing to give back.")


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
    from nixlog import core, database

    cfg = _load(config)
    try:
        missing = not cfg.database.path.exists()
    except OSError:  # a name too long for the file system: open_db says so in one line
        missing = False
    if missing:
        return  # nothing stored yet, so nothing to prune; cron stays quiet
    conn = database.open_db(cfg.database.path, create=False)
    try:
        report = core.maintain(conn, cfg.database, dry_run=dry_run, vacuum=vacuum)
    finally:
        database.close(conn)
    _render_prune(report)


# --------------------------------------------------------------------------- daemon


@_command(app, "daemon")
def daemon(config: ConfigOption = None) -> None:
    """Poll, store, ship and prune until SIGTERM or SIGINT (the systemd service)."""
    path = resolve_config_path(config)
    cfg = load_config(path)  # a bad config is one line and exit 78 here, before the exec
    from nixlog.service import exec_daemon

    # The service runs for months: it continues in a process that never imported the CLI's
    # libraries (same PID, so systemd's notify socket and watchdog still see it).
    try:
        exec_daemon(path, _state.verbose)
    except OSError as exc:
        # A seccomp filter or a noexec mount may refuse the exec; the service still runs.
        logging.getLogger("nixlog.service").warning(
            "could not start the lean daemon process (%s); running in this one, which keeps "
            "the command line's libraries loaded (about 13 MB more)",
            exc,
        )
    from nixlog.daemon import run_daemon

    if not _state.verbose:
        # A service logs its start, stop and trouble; journald keeps it.
        logging.getLogger("nixlog").setLevel(logging.INFO)
    raise typer.Exit(run_daemon(cfg))


# --------------------------------------------------------------------------- scan-registers


def _scan_base_config(config: Path | None, port: str | None) -> tuple[Any, str | None]:
    """The config whose bus settings a scan starts from (or None), and a note on which config
    was used or passed over (None when there is no config anywhere).

    An explicit ``--config`` or ``$NIXLOG_CONFIG`` must load, and its line settings are used
    (``--port`` and the other options override them). Without one, ``--port`` means "scan
    from the options and the scan defaults": the config an installed gateway keeps in
    ./config.toml or /etc/nixlog is for another purpose and is not silently mixed in. Only
    without ``--port`` is a config found in the default places used, for its port.
    """
    import os

    from nixlog.config import ENV_CONFIG
    from nixlog.errors import ConfigError

    if config is not None or os.environ.get(ENV_CONFIG):
        cfg = _load(config)
        return cfg.modbus, f"settings from {cfg.path}"
    try:
        path = resolve_config_path(None)
    except ConfigError:
        return None, None
    if port is not None:
        return None, (
            f"settings from options and scan defaults; {path} not used (pass -c {path} to use "
            "its line settings)"
        )
    return load_config(path).modbus, f"settings from {path}"


def _describe_scan_bus(modbus: Any) -> str:
    """``/dev/ttyUSB0 at 9600 8N1, 0.3 s timeout`` (the line settings only for serial)."""
    line = (
        ""
        if modbus.is_tcp
        else (f" at {modbus.baudrate} {modbus.bytesize}{modbus.parity}{modbus.stopbits}")
    )
    return f"{modbus.port}{line}, {modbus.timeout_sec:g} s timeout"


def _scan_cell(pair: list[Any], order: str, chosen: Any) -> str:
    """int32/uint32/float32 of one byte order, plausible ones marked, the draft's in bold."""
    if pair and all(item.value == 0 for item in pair):
        return "[dim]0[/dim]"  # two zero words: every reading is 0, one line says it
    lines = []
    for item in pair:
        if item.byte_order != order:
            continue
        shown = "nan/inf" if item.value is None else str(item.value)
        label = {"int32": "i32", "uint32": "u32", "float32": "f32"}[item.type]
        text = f"{label} {escape(shown)}"
        if chosen is not None and (chosen.type, chosen.byte_order) == (item.type, order):
            text = f"[bold green]{text} ✓[/bold green]"
        elif item.plausible:
            text = f"[green]{text} ✓[/green]"
        else:
            text = f"[dim]{text}[/dim]"
        lines.append(text)
    return "\n".join(lines)


def _scan_tables(result: Any, wide: bool = False) -> list[Any]:
    """Per unit and kind: every responding address, its 16-bit readings and the draft's
    choice (fits 100 columns); ``wide`` adds every 32-bit reading in all four byte orders."""
    from nixlog.config import BIT_KINDS
    from nixlog.scanner import BYTE_ORDERS_32, interpret_pair, to_int16

    chosen = {(r.unit_id, r.kind, r.address): r for r in result.draft()}
    covered = {
        (r.unit_id, r.kind, r.address + offset): r
        for r in chosen.values()
        for offset in range(1, r.width)
    }
    renderables: list[Any] = []
    for unit in result.units:
        for kind, scan in unit.kinds.items():
            first, last = scan.start, scan.start + scan.count - 1
            title = f"Unit {unit.unit_id} {kind} {first}-{last}: {len(scan.values)} responding"
            if not scan.done:
                title += " (scan incomplete)"
            # A heading line, not a table title: a title wraps to the width of a narrow table.
            renderables.append(f"[bold]{title}[/bold]")
            table = Table(show_lines=wide and kind not in BIT_KINDS)
            if kind in BIT_KINDS:
                for column in ("address", "value", "draft"):
                    table.add_column(column)
                for address in sorted(scan.values):
                    draft = chosen.get((unit.unit_id, kind, address))
                    table.add_row(
                        str(address),
                        "1 (on)" if scan.values[address] else "0 (off)",
                        draft.name if draft else "",
                    )
            else:
                for column in ("address", "hex", "uint16", "int16"):
                    table.add_column(column, justify="right")
                if wide:
                    for order in BYTE_ORDERS_32:
                        table.add_column(f"{order} (this+next)")
                table.add_column("draft", overflow="fold")
                for address in sorted(scan.values):
                    word = int(scan.values[address])
                    key = (unit.unit_id, kind, address)
                    draft = chosen.get(key)
                    if draft is not None:
                        draft_text = f"{draft.name} {draft.type}"
                        if draft.type not in ("uint16", "int16", "string"):
                            draft_text += f" {draft.byte_order}"
                        shown = repr(draft.value) if draft.type == "string" else draft.value
                        draft_text = f"[bold]{escape(draft_text)}[/bold] = {escape(str(shown))}"
                    elif key in covered:
                        draft_text = f"(part of {escape(covered[key].name)})"
                    elif word == 0 and result.skip_zeros:
                        draft_text = "[dim]0: left out[/dim]"
                    else:
                        draft_text = ""
                    cells = [str(address), f"0x{word:04X}", str(word), str(to_int16(word))]
                    if wide:
                        following = scan.values.get(address + 1)
                        pair = interpret_pair(word, int(following)) if following is not None else []
                        cells += [_scan_cell(pair, order, draft) for order in BYTE_ORDERS_32]
                    table.add_row(*cells, draft_text)
            renderables.append(table)
            for failure in scan.failures:
                end = failure.start + failure.count - 1
                renderables.append(
                    f"[yellow]unit {unit.unit_id} {kind} {failure.start}-{end}: "
                    f"{escape(failure.reason)}[/yellow]"
                )
    return renderables


def _scan_summary(result: Any) -> str:
    ids = ", ".join(str(unit.unit_id) for unit in result.units) or "none"
    registers = sum(unit.register_count for unit in result.units)
    state = " (interrupted)" if result.interrupted else ""
    if result.sweep_stopped:
        state = " (unit sweep stopped by Ctrl-C)"
    return (
        f"Scan of {escape(result.port)}{state}: {len(result.units)} of "
        f"{_plural(result.units_done, 'probed unit id')} answered ({ids}); "
        f"{_plural(registers, 'responding address', 'responding addresses')}; "
        f"{_plural(result.requests, 'request')} (one per register: "
        f"{result.one_register_per_request}) in {result.elapsed_sec:.1f} s."
    )


def _scan_identities(result: Any) -> list[str]:
    """One line per unit asked for its identification (``--identify``)."""
    lines = []
    for unit in result.units:
        if unit.identity:
            text = ", ".join(f"{name}: {value}" for name, value in unit.identity.items())
            lines.append(f"Unit {unit.unit_id} identifies as {escape(text)}")
        elif unit.identity_error is not None:
            lines.append(
                f"Unit {unit.unit_id}: no device identification ({escape(unit.identity_error)})"
            )
    return lines


def _scan_progress_bar(progress: Any) -> Any:
    """An ``on_progress`` callback that drives one rich task per phase."""
    tasks: dict[str, Any] = {}

    def on_progress(event: Any) -> None:
        if event.detail.startswith("sweep stopped"):
            progress.console.print(
                "Unit sweep stopped; scanning the units found so far (Ctrl-C again to stop)."
            )
        if event.phase not in tasks:
            tasks[event.phase] = progress.add_task(event.phase, total=event.total, found="")
        noun = "unit" if event.phase == "units" else "register"
        progress.update(
            tasks[event.phase],
            completed=event.done,
            total=event.total,
            description=f"{event.phase}: {escape(event.detail)}",
            found=f"{_plural(event.found, noun)} found",
        )

    return on_progress


@_command(app, "scan-registers")
def scan_registers(
    config: ConfigOption = None,
    port: PortOption = None,
    baudrate: BaudrateOption = None,
    parity: ParityOption = None,
    stopbits: StopbitsOption = None,
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
    wide: Annotated[
        bool, typer.Option("--wide", help="Show every 32-bit reading in all four byte orders.")
    ] = False,
    skip_zeros: Annotated[
        bool,
        typer.Option(
            "--skip-zeros/--keep-zeros",
            help="Leave registers that read 0 out of the draft (listed in its comment).",
        ),
    ] = True,
    identify: Annotated[
        bool,
        typer.Option("--identify", help="Ask each unit for vendor, product, version (FC 43/14)."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Commissioning: find responding unit ids and registers and draft a register map."""
    import json

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from nixlog import scanner
    from nixlog.errors import DeviceError
    from nixlog.modbus_client import create_client

    # Bad options are usage errors (exit 2) before any config is read or port opened; an
    # unwritable --output too, so that a long sweep is never thrown away at the end.
    unit_ids = scanner.parse_units(units)
    kinds = scanner.parse_kinds(kind)
    if output is not None:
        _check_output(output)
    base, source = _scan_base_config(config, port)
    modbus = scanner.bus_settings(
        base, port=port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout=timeout
    )
    stderr = _console(err=True)
    if source is not None:
        stderr.print(
            f"Scanning {escape(_describe_scan_bus(modbus))} ({escape(source)})", soft_wrap=True
        )
    link = create_client(modbus)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[found]}"),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    job = scanner.Scanner(
        link,
        modbus,
        unit_ids,
        kinds,
        start,
        count,
        on_progress=_scan_progress_bar(progress),
        identify=identify,
    )
    job.result.skip_zeros = skip_zeros
    try:
        with progress:
            job.run()
    except KeyboardInterrupt:
        # Ctrl-C ends the scan, not the command: what was found is still worth showing.
        job.result.interrupted = True
    finally:
        link.close()
    result = job.result
    if json_output:
        typer.echo(json.dumps(scanner.result_as_dict(result), ensure_ascii=False))
    else:
        stdout = _console()
        for line in _scan_identities(result):
            stdout.print(line, soft_wrap=True)
        for renderable in _scan_tables(result, wide):
            stdout.print(renderable)
        stdout.print(_scan_summary(result), soft_wrap=True)
    if output is not None and (result.draft() or not result.interrupted):
        text = scanner.draft_toml(result, modbus)
        scanner.write_draft(output, text)
        skipped = sum(len(addresses) for _, _, addresses in result.skipped())
        left_out = f" ({_plural(skipped, 'zero register')} left out)" if skipped else ""
        stderr.print(
            f"Wrote {_plural(len(result.draft()), 'register')} to {escape(str(output))}"
            f"{left_out}; check it with `nixlog config check -c {escape(str(output))}`.",
            soft_wrap=True,
        )
    if result.interrupted:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.link_error is not None:
        raise DeviceError(result.link_error)


# --------------------------------------------------------------------------- read / write


def _read_block(result: Any) -> Group:
    """One read as a heading line and a table: address, raw words (hex), value."""
    spec = result.spec
    described = "" if spec.kind in ("coil", "discrete") else f" {spec.type} {spec.byte_order}"
    header = f"{result.timestamp}  unit {spec.unit_id} {spec.kind}{described}"
    if result.error is not None:
        return Group(header, f"[red]{escape(result.error)}[/red]")
    table = Table()
    table.add_column("address", justify="right")
    table.add_column("raw")
    table.add_column("value", justify="right")
    for item in result.values:
        if isinstance(item.value, bool) or spec.kind in ("coil", "discrete"):
            raw = "1" if item.raw[0] else "0"
        else:
            raw = " ".join(f"0x{int(word):04X}" for word in item.raw)
        value = "nan/inf" if item.value is None else _format_value(item.value)
        table.add_row(str(item.address), raw, escape(value))
    return Group(header, table)


@_command(app, "read")
def read(
    config: ConfigOption = None,
    port: PortOption = None,
    unit: UnitOption = 1,
    kind: Annotated[
        str, typer.Option("--kind", help="holding, input, coil or discrete.")
    ] = "holding",
    address: Annotated[
        int, typer.Option("--address", "-r", min=0, max=65535, help="First address (0-based).")
    ] = 0,
    count: Annotated[
        int,
        typer.Option("--count", min=1, help="Values to read (registers of a string)."),
    ] = 1,
    value_type: Annotated[
        str,
        typer.Option("--type", help="uint16, int16, uint32, int32, float32, *64, string."),
    ] = "uint16",
    byte_order: ByteOrderOption = "ABCD",
    scale: Annotated[float, typer.Option("--scale", help="Multiply numbers by this.")] = 1.0,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Read again every --interval until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between reads (--watch).")
    ] = 1.0,
    cycles: Annotated[
        int | None, typer.Option("--cycles", min=1, help="Stop after N reads (implies --watch).")
    ] = None,
    baudrate: BaudrateOption = None,
    parity: ParityOption = None,
    stopbits: StopbitsOption = None,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Read registers once (or --watch) without a config: the technician's first look."""
    import json
    from contextlib import nullcontext

    from rich.live import Live

    from nixlog import adhoc
    from nixlog.modbus_client import create_client

    spec = adhoc.check_spec(unit, kind, address, count, value_type, byte_order, scale)
    modbus = _adhoc_line(config, port, baudrate, parity, stopbits, timeout)
    link = create_client(modbus)
    stdout = _console()
    repeat = watch or cycles is not None
    live_view = repeat and stdout.is_terminal and not json_output
    try:
        with Live(console=stdout, auto_refresh=False) if live_view else nullcontext() as live:

            def on_result(result: Any) -> None:
                if json_output:
                    typer.echo(json.dumps(result.as_dict(), ensure_ascii=False))
                elif live is not None:
                    live.update(_read_block(result), refresh=True)
                elif result.error is None or repeat:
                    # Off a terminal (or once): one block per read, nothing redrawn.
                    stdout.print(_read_block(result))

            outcome = adhoc.read_series(
                link,
                spec,
                cycles=cycles if repeat else 1,
                interval=interval,
                on_result=on_result,
            )
    finally:
        link.close()
    error = adhoc.series_error(outcome, link.description, modbus)
    if error is not None:
        raise error


def _adhoc_line(
    config: Path | None,
    port: str | None,
    baudrate: int | None,
    parity: str | None,
    stopbits: int | None,
    timeout: float | None,
) -> ModbusConfig:
    """The line `read` or `write` talks on: the config's (with -c), then each option given."""
    from nixlog import adhoc

    base = _load(config).modbus if config is not None else None
    return adhoc.link_settings(
        base, port=port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout=timeout
    )


@_command(app, "write")
def write(
    config: ConfigOption = None,
    port: PortOption = None,
    unit: UnitOption = 1,
    kind: Annotated[str, typer.Option("--kind", help="holding or coil.")] = "holding",
    address: Annotated[
        int, typer.Option("--address", "-r", min=0, max=65535, help="Address (0-based).")
    ] = 0,
    value: Annotated[
        str,
        typer.Option("--value", help="The number to write; a coil takes 1/0, on/off."),
    ] = "",
    value_type: Annotated[
        str, typer.Option("--type", help="uint16, int16, uint32, int32, float32, *64.")
    ] = "uint16",
    byte_order: ByteOrderOption = "ABCD",
    yes: Annotated[
        bool, typer.Option("--yes", help="Really write (required: a write acts on the plant).")
    ] = False,
    baudrate: BaudrateOption = None,
    parity: ParityOption = None,
    stopbits: StopbitsOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Write one holding register (or one 32/64-bit value) or one coil; needs --yes."""
    from nixlog import adhoc
    from nixlog.errors import UsageError
    from nixlog.modbus_client import create_client

    if not value:
        raise UsageError("--value: give the value to write")
    spec = adhoc.check_write(unit, kind, address, value, value_type, byte_order)
    modbus = _adhoc_line(config, port, baudrate, parity, stopbits, timeout)
    where = f"unit {spec.unit_id} {spec.kind} {spec.address}"
    if not yes:
        raise UsageError(
            f"not written: writing {spec.shown} to {where} on {modbus.port} acts on the "
            "device; add --yes to do it"
        )
    link = create_client(modbus)
    try:
        result = adhoc.write_value(link, spec)
    finally:
        link.close()
    if result.read_back is None:
        back = f"read back failed: {result.read_back_error}"
    else:
        back = f"reads back {_format_value(result.read_back)}"
    _console().print(f"Wrote {escape(spec.shown)} to {escape(where)}; {escape(back)}.")


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
    with_units: Annotated[
        bool, typer.Option("--units", help="Add each register's units to the header: v [V].")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="Only this plant device's readings.")
    ] = None,
) -> None:
    """Stream stored readings as CSV."""
    from nixlog import database
    from nixlog.export import export_csv, parse_when, register_names

    # Bad --since/--until/--output is a usage error (exit 2) even before the config is read.
    since_at = parse_when(since, option="--since") if since is not None else None
    until_at = parse_when(until, option="--until") if until is not None else None
    if output is not None:
        _check_output(output)
    cfg = _load(config)
    names = register_names(cfg, device)
    units = (
        {r.name: r.units for d in cfg.devices() for r in d.registers if r.units}
        if with_units
        else None
    )
    conn = database.open_db(cfg.database.path, create=False)
    try:
        scope: dict[str, Any] = {
            "device": device,
            "with_device": device is not None or cfg.is_plant or database.any_device(conn),
        }
        if output is None:
            try:
                export_csv(
                    conn,
                    sys.stdout,
                    names,
                    since=since_at,
                    until=until_at,
                    unsent_only=unsent,
                    units=units,
                    **scope,
                )
                sys.stdout.flush()
            except BrokenPipeError:
                silence_stdout()  # `nixlog export | head` closed the pipe: not an error
            return
        span = database.id_span(conn)
        _export_to_file(conn, output, names, since_at, until_at, unsent, span, units, scope)
    finally:
        database.close(conn)


def _check_output(output: Path, option: str = "--output") -> None:
    """Refuse an output path that cannot be written, before any work is done (exit 2)."""
    import os

    from nixlog.errors import UsageError

    text = str(output)
    if "\0" in text:
        raise UsageError(f"{option}: a path cannot contain a NUL character")
    try:
        if output.is_dir():
            raise UsageError(f"{option}: {output} is a directory; give a file name")
        directory = output.parent
        if not directory.is_dir():
            raise UsageError(f"{option}: cannot write {output}: no directory {directory}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UsageError(f"{option}: cannot write {output}: {directory} is not writable")
        if output.exists() and not os.access(output, os.W_OK):
            raise UsageError(f"{option}: cannot write {output}: the file is read-only")
    except OSError as exc:  # a name too long for the file system
        raise UsageError(f"{option}: cannot write {output}: {exc.strerror}") from None


def _stdout_is_devnull() -> bool:
    import io
    import os

    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    return False


def _export_to_file(
    conn: Any,
    output: Path,
    names: list[str],
    since_at: Any,
    until_at: Any,
    unsent: bool,
    span: tuple[int, int] | None,
    units: dict[str, str] | None = None,
    scope: dict[str, Any] | None = None,
) -> None:
    """Write to ``output.part`` and rename at the end: no half file under the real name."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from nixlog import database
    from nixlog.errors import UsageError
    from nixlog.export import export_csv

    partial = output.with_name(output.name + ".part")
    first = span[0] if span else 0
    total = (span[1] - span[0] + 1) if span else 0
    progress = Progress(
        TextColumn("exporting"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=_console(err=True),
        transient=True,
    )
    try:
        partial.unlink(missing_ok=True)  # a leftover from an interrupted run
        # 0640 whatever the umask: an export holds the same readings as the database.
        handle = open(  # noqa: SIM115  (closed by the with below)
            database.create_private_file(partial), "w", encoding="utf-8", newline=""
        )
    except OSError as exc:
        raise UsageError(f"--output: cannot write {output}: {exc.strerror}") from None
    try:
        with handle, progress:
            task = progress.add_task("export", total=total or None)
            rows = export_csv(
                conn,
                handle,
                names,
                since=since_at,
                until=until_at,
                unsent_only=unsent,
                on_progress=lambda rid: progress.update(task, completed=rid - first + 1),
                units=units,
                **(scope or {}),
            )
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _console(err=True).print(f"Wrote {_plural(rows, 'reading')} to {escape(str(output))}.")


# --------------------------------------------------------------------------- db stats


@_command(db_app, "stats")
def db_stats(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Rows, backlog, oldest and newest reading, file size, free space, last publish."""
    # The console script runs the plain spellings of this command without Typer (entry.py);
    # both fronts call the same two functions, so they print the same bytes.
    from nixlog import dbstats

    result = dbstats.collect(config)
    typer.echo(dbstats.render_json(result) if json_output else dbstats.render_text(result))


# --------------------------------------------------------------------------- simulate


@_command(app, "simulate")
def simulate(
    config: ConfigOption = None,
    port: Annotated[
        str,
        typer.Option("--port", help="tcp://127.0.0.1:5020 or a serial path (e.g. a socat pty)."),
    ] = "tcp://127.0.0.1:5020",
    bus: Annotated[
        str | None,
        typer.Option("--bus", help="A plant config's bus to simulate (default: the first)."),
    ] = None,
) -> None:
    """Serve a simulated device for the configured (or the example) register map.

    With a plant config, every device of one bus is served (each on its unit id).
    """
    from nixlog import simulator
    from nixlog.errors import ConfigError

    registers: Any = simulator.EXAMPLE_REGISTERS
    modbus = None
    source = "the example map"
    try:
        config_path: Path | None = resolve_config_path(config)
    except ConfigError:
        config_path = None  # no config anywhere: serve the example map
    if config_path is not None:
        cfg = load_config(config_path)
        registers, modbus, source = cfg.modbus.registers, cfg.modbus, str(cfg.path)
        if cfg.is_plant:
            chosen = simulator.find_bus(cfg, bus)
            registers, modbus = simulator.bus_registers(chosen), chosen.link
            source = f"{cfg.path} bus {chosen.name}"
    units = sorted({r.unit_id for r in registers})
    stderr = _console(err=True)

    def announce(address: str) -> None:
        stderr.print(
            f"Simulating {_plural(len(registers), 'register')} (unit {', '.join(map(str, units))}) "
            f"from {escape(source)} on {escape(address)}; Ctrl-C to stop."
        )

    simulator.run_simulator(port, registers, modbus, on_ready=announce)


# --------------------------------------------------------------------------- demo


DEMO_NEXT_STEPS = (
    "Next steps with a real device:",
    "  1. find its registers:  nixlog scan-registers --port /dev/ttyUSB0 --output config.toml",
    "  2. check the map:       nixlog config check -c config.toml",
    "  3. run it as a service: sudo ./install.sh   (see README: Install on a Raspberry Pi)",
)


def _demo_dashboard(status: Any, seconds_left: float, units: dict[str, str] | None = None) -> Group:
    """The live demo view: a heading line, the belt's counters and the latest values with
    their units (a heading, not a table title: a title wraps to the table's width)."""
    units = units or {}
    heading = f"[bold]nixlog demo[/bold] — {max(0.0, seconds_left):.0f} s left (Ctrl-C ends it)"
    table = Table()
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("units")
    rate = status.polled / status.uptime_sec if status.uptime_sec > 0 else 0.0
    table.add_row("readings polled", str(status.polled), f"({rate:.1f}/s)")
    table.add_row("stored", str(status.stored), "")
    table.add_row("shipped to the API", str(status.shipped), "")
    table.add_row("backlog (unsent)", str(status.backlog), "")
    for device, values in sorted(status.devices.items()):
        latest = ", ".join(
            f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
            for name, value in list(values.items())[:3]
        )
        table.add_row(f"  {escape(device)}", escape(latest), "")
    if status.devices:
        return Group(heading, table)  # a plant: one line per device, not one device's values
    for name, value in sorted(status.last_values.items()):
        shown = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else None
        shown = shown if shown is not None else _format_value(value)
        table.add_row(f"  {escape(name)}", escape(shown), escape(units.get(name, "")))
    for name, error in sorted(status.last_errors.items()):
        table.add_row(f"  {escape(name)}", f"[red]{escape(error)}[/red]", "")
    return Group(heading, table)


def _render_demo_summary(summary: Any, interrupted: bool) -> None:
    out = _console()
    stats = summary.stats
    status = summary.status
    out.print(
        f"demo {'interrupted' if interrupted else 'finished'} after "
        f"{status.uptime_sec:.0f} s: polled {status.polled}, stored {stats.rows}, "
        f"shipped {stats.sent} (receiver counted {summary.received}, "
        f"{summary.duplicates} duplicates), unsent {stats.unsent}, rejected {stats.rejected}"
    )


@_command(app, "demo")
def demo(
    seconds: Annotated[
        float, typer.Option("--seconds", min=1, help="How long to run before the summary.")
    ] = 20,
) -> None:
    """Simulator + local receiver + daemon on a temporary database, with a live dashboard."""
    import time

    from rich.live import Live

    from nixlog.demo import DemoRig

    console = _console(err=True)
    with DemoRig() as rig:
        daemon = rig.start()
        assert rig.config is not None
        units = {r.name: r.units for r in rig.config.modbus.registers if r.units}
        deadline = time.monotonic() + seconds
        interrupted = False
        try:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while time.monotonic() < deadline and daemon.running:
                    left = deadline - time.monotonic()
                    live.update(_demo_dashboard(daemon.status(), left, units))
                    time.sleep(0.25)
                live.update(_demo_dashboard(daemon.status(), 0.0, units))
            if not console.is_terminal:
                console.print()  # off a terminal, Live leaves its last frame unterminated
        except KeyboardInterrupt:
            interrupted = True
        summary = rig.finish()
    _render_demo_summary(summary, interrupted)
    # On stderr with the dashboard: stdout keeps the one summary line scripts read.
    for line in DEMO_NEXT_STEPS:
        console.print(line, soft_wrap=True, highlight=False)


def main() -> None:
    """Console-script entry point (usage errors and closed pipes: see ``_NixlogGroup``)."""
    app()
