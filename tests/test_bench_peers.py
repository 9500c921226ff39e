"""``benchmarks/peers.py`` without the peers: the configs it writes and how it counts readings."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from benchmarks.peers import (
    NIXLOG_TOPIC,
    PeerUnavailable,
    TreeSample,
    map_blocks,
    modbus2mqtt_config,
    modbus2mqtt_shape,
    modbus4mqtt_batching,
    modbus4mqtt_reads,
    modbus4mqtt_registers,
    modbus4mqtt_shape,
    nixlog_config,
    nixlog_shape,
    node_red_flow,
    node_red_shape,
    window_figures,
)
from nixlog.config import load_config
from nixlog.simulator import EXAMPLE_REGISTERS


def test_nixlog_config_is_the_example_map_shipping_to_mqtt_only(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(nixlog_config("tcp://127.0.0.1:5020", 1883, tmp_path / "d.db"))
    config = load_config(path)
    assert config.api is None
    assert config.mqtt is not None and config.mqtt.port == 1883
    assert config.modbus.poll_rate_hz == 10
    assert config.modbus.registers == EXAMPLE_REGISTERS


def test_modbus2mqtt_polls_nixlogs_blocks_with_every_register() -> None:
    rows = list(csv.DictReader(io.StringIO(modbus2mqtt_config())))
    pollers = [row for row in rows if row["type"] == "poll"]
    assert [(int(p["col3"]), int(p["col4"])) for p in pollers] == [
        (block.start, block.count) for block in map_blocks()
    ]
    assert {float(p["col6"]) for p in pollers} == {0.1}
    references = [row for row in rows if row["type"] == "ref"]
    assert sorted(r["topic"] for r in references) == sorted(r.name for r in EXAMPLE_REGISTERS)
    energy = next(r for r in references if r["topic"] == "energy_total")
    # modbus2mqtt multiplies a list by the scale and fails the whole block: no scale there.
    assert energy["col4"] == "list-uint16-4" and energy["col5"] == ""


def test_modbus4mqtt_reads_stay_inside_what_the_device_serves() -> None:
    entries = modbus4mqtt_registers()
    assert len(entries) == 10  # no coils, no discrete inputs
    batching = modbus4mqtt_batching(entries)
    assert batching == 7
    ends = {"input": 21, "holding": 112}  # the example map's last register ends
    reads = modbus4mqtt_reads(entries, batching)
    assert len(reads) == 5
    assert all(start + batching <= ends[table] for table, start in reads)


def test_node_red_flow_reads_every_block_at_10_hz_into_the_counted_topics() -> None:
    flow = node_red_flow("127.0.0.1", 5020, 1883)
    by_id = {node["id"]: node for node in flow}
    reads = [node for node in flow if node["type"] == "modbus-read"]
    assert len(reads) == len(map_blocks())
    assert {(node["rate"], node["rateUnit"]) for node in reads} == {("100", "ms")}
    topics = {by_id[node["wires"][0][0]]["topic"] for node in reads}
    assert topics == node_red_shape().topics


def test_messages_convert_to_polls_of_the_whole_map() -> None:
    batch = json.dumps({"device_id": "d", "readings": [{"seq": n} for n in range(3)]}).encode()
    assert nixlog_shape().polls_in(NIXLOG_TOPIC, batch) == 3
    assert nixlog_shape().polls_in("nixlog/bench-logger/status", b"online") == 0
    per_register = modbus2mqtt_shape()
    one_poll = sum(per_register.polls_in(topic, b"1") for topic in per_register.topics)
    assert one_poll == pytest.approx(1.0)
    assert per_register.polls_in("modbus2mqtt/meter/connected", b"True") == 0
    assert modbus4mqtt_shape().polls_in("modbus4mqtt/meter", b"{}") == 1
    assert modbus4mqtt_shape().polls_in("modbus4mqtt/modbus4mqtt", b"connected") == 0
    per_block = node_red_shape()
    assert sum(per_block.polls_in(topic, b"[]") for topic in per_block.topics) == 1


def test_the_window_runs_from_the_first_to_the_last_message_inside_it() -> None:
    def at(t: float, cpu: float, polls: float) -> tuple[TreeSample, float]:
        return TreeSample(t, cpu, 1000, 1), polls

    samples = [at(5, 1.0, 50), at(12, 1.5, 120), at(22, 2.5, 220), at(31, 3.5, 310)]
    assert window_figures(samples, 10, 30) == (10, 100, 1.0)
    with pytest.raises(PeerUnavailable):
        window_figures(samples, 10, 20)
