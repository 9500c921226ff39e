"""A real InfluxDB 1.x (``influxd``) on 127.0.0.1, its config and data in tmp_path."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_mqtt import free_port

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"


class Influx:
    """``influxd`` with HTTP on a free local port; ``query`` runs InfluxQL over HTTP."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        config = directory / "influxdb.conf"
        config.write_text(
            f"""reporting-enabled = false
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{directory}/meta"
[data]
  dir = "{directory}/data"
  wal-dir = "{directory}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  pprof-enabled = false
"""
        )
        self._log = (directory / "influxd.log").open("ab")
        self.process = subprocess.Popen(
            [INFLUXD, "-config", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        """The HTTP base URL (what ``api.endpoint`` is for the influx format)."""
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for ``/ping`` to answer 204 (influxd takes a few seconds to start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                    if answer.status == 204:
                        return
            except OSError:
                time.sleep(0.1)
        log = (self.directory / "influxd.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"influxd did not start: {log}")

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL; the JSON answer, times as integer nanoseconds."""
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=30) as answer:
            document: dict[str, Any] = json.loads(answer.read())
        return document

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """The points of a SELECT as dicts of column -> value."""
        result = self.query(q, db)["results"][0]
        rows: list[dict[str, Any]] = []
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(dict(zip(series["columns"], values, strict=True)))
        return rows

    def stop(self) -> None:
        """Stop influxd."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[Influx]:
    """A started InfluxDB 1.x with a database ``plant``."""
    if not Path(INFLUXD).exists():
        pytest.fail("influxd is not installed (apt-get install influxdb)")
    server = Influx(tmp_path / "influx")
    try:
        server.wait_ready()
        server.query("CREATE DATABASE plant")
        yield server
    finally:
        server.stop()
