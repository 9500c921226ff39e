"""Configuration loading: defaults, golden error cases, path resolution and API-key handling."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.config import (
    ENV_API_KEY,
    ENV_CONFIG,
    Config,
    Secret,
    load_config,
    resolve_config_path,
)
from nixlog.errors import EXIT_CONFIG, ConfigError

CASES = Path(__file__).parent / "cases"
REPO = Path(__file__).parent.parent
MINIMAL = """
[modbus]
port = "/dev/ttyUSB0"

[[modbus.registers_to_read]]
name = "v"
address = 0
"""
SECRET_KEY = "sk-live-ThisMustNeverBePrinted-93f1"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env={} if env is None else env)


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_golden_bad_config(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad config in tests/cases exits 78 with exactly its one expected line on stderr."""
    monkeypatch.chdir(CASES / case)
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    expected = (CASES / case / "expected_error.txt").read_text(encoding="utf-8").strip()
    result = CliRunner().invoke(app, ["config", "check", "-c", "config.toml"])
    assert result.exit_code == EXIT_CONFIG, result.output
    assert result.stderr.strip() == f"Error: {expected}"
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_defaults_of_every_key(tmp_path: Path) -> None:
    """A minimal config gets every documented default (examples/config.toml)."""
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.device.id is None
    assert cfg.database.path == Path("/var/lib/nixlog/datalog.db")
    assert cfg.database.storage_limit_gb == 1.0
    assert cfg.database.max_db_mb is None
    assert cfg.database.flush_interval_sec == 10.0
    m = cfg.modbus
    assert (m.port, m.baudrate, m.parity, m.stopbits, m.bytesize) == (
        "/dev/ttyUSB0",
        9600,
        "N",
        1,
        8,
    )
    assert (m.unit_id, m.timeout_sec, m.retries, m.poll_rate_hz, m.batch_size) == (
        1,
        1.0,
        1,
        10.0,
        100,
    )
    assert m.max_registers_per_request == 125
    assert m.request_gap_ms == 0.0
    assert not m.is_tcp
    (reg,) = m.registers
    assert (reg.name, reg.address, reg.kind, reg.type, reg.byte_order) == (
        "v",
        0,
        "holding",
        "uint16",
        "ABCD",
    )
    assert (reg.scale, reg.offset, reg.unit_id, reg.length, reg.bit, reg.units) == (
        1.0,
        0.0,
        1,
        None,
        None,
        None,
    )
    assert cfg.api is None


def test_register_defaults_follow_kind_and_unit(tmp_path: Path) -> None:
    """Coils default to bool; a register inherits modbus.unit_id unless it sets its own."""
    cfg = load_text(
        tmp_path,
        """
[modbus]
port = "tcp://10.0.0.5"
unit_id = 7
[[modbus.registers_to_read]]
name = "breaker"
address = 3
kind = "coil"
[[modbus.registers_to_read]]
name = "other_unit"
address = 0
unit_id = 2
""",
    )
    breaker, other = cfg.modbus.registers
    assert (breaker.type, breaker.unit_id, breaker.count) == ("bool", 7, 1)
    assert other.unit_id == 2
    assert cfg.modbus.is_tcp and cfg.modbus.tcp_address == ("10.0.0.5", 502)


def test_every_key_is_read(tmp_path: Path) -> None:
    """Every key of every section is accepted and lands in its dataclass field."""
    ca = tmp_path / "ca.pem"
    ca.write_text("pem", encoding="utf-8")
    cfg = load_text(
        tmp_path,
        """
[device]
id = "plant7-logger"
[database]
path = "data/x.db"
storage_limit_gb = 0.5
max_db_mb = 64
flush_interval_sec = 3
[modbus]
port = "/dev/ttyAMA0"
baudrate = 19200
parity = "E"
stopbits = 2
bytesize = 7
unit_id = 4
timeout_sec = 0.25
retries = 0
poll_rate_hz = 2.5
batch_size = 50
max_registers_per_request = 60
request_gap_ms = 5
[[modbus.registers_to_read]]
name = "serial"
address = 10
kind = "input"
type = "string"
byte_order = "BADC"
unit_id = 9
length = 4
units = "text"
[[modbus.registers_to_read]]
name = "flag"
address = 20
type = "bool"
bit = 15
[[modbus.registers_to_read]]
name = "energy"
address = 30
type = "float64"
byte_order = "DCBA"
scale = 0.5
offset = -1
[api]
endpoint = "https://api.example.com/v1/data"
api_key = "k"
api_key_header = "X-Api-Key"
publish_interval_sec = 30
batch_size = 250
timeout_sec = 5
gzip = true
ca_file = "ca.pem"
""",
    )
    assert cfg.device.id == "plant7-logger"
    assert cfg.database.path == tmp_path / "data/x.db"
    assert (
        cfg.database.storage_limit_gb,
        cfg.database.max_db_mb,
        cfg.database.flush_interval_sec,
    ) == (0.5, 64.0, 3.0)
    m = cfg.modbus
    assert (m.baudrate, m.parity, m.stopbits, m.bytesize, m.unit_id) == (19200, "E", 2, 7, 4)
    assert (m.timeout_sec, m.retries, m.poll_rate_hz, m.batch_size) == (0.25, 0, 2.5, 50)
    assert (m.max_registers_per_request, m.request_gap_ms) == (60, 5.0)
    serial, flag, energy = m.registers
    assert (serial.type, serial.length, serial.count, serial.unit_id, serial.units) == (
        "string",
        4,
        4,
        9,
        "text",
    )
    assert (flag.bit, flag.unit_id, flag.count) == (15, 4, 1)
    assert (energy.count, energy.scale, energy.offset, energy.byte_order) == (4, 0.5, -1.0, "DCBA")
    api = cfg.require_api()
    assert api.api_key == Secret("k")
    assert (api.api_key_header, api.publish_interval_sec, api.batch_size) == ("X-Api-Key", 30, 250)
    assert (api.timeout_sec, api.gzip, api.ca_file) == (5.0, True, ca)


def test_bits_of_a_status_word_may_share_its_register(tmp_path: Path) -> None:
    """A word and its flag bits may share an address; the same bit twice is refused."""
    base = (
        MINIMAL + '[[modbus.registers_to_read]]\nname = "b3"\naddress = 0\ntype = "bool"\nbit = 3\n'
    )
    assert len(load_text(tmp_path, base).modbus.registers) == 2
    twice = (
        base
        + '[[modbus.registers_to_read]]\nname = "b3again"\naddress = 0\ntype = "bool"\nbit = 3\n'
    )
    with pytest.raises(ConfigError, match=r"registers_to_read\[2\]\.address: .*overlaps \"b3\""):
        load_text(tmp_path, twice)


def test_same_address_on_other_unit_or_kind_is_fine(tmp_path: Path) -> None:
    """Overlap is per unit and kind: address 0 of unit 2 or of the input table is another value."""
    text = (
        MINIMAL
        + """
[[modbus.registers_to_read]]
name = "v_unit2"
address = 0
unit_id = 2
[[modbus.registers_to_read]]
name = "v_input"
address = 0
kind = "input"
"""
    )
    assert len(load_text(tmp_path, text).modbus.registers) == 3


def test_register_running_past_last_address(tmp_path: Path) -> None:
    """A float64 at 65534 would need addresses past 65535 and is refused."""
    text = MINIMAL.replace("address = 0", 'address = 65534\ntype = "float64"')
    with pytest.raises(ConfigError, match="runs past the last address 65535"):
        load_text(tmp_path, text)


def test_missing_file_names_it(tmp_path: Path) -> None:
    """A missing config file exits 78 naming the file."""
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(app, ["config", "check", "-c", str(missing)])
    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.strip() == f"Error: {missing}: file not found"


def test_optional_sections_and_require_api(tmp_path: Path) -> None:
    """[device] and [api] are optional; a command that ships refuses without [api] (78)."""
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"config.toml: api: section missing") as info:
        cfg.require_api()
    assert info.value.exit_code == EXIT_CONFIG


class TestPathResolution:
    """--config, then $NIXLOG_CONFIG, then ./config.toml, then /etc/nixlog/config.toml."""

    def test_option_wins_over_environment(self, tmp_path: Path) -> None:
        """An explicit --config is used even when $NIXLOG_CONFIG is set."""
        chosen = tmp_path / "a.toml"
        assert resolve_config_path(chosen, {ENV_CONFIG: str(tmp_path / "b.toml")}) == chosen

    def test_environment_wins_over_cwd(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$NIXLOG_CONFIG beats ./config.toml."""
        monkeypatch.chdir(tmp_path)
        write(tmp_path, MINIMAL)
        assert resolve_config_path(None, {ENV_CONFIG: "/x/env.toml"}) == Path("/x/env.toml")

    def test_cwd_config(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without option or environment, ./config.toml is used when it exists."""
        monkeypatch.chdir(tmp_path)
        write(tmp_path, MINIMAL)
        assert resolve_config_path(None, {}) == Path("config.toml")

    def test_etc_fallback_and_nothing_found(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """/etc/nixlog/config.toml is last; when nothing exists the error lists where it looked."""
        monkeypatch.chdir(tmp_path)
        if Path("/etc/nixlog/config.toml").exists():
            assert resolve_config_path(None, {}) == Path("/etc/nixlog/config.toml")
            return
        with pytest.raises(ConfigError) as info:
            resolve_config_path(None, {})
        assert str(info.value) == (
            "no config file: pass --config PATH or set $NIXLOG_CONFIG "
            "(looked in config.toml, /etc/nixlog/config.toml)"
        )

    def test_cli_reads_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """`nixlog config check` without -c uses $NIXLOG_CONFIG."""
        path = write(tmp_path, MINIMAL, "from-env.toml")
        monkeypatch.setenv(ENV_CONFIG, str(path))
        result = CliRunner().invoke(app, ["config", "check"])
        assert result.exit_code == 0, result.output
        assert "from-env.toml" in result.stdout


API = MINIMAL + '\n[api]\nendpoint = "https://api.example.com/v1/data"\n'


class TestApiKey:
    """The key comes from api_key, api_key_file or $NIXLOG_API_KEY, and is never shown."""

    def test_inline(self, tmp_path: Path) -> None:
        """api.api_key is used as given."""
        cfg = load_text(tmp_path, API + f'api_key = "{SECRET_KEY}"\n')
        assert cfg.require_api().api_key.reveal() == SECRET_KEY

    def test_file_relative_to_config(self, tmp_path: Path) -> None:
        """api.api_key_file is read (trimmed), relative to the config file's folder."""
        (tmp_path / "key").write_text(SECRET_KEY + "\n", encoding="utf-8")
        cfg = load_text(tmp_path, API + 'api_key_file = "key"\n')
        assert cfg.require_api().api_key.reveal() == SECRET_KEY

    def test_environment(self, tmp_path: Path) -> None:
        """$NIXLOG_API_KEY is used when the config names no key."""
        cfg = load_text(tmp_path, API, env={ENV_API_KEY: SECRET_KEY})
        assert cfg.require_api().api_key.reveal() == SECRET_KEY

    def test_config_wins_over_environment(self, tmp_path: Path) -> None:
        """A key in the config beats the environment."""
        cfg = load_text(tmp_path, API + 'api_key = "from-config"\n', env={ENV_API_KEY: "env"})
        assert cfg.require_api().api_key.reveal() == "from-config"

    def test_empty_key_file(self, tmp_path: Path) -> None:
        """An empty key file is refused, naming the key."""
        (tmp_path / "key").write_text("\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"api\.api_key_file: .*key is empty"):
            load_text(tmp_path, API + 'api_key_file = "key"\n')

    def test_secret_never_renders(self, tmp_path: Path) -> None:
        """repr/str/f-string of the config and its key never contain the key."""
        cfg = load_text(tmp_path, API + f'api_key = "{SECRET_KEY}"\n')
        for text in (
            repr(cfg),
            str(cfg),
            f"{cfg.api}",
            repr(cfg.api),
            str(cfg.require_api().api_key),
        ):
            assert SECRET_KEY not in text

    def test_cli_output_never_shows_key(self, tmp_path: Path) -> None:
        """config check (ok and failing) never prints the key, even with --verbose."""
        good = write(tmp_path, API + f'api_key = "{SECRET_KEY}"\n')
        bad = write(tmp_path, API + f'api_key = "{SECRET_KEY}"\ntimeout_sec = "x"\n', "bad.toml")
        for args in (
            ["config", "check", "-c", str(good)],
            ["--verbose", "config", "check", "-c", str(bad)],
        ):
            result = CliRunner().invoke(app, args)
            assert SECRET_KEY not in result.output
        assert result.exit_code == EXIT_CONFIG

    def test_world_readable_file_with_key_warns(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A key inside a file others can read draws a warning naming the file and the fix."""
        path = write(tmp_path, API + f'api_key = "{SECRET_KEY}"\n')
        path.chmod(0o644)
        with caplog.at_level(logging.WARNING, logger="nixlog.config"):
            load_config(path, env={})
        assert "readable by other users" in caplog.text
        assert "chmod 640" in caplog.text
        assert SECRET_KEY not in caplog.text

    def test_private_file_does_not_warn(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Mode 0600 draws no warning."""
        path = write(tmp_path, API + f'api_key = "{SECRET_KEY}"\n')
        with caplog.at_level(logging.WARNING, logger="nixlog.config"):
            load_config(path, env={})
        assert caplog.text == ""


def test_example_config_is_valid() -> None:
    """examples/config.toml passes `config check` and uses every documented section."""
    result = CliRunner().invoke(app, ["config", "check", "-c", str(REPO / "examples/config.toml")])
    assert result.exit_code == 0, result.output
    cfg = load_config(REPO / "examples/config.toml", env={})
    assert cfg.api is not None and len(cfg.modbus.registers) == 12
    assert os.fspath(cfg.database.path) == "/var/lib/nixlog/datalog.db"


def _big_map(count: int) -> str:
    lines = ['[modbus]\nport = "/dev/ttyUSB0"\n']
    for i in range(count):
        lines.append(
            f'[[modbus.registers_to_read]]\nname = "r{i}"\naddress = {(i * 2) % 65000}\n'
            f'unit_id = {1 + (i * 2) // 65000}\ntype = "float32"\n'
        )
    return "".join(lines)


def test_ten_thousand_register_map_loads_fast(tmp_path: Path) -> None:
    """A 10,000-register map loads in well under a second (the overlap check is not quadratic)."""
    import time

    path = write(tmp_path, _big_map(10_000))
    started = time.perf_counter()
    cfg = load_config(path, env={})
    elapsed = time.perf_counter() - started
    assert len(cfg.modbus.registers) == 10_000
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_overlap_in_a_big_map_names_both_registers(tmp_path: Path) -> None:
    """The sorted overlap check still names the later entry and the one it collides with."""
    text = _big_map(500) + '[[modbus.registers_to_read]]\nname = "late"\naddress = 7\n'
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value) == (
        f"{tmp_path / 'config.toml'}: modbus.registers_to_read[500].address: holding 7-7 of "
        'unit 1 overlaps "r3" (modbus.registers_to_read[3], holding 6-7)'
    )


def test_plain_http_endpoint_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An http:// API off this machine warns once that the key travels in clear text."""
    from nixlog import config as config_module

    config_module._warned_clear_text.clear()
    text = MINIMAL + '[api]\nendpoint = "http://api.example.com/v1"\napi_key = "k"\n'
    with caplog.at_level(logging.WARNING, logger="nixlog.config"):
        load_text(tmp_path, text)
        load_text(tmp_path, text)
        load_text(tmp_path, text.replace("api.example.com", "127.0.0.1:8080"))
        load_text(tmp_path, text.replace("http://", "https://"))
    clear = [r for r in caplog.records if "clear text" in r.getMessage()]
    assert len(clear) == 1
    assert "http://api.example.com/v1" in clear[0].getMessage()


def test_config_check_of_a_device_or_fifo_does_not_hang(tmp_path: Path) -> None:
    """`config check -c /dev/zero` (or a FIFO) is refused at once: only regular files are read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        result = CliRunner().invoke(app, ["config", "check", "-c", path])
        assert result.exit_code == EXIT_CONFIG
        assert result.stderr.strip() == f"Error: {path}: cannot read: not a regular file"


def test_oversized_config_and_key_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config and key files are read up to a size limit, never whole whatever their size."""
    from nixlog import config as config_module

    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 1000)
    big = write(tmp_path, MINIMAL + "#" * 2000 + "\n", "big.toml")
    with pytest.raises(ConfigError, match=r"big.toml: cannot read: larger than 1000 bytes"):
        load_config(big, env={})
    (tmp_path / "key").write_text("k" * (config_module.MAX_KEY_FILE_BYTES + 1), encoding="utf-8")
    text = MINIMAL + '[api]\nendpoint = "https://x.example/v1"\napi_key_file = "key"\n'
    with pytest.raises(ConfigError, match=r"api.api_key_file: cannot read .*larger than"):
        load_text(tmp_path, text)


def test_tcp_port_with_unclosed_bracket_is_one_line(tmp_path: Path) -> None:
    """`tcp://[::1` is a config error naming modbus.port, not a ValueError traceback."""
    with pytest.raises(ConfigError, match=r"modbus.port: expected \"tcp://host:port\""):
        load_text(tmp_path, MINIMAL.replace("/dev/ttyUSB0", "tcp://[::1"))


@pytest.mark.parametrize("key", ["sk-é", "two\nlines", "tab\there", "del\x7f"])
def test_api_key_that_cannot_be_a_header_is_refused_without_showing_it(
    tmp_path: Path, key: str
) -> None:
    """A key from any source must be printable ASCII (an HTTP header); the error hides it."""
    api = MINIMAL + '[api]\nendpoint = "https://x.example/v1"\n'
    (tmp_path / "key").write_text(key, encoding="utf-8")
    sources = [
        (api + f"api_key = {json.dumps(key)}\n", {}),
        (api + 'api_key_file = "key"\n', {}),
        (api, {ENV_API_KEY: key}),
    ]
    for text, env in sources:
        with pytest.raises(ConfigError, match="printable ASCII") as caught:
            load_text(tmp_path, text, env=env)
        assert key.strip() not in str(caught.value)
