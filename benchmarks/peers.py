"""Peer reference: nixlog's daemon beside modbus2mqtt, modbus4mqtt and Node-RED, measured alike.

Issue 17 wants nixlog's daemon cost next to the peers' as a documented reference. This script
installs the peers in a scratch directory outside the repository (``--workdir``, default
``~/.cache/nixlog-bench-peers``; skipped when already there), starts one ``nixlog simulate``
(the example map, Modbus TCP on a free loopback port) and one local mosquitto, and runs each
contender in turn, back to back, one at a time: same device, same 12-register map (as close as
each peer's config allows), 10 Hz (or the closest a peer supports), publishing to the broker.

For each contender, after the first reading message arrives plus ``--warmup`` seconds, for
``--seconds``: resident memory (VmRSS of the process and any children) at the end, and CPU per
reading = utime+stime (all threads, children included) between two message arrivals ÷ the
readings those messages carried after the first of them. A reading is one poll of the whole
map, counted on the consumer side by a subscriber to the broker and converted from each peer's
message shape (one message per register, per block, per poll or per batch of polls).

    .venv/bin/python benchmarks/peers.py [--seconds 60] [--warmup 10] [--only nixlog,node-red]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.daemon_cost import daemon_command
from benchmarks.report import machine
from benchmarks.rig import CLOCK_TICKS, REPO, example_config, free_port, nixlog_env
from benchmarks.rig import simulator_process as start_simulator
from nixlog import __version__ as NIXLOG_VERSION
from nixlog.config import RegisterConfig, parse_tcp_address
from nixlog.registers import ReadRequest, plan_requests
from nixlog.simulator import EXAMPLE_REGISTERS
from tests.fixtures_mqtt import MOSQUITTO, Broker, Subscriber

DEFAULT_WORKDIR = Path.home() / ".cache" / "nixlog-bench-peers"
POLL_RATE_HZ = 10.0
CONTENDERS = ("nixlog", "modbus2mqtt", "modbus4mqtt", "node-red")

MODBUS2MQTT_REQUIREMENTS = ("modbus2mqtt==0.73", "pymodbus<3.10")
"""modbus2mqtt 0.73 pins no pymodbus version but calls ``read_*(..., slave=N)``, a keyword
pymodbus 3.10 renamed to ``device_id``: with today's pymodbus every poll fails."""
MODBUS4MQTT_REQUIREMENTS = ("modbus4mqtt==0.7.1",)
"""It pins pymodbus <3 and paho-mqtt <2 itself."""
NODE_RED_PACKAGES = ("node-red@4.1.15", "node-red-contrib-modbus@5.23.3")
"""Node-RED 5 needs Node.js >= 22.9 (the machine measured had 20), so the newest 4.x. The
newest node-red-contrib-modbus releases (5.45.2, 5.60.2) fetch their modbus-serial fork from
dl.cloudsmith.io, not from the npm registry, which a machine with only the registry cannot
reach; 5.23.3 is the newest release the registry offered whose dependencies all come from it."""

FIRST_MESSAGE_TIMEOUT_SEC = 120.0
"""Node-RED on a busy 2-core machine takes a while to load its palette and flows."""
SAMPLE_EVERY_SEC = 0.5
"""At most one /proc sample per this many seconds: a peer sending 100 messages/s must not
have the measuring process read /proc 100 times a second (it shares the 2 cores)."""
STOP_TIMEOUT_SEC = 30.0
INSTALL_TIMEOUT_SEC = 900.0


class PeerUnavailable(Exception):
    """A contender could not be installed or started; the message says why (one row)."""


# --------------------------------------------------------------------------- the map, per peer


def map_blocks(registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS) -> list[ReadRequest]:
    """nixlog's own read plan of the map: the blocks every peer is told to read where it can
    (holding 100x12, input 0x21, coil 0x1, discrete 0x1 for the example map)."""
    return plan_requests(registers)


MODBUS2MQTT_TABLES = {
    "holding": "holding_register",
    "input": "input_register",
    "coil": "coil",
    "discrete": "input_status",
}


def modbus2mqtt_type(register: RegisterConfig) -> str:
    """The modbus2mqtt data type closest to ``register``.

    modbus2mqtt's word-order names are inverted against the usual reading: its ``float32LE``
    and ``int32LE`` take the high word first (ABCD), ``...BE`` the low word first (CDAB). It
    has no 64-bit type (a list of four raw words instead, unscaled) and no bit of a register
    (the whole word).
    """
    if register.kind in ("coil", "discrete"):
        return "bool"
    if register.type == "bool":
        return "uint16"
    if register.type in ("int16", "uint16"):
        return register.type
    if register.type in ("float32", "int32", "uint32"):
        if register.byte_order == "ABCD":
            return f"{register.type}LE"
        if register.byte_order == "CDAB":
            return f"{register.type}BE"
    if register.type in ("int64", "uint64"):
        return "list-uint16-4"
    raise ValueError(f"modbus2mqtt has no type for {register.name} ({register.type})")


def modbus2mqtt_config(
    registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS, rate_hz: float = POLL_RATE_HZ
) -> str:
    """The CSV config: one poller per block of ``map_blocks`` at ``rate_hz``, one reference per
    register (all on the device ``meter``)."""
    lines = ["type,topic,col2,col3,col4,col5,col6"]
    for block in map_blocks(registers):
        table = MODBUS2MQTT_TABLES[block.kind]
        lines.append(
            f"poll,meter,{block.unit_id},{block.start},{block.count},{table},{1 / rate_hz:g}"
        )
        for register in block.registers:
            data_type = modbus2mqtt_type(register)
            # A list of raw words cannot be scaled: modbus2mqtt would fail the whole block.
            raw = data_type.startswith("list-") or register.scale == 1.0
            scale = "" if raw else f"{register.scale:g}"
            lines.append(f"ref,{register.name},{register.address},r,{data_type},{scale}")
    return "\n".join(lines) + "\n"


MODBUS4MQTT_TABLES = ("holding", "input")
MODBUS4MQTT_MAX_BATCHING = 100


def modbus4mqtt_registers(
    registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS,
) -> list[dict[str, Any]]:
    """modbus4mqtt's register list: holding and input only (it reads no coils or discrete
    inputs), no float type (float32 read as uint32, the raw bits), one word order for the
    device (CDAB read as high word first), a bit as a mask. All registers share the topic
    ``meter`` through ``json_key``: one JSON message per poll, sent even when unchanged."""
    entries: list[dict[str, Any]] = []
    for register in registers:
        if register.kind not in MODBUS4MQTT_TABLES:
            continue
        entry: dict[str, Any] = {
            "pub_topic": "meter",
            "json_key": register.name,
            "table": register.kind,
            "address": register.address,
            "pub_only_on_change": False,
        }
        if register.type == "bool":
            entry["type"] = "uint16"
            entry["mask"] = 1 << (register.bit or 0)
        elif register.type == "float32":
            entry["type"] = "uint32"
        elif register.type in ("int16", "uint16", "int32", "uint32", "int64", "uint64"):
            entry["type"] = register.type
        else:
            raise ValueError(f"modbus4mqtt has no type for {register.name} ({register.type})")
        if register.scale != 1.0:
            entry["scale"] = register.scale
        entries.append(entry)
    return entries


def _width(type_name: str) -> int:
    return {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4}[type_name]


def modbus4mqtt_reads(entries: Sequence[dict[str, Any]], batching: int) -> list[tuple[str, int]]:
    """(table, start) of the reads modbus4mqtt makes per poll: it reads ``batching`` registers
    from every multiple of ``batching`` that holds a wanted address (its own grouping)."""
    groups: set[tuple[str, int]] = set()
    for entry in entries:
        for address in range(entry["address"], entry["address"] + _width(entry["type"])):
            groups.add((entry["table"], address - address % batching))
    return sorted(groups)


def modbus4mqtt_batching(entries: Sequence[dict[str, Any]]) -> int:
    """The largest ``scan_batching`` whose aligned reads stay inside the registers the device
    serves (the simulator, like most meters, refuses a read past a table's last register)."""
    ends: dict[str, int] = {}
    for entry in entries:
        end = entry["address"] + _width(entry["type"])
        ends[entry["table"]] = max(ends.get(entry["table"], 0), end)
    for batching in range(MODBUS4MQTT_MAX_BATCHING, 0, -1):
        reads = modbus4mqtt_reads(entries, batching)
        if all(start + batching <= ends[table] for table, start in reads):
            return batching
    raise ValueError("no scan_batching fits the map")


def modbus4mqtt_config(
    host: str, port: int, registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS
) -> str:
    """The YAML config (JSON is YAML): ``update_rate: 0``, see ``modbus4mqtt_note``."""
    entries = modbus4mqtt_registers(registers)
    config = {
        "ip": host,
        "port": port,
        # Seconds slept after each poll; the peer also sleeps 50 ms after every read (hard
        # coded), which alone caps it below 10 Hz, so 0 is the closest it gets.
        "update_rate": 0,
        "scan_batching": modbus4mqtt_batching(entries),
        "word_order": "highlow",
        "registers": entries,
    }
    return json.dumps(config, indent=1) + "\n"


NODE_RED_DATA_TYPES = {
    "holding": "HoldingRegister",
    "input": "InputRegister",
    "coil": "Coil",
    "discrete": "Input",
}


def node_red_topic(block: ReadRequest) -> str:
    """The MQTT topic of one block's messages in the Node-RED flow."""
    return f"nodered/{block.kind}_{block.start}"


def node_red_flow(
    modbus_host: str,
    modbus_port: int,
    broker_port: int,
    registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS,
    rate_hz: float = POLL_RATE_HZ,
) -> list[dict[str, Any]]:
    """The flow: one modbus-read node per block of ``map_blocks`` every 1/``rate_hz`` (ms),
    its first output (the register values, undecoded) wired to an mqtt-out node per block."""
    tab = "nixlog-bench"
    flow: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "nixlog peers benchmark"},
        {
            "id": "simulator",
            "type": "modbus-client",
            "name": "nixlog simulate",
            "clienttype": "tcp",
            "bufferCommands": True,
            "stateLogEnabled": False,
            "queueLogEnabled": False,
            "failureLogEnabled": True,
            "tcpHost": modbus_host,
            "tcpPort": str(modbus_port),
            "tcpType": "DEFAULT",
            "serialPort": "/dev/ttyUSB",
            "serialType": "RTU-BUFFERD",
            "serialBaudrate": "9600",
            "serialDatabits": "8",
            "serialStopbits": "1",
            "serialParity": "none",
            "serialConnectionDelay": "100",
            "serialAsciiResponseStartDelimiter": "0x3A",
            "unit_id": 1,
            "commandDelay": 1,
            "clientTimeout": 1000,
            "reconnectOnTimeout": True,
            "reconnectTimeout": 2000,
            "parallelUnitIdsAllowed": True,
        },
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "mosquitto",
            "broker": "127.0.0.1",
            "port": str(broker_port),
            "clientid": "",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
    ]
    for index, block in enumerate(map_blocks(registers)):
        flow += [
            {
                "id": f"read-{index}",
                "type": "modbus-read",
                "z": tab,
                "name": f"{block.kind} {block.start}x{block.count}",
                "topic": "",
                "showStatusActivities": False,
                "logIOActivities": False,
                "showErrors": False,
                "unitid": str(block.unit_id),
                "dataType": NODE_RED_DATA_TYPES[block.kind],
                "adr": str(block.start),
                "quantity": str(block.count),
                "rate": f"{1000 / rate_hz:g}",
                "rateUnit": "ms",
                "delayOnStart": False,
                "startDelayTime": "",
                "server": "simulator",
                "useIOFile": False,
                "ioFile": "",
                "useIOForPayload": False,
                "emptyMsgOnFail": False,
                "x": 150,
                "y": 60 + 60 * index,
                "wires": [[f"out-{index}"], []],
            },
            {
                "id": f"out-{index}",
                "type": "mqtt out",
                "z": tab,
                "name": "",
                "topic": node_red_topic(block),
                "qos": "",
                "retain": "",
                "broker": "broker",
                "x": 450,
                "y": 60 + 60 * index,
                "wires": [],
            },
        ]
    return flow


NIXLOG_TOPIC = "nixlog/bench-logger/readings"


def nixlog_config(modbus_address: str, broker_port: int, database: Path) -> str:
    """The example config with the site lines changed and ``[api]`` replaced by ``[mqtt]``
    (the peers ship to MQTT only; batching and intervals stay the example's and the defaults)."""
    text = example_config(
        {
            '# id = "plant7-logger"': 'id = "bench-logger"',
            'path = "/var/lib/nixlog/datalog.db"': f'path = "{database}"',
            'port = "/dev/ttyUSB0"': f'port = "{modbus_address}"',
            "poll_rate_hz = 10\n": f"poll_rate_hz = {POLL_RATE_HZ:g}\n",
        }
    )
    head, api, _ = text.partition("\n[api]\n")
    if not api:
        raise RuntimeError("examples/config.toml changed: no [api] section")
    return head + f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker_port}"\ntopic = "{NIXLOG_TOPIC}"\n'


# --------------------------------------------------------------------------- message shapes


@dataclass(frozen=True)
class MessageShape:
    """How a contender's messages map to readings (polls of the whole map)."""

    topic_filter: str
    """The subscription."""
    topics: frozenset[str]
    """The topics that carry readings; each must be heard from, or the conversion is off."""
    describe: str
    polls_per_message: float | None
    """Polls one message stands for; None: count the ``readings`` of a nixlog batch."""

    def polls_in(self, topic: str, payload: bytes) -> float:
        """Polls one message stands for (0 for a topic that carries no readings)."""
        if topic not in self.topics:
            return 0.0
        if self.polls_per_message is None:
            return float(len(json.loads(payload)["readings"]))
        return self.polls_per_message


def nixlog_shape() -> MessageShape:
    """One message per shipped batch; its ``readings`` array holds one entry per poll."""
    return MessageShape(
        NIXLOG_TOPIC,
        frozenset({NIXLOG_TOPIC}),
        "one message per batch (~10 s); polls = len(readings) of each message",
        None,
    )


def modbus2mqtt_shape(registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS) -> MessageShape:
    """One retained message per register per poll of its block (``--always-publish``)."""
    count = len(registers)
    return MessageShape(
        "modbus2mqtt/meter/state/+",
        frozenset(f"modbus2mqtt/meter/state/{register.name}" for register in registers),
        f"one message per register per block poll; polls = messages ÷ {count}",
        1.0 / count,
    )


def modbus4mqtt_shape() -> MessageShape:
    """One JSON message per poll (all registers share the topic through ``json_key``)."""
    return MessageShape(
        "modbus4mqtt/#",
        frozenset({"modbus4mqtt/meter"}),
        "one JSON message per poll; polls = messages",
        1.0,
    )


def node_red_shape(registers: Sequence[RegisterConfig] = EXAMPLE_REGISTERS) -> MessageShape:
    """One message per block read (the raw values array)."""
    blocks = map_blocks(registers)
    return MessageShape(
        "nodered/+",
        frozenset(node_red_topic(block) for block in blocks),
        f"one message per block read ({len(blocks)} blocks); polls = messages ÷ {len(blocks)}",
        1.0 / len(blocks),
    )


# --------------------------------------------------------------------------- installing


def _run_logged(command: Sequence[str], log: Path, cwd: Path | None = None) -> None:
    """Run an install step; on failure raise PeerUnavailable with the end of its output."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        try:
            done = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                timeout=INSTALL_TIMEOUT_SEC,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"{command[0]} failed: {exc}") from exc
    if done.returncode != 0:
        tail = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = tail[-1] if tail else ""
        raise PeerUnavailable(f"install failed (exit {done.returncode}): {last} (see {log})")


def install_python_peer(workdir: Path, name: str, requirements: Sequence[str]) -> Path:
    """A venv of its own under ``workdir`` with ``requirements``; reused when already there."""
    venv = workdir / name
    marker = venv / ".nixlog-bench-installed"
    wanted = "\n".join(requirements)
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return venv
    print(f"installing {name} into {venv} ...", file=sys.stderr)
    if venv.exists():
        shutil.rmtree(venv)  # a half-made or outdated venv of our own
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}-install.log"
    log.write_text("", encoding="utf-8")
    _run_logged([sys.executable, "-m", "venv", str(venv)], log)
    _run_logged([str(venv / "bin" / "python"), "-m", "pip", "install", *requirements], log)
    marker.write_text(wanted, encoding="utf-8")
    return venv


def python_versions(venv: Path, distributions: Sequence[str]) -> str:
    """``name version`` of each installed distribution, as the venv's Python sees them."""
    script = (
        "import importlib.metadata as m, sys\n"
        "print(', '.join(f'{d} {m.version(d)}' for d in sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, *distributions],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def install_node_red(workdir: Path) -> Path:
    """Node-RED and node-red-contrib-modbus in ``workdir/node-red``; reused when there."""
    directory = workdir / "node-red"
    marker = directory / ".nixlog-bench-installed"
    wanted = "\n".join(NODE_RED_PACKAGES)
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return directory
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise PeerUnavailable("Node.js and npm are not installed")
    print(f"installing {', '.join(NODE_RED_PACKAGES)} into {directory} ...", file=sys.stderr)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "package.json").write_text(
        json.dumps({"name": "nixlog-bench-node-red", "private": True}) + "\n", encoding="utf-8"
    )
    log = workdir / "node-red-install.log"
    log.write_text("", encoding="utf-8")
    _run_logged(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *NODE_RED_PACKAGES],
        log,
        cwd=directory,
    )
    marker.write_text(wanted, encoding="utf-8")
    return directory


def node_red_versions(directory: Path) -> str:
    """Node-RED, node-red-contrib-modbus and Node.js versions as installed."""

    def version(package: str) -> str:
        manifest = directory / "node_modules" / package / "package.json"
        return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])

    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return (
        f"node-red {version('node-red')}, node-red-contrib-modbus "
        f"{version('node-red-contrib-modbus')}, Node.js {node.stdout.strip().lstrip('v')}"
    )


# --------------------------------------------------------------------------- contenders


@dataclass(frozen=True)
class Contender:
    """One program to measure: how to start it and how to read its messages."""

    name: str
    version: str
    command: list[str]
    shape: MessageShape
    setup: str
    """Its rate and map as configured, for the notes under the table."""
    env: dict[str, str] | None = None
    cwd: Path | None = None


@dataclass(frozen=True)
class Rig:
    """What every contender shares: the simulated device, the broker, a scratch directory."""

    modbus_host: str
    modbus_port: int
    broker_port: int
    scratch: Path
    workdir: Path

    @property
    def modbus_address(self) -> str:
        """``tcp://host:port`` of the simulator."""
        return f"tcp://{self.modbus_host}:{self.modbus_port}"


def prepare_nixlog(rig: Rig) -> Contender:
    """``nixlog daemon`` (the lean service process it execs into) with ``[mqtt]`` only."""
    # Not "nixlog": python -m nixlog, run from the scratch directory, would import that.
    directory = rig.scratch / "nixlog-daemon"
    directory.mkdir()
    config = directory / "config.toml"
    config.write_text(
        nixlog_config(rig.modbus_address, rig.broker_port, directory / "datalog.db"),
        encoding="utf-8",
    )
    config.chmod(0o600)
    blocks = len(map_blocks())
    return Contender(
        name="nixlog",
        version=f"nixlog {NIXLOG_VERSION}",
        command=daemon_command(config),
        shape=nixlog_shape(),
        setup=(
            f"poll_rate_hz = {POLL_RATE_HZ:g}; all 12 registers decoded, {blocks} reads per poll; "
            "stored in SQLite (batch 100) and shipped to MQTT at QoS 1 every 10 s "
            "(batches of up to 500)"
        ),
        env=nixlog_env(),
    )


def prepare_modbus2mqtt(rig: Rig) -> Contender:
    """spicierModbus2mqtt (PyPI ``modbus2mqtt``) from its own venv."""
    venv = install_python_peer(rig.workdir, "modbus2mqtt", MODBUS2MQTT_REQUIREMENTS)
    config = rig.scratch / "modbus2mqtt.csv"
    config.write_text(modbus2mqtt_config(), encoding="utf-8")
    blocks = map_blocks()
    return Contender(
        name="modbus2mqtt",
        version=python_versions(venv, ("modbus2mqtt", "pymodbus", "paho-mqtt")),
        command=[
            str(venv / "bin" / "modbus2mqtt"),
            "--tcp",
            rig.modbus_host,
            "--tcp-port",
            str(rig.modbus_port),
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            str(rig.broker_port),
            "--mqtt-topic",
            "modbus2mqtt/",
            "--config",
            str(config),
            "--always-publish",
            "--verbosity",
            "1",
        ],
        shape=modbus2mqtt_shape(),
        setup=(
            f"{len(blocks)} pollers (the same blocks as nixlog), each every "
            f"{1 / POLL_RATE_HZ:g} s; all 12 registers (float32/int32 by word order; "
            "energy_total as 4 raw words, no 64-bit type; alarm_active as the whole status "
            "word, no bit extraction); --always-publish, QoS 0 retained; its main loop "
            "visits one poller per 10 ms pass and schedules the next poll 0.1 s after the "
            "last one ended, so it may poll below 10 Hz"
        ),
    )


def prepare_modbus4mqtt(rig: Rig) -> Contender:
    """modbus4mqtt from its own venv (pymodbus 2, paho-mqtt 1)."""
    venv = install_python_peer(rig.workdir, "modbus4mqtt", MODBUS4MQTT_REQUIREMENTS)
    config = rig.scratch / "modbus4mqtt.yaml"
    config.write_text(modbus4mqtt_config(rig.modbus_host, rig.modbus_port), encoding="utf-8")
    entries = modbus4mqtt_registers()
    batching = modbus4mqtt_batching(entries)
    reads = len(modbus4mqtt_reads(entries, batching))
    return Contender(
        name="modbus4mqtt",
        version=python_versions(venv, ("modbus4mqtt", "pymodbus", "paho-mqtt")),
        command=[
            str(venv / "bin" / "modbus4mqtt"),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(rig.broker_port),
            "--config",
            str(config),
            "--mqtt_topic_prefix",
            "modbus4mqtt",
        ],
        shape=modbus4mqtt_shape(),
        setup=(
            f"{len(entries)} of the 12 registers (no coils or discrete inputs; float32 as "
            "uint32 raw bits; one word order per device, so power_total's CDAB is read high "
            f"word first; alarm_active as a mask); scan_batching {batching} (the largest whose "
            f"aligned reads the device accepts: {reads} reads per poll); update_rate 0: it "
            "sleeps 50 ms after every read (hard coded), so 10 Hz is out of reach; QoS 0"
        ),
    )


def prepare_node_red(rig: Rig) -> Contender:
    """Node-RED with a modbus-read -> mqtt-out flow; the node process is measured."""
    directory = install_node_red(rig.workdir)
    user_dir = rig.scratch / "node-red-user"
    user_dir.mkdir()
    flow = user_dir / "flows.json"
    flow.write_text(
        json.dumps(node_red_flow(rig.modbus_host, rig.modbus_port, rig.broker_port), indent=1),
        encoding="utf-8",
    )
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable("Node.js is not installed")
    blocks = len(map_blocks())
    return Contender(
        name="node-red",
        version=node_red_versions(directory),
        # red.js directly, so that the measured pid is the node process itself.
        command=[
            node,
            str(directory / "node_modules" / "node-red" / "red.js"),
            "--userDir",
            str(user_dir),
            "--port",
            str(free_port()),
            "-D",
            "uiHost=127.0.0.1",
            str(flow),
        ],
        shape=node_red_shape(),
        setup=(
            f"{blocks} modbus-read nodes (the same blocks as nixlog) every "
            f"{1000 / POLL_RATE_HZ:g} ms -> mqtt out (QoS 0), raw register arrays, nothing "
            "decoded (coil and discrete input included); editor on, as installed"
        ),
    )


PREPARE: dict[str, Callable[[Rig], Contender]] = {
    "nixlog": prepare_nixlog,
    "modbus2mqtt": prepare_modbus2mqtt,
    "modbus4mqtt": prepare_modbus4mqtt,
    "node-red": prepare_node_red,
}


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class TreeSample:
    """CPU seconds (utime+stime, all threads) and VmRSS summed over a process and its children."""

    at: float
    cpu_sec: float
    rss_kb: int
    processes: int


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        return handle.read().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from the parent pid of every process in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def sample_tree(root: int) -> TreeSample:
    """One look at ``root`` and its children; raises OSError if ``root`` itself is gone."""
    at = time.monotonic()
    cpu_ticks = rss_kb = processes = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
            with open(f"/proc/{pid}/status", encoding="ascii") as handle:
                rss = next(
                    (int(line.split()[1]) for line in handle if line.startswith("VmRSS:")), 0
                )
        except OSError:
            if pid == root:
                raise
            continue
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss_kb += rss
        processes += 1
    return TreeSample(at, cpu_ticks / CLOCK_TICKS, rss_kb, processes)


class ReadingCounter(Subscriber):
    """The consumer: counts polls from a contender's messages and samples its process tree at
    message arrivals, so that a window starts and ends on a message (whole batches for nixlog)."""

    def __init__(self, port: int, shape: MessageShape) -> None:
        self.shape = shape
        self.pid: int | None = None
        self.polls = 0.0
        self.topics: Counter[str] = Counter()
        self.samples: list[tuple[TreeSample, float]] = []
        """(sample, polls counted up to and including the message that triggered it)."""
        self.first_message_at: float | None = None
        self.errors: list[str] = []
        super().__init__(port, shape.topic_filter)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            polls = self.shape.polls_in(message.topic, bytes(message.payload))
        except (ValueError, KeyError, TypeError) as exc:
            self.errors.append(f"{message.topic}: {exc}")
            return
        if polls <= 0:
            return  # a status topic, or a message queued for an earlier contender
        now = time.monotonic()
        self.polls += polls
        self.topics[message.topic] += 1
        if self.first_message_at is None:
            self.first_message_at = now
        if self.pid is None or (self.samples and now - self.samples[-1][0].at < SAMPLE_EVERY_SEC):
            return
        with suppress(OSError):  # the contender died; the main loop reports it
            self.samples.append((sample_tree(self.pid), self.polls))


@dataclass
class Result:
    """One contender's figures, or why there are none."""

    name: str
    version: str = ""
    setup: str = ""
    shape: str = ""
    error: str | None = None
    window_sec: float = 0.0
    polls: float = 0.0
    cpu_sec: float = 0.0
    rss_kb: int = 0
    processes: int = 0
    topics: dict[str, int] = field(default_factory=dict)

    @property
    def polls_per_sec(self) -> float:
        """Readings (whole-map polls) per second over the window."""
        return self.polls / self.window_sec

    @property
    def cpu_ms_per_poll(self) -> float:
        """CPU milliseconds per reading over the window."""
        return 1000 * self.cpu_sec / self.polls

    @property
    def rss_mb(self) -> float:
        """Resident memory at the end of the window, MB."""
        return self.rss_kb / 1024


def window_figures(
    samples: Sequence[tuple[TreeSample, float]], start: float, end: float
) -> tuple[float, float, float]:
    """(seconds, polls, CPU seconds) between the first and the last sample inside
    [``start``, ``end``]; the polls of the first sample's message are before the window."""
    inside = [(sample, polls) for sample, polls in samples if start <= sample.at <= end]
    if len(inside) < 2:
        raise PeerUnavailable(
            f"fewer than two message arrivals in the window ({len(inside)}): nothing to measure"
        )
    (first, first_polls), (last, last_polls) = inside[0], inside[-1]
    return last.at - first.at, last_polls - first_polls, last.cpu_sec - first.cpu_sec


@contextmanager
def running(contender: Contender, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The contender in its own session; its whole process group is ended on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            contender.command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=contender.env,
            cwd=contender.cwd or log.parent,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the contender's process group, SIGKILL if it lingers."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT_SEC)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent too
    if process.returncode is None:
        process.wait(5)


def _log_tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) if text else "(no output)"


def measure(contender: Contender, rig: Rig, warmup: float, seconds: float) -> Result:
    """Run ``contender`` until ``warmup`` + ``seconds`` after its first reading message."""
    result = Result(contender.name, contender.version, contender.setup, contender.shape.describe)
    log = rig.scratch / f"{contender.name}.log"
    counter = ReadingCounter(rig.broker_port, contender.shape)
    try:
        with running(contender, log) as process:
            counter.pid = process.pid
            deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT_SEC
            while counter.first_message_at is None:
                if process.poll() is not None:
                    raise PeerUnavailable(f"exited {process.returncode}: {_log_tail(log)}")
                if time.monotonic() > deadline:
                    raise PeerUnavailable(
                        f"no reading message within {FIRST_MESSAGE_TIMEOUT_SEC:g} s: "
                        f"{_log_tail(log)}"
                    )
                time.sleep(0.05)
            start = counter.first_message_at + warmup
            end = start + seconds
            while time.monotonic() < end:
                if process.poll() is not None:
                    raise PeerUnavailable(f"exited {process.returncode}: {_log_tail(log)}")
                time.sleep(0.1)
            final = sample_tree(process.pid)
    finally:
        counter.close()
    result.window_sec, result.polls, result.cpu_sec = window_figures(counter.samples, start, end)
    if result.polls <= 0:
        raise PeerUnavailable("no readings in the window")
    if counter.errors:
        raise PeerUnavailable(
            f"{len(counter.errors)} message(s) not understood, first: {counter.errors[0]}"
        )
    missing = sorted(contender.shape.topics - set(counter.topics))
    if missing:
        raise PeerUnavailable(
            f"nothing published on {', '.join(missing)}, so polls cannot be counted from "
            f"messages: {_log_tail(log)}"
        )
    result.rss_kb, result.processes = final.rss_kb, final.processes
    result.topics = dict(counter.topics)
    return result


# --------------------------------------------------------------------------- the report


def _ratio(value: float, base: float | None) -> str:
    return "—" if base is None or base <= 0 else f"{value / base:.2f}"


def render(results: Sequence[Result]) -> str:
    """The markdown table; a contender that failed gets its reason in the row."""
    base = next((r for r in results if r.name == "nixlog" and r.error is None), None)
    lines = [
        "| contender | version | polls/s | RSS MB | CPU ms/reading | CPU ÷ nixlog | RSS ÷ nixlog |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        if result.error is not None:
            reason = f"**not measured**: {result.error}".replace("|", "/")
            lines.append(f"| {result.name} | {reason} | — | — | — | — | — |")
            continue
        lines.append(
            f"| {result.name} | {result.version} | {result.polls_per_sec:.2f} | "
            f"{result.rss_mb:.1f} | {result.cpu_ms_per_poll:.2f} | "
            f"{_ratio(result.cpu_ms_per_poll, base.cpu_ms_per_poll if base else None)} | "
            f"{_ratio(result.rss_mb, base.rss_mb if base else None)} |"
        )
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> list[str]:
    """One paragraph per contender: configuration, message shape, the window's raw counts."""
    out = []
    for result in results:
        if result.error is not None:
            out.append(f"- **{result.name}**: not measured: {result.error}")
            continue
        counts = sorted(result.topics.values())
        spread = (
            f"{len(counts)} topic(s), {counts[0]}–{counts[-1]} messages each over the run"
            if counts
            else "no topics"
        )
        children = "" if result.processes == 1 else f" ({result.processes} processes)"
        below = (
            f" — below the configured {POLL_RATE_HZ:g} Hz"
            if result.polls_per_sec < 0.95 * POLL_RATE_HZ
            else ""
        )
        out.append(
            f"- **{result.name}**: {result.setup}. Messages: {result.shape}; {spread}. "
            f"Window {result.window_sec:.1f} s, {result.polls:.0f} readings "
            f"({result.polls_per_sec:.2f}/s{below}), {result.cpu_sec:.2f} s CPU, "
            f"RSS {result.rss_mb:.1f} MB{children}."
        )
    return out


def mosquitto_version() -> str:
    """``mosquitto -h`` names its version on the first line."""
    try:
        done = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False)
    except OSError:
        return "mosquitto (version unknown)"
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else "mosquitto"


def repeat_command(args: argparse.Namespace) -> str:
    """The command that repeats this run (the scratch directory is left to its default)."""
    parts = ["python", "benchmarks/peers.py", "--seconds", f"{args.seconds:g}"]
    parts += ["--warmup", f"{args.warmup:g}"]
    if args.only:
        parts += ["--only", args.only]
    return shlex.join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--seconds``, ``--warmup``, ``--only``, ``--workdir``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds after the first message, unmeasured"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(CONTENDERS)}"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where the peers are installed (default {DEFAULT_WORKDIR})",
    )
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in CONTENDERS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(CONTENDERS)})")
    args.contenders = [name for name in CONTENDERS if not wanted or name in wanted]
    args.workdir = args.workdir.expanduser().resolve()
    if args.workdir.is_relative_to(REPO):
        parser.error("--workdir must be outside the repository (the peers' code is not ours)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the contenders back to back and print the table."""
    args = parse_args(argv)
    if not os.path.exists(MOSQUITTO):
        print("Error: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="nixlog-peers-") as tmp, start_simulator() as address:
        scratch = Path(tmp)
        host, port = parse_tcp_address(address)
        broker = Broker(scratch / "broker").start()
        try:
            rig = Rig(host, port, broker.port, scratch, args.workdir)
            for name in args.contenders:
                try:
                    contender = PREPARE[name](rig)
                except Exception as exc:  # one row says why; the other contenders still run
                    results.append(Result(name, error=str(exc)))
                    print(f"{name}: {exc}", file=sys.stderr)
                    continue
                print(
                    f"measuring {name} ({args.warmup:g} s warm-up + {args.seconds:g} s) ...",
                    file=sys.stderr,
                )
                try:
                    results.append(measure(contender, rig, args.warmup, args.seconds))
                except Exception as exc:  # one row says why; the other contenders still run
                    results.append(Result(name, contender.version, contender.setup, error=str(exc)))
                    print(f"{name}: {exc}", file=sys.stderr)
        finally:
            broker.stop()
    print(render(results))
    print()
    print(
        "Each contender alone, back to back in the order above (not interleaved), against one "
        f"`nixlog simulate` (example map, Modbus TCP on loopback) and one local mosquitto; "
        f"{args.warmup:g} s warm-up after the first reading message, then {args.seconds:g} s. "
        "A reading is one poll of the whole map, counted by a subscriber to the broker. "
        "CPU = utime+stime of all threads (children included) between the first and the last "
        "message arrival in the window ÷ the readings in between; RSS = VmRSS at the end. "
        "Ratios are the peer's figure ÷ nixlog's."
    )
    print()
    print("\n".join(notes(results)))
    print()
    print(
        f"Pinned: {', '.join(MODBUS2MQTT_REQUIREMENTS)} (modbus2mqtt calls pymodbus with "
        f"slave=, renamed in 3.10); {', '.join(MODBUS4MQTT_REQUIREMENTS)}; "
        f"{', '.join(NODE_RED_PACKAGES)} (Node-RED 5 needs Node.js >= 22.9; later "
        "node-red-contrib-modbus releases fetch a dependency from dl.cloudsmith.io, outside "
        "the npm registry). Installed in --workdir, outside the repository."
    )
    print(f"Machine: {machine()}; {platform.system()} {platform.release()}; {mosquitto_version()}.")
    print(f"Repeat: `{repeat_command(args)}` (with the project's venv active).")
    return 0 if all(result.error is None for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
