"""A baud-paced Modbus RTU line for benchmarks, with a slave on its far end.

    master (client under test) ── pty pair A ── relay ── pty pair B ── slave

Two socat pty pairs stand in for the RS-485 adapters; the relay between them forwards bytes in
both directions no faster than 8N1 at the baud rate (10 bits a byte), on one shared half-duplex
line: a frame goes on the wire only after 3.5 character times of silence, and an answer only
after the silence plus the slave's fixed turnaround. The slave is a small pure-Python RTU
slave (functions 1-4, any unit id, CRC16 computed here) that answers at once; the relay holds
its answer until the turnaround has passed, so the figure does not depend on how fast Python
runs the slave. Everything on the far side runs in one process of its own, in one select loop
(one clock for every timestamp, no GIL shared with the master being measured).

The relay records every frame: when it reached the relay, when it went on the wire, when its
last byte was handed on. The master's gap is the time from an answer's last byte handed to
the master to the next request's first byte reaching the relay (the socat hop both ways
included, a few tens of microseconds).

Stand-alone (prints ``ready <master path>``; commands on stdin: ``reset``, ``stats``; serves
until stdin closes): python benchmarks/paced_line.py --baud 9600 [--turnaround-ms 1]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CHAR_BITS = 10  # 8N1: a start bit, 8 data bits, a stop bit
SILENCE_CHARS = 3.5  # RTU's t3.5: the silence that ends a frame
CONTINUE_CHARS = 1.5  # RTU's t1.5: bytes closer than this belong to the same frame
REQUEST_BYTES = 8  # unit, function, start (2), count (2), CRC (2)
DEFAULT_TURNAROUND_SEC = 0.001
# Bytes inside a frame are handed on at most this often (a real UART's FIFO delivers in bursts
# too); a frame's last byte always leaves on time. Keeps the relay cheap at 115200 baud.
QUANTUM_SEC = 0.0005
REGISTER_FUNCTIONS = (3, 4)
PR_SET_TIMERSLACK = 29
BIT_FUNCTIONS = (1, 2)


def char_time(baud: int) -> float:
    """Seconds one byte occupies the wire at ``baud``, 8N1."""
    return CHAR_BITS / baud


def answer_bytes(function: int, count: int) -> int:
    """Length of the normal answer to a read of ``count`` registers or bits."""
    if function in REGISTER_FUNCTIONS:
        return 5 + 2 * count
    if function in BIT_FUNCTIONS:
        return 5 + (count + 7) // 8
    raise ValueError(f"not a read function: {function}")


def request_wire_sec(function: int, count: int, baud: int, turnaround_sec: float) -> float:
    """Line time of one transaction for a perfect master: request, silence, turnaround,
    answer, silence."""
    chars = REQUEST_BYTES + answer_bytes(function, count) + 2 * SILENCE_CHARS
    return chars * char_time(baud) + turnaround_sec


def wire_limit(plan: Iterable[tuple[int, int]], baud: int, turnaround_sec: float) -> float:
    """Cycles per second a perfect master reaches with ``plan`` ((function, count) pairs)."""
    cycle = sum(request_wire_sec(f, c, baud, turnaround_sec) for f, c in plan)
    return 1.0 / cycle


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus RTU CRC16 (reflected 0x8005, start 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` followed by its CRC, low byte first."""
    crc = crc16(frame)
    return frame + bytes((crc & 0xFF, crc >> 8))


class Slave:
    """An RTU slave for reads (functions 1-4) from any unit id; values follow the address.

    A register holds its own address; a bit is set when its address is odd. A frame that
    does not check out (CRC, function) costs one byte of resynchronisation.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.requests = 0
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the line; return the answers now due (may be empty)."""
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= REQUEST_BYTES:
            frame = bytes(self.buffer[:REQUEST_BYTES])
            function = frame[1]
            valid = function in REGISTER_FUNCTIONS + BIT_FUNCTIONS and crc16(frame[:6]) == (
                frame[6] | frame[7] << 8
            )
            if not valid:
                del self.buffer[0]
                self.dropped_bytes += 1
                continue
            del self.buffer[:REQUEST_BYTES]
            self.requests += 1
            out += self.answer(frame)
        return bytes(out)

    @staticmethod
    def answer(request: bytes) -> bytes:
        """The answer to one checked read request."""
        unit, function = request[0], request[1]
        start, count = struct.unpack(">HH", request[2:6])
        if function in REGISTER_FUNCTIONS:
            payload = struct.pack(f">{count}H", *((start + i) & 0xFFFF for i in range(count)))
        else:
            packed = bytearray((count + 7) // 8)
            for i in range(count):
                if (start + i) % 2:
                    packed[i // 8] |= 1 << (i % 8)
            payload = bytes(packed)
        return with_crc(bytes((unit, function, len(payload))) + payload)


@dataclass
class Frame:
    """One frame on the line, as the relay saw it (monotonic seconds)."""

    is_answer: bool
    arrived: float  # first byte reached the relay
    start: float  # first bit on the wire
    end: float = 0.0  # last byte handed to the far side
    size: int = 0
    late: float = 0.0  # an answer the slave sent later than its turnaround allows
    due: float = 0.0  # when its last byte's last bit leaves the wire


@dataclass
class _Direction:
    source: int
    sink: int
    is_answer: bool
    pending: deque[tuple[float, int, Frame]] = field(default_factory=deque)
    last_due: float = 0.0
    frame: Frame | None = None


class Relay:
    """The paced line's far side in one select loop: relay A<->B and the slave on B's end."""

    def __init__(
        self,
        relay_a: int,
        relay_b: int,
        slave_fd: int,
        baud: int,
        turnaround_sec: float,
        master_fd: int | None = None,
    ) -> None:
        self.char = char_time(baud)
        self.turnaround = turnaround_sec
        self.to_slave = _Direction(relay_a, relay_b, is_answer=False)
        self.to_master = _Direction(relay_b, relay_a, is_answer=True)
        self.slave_fd = slave_fd
        self.master_fd = master_fd  # the master's end, held open; its input is dropped on reset
        self.slave = Slave()
        self.line_free = 0.0  # when the last byte scheduled on the wire ends
        self.frames: list[Frame] = []
        self._last_write = 0.0

    def _accept(self, direction: _Direction, data: bytes, now: float) -> None:
        """Schedule bytes that reached the relay: each ends one character after the last."""
        frame = direction.frame
        if frame is None or (
            not direction.pending and now - direction.last_due > CONTINUE_CHARS * self.char
        ):
            earliest = self.line_free + SILENCE_CHARS * self.char
            if direction.is_answer:
                earliest += self.turnaround
            start = max(now, earliest)
            frame = Frame(direction.is_answer, arrived=now, start=start)
            if direction.is_answer and now > earliest:
                frame.late = now - earliest
            direction.frame = frame
            self.frames.append(frame)
            due = start
        else:
            due = max(direction.last_due, now)
        for byte in data:
            due += self.char
            direction.pending.append((due, byte, frame))
        frame.size += len(data)
        frame.due = due
        direction.last_due = due
        self.line_free = max(self.line_free, due)

    def _deliver(self, direction: _Direction, now: float) -> None:
        pending = direction.pending
        if not pending or pending[0][0] > now:
            return
        chunk = bytearray()
        frames: list[Frame] = []
        while pending and pending[0][0] <= now:
            _, byte, frame = pending.popleft()
            chunk.append(byte)
            frames.append(frame)
        _write_all(direction.sink, bytes(chunk))
        written = time.monotonic()
        self._last_write = written
        for frame in frames:
            frame.end = written

    def _wake(self, now: float) -> float | None:
        """Seconds until a byte is due (None: nothing pending)."""
        wakes = []
        for direction in (self.to_slave, self.to_master):
            pending = direction.pending
            if not pending:
                continue
            first, last = pending[0][0], pending[-1][0]
            wakes.append(min(last, max(first, self._last_write + QUANTUM_SEC)))
        if not wakes:
            return None
        return max(0.0, min(wakes) - now)

    def reset(self) -> None:
        """Forget the frames seen so far and anything still on its way (call it between
        transactions): bytes a failed master left behind must not reach the next one."""
        self.frames = []
        self.slave.requests = 0
        self.slave.buffer.clear()
        for direction in (self.to_slave, self.to_master):
            direction.pending.clear()
            direction.frame = None
        if self.master_fd is not None:
            with suppress(OSError):
                termios.tcflush(self.master_fd, termios.TCIFLUSH)

    def stats(self) -> dict[str, object]:
        """What the line saw since the last reset (times in seconds)."""
        frames = [f for f in self.frames if f.end]
        gaps = [
            later.arrived - earlier.end
            for earlier, later in itertools.pairwise(frames)
            if earlier.is_answer and not later.is_answer
        ]
        answers = [f for f in frames if f.is_answer]
        return {
            "requests": sum(1 for f in frames if not f.is_answer),
            "answers": len(answers),
            "slave_requests": self.slave.requests,
            "dropped_bytes": self.slave.dropped_bytes,
            "gaps": gaps,
            "late_answers": sum(1 for f in answers if f.late > 0),
            "handover": [f.end - f.due for f in answers],
            "max_late": max((f.late for f in answers), default=0.0),
            "busy_from": frames[0].start if frames else 0.0,
            "busy_to": frames[-1].end if frames else 0.0,
        }

    def serve(self, control: int, reply: int) -> None:
        """Relay, answer and obey control lines until ``control`` reaches end of file."""
        a, b = self.to_slave.source, self.to_master.source
        commands = b""
        while True:
            now = time.monotonic()
            self._deliver(self.to_slave, now)
            self._deliver(self.to_master, now)
            readable, _, _ = select.select(
                [a, b, self.slave_fd, control], [], [], self._wake(time.monotonic())
            )
            now = time.monotonic()
            for fd in readable:
                if fd == control:
                    data = os.read(control, 4096)
                    if not data:
                        return
                    commands += data
                    while b"\n" in commands:
                        line, commands = commands.split(b"\n", 1)
                        self._command(line.decode().strip(), reply)
                    continue
                data = _read(fd)
                if not data:
                    continue
                if fd == a:
                    self._accept(self.to_slave, data, now)
                elif fd == b:
                    self._accept(self.to_master, data, now)
                else:
                    answer = self.slave.feed(data)
                    if answer:
                        _write_all(self.slave_fd, answer)

    def _command(self, command: str, reply: int) -> None:
        if command == "reset":
            self.reset()
            _write_all(reply, b"ok\n")
        elif command == "stats":
            _write_all(reply, json.dumps(self.stats()).encode() + b"\n")
        else:
            _write_all(reply, f"error unknown command {command!r}\n".encode())


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:  # EIO: nobody holds the other end of a pty for a moment
        time.sleep(0.001)
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 0.01)
            continue
        view = view[written:]


def _open_pty(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


@contextmanager
def pty_pair(directory: Path, first: str, second: str) -> Iterator[tuple[Path, Path]]:
    """Two linked ptys from socat, as symlinks ``directory/first`` and ``directory/second``."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (apt-get install socat)")
    one, two = directory / first, directory / second
    process = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={one}", f"pty,raw,echo=0,link={two}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (one.exists() and two.exists()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.005)
        yield one, two
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _tight_timers() -> None:
    """Ask Linux to wake this process on time (timer slack 1 us instead of 50 us)."""
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(1000), 0, 0, 0)


def serve(baud: int, turnaround_sec: float) -> None:
    """The far side: make the line, print ``ready <master path>``, serve until stdin closes."""
    _tight_timers()
    directory = Path(tempfile.mkdtemp(prefix="nixlog-paced-"))
    fds: list[int] = []
    try:
        with (
            pty_pair(directory, "master", "relay-a") as (master, relay_a),
            pty_pair(directory, "relay-b", "slave") as (relay_b, slave),
        ):
            fds += [_open_pty(relay_a), _open_pty(relay_b), _open_pty(slave)]
            # Held open so that socat keeps pair A while masters come and go between runs.
            fds.append(_open_pty(master))
            relay = Relay(fds[0], fds[1], fds[2], baud, turnaround_sec, master_fd=fds[3])
            sys.stdout.write(f"ready {master}\n")
            sys.stdout.flush()
            relay.serve(sys.stdin.fileno(), sys.stdout.fileno())
    finally:
        for fd in fds:
            with suppress(OSError):
                os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class LineStats:
    """What the relay saw during one measurement."""

    requests: int
    answers: int
    slave_requests: int
    dropped_bytes: int
    gaps: tuple[float, ...]
    late_answers: int
    max_late: float
    handover: tuple[float, ...]  # an answer's last byte handed on after its wire time, s

    @property
    def median_gap(self) -> float:
        """Median seconds from an answer handed to the master to its next request (NaN: none)."""
        return statistics.median(self.gaps) if self.gaps else float("nan")

    @property
    def median_handover(self) -> float:
        """Median seconds an answer's last byte reached the master after its wire time."""
        return statistics.median(self.handover) if self.handover else float("nan")


class PacedLine:
    """The paced line and its slave in a child process; ``master`` is the path to open.

    ``with PacedLine(9600) as line: line.reset(); ...; line.stats()``
    """

    def __init__(self, baud: int, turnaround_sec: float = DEFAULT_TURNAROUND_SEC) -> None:
        self.baud = baud
        self.turnaround = turnaround_sec
        self.master = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> PacedLine:
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--baud",
                str(self.baud),
                "--turnaround-ms",
                repr(self.turnaround * 1000),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        banner = self._line()
        if not banner.startswith("ready "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"paced line did not start: {banner!r}")
        self.master = banner.split(" ", 1)[1]
        return self

    def _line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def _ask(self, command: str) -> str:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._line()

    def reset(self) -> None:
        """Start a new measurement: forget the frames seen so far."""
        if self._ask("reset") != "ok":
            raise RuntimeError("paced line did not reset")

    def stats(self) -> LineStats:
        """The frames since the last reset, summed up."""
        got = json.loads(self._ask("stats"))
        return LineStats(
            requests=got["requests"],
            answers=got["answers"],
            slave_requests=got["slave_requests"],
            dropped_bytes=got["dropped_bytes"],
            gaps=tuple(got["gaps"]),
            late_answers=got["late_answers"],
            max_late=got["max_late"],
            handover=tuple(got["handover"]),
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with suppress(OSError):
                process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument(
        "--turnaround-ms", type=float, default=DEFAULT_TURNAROUND_SEC * 1000, help="slave's"
    )
    args = parser.parse_args()
    serve(args.baud, args.turnaround_ms / 1000)


if __name__ == "__main__":
    main()
