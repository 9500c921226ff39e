"""``nixlog demo``: the whole conveyor belt on one machine, with no hardware and no network.

A small plant: two simulated power meters on one RTU line (a socat pty pair when socat is
installed, else the same two units behind one loopback TCP port) and a simulated PLC over
Modbus TCP, a local HTTP receiver, and the real daemon (the same ``Daemon`` the service
runs, one poll thread per bus) on a temporary database, from a config file written into
the demo's directory. The CLI draws the dashboard; this module only sets the rig up,
reports, and tears it down.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from nixlog import core, database
from nixlog.api_client import ApiClient
from nixlog.config import Config, RegisterConfig, load_config
from nixlog.daemon import Daemon, DaemonStatus
from nixlog.database import DbStats
from nixlog.errors import DeviceError
from nixlog.receiver import Receiver
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorServer, build_simulator_context

DEMO_DEVICE_ID = "demo-logger"
METER_REGISTERS: tuple[RegisterConfig, ...] = EXAMPLE_REGISTERS[:7]
"""The meters' profile: voltages, current, power, frequency, energy (the example map's)."""
PLC_REGISTERS: tuple[RegisterConfig, ...] = EXAMPLE_REGISTERS[7:]
"""The PLC's own registers: temperature (by exception), status word and flags, breaker, door."""


class PtyPair:
    """Two linked pseudo-terminals from socat, standing in for an RS-485 adapter and a line.

    ``start()`` raises ``DeviceError`` when socat is missing or does not make the pair.
    """

    def __init__(self, directory: Path) -> None:
        self.server_end = directory / "ttyS-sim"
        self.client_end = directory / "ttyS-nixlog"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PtyPair:
        """Create both ptys; return once their links exist."""
        socat = shutil.which("socat")
        if socat is None:
            raise DeviceError("socat is not installed")
        self.process = subprocess.Popen(
            [
                socat,
                f"pty,raw,echo=0,link={self.server_end}",
                f"pty,raw,echo=0,link={self.client_end}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (self.server_end.exists() and self.client_end.exists()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise DeviceError("socat did not create the pty pair")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """End socat (both ptys vanish)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def registers_toml(registers: Sequence[RegisterConfig], **extra: dict[str, object]) -> str:
    """An inline-table register list (``extra[name]`` adds keys to that register)."""
    defaults = RegisterConfig("x", 0)
    lines = []
    for register in registers:
        keys: dict[str, object] = {"name": register.name, "address": register.address}
        for key in ("kind", "type", "byte_order", "scale", "offset", "length", "bit", "units"):
            value = getattr(register, key)
            if value is not None and value != getattr(defaults, key):
                keys[key] = value
        keys.update(extra.get(register.name, {}))
        inner = ", ".join(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append(f"  {{{inner}}},")
    return "[\n" + "\n".join(lines) + "\n]"


@dataclass(frozen=True)
class DemoSummary:
    """What the demo shows at the end: the daemon's counters, the database, the receiver."""

    status: DaemonStatus
    stats: DbStats
    received: int
    duplicates: int


class DemoRig:
    """Simulators + receiver + daemon on a temporary database; a context manager.

    The meters poll every ``meter_interval_sec`` (their energy counter every 5 s), the PLC
    every second with its temperature stored by exception; short flush/publish intervals make
    a 20-second demo show every station at work. ``serial`` False (or no socat) puts the
    meters behind a TCP port instead of the pty line.
    """

    def __init__(
        self,
        meter_interval_sec: float = 0.2,
        workdir: Path | None = None,
        *,
        serial: bool = True,
    ) -> None:
        self.meter_interval_sec = meter_interval_sec
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="nixlog-demo-")) if workdir is None else workdir
        self.pty: PtyPair | None = None
        if serial:
            try:
                self.pty = PtyPair(self.workdir).start()
            except DeviceError:
                self.pty = None  # no socat: the meters answer over TCP instead
        meters = tuple(
            replace(register, unit_id=unit) for unit in (1, 2) for register in METER_REGISTERS
        )
        line = str(self.pty.server_end) if self.pty is not None else "tcp://127.0.0.1:0"
        self.line = SimulatorServer(line, build_simulator_context(meters))
        self.plc = SimulatorServer("tcp://127.0.0.1:0", build_simulator_context(PLC_REGISTERS))
        self.simulator = self.plc  # the demo's other callers knew one simulator
        self.api_key = secrets.token_urlsafe(24)
        self.receiver = Receiver(self.api_key, keep_readings=False)
        self.daemon: Daemon | None = None
        self.config: Config | None = None

    @property
    def line_port(self) -> str:
        """Where nixlog reads the meters: the pty's client end, or the TCP fallback."""
        return str(self.pty.client_end) if self.pty is not None else self.line.address

    def config_text(self) -> str:
        """The demo's config file (written beside its database, so it can be looked at)."""
        meters = registers_toml(METER_REGISTERS, energy_total={"interval_sec": 5})
        plc = registers_toml(
            PLC_REGISTERS, temperature={"deadband": 0.5, "heartbeat_sec": 10}
        )
        return f"""# The nixlog demo plant: two meters on one line, a PLC over Modbus TCP.
[device]
id = "{DEMO_DEVICE_ID}"

[database]
path = "datalog.db"
storage_limit_gb = 0.0
flush_interval_sec = 1.0
batch_size = 10

[[bus]]
name = "rs485"
port = "{self.line_port}"
baudrate = 115200
timeout_sec = 0.5

[[bus.device]]
name = "meter1"
unit_id = 1
profile = "power-meter"
poll_interval_sec = {self.meter_interval_sec}

[[bus.device]]
name = "meter2"
unit_id = 2
profile = "power-meter"
poll_interval_sec = {self.meter_interval_sec}

[[bus]]
name = "plc"
port = "{self.plc.address}"
timeout_sec = 0.5

[[bus.device]]
name = "plc"
unit_id = 1
poll_interval_sec = 1.0
registers = {plc}

[profile.power-meter]
registers = {meters}

[api]
endpoint = "{self.receiver.url}"
api_key = "{self.api_key}"
publish_interval_sec = 2.0
batch_size = 500
timeout_sec = 5.0
"""

    def start(self) -> Daemon:
        """Start the simulators, the receiver and the daemon; return the daemon."""
        self.line.start()
        self.plc.start()
        self.receiver.start()
        path = self.workdir / "demo-config.toml"
        path.write_text(self.config_text(), encoding="utf-8")
        path.chmod(0o600)
        self.config = load_config(path, env={})
        self.daemon = Daemon(self.config)
        self.daemon.start()
        return self.daemon

    def finish(self) -> DemoSummary:
        """Stop the daemon cleanly (last batch written and shipped), then summarise."""
        assert self.daemon is not None and self.config is not None
        self.daemon.request_stop()
        self.daemon.join(timeout=15)
        conn = database.open_db(self.config.database.path)
        try:
            # The daemon writes its last partial batch on the way out; ship it too, so the
            # receiver's count can be compared with everything that was polled.
            api = self.config.require_api()
            with ApiClient(api, self.daemon.device_id, database.get_epoch(conn)) as client:
                core.publish_pending(conn, client, batch_size=api.batch_size)
            stats = database.stats(conn)
        finally:
            database.close(conn)
        received = self.receiver.stats
        return DemoSummary(
            status=self.daemon.status(),
            stats=stats,
            received=received.unique,
            duplicates=received.duplicates,
        )

    def close(self) -> None:
        """Stop everything still running and remove the temporary database."""
        if self.daemon is not None and self.daemon.running:
            self.daemon.request_stop()
            self.daemon.join(timeout=15)
        self.receiver.stop()
        self.line.stop()
        self.plc.stop()
        if self.pty is not None:
            self.pty.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DemoRig:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
