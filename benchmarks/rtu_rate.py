"""RTU line time: how close nixlog's poll cycle comes to the wire-time limit of a paced line.

For the example map (its request plan) at each baud rate, over ``paced_line.PacedLine`` (two
socat pty pairs, a relay pacing bytes at 8N1 with the 3.5-character silences, a slave that
answers after a fixed turnaround), one master after the other on the same line:
  * nixlog: ``Poller.poll_once`` over ``create_client(ModbusConfig(...))``;
  * bare pymodbus: a ``ModbusSerialClient`` loop issuing the same requests (the "before");
  * libmodbus: its RTU client through ctypes, the same requests (left out when the library
    is missing; Debian: apt-get install libmodbus5).
Each is given as cycles/s and as % of the wire-time limit (the cycles/s a perfect master
reaches: frames, silences and turnaround only), with each master's median gap between an
answer's last byte and its next request's first byte, as the relay saw them.

Run: python benchmarks/rtu_rate.py [--seconds 4] [--bauds 9600,19200,115200]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.paced_line import DEFAULT_TURNAROUND_SEC, LineStats, PacedLine, wire_limit
from nixlog.config import ModbusConfig
from nixlog.core import Poller
from nixlog.modbus_client import create_client
from nixlog.registers import ReadRequest, plan_requests
from nixlog.simulator import EXAMPLE_REGISTERS

BAUDS = (9600, 19200, 115200)
TARGETS = {9600: 95.0, 19200: 95.0, 115200: 85.0}
"""Issue 17: % of the wire-time limit nixlog must reach at each rate."""
GAP_TARGET_MS = 1.0
MASTERS = ("nixlog", "pymodbus", "libmodbus")
TIMEOUT_SEC = 1.0
LIBMODBUS_PATH = "/usr/lib/x86_64-linux-gnu/libmodbus.so.5"

Cycle = Callable[[], None]


@dataclass(frozen=True)
class MasterRun:
    """One master on one line: cycles completed in how long, and what the relay saw."""

    master: str
    cycles: int
    seconds: float
    line: LineStats

    @property
    def rate(self) -> float:
        """Cycles per second."""
        return self.cycles / self.seconds

    @property
    def median_gap_ms(self) -> float:
        """Median answer-to-next-request gap, ms."""
        return self.line.median_gap * 1000


@dataclass(frozen=True)
class BaudResult:
    """Every master at one baud rate, against the plan's wire-time limit."""

    baud: int
    limit: float  # cycles/s of a perfect master
    runs: dict[str, MasterRun]

    def percent(self, master: str) -> float:
        """The master's cycles/s as % of the limit (NaN when it was not measured)."""
        run = self.runs.get(master)
        return math.nan if run is None else 100.0 * run.rate / self.limit

    def gap_ms(self, master: str) -> float:
        """The master's median gap in ms (NaN when it was not measured)."""
        run = self.runs.get(master)
        return math.nan if run is None else run.median_gap_ms


@dataclass(frozen=True)
class RtuRate:
    """The whole figure: one ``BaudResult`` per baud rate, and why a master is missing."""

    requests: int
    turnaround_sec: float
    results: list[BaudResult]
    missing: dict[str, str]


def plan_frames(plan: Sequence[ReadRequest]) -> list[tuple[int, int]]:
    """The plan as (function, count) pairs, what the wire-time limit needs."""
    return [(request.function_code, request.count) for request in plan]


# ---------------------------------------------------------------- the three masters


@contextmanager
def nixlog_master(port: str, baud: int, plan: Sequence[ReadRequest]) -> Iterator[Cycle]:
    """nixlog's poll cycle over its own RTU link."""
    config = ModbusConfig(
        port=port,
        registers=EXAMPLE_REGISTERS,
        baudrate=baud,
        timeout_sec=TIMEOUT_SEC,
        retries=0,
    )
    poller = Poller(create_client(config), EXAMPLE_REGISTERS, plan)

    def cycle() -> None:
        reading = poller.poll_once()
        if reading is None or reading.errors:
            raise RuntimeError(f"nixlog poll failed: {poller.last_cycle}")

    try:
        yield cycle
    finally:
        poller.close()


@contextmanager
def pymodbus_master(port: str, baud: int, plan: Sequence[ReadRequest]) -> Iterator[Cycle]:
    """A bare pymodbus ``ModbusSerialClient`` issuing the plan, nothing else."""
    from pymodbus.client import ModbusSerialClient

    client = ModbusSerialClient(port, baudrate=baud, timeout=TIMEOUT_SEC, retries=0)
    if not client.connect():
        raise RuntimeError(f"pymodbus cannot open {port}")
    calls = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }

    def cycle() -> None:
        for request in plan:
            response = calls[request.kind](
                request.start, count=request.count, device_id=request.unit_id
            )
            if response.isError():
                raise RuntimeError(f"pymodbus read failed: {response}")

    try:
        yield cycle
    finally:
        client.close()  # type: ignore[no-untyped-call]


def load_libmodbus() -> ctypes.CDLL | None:
    """libmodbus with the prototypes used here, or None when it is not installed."""
    name = ctypes.util.find_library("modbus") or LIBMODBUS_PATH
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    ptr, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    lib.modbus_new_rtu.restype = ptr
    lib.modbus_new_rtu.argtypes = [ctypes.c_char_p, i, ctypes.c_char, i, i]
    lib.modbus_set_slave.argtypes = [ptr, i]
    lib.modbus_set_response_timeout.argtypes = [ptr, u32, u32]
    lib.modbus_connect.argtypes = [ptr]
    for reader in ("modbus_read_registers", "modbus_read_input_registers"):
        getattr(lib, reader).argtypes = [ptr, i, i, ctypes.POINTER(ctypes.c_uint16)]
    for reader in ("modbus_read_bits", "modbus_read_input_bits"):
        getattr(lib, reader).argtypes = [ptr, i, i, ctypes.POINTER(ctypes.c_uint8)]
    lib.modbus_close.argtypes = [ptr]
    lib.modbus_free.argtypes = [ptr]
    lib.modbus_strerror.restype = ctypes.c_char_p
    lib.modbus_strerror.argtypes = [i]
    return lib


@contextmanager
def libmodbus_master(
    lib: ctypes.CDLL, port: str, baud: int, plan: Sequence[ReadRequest]
) -> Iterator[Cycle]:
    """libmodbus' RTU client issuing the plan through ctypes."""
    ctx = lib.modbus_new_rtu(port.encode(), baud, b"N", 8, 1)
    if not ctx:
        raise RuntimeError("modbus_new_rtu failed")
    readers = {
        "holding": (lib.modbus_read_registers, ctypes.c_uint16),
        "input": (lib.modbus_read_input_registers, ctypes.c_uint16),
        "coil": (lib.modbus_read_bits, ctypes.c_uint8),
        "discrete": (lib.modbus_read_input_bits, ctypes.c_uint8),
    }
    calls = []
    for request in plan:
        reader, item = readers[request.kind]
        calls.append((reader, request.start, request.count, (item * request.count)()))
    try:
        lib.modbus_set_slave(ctx, plan[0].unit_id if plan else 1)
        lib.modbus_set_response_timeout(ctx, int(TIMEOUT_SEC), 0)
        if lib.modbus_connect(ctx) != 0:
            raise RuntimeError(f"libmodbus cannot open {port}: {_libmodbus_error(lib)}")

        def cycle() -> None:
            for reader, start, count, buffer in calls:
                if reader(ctx, start, count, buffer) != count:
                    raise RuntimeError(f"libmodbus read failed: {_libmodbus_error(lib)}")

        yield cycle
    finally:
        lib.modbus_close(ctx)
        lib.modbus_free(ctx)


def _libmodbus_error(lib: ctypes.CDLL) -> str:
    message: bytes = lib.modbus_strerror(ctypes.get_errno())
    return message.decode(errors="replace")


# ---------------------------------------------------------------- measuring


def open_master(
    name: str, port: str, baud: int, plan: Sequence[ReadRequest], lib: ctypes.CDLL | None
) -> AbstractContextManager[Cycle]:
    """One of ``MASTERS`` on ``port``, ready to run cycles of ``plan``."""
    if name == "nixlog":
        return nixlog_master(port, baud, plan)
    if name == "pymodbus":
        return pymodbus_master(port, baud, plan)
    if lib is None:
        raise RuntimeError("libmodbus is not installed")
    return libmodbus_master(lib, port, baud, plan)


def run_master(line: PacedLine, name: str, cycle: Cycle, seconds: float) -> MasterRun:
    """Warm up, then run whole cycles for at least ``seconds`` (at least two cycles)."""
    cycle()
    line.reset()
    cycles = 0
    started = time.perf_counter()
    deadline = started + seconds
    while cycles < 2 or time.perf_counter() < deadline:
        cycle()
        cycles += 1
    elapsed = time.perf_counter() - started
    return MasterRun(name, cycles, elapsed, line.stats())


def measure(
    seconds: float = 4.0,
    bauds: Sequence[int] = BAUDS,
    turnaround_sec: float = DEFAULT_TURNAROUND_SEC,
) -> RtuRate:
    """Every master for ``seconds`` at every baud rate, on a fresh paced line per rate."""
    plan = plan_requests(EXAMPLE_REGISTERS)
    lib = load_libmodbus()
    missing = {} if lib is not None else {"libmodbus": "libmodbus not installed"}
    results = []
    for baud in bauds:
        runs: dict[str, MasterRun] = {}
        with PacedLine(baud, turnaround_sec) as line:
            for name in MASTERS:
                if name == "libmodbus" and lib is None:
                    continue
                line.reset()
                try:
                    with open_master(name, line.master, baud, plan, lib) as cycle:
                        runs[name] = run_master(line, name, cycle, seconds)
                except (RuntimeError, OSError) as exc:
                    # One master failing must not cost the others' figures; its cells show
                    # a dash and the note says why.
                    missing.setdefault(name, f"failed at {baud} baud: {exc}")
        results.append(BaudResult(baud, wire_limit(plan_frames(plan), baud, turnaround_sec), runs))
    return RtuRate(len(plan), turnaround_sec, results, missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per master and rate")
    parser.add_argument(
        "--bauds", default=",".join(map(str, BAUDS)), help="comma-separated baud rates"
    )
    parser.add_argument(
        "--turnaround-ms", type=float, default=DEFAULT_TURNAROUND_SEC * 1000, help="slave's"
    )
    args = parser.parse_args()
    bauds = [int(b) for b in args.bauds.split(",")]
    got = measure(args.seconds, bauds, args.turnaround_ms / 1000)
    print(
        f"example map: {got.requests} requests per cycle; slave turnaround "
        f"{got.turnaround_sec * 1000:g} ms; % of the wire-time limit (median gap ms)"
    )
    for result in got.results:
        cells = []
        for master in MASTERS:
            run = result.runs.get(master)
            if run is None:
                cells.append(f"{master} —")
                continue
            cells.append(
                f"{master} {run.rate:.2f}/s = {result.percent(master):.1f} % "
                f"(gap {run.median_gap_ms:.2f} ms, n={run.cycles})"
            )
        target = TARGETS.get(result.baud)
        aim = f", target ≥ {target:g} %" if target else ""
        print(f"{result.baud:6d} baud, limit {result.limit:.2f}/s{aim}: " + "; ".join(cells))
    for master, why in got.missing.items():
        print(f"{master}: left out ({why})")


if __name__ == "__main__":
    main()
