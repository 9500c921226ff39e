"""`nixlog read` and `nixlog write` against the simulator, as a technician types them."""

from __future__ import annotations

import json
import shlex
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from nixlog.cli import app
from nixlog.config import RegisterConfig
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorServer, build_simulator_context
from tests.fixtures_modbus import EXAMPLE_PINNED, pinned_context

runner = CliRunner()


def _clean(result: object) -> None:
    output = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    assert "Traceback" not in output


def nixlog(command: str) -> Result:
    """``nixlog COMMAND`` as a technician types it, through the CLI runner; never a traceback."""
    result = runner.invoke(app, shlex.split(command))
    _clean(result)
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _writable(start: Callable[..., SimulatorServer]) -> SimulatorServer:
    context = build_simulator_context(EXAMPLE_REGISTERS, writable=True)
    for name, value in EXAMPLE_PINNED.items():
        context.pin(name, value)
    return start(context)


def test_read_float_without_config(tcp_simulator: SimulatorServer) -> None:
    """`read --type float32 --count 3` decodes three voltages with raw words, exit 0."""
    result = nixlog(
        f"read --port {tcp_simulator.address} --kind input --address 0 --count 3 --type float32"
    )
    assert result.exit_code == 0, result.stderr
    assert "230.5" in result.stdout and "231.1" in result.stdout and "229.75" in result.stdout
    assert "0x4366 0x8000" in result.stdout  # 230.5 as ABCD words
    assert result.stderr == ""


def test_read_json_byte_order_and_scale(tcp_simulator: SimulatorServer) -> None:
    """--json gives one record; CDAB int32 reads -1234 and --scale applies to uint16."""
    result = nixlog(
        f"read --port {tcp_simulator.address} --kind input --address 12 --type int32 "
        "--byte-order CDAB --json"
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["values"][0]["value"] == -1234 and record["byte_order"] == "CDAB"
    scaled = nixlog(
        f"read --port {tcp_simulator.address} --kind input --address 20 --scale 0.01 --json"
    )
    assert json.loads(scaled.stdout)["values"][0]["value"] == 50.01


def test_read_string_and_coil(start_simulator: Callable[..., SimulatorServer]) -> None:
    """A string of 4 registers reads as one text; a coil reads as 1."""
    registers = (
        RegisterConfig("model", 40, type="string", length=4),
        RegisterConfig("breaker", 3, kind="coil", type="bool"),
    )
    sim = start_simulator(pinned_context(registers, {"model": "PM-12", "breaker": True}))
    text = nixlog(f"read --port {sim.address} -r 40 --count 4 --type string")
    assert text.exit_code == 0, text.stderr
    assert "PM-12" in text.stdout
    coil = nixlog(f"read --port {sim.address} --kind coil -r 3")
    assert coil.exit_code == 0, coil.stderr
    assert "3" in coil.stdout and "true" in coil.stdout


def test_read_watch_prints_one_block_per_cycle(tcp_simulator: SimulatorServer) -> None:
    """--cycles 3 off a terminal prints three blocks (three timestamps), not only the last."""
    result = nixlog(
        f"read --port {tcp_simulator.address} --kind input -r 20 --cycles 3 --interval 0.05"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("unit 1 input uint16 ABCD") == 3
    assert result.stdout.count("5001") == 3


def test_read_exception_is_exit_1(tcp_simulator: SimulatorServer) -> None:
    """An address the device refuses: exit 1 and one Error line naming the exception."""
    result = nixlog(f"read --port {tcp_simulator.address} -r 900")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: unit 1 holding 900: exception 2 (illegal data address)"
    )


def test_read_silent_unit_is_exit_69(tcp_simulator: SimulatorServer) -> None:
    """A unit that never answers: exit 69 with the timeout and tries, like `poll`."""
    result = nixlog(f"read --port {tcp_simulator.address} --unit 9 --timeout 0.2")
    assert result.exit_code == 69
    assert "no answer from unit 9" in result.stderr
    assert "timeout (0.2 s × 2 tries)" in result.stderr


def test_read_refused_port_is_exit_69() -> None:
    """Nothing listening: exit 69, one line naming the address."""
    port = _free_port()
    result = nixlog(f"read --port tcp://127.0.0.1:{port}")
    assert result.exit_code == 69
    assert result.stderr.startswith("Error: cannot connect to tcp://127.0.0.1:")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--kind", "registers"], "--kind"),
        (["--type", "float"], "--type"),
        (["--type", "float32", "--count", "70"], "do not fit in one request"),
        (["--byte-order", "CDAB"], "16-bit"),
        ([], "no port"),
    ],
)
def test_read_bad_options_are_usage_errors(args: list[str], needle: str) -> None:
    """Bad options exit 2 with one Error line, before any port is opened."""
    port = [] if not args else ["--port", "tcp://127.0.0.1:1"]
    result = runner.invoke(app, ["read", *port, *args])
    _clean(result)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and needle in result.stderr


def test_write_refuses_without_yes(start_simulator: Callable[..., SimulatorServer]) -> None:
    """Without --yes nothing is sent: exit 2, the line says what would be written."""
    sim = _writable(start_simulator)
    before = sim.context.request_count()
    result = nixlog(f"write --port {sim.address} -r 111 --value 7")
    assert result.exit_code == 2
    assert "add --yes" in result.stderr and "unit 1 holding 111" in result.stderr
    assert sim.context.request_count() == before


def test_write_register_and_read_back(start_simulator: Callable[..., SimulatorServer]) -> None:
    """--yes writes one register (FC 6) and prints the value read back; read sees it too."""
    sim = _writable(start_simulator)
    result = nixlog(f"write --port {sim.address} -r 111 --value 7 --yes")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "Wrote 7 to unit 1 holding 111; reads back 7."
    assert (1, 6, 111, 1) in sim.context.requests


def test_write_float_and_coil(start_simulator: Callable[..., SimulatorServer]) -> None:
    """A float32 goes out as one FC 16 of two words; a coil as FC 5, and both read back."""
    sim = _writable(start_simulator)
    result = nixlog(f"write --port {sim.address} -r 100 --type float32 --value 21.5 --yes")
    assert result.exit_code == 0, result.stderr
    assert "reads back 21.5" in result.stdout
    assert (1, 16, 100, 2) in sim.context.requests
    coil = nixlog(f"write --port {sim.address} --kind coil --value off --yes")
    assert coil.exit_code == 0, coil.stderr
    assert "reads back false" in coil.stdout


def test_write_refused_by_device(tcp_simulator: SimulatorServer) -> None:
    """A read-only device answers exception 1: exit 1, the line says it refused the write."""
    result = nixlog(f"write --port {tcp_simulator.address} -r 111 --value 1 --yes")
    assert result.exit_code == 1
    assert "refused the write: exception 1 (illegal function)" in result.stderr


def test_write_input_register_is_a_usage_error() -> None:
    """Input registers cannot be written: exit 2 before anything is sent."""
    result = nixlog("write --port tcp://127.0.0.1:1 --kind input --value 1 --yes")
    assert result.exit_code == 2
    assert "only holding registers and coils" in result.stderr


def test_read_and_write_over_rtu(
    start_simulator: Callable[..., SimulatorServer], pty_pair: tuple[str, str]
) -> None:
    """The same commands over a serial line (socat pty): write FC 6, read it back."""
    server_end, client_end = pty_pair
    context = build_simulator_context(EXAMPLE_REGISTERS, writable=True)
    start_simulator(context, port=server_end)
    wrote = nixlog(f"write --port {client_end} -r 110 --value -5 --type int16 --yes")
    assert wrote.exit_code == 0, wrote.stderr
    read = nixlog(f"read --port {client_end} -r 110 --type int16")
    assert read.exit_code == 0, read.stderr
    assert "0xFFFB" in read.stdout and "-5" in read.stdout


class RawTcpDevice:
    """A raw-socket Modbus TCP device whose answer PDU to each request PDU is ``answer(pdu)``
    (None: stay silent); reads of holding registers answer with the address as value."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        import threading

        self.answer = answer
        self.pdus: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.address = f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import struct

        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            conn.settimeout(0.1)
            with conn:
                buffer = b""
                while not self._stop.is_set():
                    try:
                        chunk = conn.recv(512)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not chunk:
                        break
                    buffer += chunk
                    while len(buffer) >= 7:
                        transaction, _, length, unit = struct.unpack(">HHHB", buffer[:7])
                        if len(buffer) < 6 + length:
                            break
                        pdu, buffer = buffer[7 : 6 + length], buffer[6 + length :]
                        self.pdus.append(pdu)
                        reply = self.answer(pdu)
                        if reply is not None:
                            header = struct.pack(">HHHB", transaction, 0, len(reply) + 1, unit)
                            conn.sendall(header + reply)

    def stop(self) -> None:
        """Stop serving."""
        self._stop.set()
        self._thread.join(5)
        self._server.close()


def _meter_without_identification(pdu: bytes) -> bytes | None:
    """Reads answer (value = address); FC 43 answers exception 1; writes echo wrongly."""
    import struct

    if pdu[0] == 3:
        start, count = struct.unpack(">HH", pdu[1:5])
        return bytes([3, 2 * count]) + b"".join(
            (start + i).to_bytes(2, "big") for i in range(count)
        )
    if pdu[0] == 0x2B:
        return bytes([0xAB, 1])
    if pdu[0] == 6:
        return pdu[:3] + b"\x00\x00"  # an echo of another value: not the write asked for
    return bytes([pdu[0] | 0x80, 1])


@pytest.fixture
def raw_meter() -> Iterator[RawTcpDevice]:
    """A meter that does not offer FC 43/14 and garbles its write echo."""
    device = RawTcpDevice(_meter_without_identification)
    yield device
    device.stop()


def test_identify_on_a_device_without_it(raw_meter: RawTcpDevice, tmp_path: Path) -> None:
    """--identify on a meter that answers exception 1: the scan goes on, one line says so."""
    result = runner.invoke(
        app,
        [
            "scan-registers",
            "--port",
            raw_meter.address,
            "--units",
            "1",
            "--count",
            "4",
            "--identify",
        ],
        env={"NIXLOG_CONFIG": ""},
    )
    _clean(result)
    assert result.exit_code == 0, result.stderr
    assert "Unit 1: no device identification (exception 1 (illegal function))" in result.stdout
    assert bytes([0x2B, 0x0E, 1, 0]) in raw_meter.pdus


def test_write_with_a_wrong_echo_is_not_confirmed(raw_meter: RawTcpDevice) -> None:
    """An answer that does not echo the write: exit 69, "may or may not have been done",
    and the write was sent once (never retried)."""
    result = nixlog(f"write --port {raw_meter.address} -r 5 --value 9 --yes")
    assert result.exit_code == 69
    assert "write not confirmed (write answer does not echo the request)" in result.stderr
    assert "may or may not have been done" in result.stderr
    assert [pdu for pdu in raw_meter.pdus if pdu[0] == 6] == [bytes([6, 0, 5, 0, 9])]
