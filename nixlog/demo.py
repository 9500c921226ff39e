"""``nixlog demo``: the whole conveyor belt on one machine, with no hardware and no network.

A simulated power meter on a free loopback port, a local HTTP receiver on another, and the
real daemon (the same ``Daemon`` the service runs) on a temporary database. The CLI draws the
dashboard; this module only sets the rig up, reports, and tears it down.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nixlog import core, database
from nixlog.api_client import ApiClient
from nixlog.config import (
    ApiConfig,
    Config,
    DatabaseConfig,
    DeviceConfig,
    ModbusConfig,
    Secret,
)
from nixlog.daemon import Daemon, DaemonStatus
from nixlog.database import DbStats
from nixlog.receiver import Receiver
from nixlog.simulator import EXAMPLE_REGISTERS, SimulatorServer, build_simulator_context

DEMO_DEVICE_ID = "demo-logger"


@dataclass(frozen=True)
class DemoSummary:
    """What the demo shows at the end: the daemon's counters, the database, the receiver."""

    status: DaemonStatus
    stats: DbStats
    received: int
    duplicates: int


class DemoRig:
    """Simulator + receiver + daemon on a temporary database; a context manager.

    ``poll_rate_hz`` and the short flush/publish intervals make a 20-second demo show every
    station at work: batches written every second, shipped every two.
    """

    def __init__(self, poll_rate_hz: float = 10.0, workdir: Path | None = None) -> None:
        self.poll_rate_hz = poll_rate_hz
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="nixlog-demo-")) if workdir is None else workdir
        self.simulator = SimulatorServer(
            "tcp://127.0.0.1:0", build_simulator_context(EXAMPLE_REGISTERS)
        )
        self.api_key = secrets.token_urlsafe(24)
        self.receiver = Receiver(self.api_key, keep_readings=False)
        self.daemon: Daemon | None = None
        self.config: Config | None = None

    def start(self) -> Daemon:
        """Start the simulator, the receiver and the daemon; return the daemon."""
        self.simulator.start()
        self.receiver.start()
        self.config = Config(
            path=self.workdir / "demo-config.toml",
            device=DeviceConfig(id=DEMO_DEVICE_ID),
            database=DatabaseConfig(
                path=self.workdir / "datalog.db",
                storage_limit_gb=0.0,
                flush_interval_sec=1.0,
            ),
            modbus=ModbusConfig(
                port=self.simulator.address,
                registers=EXAMPLE_REGISTERS,
                poll_rate_hz=self.poll_rate_hz,
                batch_size=10,
                timeout_sec=0.5,
            ),
            api=ApiConfig(
                endpoint=self.receiver.url,
                api_key=Secret(self.api_key),
                publish_interval_sec=2.0,
                batch_size=500,
                timeout_sec=5.0,
            ),
        )
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
        self.simulator.stop()
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
