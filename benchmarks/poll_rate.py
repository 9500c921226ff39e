"""Poll rate against the simulator on loopback: nixlog's poller vs a bare pymodbus loop.

For the 12-register example map, measured side by side in one run:
  * requests per cycle before coalescing (one request per distinct value) and after (the plan);
  * cycles per second of ``Poller.poll_once`` (read, check, decode, build the reading);
  * cycles per second of a bare pymodbus loop issuing the same planned requests, nothing else;
  * cycles per second of a bare pymodbus loop issuing one request per register (no planning).
The simulator runs in a separate process. Loopback has no wire time, so the figures show
our per-cycle overhead; on RS-485 the request count dominates (~42 ms for a
10-register read at 9600 baud).

Run: python benchmarks/poll_rate.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pymodbus.client import ModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rig import simulator_process
from nixlog.config import ModbusConfig, RegisterConfig
from nixlog.core import Poller
from nixlog.modbus_client import create_client
from nixlog.registers import ReadRequest, plan_requests
from nixlog.simulator import EXAMPLE_REGISTERS

SLICE_SEC = 0.25
CPU_RATIO_TARGET = 0.8
"""Issue 17: bare CPU per cycle ÷ nixlog's, same requests over loopback TCP."""


def _rates(
    cycles: Sequence[Callable[[], object]], seconds: float
) -> list[tuple[float, int, float]]:
    """Cycles per second and CPU seconds per cycle of each loop, run in interleaved slices.

    Taking turns every quarter second lets each loop see the same share of a noisy shared
    machine, which back-to-back runs of several seconds do not. CPU is this process's
    (``time.process_time``): the simulator's work is in its own process and not counted.
    """
    for cycle in cycles:
        for _ in range(20):  # warm up connections and caches
            cycle()
    counts = [0] * len(cycles)
    spent = [0.0] * len(cycles)
    cpu = [0.0] * len(cycles)
    for _ in range(max(1, round(seconds / SLICE_SEC))):
        for index, cycle in enumerate(cycles):
            started = time.perf_counter()
            cpu_started = time.process_time()
            deadline = started + SLICE_SEC
            while time.perf_counter() < deadline:
                cycle()
                counts[index] += 1
            spent[index] += time.perf_counter() - started
            cpu[index] += time.process_time() - cpu_started
    return [
        (count / elapsed, count, used / count)
        for count, elapsed, used in zip(counts, spent, cpu, strict=True)
    ]


def _bare_cycle(client: ModbusTcpClient, plan: list[ReadRequest]) -> Callable[[], object]:
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
            assert not response.isError()

    return cycle


@dataclass(frozen=True)
class PollRate:
    """Cycles per second measured side by side, and the requests each cycle issued."""

    registers: int
    planned_requests: int
    one_per_register: int
    ours: float
    bare: float
    bare_one_per_register: float
    samples: tuple[int, int, int]
    ours_cpu_sec: float
    """CPU seconds per cycle of ``Poller.poll_once`` (the measuring process only)."""
    bare_cpu_sec: float
    """CPU seconds per cycle of the bare loop issuing the same planned requests."""

    @property
    def cpu_ratio(self) -> float:
        """Bare CPU per cycle ÷ nixlog's: 1 means nixlog costs nothing over the bare loop."""
        return self.bare_cpu_sec / self.ours_cpu_sec


def one_request_per_register(registers: Sequence[RegisterConfig]) -> list[ReadRequest]:
    """What a loop without planning issues: one read per configured register, in map order.

    A status word and a bit inside it are two registers, so the word is read twice.
    """
    return [ReadRequest(r.unit_id, r.kind, r.address, r.count) for r in registers]


def measure(seconds: float = 3.0) -> PollRate:
    """Run the three loops against a simulator process for ``seconds`` each."""
    registers = EXAMPLE_REGISTERS
    coalesced = plan_requests(registers)
    naive = one_request_per_register(registers)
    with simulator_process() as address:
        config = ModbusConfig(port=address, registers=registers, timeout_sec=1.0, retries=0)
        poller = Poller(create_client(config), registers, coalesced)
        host, port = config.tcp_address
        bare = ModbusTcpClient(host, port=port, timeout=1.0, retries=0)
        bare.connect()  # type: ignore[no-untyped-call]
        try:
            (ours, ours_n, ours_cpu), (raw, raw_n, raw_cpu), (raw_naive, raw_naive_n, _) = _rates(
                [poller.poll_once, _bare_cycle(bare, coalesced), _bare_cycle(bare, naive)],
                seconds,
            )
        finally:
            poller.close()
            bare.close()  # type: ignore[no-untyped-call]
    return PollRate(
        registers=len(registers),
        planned_requests=len(coalesced),
        one_per_register=len(naive),
        ours=ours,
        bare=raw,
        bare_one_per_register=raw_naive,
        samples=(ours_n, raw_n, raw_naive_n),
        ours_cpu_sec=ours_cpu,
        bare_cpu_sec=raw_cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()
    got = measure(args.seconds)
    ours, raw, raw_unc = got.ours, got.bare, got.bare_one_per_register
    ours_n, raw_n, raw_unc_n = got.samples
    print(f"register map: examples/config.toml ({got.registers} registers, loopback TCP)")
    print(
        f"requests per cycle: {got.one_per_register} without coalescing "
        f"(one per register), {got.planned_requests} with the plan "
        f"({got.one_per_register / got.planned_requests:.2f}x fewer)"
    )
    print(
        f"nixlog Poller.poll_once     : {ours:8.0f} cycles/s  "
        f"({1e6 / ours:6.0f} us/cycle, {1e6 / ours / got.registers:5.1f} us/reading-value, "
        f"n={ours_n})"
    )
    print(
        f"bare pymodbus, same plan    : {raw:8.0f} cycles/s  ({1e6 / raw:6.0f} us/cycle, n={raw_n})"
    )
    print(
        f"bare pymodbus, uncoalesced  : {raw_unc:8.0f} cycles/s  ({1e6 / raw_unc:6.0f} us/cycle, "
        f"n={raw_unc_n})"
    )
    print(f"ratio nixlog / bare (same plan)      : {ours / raw:.2f}")
    print(
        f"CPU per cycle                        : nixlog {got.ours_cpu_sec * 1e6:.0f} us, "
        f"bare {got.bare_cpu_sec * 1e6:.0f} us; bare / nixlog {got.cpu_ratio:.2f} "
        f"(target >= {CPU_RATIO_TARGET:g})"
    )
    print(f"ratio nixlog / bare uncoalesced      : {ours / raw_unc:.2f}")
    print(
        f"nixlog overhead per cycle            : {1e6 / ours - 1e6 / raw:.0f} us "
        f"(decode, checks, reading, backoff bookkeeping)"
    )


if __name__ == "__main__":
    main()
