"""Scan speed: a 1-247 unit sweep and a 0-999 holding-register scan, TCP and RTU side by side.

Serves the simulator in-process (TCP on 127.0.0.1, RTU through a socat pty pair at 9600 and
115200 baud) and runs ``nixlog.scanner.Scanner`` with the default scan timeout, then the same
register range one register per request, and prints wall time, requests and the ratio.

Two register maps:

* ``example``: the example map on the stock simulator, which serves zeros in the holes of
  its map and refuses (exception 2) addresses past the last value (holding 112 onwards).
* ``meter``: a meter-like map (runs of floats and words with refused gaps, 0-299 mapped in
  runs, nothing past 300), served by a simulator that refuses every unmapped address.

A socat pty does not pace bytes at the baud rate: RTU figures here show the protocol's
timeouts and settling, not the wire time of a real RS-485 line (a 125-register answer takes
~0.27 s at 9600 baud on a real line; ``answer_timeout`` allows for it).

    /work/venv/bin/python benchmarks/scan_speed.py [--units 1-247] [--count 1000]
        [--transports tcp,rtu9600,rtu115200]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from nixlog.config import ModbusConfig, RegisterConfig
from nixlog.modbus_client import ModbusReadError, create_client
from nixlog.scanner import DEFAULT_SCAN_TIMEOUT_SEC, Scanner, parse_units
from nixlog.simulator import (
    EXAMPLE_REGISTERS,
    SimulatorContext,
    SimulatorServer,
    build_simulator_context,
)


def meter_registers() -> list[RegisterConfig]:
    """Runs of values with gaps, like a power meter's documented map."""
    registers: list[RegisterConfig] = []
    for base in (0, 100, 200):
        registers += [
            RegisterConfig(f"f{base + a}", base + a, type="float32") for a in range(0, 40, 2)
        ]
        registers += [RegisterConfig(f"u{base + a}", base + a) for a in range(50, 80)]
        registers += [RegisterConfig(f"i{base + a}", base + a, type="int16") for a in range(84, 96)]
    return registers


@contextmanager
def serve(transport: str, context: SimulatorContext) -> Iterator[ModbusConfig]:
    """The simulator on ``transport``; yields the client's bus settings."""
    if transport == "tcp":
        with SimulatorServer("tcp://127.0.0.1:0", context) as server:
            yield ModbusConfig(
                port=server.address, registers=(), timeout_sec=DEFAULT_SCAN_TIMEOUT_SEC
            )
        return
    baudrate = int(transport.removeprefix("rtu"))
    socat = shutil.which("socat")
    if socat is None:
        raise SystemExit("socat is not installed")
    with tempfile.TemporaryDirectory() as directory:
        server_end, client_end = Path(directory) / "ttyS", Path(directory) / "ttyC"
        process = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={server_end}", f"pty,raw,echo=0,link={client_end}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not (server_end.exists() and client_end.exists()):
                time.sleep(0.01)
            line = ModbusConfig(
                port=str(client_end),
                registers=(),
                baudrate=baudrate,
                timeout_sec=DEFAULT_SCAN_TIMEOUT_SEC,
            )
            with SimulatorServer(str(server_end), context, replace(line, port=str(server_end))):
                yield line
        finally:
            process.terminate()
            process.wait(5)


def sweep(transport: str, units: tuple[int, ...]) -> None:
    """Time the unit sweep (unit 1 answers, every other id is silent)."""
    context = build_simulator_context(EXAMPLE_REGISTERS)
    with serve(transport, context) as modbus:
        link = create_client(modbus)
        started = time.monotonic()
        try:
            # One address per unit: the register phase adds a single request.
            result = Scanner(link, modbus, units, ("holding",), 0, 1).run()
        finally:
            link.close()
        elapsed = time.monotonic() - started
    found = [unit.unit_id for unit in result.units]
    silent = len(units) - len(found)
    print(
        f"{transport:>10}  sweep {units[0]}-{units[-1]} ({len(units)} ids): {elapsed:7.1f} s, "
        f"found {found}, {elapsed / max(silent, 1) * 1000:6.0f} ms per silent id "
        f"(timeout {DEFAULT_SCAN_TIMEOUT_SEC * 1000:.0f} ms)"
    )


def registers(transport: str, name: str, context: SimulatorContext, count: int) -> None:
    """Time a 0..count-1 holding scan, then the same range one register per request."""
    with serve(transport, context) as modbus:
        link = create_client(modbus)
        try:
            started = time.monotonic()
            result = Scanner(link, modbus, [1], ("holding",), 0, count).run()
            walk_sec = time.monotonic() - started
            walk_requests = result.requests - 1  # less the unit probe
            found = len(result.units[0].kinds["holding"].values)
            started = time.monotonic()
            naive_found = 0
            for address in range(count):
                try:
                    link.read(1, "holding", address, 1, timeout=modbus.timeout_sec, retries=0)
                    naive_found += 1
                except ModbusReadError:
                    pass
            naive_sec = time.monotonic() - started
        finally:
            link.close()
    assert naive_found == found, (naive_found, found)
    print(
        f"{transport:>10}  holding 0-{count - 1} {name:>7}: {found:4d} found; walk "
        f"{walk_requests:4d} requests {walk_sec:6.2f} s | one per register {count:4d} "
        f"requests {naive_sec:6.2f} s | requests x{walk_requests / count:.2f}, "
        f"time x{walk_sec / naive_sec:.2f}, {walk_sec / walk_requests * 1000:.1f} ms/request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="1-247")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--transports", default="tcp,rtu9600,rtu115200")
    parser.add_argument("--skip-sweep", action="store_true")
    options = parser.parse_args()
    units = parse_units(options.units)
    transports = options.transports.split(",")
    print(f"default scan timeout {DEFAULT_SCAN_TIMEOUT_SEC} s; socat ptys do not pace baud rate")
    for transport in transports:
        registers(transport, "example", build_simulator_context(EXAMPLE_REGISTERS), options.count)
        meter = SimulatorContext(meter_registers(), refuse_unmapped=True)
        registers(transport, "meter", meter, options.count)
    if not options.skip_sweep:
        for transport in transports:
            sweep(transport, units)


if __name__ == "__main__":
    main()
