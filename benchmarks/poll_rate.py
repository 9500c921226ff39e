"""Poll rate against the simulator on loopback: nixlog's poller vs a bare pymodbus loop.

For the 12-register example map, measured side by side in one run:
  * requests per cycle before coalescing (one request per distinct value) and after (the plan);
  * cycles per second of ``Poller.poll_once`` (read, check, decode, build the reading);
  * cycles per second of a bare pymodbus loop issuing the same planned requests, nothing else;
  * cycles per second of a bare pymodbus loop issuing one request per value (no coalescing).
The simulator runs in a separate process. Loopback has no wire time, so the figures show
our per-cycle overhead; on RS-485 the request count dominates (DESIGN §5: ~42 ms for a
10-register read at 9600 baud).

Run: python benchmarks/poll_rate.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pymodbus.client import ModbusTcpClient

from nixlog.config import ModbusConfig
from nixlog.core import Poller
from nixlog.modbus_client import create_client
from nixlog.registers import ReadRequest, plan_requests
from nixlog.simulator import EXAMPLE_REGISTERS


def _rate(cycle: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Cycles per second of ``cycle`` run back to back for ``seconds``."""
    for _ in range(20):  # warm up connections and caches
        cycle()
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        cycle()
        count += 1
    return count / (time.perf_counter() - started), count


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()

    registers = EXAMPLE_REGISTERS
    coalesced = plan_requests(registers)
    # Without coalescing: one request per distinct value (a status word and its bit share one).
    distinct = {(r.unit_id, r.kind, r.address, r.count) for r in registers}
    uncoalesced_plan = [ReadRequest(*key) for key in sorted(distinct)]

    # The simulator runs in its own process, like a real device: it must not share our GIL.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    simulator = subprocess.Popen(
        [sys.executable, "-m", "nixlog", "simulate", "--port", address],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NIXLOG_CONFIG": ""},
        cwd=tempfile.gettempdir(),
    )
    try:
        assert simulator.stderr is not None
        simulator.stderr.readline()  # the banner: it listens
        config = ModbusConfig(port=address, registers=registers, timeout_sec=1.0, retries=0)
        poller = Poller(create_client(config), registers, coalesced)
        host, port = config.tcp_address
        bare = ModbusTcpClient(host, port=port, timeout=1.0, retries=0)
        bare.connect()
        try:
            ours, ours_n = _rate(poller.poll_once, args.seconds)
            raw, raw_n = _rate(_bare_cycle(bare, coalesced), args.seconds)
            raw_unc, raw_unc_n = _rate(_bare_cycle(bare, uncoalesced_plan), args.seconds)
        finally:
            poller.close()
            bare.close()
    finally:
        simulator.terminate()
        simulator.wait(10)

    print(f"register map: examples/config.toml ({len(registers)} registers, loopback TCP)")
    print(
        f"requests per cycle: {len(uncoalesced_plan)} without coalescing "
        f"(one per distinct value), {len(coalesced)} with the plan "
        f"({len(uncoalesced_plan) / len(coalesced):.2f}x fewer)"
    )
    print(
        f"nixlog Poller.poll_once     : {ours:8.0f} cycles/s  "
        f"({1e6 / ours:6.0f} us/cycle, {1e6 / ours / len(registers):5.1f} us/reading-value, "
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
    print(f"ratio nixlog / bare uncoalesced      : {ours / raw_unc:.2f}")
    print(
        f"nixlog overhead per cycle            : {1e6 / ours - 1e6 / raw:.0f} us "
        f"(decode, checks, reading, backoff bookkeeping)"
    )


if __name__ == "__main__":
    main()
