"""Line time on RTU: the gap between a device's answer and nixlog's next request.

A device in a separate process serves a socat pty pair (the stand-in for an RS-485 adapter)
and time-stamps, with the same monotonic clock as this process, when it wrote each answer
and when the next request arrived. The gap is nixlog's whole turnaround (read the end of
the answer, check it, decode, build the next frame, write it) plus the pty's two hops, so
it is an upper bound of what the bus sees. Needs socat.

Run: python benchmarks/rtu_gap.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixlog.config import ModbusConfig, RegisterConfig
from nixlog.core import Poller
from nixlog.modbus_client import create_client

_DEVICE = r"""
import os, select, sys, time
sys.path.insert(0, sys.argv[3])
from nixlog.frames import parse_rtu_request, rtu_answer
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
out = open(sys.argv[2], "w")
buffer = b""
answered = None
while True:
    ready, _, _ = select.select([fd], [], [], 5)
    if not ready:
        break
    buffer += os.read(fd, 256)
    while len(buffer) >= 8:
        unit, function, start, count = parse_rtu_request(buffer[:8])
        buffer = buffer[8:]
        now = time.monotonic()
        if answered is not None:
            out.write(f"{now - answered}\n")
        os.write(fd, rtu_answer(unit, function, [start + i for i in range(count)]))
        answered = time.monotonic()
out.close()
"""


def measure(requests: int = 2000) -> list[float]:
    """Gaps in seconds between each answer written and the next request received."""
    socat = shutil.which("socat")
    if socat is None:
        raise SystemExit("Error: socat is needed for this benchmark")
    with tempfile.TemporaryDirectory() as directory:
        server, client = f"{directory}/ttyS", f"{directory}/ttyC"
        pair = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={server}", f"pty,raw,echo=0,link={client}"],
            stderr=subprocess.DEVNULL,
        )
        while not (os.path.exists(server) and os.path.exists(client)):
            time.sleep(0.01)
        gaps_file = f"{directory}/gaps"
        root = str(Path(__file__).resolve().parent.parent)
        device = subprocess.Popen([sys.executable, "-c", _DEVICE, server, gaps_file, root])
        try:
            registers = (RegisterConfig("a", 0), RegisterConfig("b", 100, unit_id=2))
            config = ModbusConfig(
                port=client, registers=registers, baudrate=115200, timeout_sec=1.0, retries=0
            )
            poller = Poller(create_client(config), registers)
            for _ in range(requests // 2):
                reading = poller.poll_once()
                assert reading is not None and not reading.errors, reading
            poller.close()
            device.wait(10)
        finally:
            device.kill()
            pair.terminate()
            pair.wait(5)
        return [float(line) for line in Path(gaps_file).read_text().split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    gaps = sorted(measure(args.requests))
    # Gaps across a cycle boundary include nothing else: poll_once is called back to back.
    print(f"requests: {len(gaps) + 1} over a socat pty pair (115200 baud, two units)")
    print(
        f"answer -> next request: median {statistics.median(gaps) * 1e6:.0f} us, "
        f"p90 {gaps[int(len(gaps) * 0.9)] * 1e6:.0f} us, "
        f"p99 {gaps[int(len(gaps) * 0.99)] * 1e6:.0f} us, max {gaps[-1] * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
