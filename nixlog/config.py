"""Configuration: one TOML file loaded once into frozen dataclasses.

Every error names the file and the key path, says what was expected and what was found
(``config.toml: modbus.poll_rate_hz: must be > 0, got -1``). Unknown keys are errors so that
a typo never silently falls back to a default.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from nixlog.errors import ConfigError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ENV_CONFIG: Final = "NIXLOG_CONFIG"
ENV_API_KEY: Final = "NIXLOG_API_KEY"
ENV_MQTT_PASSWORD: Final = "NIXLOG_MQTT_PASSWORD"  # noqa: S105 (a variable name)
API_FORMATS: Final = ("nixlog", "thingsboard", "influx")
MQTT_FORMATS: Final = ("nixlog", "thingsboard")
DEFAULT_CONFIG_PATHS: Final = (Path("config.toml"), Path("/etc/nixlog/config.toml"))

REGISTER_KINDS: Final = ("holding", "input", "coil", "discrete")
BIT_KINDS: Final = frozenset({"coil", "discrete"})
VALUE_TYPES: Final = (
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "bool",
    "string",
)
BYTE_ORDERS: Final = ("ABCD", "CDAB", "BADC", "DCBA")
SIXTEEN_BIT_BYTE_ORDERS: Final = ("ABCD", "BADC")
REGISTERS_PER_TYPE: Final[Mapping[str, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
    "bool": 1,
}
PARITIES: Final = ("N", "E", "O")
MAX_REGISTERS_PER_REQUEST: Final = 125  # Modbus limit for function codes 3 and 4
MAX_STRING_REGISTERS: Final = 125
# A letter first: a name like "-2-3" or "=SUM(A1)" would read as a formula in a spreadsheet.
_NAME_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_DEVICE_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]+$")
# "192.168.1.50:502" or "plc.local:502": a TCP address written without its "tcp://".
_BARE_HOST_PORT_RE: Final = re.compile(r"^\[?[A-Za-z0-9.:-]*[A-Za-z0-9\]]:\d{1,5}$")
MAX_CONFIG_BYTES: Final = 8 * 1024 * 1024
"""A 10,000-register map is about 1 MB; anything far larger is not a config."""
MAX_KEY_FILE_BYTES: Final = 64 * 1024
MAX_PATH_CHARS: Final = 4096  # PATH_MAX on Linux
MAX_NESTING: Final = 16
"""Deepest table/array nesting a config may have (a real one has 3)."""
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call only where it is sent on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DeviceConfig:
    """``[device]``: the logger's identity; ``id`` None means the hardware serial."""

    id: str | None = None


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]``: where readings are buffered and how much disk they may use."""

    path: Path = Path("/var/lib/nixlog/datalog.db")
    storage_limit_gb: float = 1.0
    max_db_mb: float | None = None
    flush_interval_sec: float = 10.0
    batch_size: int | None = None
    """Readings per write in the ``[[bus]]`` form (the flat form has ``modbus.batch_size``)."""


@dataclass(frozen=True)
class RegisterConfig:
    """One ``[[modbus.registers_to_read]]`` entry, with defaults resolved."""

    name: str
    address: int
    kind: str = "holding"
    type: str = "uint16"
    byte_order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit_id: int = 1
    length: int | None = None
    bit: int | None = None
    units: str | None = None
    interval_sec: float | None = None
    """Its own polling interval (a group of its device); None: the device's (flat form: the
    poll rate's) interval."""
    deadband: float | None = None
    """Report by exception: store only when the value moved at least this much (0: changed)."""
    heartbeat_sec: float | None = None
    """Report by exception: store at least this often anyway."""

    @property
    def by_exception(self) -> bool:
        """True when this value is stored only on change (``deadband`` or ``heartbeat_sec``)."""
        return self.deadband is not None or self.heartbeat_sec is not None

    @property
    def count(self) -> int:
        """How many registers (or bits, for coils and discrete inputs) this value occupies."""
        if self.kind in BIT_KINDS:
            return 1
        if self.type == "string":
            assert self.length is not None
            return self.length
        return REGISTERS_PER_TYPE[self.type]

    @property
    def end(self) -> int:
        """One past the last address this value occupies."""
        return self.address + self.count


@dataclass(frozen=True)
class ModbusConfig:
    """``[modbus]``: the bus, its timing and the register map."""

    port: str
    registers: tuple[RegisterConfig, ...]
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    unit_id: int = 1
    timeout_sec: float = 1.0
    retries: int = 1
    poll_rate_hz: float = 10.0
    batch_size: int = 100
    max_registers_per_request: int = MAX_REGISTERS_PER_REQUEST
    request_gap_ms: float = 0.0

    @property
    def is_tcp(self) -> bool:
        """True when ``port`` is a ``tcp://host:port`` address rather than a serial path."""
        return self.port.startswith("tcp://")

    @property
    def is_rtu_over_tcp(self) -> bool:
        """True for ``rtu+tcp://host:port``: RTU frames through a TCP serial server."""
        return self.port.startswith("rtu+tcp://")

    @property
    def is_serial_line(self) -> bool:
        """True when requests travel as RTU frames (a serial path or ``rtu+tcp://``)."""
        return not self.is_tcp

    @property
    def tcp_address(self) -> tuple[str, int]:
        """``(host, port)`` of a ``tcp://`` or ``rtu+tcp://`` port; 502 when no port is given."""
        return parse_tcp_address(self.port)


@dataclass(frozen=True)
class PlantDevice:
    """One ``[[bus.device]]``: a named unit on a bus and its registers, intervals resolved.

    The flat ``[modbus]`` form is one device whose ``name`` is None (its readings carry no
    device) and whose registers may name several units.
    """

    name: str | None
    unit_id: int
    registers: tuple[RegisterConfig, ...]
    poll_interval_sec: float
    profile: str | None = None

    def interval_of(self, register: RegisterConfig) -> float:
        """The interval ``register`` is polled at."""
        return register.interval_sec if register.interval_sec is not None else (
            self.poll_interval_sec
        )


@dataclass(frozen=True)
class BusConfig:
    """One ``[[bus]]``: a line (or TCP peer) with its settings and the devices on it.

    ``link`` carries the port and line settings in the shape the Modbus link takes; its
    ``registers`` are the first device's (they are not polled from there).
    """

    name: str
    link: ModbusConfig
    devices: tuple[PlantDevice, ...]


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: where and how readings are shipped. The key is a ``Secret``."""

    endpoint: str
    api_key: Secret = field(repr=False)
    api_key_header: str = "Authorization"
    publish_interval_sec: float = 60.0
    batch_size: int = 500
    timeout_sec: float = 10.0
    gzip: bool = False
    ca_file: Path | None = None
    format: str = "nixlog"
    """``nixlog`` (the JSON body), ``thingsboard`` (device telemetry) or ``influx`` (line
    protocol: ``influx_db`` for the 1.x API, ``influx_org`` + ``influx_bucket`` for 2.x)."""
    influx_db: str | None = None
    influx_org: str | None = None
    influx_bucket: str | None = None


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: a broker output beside (or instead of) ``[api]``; the password is a Secret."""

    url: str
    host: str
    port: int
    tls: bool
    topic: str = "nixlog/{device_id}/readings"
    status_topic: str = "nixlog/{device_id}/status"
    qos: int = 1
    client_id: str | None = None
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    batch_size: int = 500
    publish_interval_sec: float = 10.0
    timeout_sec: float = 10.0
    keepalive_sec: int = 60
    format: str = "nixlog"


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``path`` is the file it came from.

    ``plant`` holds the ``[[bus]]`` form; empty for the flat ``[modbus]`` form. ``buses``
    gives both forms one shape (the flat form is one bus with one unnamed device), so there is
    one polling code path. In the plant form ``modbus`` is the first bus's settings with its
    first device's registers (for single-link tools such as ``scan-registers``), and its
    ``batch_size`` is ``database.batch_size``.
    """

    path: Path
    modbus: ModbusConfig
    device: DeviceConfig = DeviceConfig()
    database: DatabaseConfig = DatabaseConfig()
    api: ApiConfig | None = None
    mqtt: MqttConfig | None = None
    plant: tuple[BusConfig, ...] = ()

    @property
    def output_names(self) -> tuple[str, ...]:
        """The configured outputs, each with its own cursor: ``api`` and/or ``mqtt``."""
        return tuple(
            name for name, section in (("api", self.api), ("mqtt", self.mqtt)) if section
        )

    @property
    def is_plant(self) -> bool:
        """True for the ``[[bus]]`` form (readings carry a device name)."""
        return bool(self.plant)

    @property
    def buses(self) -> tuple[BusConfig, ...]:
        """Every bus to poll; the flat form as one bus with one unnamed device."""
        if self.plant:
            return self.plant
        modbus = self.modbus
        device = PlantDevice(
            name=None,
            unit_id=modbus.unit_id,
            registers=modbus.registers,
            poll_interval_sec=1.0 / modbus.poll_rate_hz,
        )
        return (BusConfig(name="modbus", link=modbus, devices=(device,)),)

    def devices(self) -> list[PlantDevice]:
        """Every device of every bus, in config order."""
        return [device for bus in self.buses for device in bus.devices]

    def find_device(self, name: str) -> tuple[BusConfig, PlantDevice]:
        """The bus and device called ``name``; ``ConfigError`` naming the known ones."""
        for bus in self.plant:
            for device in bus.devices:
                if device.name == name:
                    return bus, device
        known = [d.name for d in self.devices() if d.name is not None]
        if not known:
            raise ConfigError(f"{self.path}: has no named devices (a [[bus.device]] has a name)")
        hint = did_you_mean(name, known)
        raise ConfigError(
            f'{self.path}: no device "{shorten(name, 80)}"{hint}; devices: {", ".join(known)}'
        )

    def require_api(self) -> ApiConfig:
        """Return ``[api]``, or refuse (exit 78) for a command that ships readings."""
        if self.api is None:
            raise ConfigError(f"{self.path}: api: section missing (this command ships readings)")
        return self.api


def parse_tcp_address(port: str) -> tuple[str, int]:
    """Split ``tcp://host[:port]`` (or ``rtu+tcp://``) into host and port; ``ValueError``
    when malformed."""
    try:
        parts = urlsplit(port)
    except ValueError:  # "tcp://[::1" (an unclosed IPv6 bracket)
        raise ValueError(f'expected "tcp://host:port", got "{shorten(port, 80)}"') from None
    if parts.scheme == "rtu+tcp" and parts.hostname and parts.path in ("", "/"):
        pass
    elif parts.scheme != "tcp" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(
            f'expected "tcp://host:port" or a serial device path, got "{shorten(port, 80)}"'
        )
    try:
        tcp_port = parts.port or 502
    except ValueError as exc:  # port out of range or not a number
        raise ValueError(f'bad TCP port in "{port}"') from exc
    return parts.hostname, tcp_port


def check_port(port: str) -> None:
    """Raise ``ValueError`` (one line) for a ``port`` that is neither tcp:// nor a serial path."""
    if not port.strip():
        raise ValueError("must not be empty")
    if "\0" in port or len(port) > MAX_PATH_CHARS:
        raise ValueError("not a serial device path nor a tcp:// address")
    if "://" in port:
        parse_tcp_address(port)
    elif _BARE_HOST_PORT_RE.match(port) and not port.startswith("/"):
        raise ValueError(
            f'"{port}" looks like a TCP address, not a serial device: write "tcp://{port}"'
        )


def resolve_config_path(option: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Pick the config file: ``--config``, then ``$NIXLOG_CONFIG``, then ./config.toml, then /etc.

    An explicit choice (option or environment) is returned even if missing, so that loading it
    reports the missing file by name; the defaults are used only when they exist.
    """
    env = os.environ if env is None else env
    if option is not None:
        return option
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in DEFAULT_CONFIG_PATHS)
    raise ConfigError(
        f"no config file: pass --config PATH or set ${ENV_CONFIG} (looked in {looked})"
    )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and freeze the config at ``path``.

    Raises ``ConfigError`` whose one-line message names the file and the key path.
    """
    env = os.environ if env is None else env
    try:
        raw_bytes = read_small_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{shorten(path)}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{shorten(path)}: is a directory, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{shorten(path)}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{shorten(path)}: cannot read: {exc}") from None
    try:
        document = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_describe_toml_error(exc)}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(
            f"{path}: invalid TOML: arrays or tables nested too deeply "
            f"(at most {MAX_NESTING} levels)"
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        reason = _first_line(str(exc)).split(";")[0]  # drop Python's advice on sys settings
        raise ConfigError(f"{path}: invalid TOML: {reason}") from None
    _check_nesting(path, document)
    return _build_config(path, document, env)


def read_small_file(path: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes.

    Refuses devices, FIFOs and directories without blocking on them (``/dev/zero`` would
    never end, a FIFO would wait for a writer). Raises ``OSError`` (``IsADirectoryError`` for
    a directory) or ``ValueError`` with a one-line reason.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for files.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"larger than {limit} bytes")
    return b"".join(chunks)


def did_you_mean(name: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean "x"?)`` for the closest of ``known`` to a mistyped ``name``, else ``""``."""
    import difflib  # here, not at the top: only a mistake needs it, and it costs start-up

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=cutoff)
    return f' (did you mean "{close[0]}"?)' if close else ""


def shorten(path: Path | str, keep: int = 120) -> str:
    """A path for an error line: very long ones keep their start and end."""
    text = str(path)
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}…{text[-keep // 2 :]} ({len(text)} characters)"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def _check_nesting(path: Path, document: dict[str, Any]) -> None:
    """Refuse documents nested deeper than ``MAX_NESTING`` (walked without recursion)."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigError(
                f"{path}: arrays or tables nested too deeply (at most {MAX_NESTING} levels)"
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _describe_toml_error(exc: tomllib.TOMLDecodeError) -> str:
    """Turn tomllib's "msg (at line L, column C)" into "line L, column C: invalid TOML: msg"."""
    message = str(exc)
    match = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", message)
    if match:
        what, line, column = match.groups()
        return f"line {line}, column {column}: invalid TOML: {what}"
    match = re.search(r"^(.*) \(at end of document\)$", message)
    if match:
        return f"end of file: invalid TOML: {match.group(1)}"
    return f"invalid TOML: {message}"


_REQUIRED: Final = object()


def _show_number(value: float) -> str:
    """A number for an error line; a 400-digit integer is shown by its size, not spelled out."""
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"{'-' if value < 0 else ''}an integer of {len(str(abs(value)))} digits"
    return str(value)


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            if isinstance(value, bool):
                return f"{name} ({str(value).lower()})"
            if isinstance(value, str):
                return f'{name} ("{shorten(value, 80)}")'
            return f"{name} ({_show_number(value)})"  # type: ignore[arg-type]
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Table:
    """Reads one TOML table, remembering which keys were used so unknown ones can be refused."""

    def __init__(self, file: Path, key_path: str, data: object) -> None:
        self.file = file
        self.key_path = key_path
        if not isinstance(data, dict):
            raise self.error_at(key_path, f"expected a table, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.key_path}.{name}" if self.key_path else name

    def error_at(self, key_path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {shorten(key_path, 200)}: {message}")

    def error(self, name: str, message: str) -> ConfigError:
        return self.error_at(self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> object:
        self.used.add(name)
        return self.data.get(name)

    def string(self, name: str, default: Any = _REQUIRED, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_type_name(value)}")
        if choices and value not in choices:
            expected = ", ".join(choices)
            raise self.error(
                name, f'unknown {name} "{shorten(value, 80)}" (expected one of {expected})'
            )
        return value

    def integer(
        self,
        name: str,
        default: Any = _REQUIRED,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if type(value) is not int:
            raise self.error(name, f"expected an integer, got {_type_name(value)}")
        self._check_range(name, value, minimum, maximum)
        return value

    def number(
        self,
        name: str,
        default: Any = _REQUIRED,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if type(value) not in (int, float):
            raise self.error(name, f"expected a number, got {_type_name(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond the float range (about 1.8e308)
            finite = False
        if not finite:
            raise self.error(name, f"must be a finite number, got {_show_number(value)}")
        if positive and value <= 0:
            raise self.error(name, f"must be > 0, got {_show_number(value)}")
        self._check_range(name, value, minimum, maximum)
        return float(value)

    def path(self, name: str, default: Any = _REQUIRED) -> Any:
        """A file path: a string without NUL, of sane length, ``~`` expanded.

        Relative paths are returned as they are; the caller decides what they are relative to.
        """
        text = self.string(name, default)
        if text is default:
            return text
        if not text:
            raise self.error(name, "must not be empty")
        if "\0" in text:
            raise self.error(name, "must not contain a NUL character")
        if len(text) > MAX_PATH_CHARS:
            raise self.error(
                name, f"path too long ({len(text)} characters, at most {MAX_PATH_CHARS})"
            )
        try:
            return Path(text).expanduser()
        except RuntimeError:  # "~nosuchuser/...": no such user, or no home directory
            user = text[1:].split("/", 1)[0] or "the current user"
            raise self.error(name, f'cannot expand "~": no home directory for {user}') from None

    def boolean(self, name: str, default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_type_name(value)}")
        return value

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.error(name, "missing (required)")
            return default
        return self.data[name]

    def _check_range(
        self, name: str, value: float, minimum: float | None, maximum: float | None
    ) -> None:
        shown = _show_number(value)
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {shown}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {shown}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum}, got {shown}")

    def finish(self, cutoff: float = 0.6) -> None:
        """Refuse keys nobody asked for: they are typos or options this version lacks."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            name = unknown[0]
            raise self.error(name, f"unknown key{did_you_mean(name, self.used, cutoff)}")


def _build_config(file: Path, document: dict[str, Any], env: Mapping[str, str]) -> Config:
    root = _Table(file, "", document)
    # Unknown sections first: "[modbuss]" should say so, not "modbus: section missing".
    root.used.update(("device", "database", "modbus", "api", "mqtt", "bus", "profile"))
    # A short name like "bus" is close to many typos ("bogus"): suggest only near misses.
    root.finish(cutoff=0.8)
    device = _section(root, "device", _build_device)
    database = _section(root, "database", lambda table: _build_database(table, root))
    plant: tuple[BusConfig, ...] = ()
    if root.has("bus") or root.has("profile"):
        if root.has("modbus"):
            key = "bus" if root.has("bus") else "profile"
            raise root.error(
                key, "give either [modbus] (one bus) or [[bus]] with [[bus.device]], not both"
            )
        if not root.has("bus"):
            raise root.error("bus", "missing: [profile.*] tables need [[bus]] devices using them")
        batch_size = database.batch_size if database is not None else None
        plant = _build_plant(root, batch_size or DEFAULT_BATCH_SIZE)
        modbus = _plant_modbus(plant, batch_size or DEFAULT_BATCH_SIZE)
    elif not root.has("modbus"):
        raise root.error("modbus", "section missing (required; or [[bus]] for several buses)")
    else:
        modbus = _build_modbus(_Table(file, "modbus", root.raw("modbus")))
    api = _section(root, "api", lambda table: _build_api(table, env))
    mqtt = _section(root, "mqtt", lambda table: _build_mqtt(table, env))
    if database is None:
        database = DatabaseConfig()
    if not database.path.is_absolute():
        # Relative to the config file, not the working directory: systemd starts us in /.
        database = replace(database, path=file.parent / database.path)
    if api is not None and _is_readable_by_others(file) and _holds_inline_key(document):
        log.warning(
            "%s holds an API key and is readable by other users; run: chmod 640 %s", file, file
        )
    return Config(
        path=file,
        modbus=modbus,
        device=device or DeviceConfig(),
        database=database,
        api=api,
        mqtt=mqtt,
        plant=plant,
    )


DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_POLL_INTERVAL_SEC: Final = 1.0
MIN_INTERVAL_SEC: Final = 0.001
MAX_INTERVAL_SEC: Final = 7 * 86400.0


@dataclass(frozen=True)
class _Profile:
    registers: tuple[RegisterConfig, ...]
    poll_interval_sec: float | None
    deadband: float | None
    heartbeat_sec: float | None


def _build_plant(root: _Table, batch_size: int) -> tuple[BusConfig, ...]:
    """``[[bus]]``/``[[bus.device]]``/``[profile.NAME]`` into buses with resolved devices."""
    profiles = _build_profiles(root)
    buses_raw = root.raw("bus")
    if not isinstance(buses_raw, list) or not buses_raw:
        raise root.error(
            "bus", f"expected one or more [[bus]] tables, got {_type_name(buses_raw)}"
        )
    buses: list[BusConfig] = []
    bus_names: dict[str, int] = {}
    ports: dict[str, int] = {}
    device_names: dict[str, str] = {}
    used_profiles: set[str] = set()
    for index, entry in enumerate(buses_raw):
        table = _Table(root.file, f"bus[{index}]", entry)
        bus = _build_bus(table, profiles, device_names, used_profiles, batch_size)
        if bus.name in bus_names:
            raise table.error(
                "name", f'duplicate bus name "{bus.name}" (already bus[{bus_names[bus.name]}])'
            )
        bus_names[bus.name] = index
        if bus.link.port in ports:
            raise table.error(
                "port",
                f'"{shorten(bus.link.port, 80)}" is already bus[{ports[bus.link.port]}]\'s port '
                "(devices sharing a line belong to one bus)",
            )
        ports[bus.link.port] = index
        buses.append(bus)
    return tuple(buses)


def _build_profiles(root: _Table) -> dict[str, _Profile]:
    raw = root.raw("profile")
    if raw is None:
        return {}
    section = _Table(root.file, "profile", raw)
    profiles: dict[str, _Profile] = {}
    for name in section.data:
        section.used.add(name)
        if not _NAME_RE.match(name):
            raise section.error(
                name, 'a profile name must start with a letter, then letters, digits and "_.-"'
            )
        table = _Table(root.file, f"profile.{name}", section.raw(name))
        poll_interval = _interval(table, "poll_interval_sec", None)
        deadband = table.number("deadband", None, minimum=0)
        heartbeat = _interval(table, "heartbeat_sec", None)
        registers = _build_registers(table, 1, key="registers", plant=True)
        table.finish()
        profiles[name] = _Profile(registers, poll_interval, deadband, heartbeat)
    return profiles


def _interval(table: _Table, name: str, default: float | None) -> float | None:
    value: float | None = table.number(
        name, default, minimum=MIN_INTERVAL_SEC, maximum=MAX_INTERVAL_SEC
    )
    return value


def _build_bus(
    table: _Table,
    profiles: Mapping[str, _Profile],
    device_names: dict[str, str],
    used_profiles: set[str],
    batch_size: int,
) -> BusConfig:
    name = table.string("name")
    if not _NAME_RE.match(name):
        raise table.error(
            "name",
            f'must start with a letter, then letters, digits and "_.-" only, got '
            f'"{shorten(name, 80)}"',
        )
    port = table.string("port")
    try:
        check_port(port)
    except ValueError as exc:
        raise table.error("port", str(exc)) from None
    link = ModbusConfig(
        port=port,
        registers=(),
        baudrate=table.integer("baudrate", 9600, minimum=50, maximum=4_000_000),
        parity=table.string("parity", "N", choices=PARITIES),
        stopbits=table.integer("stopbits", 1, minimum=1, maximum=2),
        bytesize=table.integer("bytesize", 8, minimum=5, maximum=8),
        timeout_sec=table.number("timeout_sec", 1.0, positive=True, maximum=60),
        retries=table.integer("retries", 1, minimum=0, maximum=10),
        request_gap_ms=table.number("request_gap_ms", 0.0, minimum=0, maximum=10_000),
        max_registers_per_request=table.integer(
            "max_registers_per_request",
            MAX_REGISTERS_PER_REQUEST,
            minimum=1,
            maximum=MAX_REGISTERS_PER_REQUEST,
        ),
        batch_size=batch_size,
    )
    entries = table.raw("device")
    if entries is None:
        raise table.error("device", "missing: a bus needs at least one [[bus.device]]")
    if not isinstance(entries, list) or not entries:
        raise table.error(
            "device", f"expected one or more [[bus.device]] tables, got {_type_name(entries)}"
        )
    devices: list[PlantDevice] = []
    units: dict[int, int] = {}
    for index, entry in enumerate(entries):
        device_table = _Table(table.file, f"{table.key_path}.device[{index}]", entry)
        device = _build_plant_device(device_table, profiles, used_profiles)
        assert device.name is not None
        if device.name in device_names:
            raise device_table.error(
                "name",
                f'duplicate device name "{device.name}" (already {device_names[device.name]})',
            )
        device_names[device.name] = device_table.key_path
        if device.unit_id in units and not link.is_tcp:
            raise device_table.error(
                "unit_id",
                f"unit {device.unit_id} is already {table.key_path}.device[{units[device.unit_id]}]"
                " on this line",
            )
        units.setdefault(device.unit_id, index)
        devices.append(device)
    table.finish()
    first = devices[0]
    link = replace(
        link,
        registers=first.registers,
        unit_id=first.unit_id,
        poll_rate_hz=1.0 / first.poll_interval_sec,
    )
    return BusConfig(name=name, link=link, devices=tuple(devices))


def _build_plant_device(
    table: _Table, profiles: Mapping[str, _Profile], used_profiles: set[str]
) -> PlantDevice:
    name = table.string("name")
    if not _NAME_RE.match(name):
        raise table.error(
            "name",
            f'must start with a letter, then letters, digits and "_.-" only, got '
            f'"{shorten(name, 80)}"',
        )
    unit_id = table.integer("unit_id", 1, minimum=0, maximum=255)
    profile_name = table.string("profile", None)
    own_interval = _interval(table, "poll_interval_sec", None)
    own_deadband = table.number("deadband", None, minimum=0)
    own_heartbeat = _interval(table, "heartbeat_sec", None)
    profile: _Profile | None = None
    if profile_name is not None:
        profile = profiles.get(profile_name)
        if profile is None:
            hint = did_you_mean(profile_name, profiles)
            known = f" (profiles: {', '.join(sorted(profiles))})" if profiles and not hint else ""
            raise table.error(
                "profile", f'unknown profile "{shorten(profile_name, 80)}"{hint}{known}'
            )
        used_profiles.add(profile_name)
        if table.has("registers"):
            raise table.error("registers", "give either profile or registers, not both")
        registers = profile.registers
    else:
        if not table.has("registers"):
            raise table.error("profile", "missing: a device needs a profile or its registers")
        registers = _build_registers(table, unit_id, key="registers", plant=True)
    table.finish()
    interval = own_interval
    deadband = own_deadband
    heartbeat = own_heartbeat
    if profile is not None:
        interval = interval if interval is not None else profile.poll_interval_sec
        deadband = deadband if deadband is not None else profile.deadband
        heartbeat = heartbeat if heartbeat is not None else profile.heartbeat_sec
    if interval is None:
        interval = DEFAULT_POLL_INTERVAL_SEC
    resolved = tuple(
        replace(
            register,
            unit_id=unit_id,
            interval_sec=register.interval_sec if register.interval_sec is not None else interval,
            deadband=register.deadband if register.deadband is not None else deadband,
            heartbeat_sec=(
                register.heartbeat_sec if register.heartbeat_sec is not None else heartbeat
            ),
        )
        for register in registers
    )
    return PlantDevice(
        name=name,
        unit_id=unit_id,
        registers=resolved,
        poll_interval_sec=interval,
        profile=profile_name,
    )


def _plant_modbus(plant: Sequence[BusConfig], batch_size: int) -> ModbusConfig:
    """``Config.modbus`` of a plant: the first bus's settings and first device's registers."""
    return replace(plant[0].link, batch_size=batch_size)


def _holds_inline_key(document: Mapping[str, Any]) -> bool:
    """True when the document itself carries ``api.api_key`` (not a file or the environment)."""
    api = document.get("api")
    return isinstance(api, dict) and "api_key" in api


def _is_readable_by_others(file: Path) -> bool:
    try:
        return bool(file.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _section(root: _Table, name: str, build: Callable[[_Table], _T]) -> _T | None:
    if not root.has(name):
        return None
    return build(_Table(root.file, name, root.raw(name)))


def _build_device(table: _Table) -> DeviceConfig:
    device_id = table.string("id", None)
    if device_id is not None and not _DEVICE_ID_RE.match(device_id):
        raise table.error("id", f'must be letters, digits and "_.:-" only, got "{device_id}"')
    table.finish()
    return DeviceConfig(id=device_id)


def _build_database(table: _Table, root: _Table) -> DatabaseConfig:
    path = table.path("path", DatabaseConfig.path)
    if table.has("batch_size") and root.has("modbus"):
        raise table.error("batch_size", "the flat form sets it as modbus.batch_size")
    result = DatabaseConfig(
        path=path,
        storage_limit_gb=table.number("storage_limit_gb", 1.0, minimum=0),
        max_db_mb=table.number("max_db_mb", None, positive=True),
        flush_interval_sec=table.number("flush_interval_sec", 10.0, positive=True),
        batch_size=table.integer("batch_size", None, minimum=1, maximum=100_000),
    )
    table.finish()
    return result


def _build_modbus(table: _Table) -> ModbusConfig:
    port = table.string("port")
    try:
        check_port(port)
    except ValueError as exc:
        raise table.error("port", str(exc)) from None
    unit_id = table.integer("unit_id", 1, minimum=0, maximum=255)
    max_per_request = table.integer(
        "max_registers_per_request",
        MAX_REGISTERS_PER_REQUEST,
        minimum=1,
        maximum=MAX_REGISTERS_PER_REQUEST,
    )
    settings: dict[str, Any] = {
        "baudrate": table.integer("baudrate", 9600, minimum=50, maximum=4_000_000),
        "parity": table.string("parity", "N", choices=PARITIES),
        "stopbits": table.integer("stopbits", 1, minimum=1, maximum=2),
        "bytesize": table.integer("bytesize", 8, minimum=5, maximum=8),
        "timeout_sec": table.number("timeout_sec", 1.0, positive=True, maximum=60),
        "retries": table.integer("retries", 1, minimum=0, maximum=10),
        "poll_rate_hz": table.number("poll_rate_hz", 10.0, positive=True, maximum=1000),
        "batch_size": table.integer("batch_size", 100, minimum=1, maximum=100_000),
        "request_gap_ms": table.number("request_gap_ms", 0.0, minimum=0, maximum=10_000),
    }
    registers = _build_registers(table, unit_id)
    table.finish()
    return ModbusConfig(
        port=port,
        registers=registers,
        unit_id=unit_id,
        max_registers_per_request=max_per_request,
        **settings,
    )


def _build_registers(
    modbus: _Table, default_unit: int, *, key: str = "registers_to_read", plant: bool = False
) -> tuple[RegisterConfig, ...]:
    entries = modbus.raw(key)
    prefix = modbus.key(key)
    if entries is None:
        raise modbus.error(key, "missing (at least one register is required)")
    if not isinstance(entries, list):
        raise modbus.error(
            key,
            f"expected an array of tables ([[{prefix}]]), got {_type_name(entries)}",
        )
    if not entries:
        raise modbus.error(key, "empty (at least one register is required)")
    registers: list[RegisterConfig] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        table = _Table(modbus.file, f"{prefix}[{index}]", entry)
        if plant and table.has("unit_id"):
            raise table.error("unit_id", "comes from the device ([[bus.device]] unit_id)")
        register = _build_register(table, default_unit)
        if register.name in seen:
            raise table.error(
                "name",
                f'duplicate name "{register.name}" '
                f"(already used by {prefix}[{seen[register.name]}])",
            )
        seen[register.name] = index
        registers.append(register)
    _check_overlaps(modbus, registers, prefix)
    return tuple(registers)


def _check_overlaps(
    modbus: _Table, registers: Sequence[RegisterConfig], prefix: str = "modbus.registers_to_read"
) -> None:
    """Refuse two values claiming the same addresses, in O(n log n).

    Sorted by (unit, kind, address), a value can only overlap values that start before it
    ends; within one unit and kind the scan keeps the earlier values that still reach past
    the current start (usually none or one, at most 125 for strings), so a 10,000-register
    map is checked in milliseconds. The error names the later entry (in file order) and the
    earlier one, as a pairwise check would.
    """
    order = sorted(
        range(len(registers)),
        key=lambda i: (registers[i].unit_id, registers[i].kind, registers[i].address, i),
    )
    active: list[int] = []
    group: tuple[int, str] | None = None
    for index in order:
        register = registers[index]
        if (register.unit_id, register.kind) != group:
            group = (register.unit_id, register.kind)
            active = []
        active = [i for i in active if registers[i].end > register.address]
        clashes = [i for i in active if _overlaps(register, registers[i])]
        if clashes:
            first = min(clashes)
            later, earlier = (index, first) if index > first else (first, index)
            _raise_overlap(modbus, later, registers[later], earlier, registers[earlier], prefix)
        active.append(index)


def _raise_overlap(
    modbus: _Table,
    index: int,
    register: RegisterConfig,
    other_index: int,
    other: RegisterConfig,
    prefix: str,
) -> None:
    raise modbus.error_at(
        f"{prefix}[{index}].address",
        f"{register.kind} {register.address}-{register.end - 1} of unit "
        f'{register.unit_id} overlaps "{other.name}" '
        f"({prefix}[{other_index}], "
        f"{other.kind} {other.address}-{other.end - 1})",
    )


def _overlaps(a: RegisterConfig, b: RegisterConfig) -> bool:
    """Two values overlap when they claim the same addresses of one unit and kind.

    A ``bit`` of a 16-bit register may share that register with the whole word or with other
    bits (a status word and its flags are read that way); only the same bit twice is refused.
    """
    if a.unit_id != b.unit_id or a.kind != b.kind:
        return False
    if a.address >= b.end or b.address >= a.end:
        return False
    if a.bit is not None and b.bit is not None:
        return a.bit == b.bit
    return a.bit is None and b.bit is None


def _build_register(table: _Table, default_unit: int) -> RegisterConfig:
    name = table.string("name")
    if not _NAME_RE.match(name):
        raise table.error(
            "name",
            'must start with a letter, then letters, digits and "_.-" only, '
            f'got "{shorten(name, 80)}"',
        )
    address = table.integer("address", minimum=0, maximum=65535)
    kind = table.string("kind", "holding", choices=REGISTER_KINDS)
    is_bit_kind = kind in BIT_KINDS
    value_type = table.string("type", "bool" if is_bit_kind else "uint16", choices=VALUE_TYPES)
    byte_order = table.string("byte_order", "ABCD", choices=BYTE_ORDERS)
    scale = table.number("scale", 1.0)
    offset = table.number("offset", 0.0)
    unit_id = table.integer("unit_id", default_unit, minimum=0, maximum=255)
    length = table.integer("length", None, minimum=1, maximum=MAX_STRING_REGISTERS)
    bit = table.integer("bit", None, minimum=0, maximum=15)
    units = table.string("units", None)
    interval_sec = _interval(table, "interval_sec", None)
    deadband = table.number("deadband", None, minimum=0)
    heartbeat_sec = _interval(table, "heartbeat_sec", None)
    table.finish()

    if is_bit_kind and value_type != "bool":
        raise table.error(
            "type", f'{kind} registers hold single bits: type must be "bool", got "{value_type}"'
        )
    if bit is not None and (is_bit_kind or value_type != "bool"):
        raise table.error("bit", 'applies only to type = "bool" on a holding or input register')
    if value_type == "bool" and not is_bit_kind and bit is None:
        raise table.error("bit", f'missing: type "bool" on a {kind} register needs bit = 0..15')
    if value_type == "string" and length is None:
        raise table.error("length", 'missing: type "string" needs length (registers)')
    if length is not None and value_type != "string":
        raise table.error("length", f'applies only to type = "string", not "{value_type}"')
    if value_type in ("int16", "uint16", "string") and byte_order not in SIXTEEN_BIT_BYTE_ORDERS:
        raise table.error(
            "byte_order",
            f'{value_type} fits in 16-bit words: expected ABCD or BADC, got "{byte_order}"',
        )
    if value_type in ("bool", "string") and (scale != 1.0 or offset != 0.0):
        bad = "scale" if scale != 1.0 else "offset"
        raise table.error(bad, f'does not apply to type "{value_type}"')
    register = RegisterConfig(
        name=name,
        address=address,
        kind=kind,
        type=value_type,
        byte_order=byte_order,
        scale=scale,
        offset=offset,
        unit_id=unit_id,
        length=length,
        bit=bit,
        units=units,
        interval_sec=interval_sec,
        deadband=deadband,
        heartbeat_sec=heartbeat_sec,
    )
    if register.end > 65536:
        raise table.error("address", f"{value_type} at {address} runs past the last address 65535")
    return register


def _build_api(table: _Table, env: Mapping[str, str]) -> ApiConfig:
    endpoint = table.string("endpoint")
    bad_url = table.error(
        "endpoint", f'expected an http:// or https:// URL, got "{shorten(endpoint, 80)}"'
    )
    try:
        parts = urlsplit(endpoint)
        hostname = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError:  # "http://[::1/v1": an unclosed IPv6 bracket
        raise bad_url from None
    if parts.scheme not in ("http", "https") or not hostname or any(
        ch.isspace() or ord(ch) < 32 for ch in endpoint
    ):
        raise bad_url
    if parts.scheme == "http" and hostname not in _LOOPBACK_HOSTS and not hostname.startswith(
        "127."
    ):
        _warn_clear_text(table.file, endpoint)
    api_format = table.string("format", "nixlog", choices=API_FORMATS)
    # InfluxDB 1.x often runs without authentication: there the key may be left out.
    api_key = _resolve_api_key(table, env, optional=api_format == "influx")
    header = table.string("api_key_header", "Authorization")
    if not re.match(r"^[A-Za-z0-9-]+$", header):
        raise table.error("api_key_header", f'not a valid HTTP header name: "{header}"')
    ca_file = _existing_file(table, "ca_file")
    influx_db = table.string("influx_db", None)
    influx_org = table.string("influx_org", None)
    influx_bucket = table.string("influx_bucket", None)
    if api_format == "influx":
        if influx_db is None and (influx_org is None or influx_bucket is None):
            raise table.error(
                "influx_db",
                "format influx needs influx_db (InfluxDB 1.x) or influx_org and "
                "influx_bucket (InfluxDB 2.x)",
            )
        if influx_db is not None and (influx_org is not None or influx_bucket is not None):
            raise table.error(
                "influx_db", "give influx_db (1.x) or influx_org + influx_bucket (2.x), not both"
            )
    else:
        for name in ("influx_db", "influx_org", "influx_bucket"):
            if table.has(name):
                raise table.error(name, 'only used with format = "influx"')
    result = ApiConfig(
        endpoint=endpoint,
        api_key=api_key,
        api_key_header=header,
        publish_interval_sec=table.number("publish_interval_sec", 60.0, positive=True),
        batch_size=table.integer("batch_size", 500, minimum=1, maximum=100_000),
        timeout_sec=table.number("timeout_sec", 10.0, positive=True, maximum=600),
        gzip=table.boolean("gzip", False),
        ca_file=ca_file,
        format=api_format,
        influx_db=influx_db,
        influx_org=influx_org,
        influx_bucket=influx_bucket,
    )
    table.finish()
    return result


def _existing_file(table: _Table, name: str) -> Path | None:
    """An optional file key, relative to the config file, that must name an existing file."""
    path: Path | None = table.path(name, None)
    if path is None:
        return None
    if not path.is_absolute():
        path = table.file.parent / path
    try:
        found = path.is_file()
    except OSError:  # a name longer than the file system allows
        found = False
    if not found:
        raise table.error(name, f"file not found: {shorten(path)}")
    return path


_TOPIC_FIELDS: Final = frozenset({"device_id", "device"})


def _topic(table: _Table, name: str, default: str) -> str:
    """A topic template: ``{device_id}`` and ``{device}`` only, no wildcards, not empty."""
    import string

    topic: str = table.string(name, default)
    if name == "status_topic" and topic == "":
        return topic  # no status messages
    if not topic or any(ch in topic for ch in "#+\0") or len(topic) > 1024:
        raise table.error(name, f'not a topic one can publish to: "{shorten(topic, 80)}"')
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(topic) if f is not None}
    except ValueError:
        fields = {"?"}
    unknown = fields - _TOPIC_FIELDS
    if unknown:
        raise table.error(
            name, f'"{shorten(topic, 80)}": only {{device_id}} and {{device}} may be filled in'
        )
    return topic


def _build_mqtt(table: _Table, env: Mapping[str, str]) -> MqttConfig:
    url = table.string("url")
    bad_url = table.error(
        "url", f'expected "mqtt://host:1883" or "mqtts://host:8883", got "{shorten(url, 80)}"'
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise bad_url from None
    if parts.scheme not in ("mqtt", "mqtts") or not host or parts.path not in ("", "/"):
        raise bad_url
    tls = parts.scheme == "mqtts"
    mqtt_format = table.string("format", "nixlog", choices=MQTT_FORMATS)
    thingsboard = mqtt_format == "thingsboard"
    username = table.string("username", None)
    password = _resolve_mqtt_password(table, env)
    if password is not None and username is None and not thingsboard:
        raise table.error("username", "a password needs a username")
    cert_file = _existing_file(table, "cert_file")
    key_file = _existing_file(table, "key_file")
    if (cert_file is None) != (key_file is None):
        raise table.error("key_file", "give cert_file and key_file together (client certificate)")
    ca_file = _existing_file(table, "ca_file")
    if not tls and (ca_file or cert_file):
        raise table.error("url", 'TLS options need an "mqtts://" url')
    client_id = table.string("client_id", None)
    if client_id is not None and not 0 < len(client_id) <= 128:
        raise table.error("client_id", "must be 1 to 128 characters")
    result = MqttConfig(
        url=url,
        host=host,
        port=port or (8883 if tls else 1883),
        tls=tls,
        # ThingsBoard's gateway API has fixed topics; the template is for the nixlog format.
        topic=_topic(table, "topic", "nixlog/{device_id}/readings"),
        status_topic=_topic(
            table, "status_topic", "" if thingsboard else "nixlog/{device_id}/status"
        ),
        qos=table.integer("qos", 1, minimum=1, maximum=1),
        client_id=client_id,
        username=username,
        password=password,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        batch_size=table.integer("batch_size", 500, minimum=1, maximum=100_000),
        publish_interval_sec=table.number("publish_interval_sec", 10.0, positive=True),
        timeout_sec=table.number("timeout_sec", 10.0, positive=True, maximum=600),
        keepalive_sec=table.integer("keepalive_sec", 60, minimum=5, maximum=65535),
        format=mqtt_format,
    )
    table.finish()
    return result


def _resolve_mqtt_password(table: _Table, env: Mapping[str, str]) -> Secret | None:
    """``password``, else ``password_file``, else ``$NIXLOG_MQTT_PASSWORD``, else none."""
    if table.has("password") and table.has("password_file"):
        raise table.error("password_file", "give either password or password_file, not both")
    inline = table.string("password", None)
    if inline is not None:
        if not inline:
            raise table.error("password", "must not be empty")
        return Secret(inline)
    password_file = table.path("password_file", None)
    if password_file is not None:
        return Secret(_read_secret_file(table, "password_file", password_file)[0])
    from_env = env.get(ENV_MQTT_PASSWORD, "").strip()
    return Secret(from_env) if from_env else None


_warned_clear_text: set[str] = set()


def _warn_clear_text(file: Path, endpoint: str) -> None:
    """Warn once per process and endpoint: over plain http:// the key can be read on the way."""
    if endpoint in _warned_clear_text:
        return
    _warned_clear_text.add(endpoint)
    log.warning(
        "%s: api.endpoint %s is plain http://: the API key and the readings travel in clear "
        "text; use https:// unless the network path is trusted",
        file,
        endpoint,
    )


def _check_key_text(table: _Table, name: str, key: str, source: str) -> None:
    """A key travels in an HTTP header: one line of printable ASCII. The key is never shown."""
    if not all(" " <= ch <= "~" for ch in key):
        raise table.error(
            name,
            f"{source} must hold the key as one line of printable ASCII "
            "(it is sent in an HTTP header); it holds another character",
        )


def _read_secret_file(table: _Table, key: str, file: Path) -> tuple[str, str]:
    """The stripped text of a key or password file (relative to the config) and its shown name.

    A small regular UTF-8 file only (``read_small_file``); every failure is a config error
    naming ``key``, and the secret itself never appears in a message.
    """
    path = file if file.is_absolute() else table.file.parent / file
    shown = shorten(path)
    try:
        text = read_small_file(path, MAX_KEY_FILE_BYTES).decode("utf-8").strip()
    except OSError as exc:
        raise table.error(key, f"cannot read {shown}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise table.error(key, f"{shown} is not UTF-8 text") from None
    except ValueError as exc:
        raise table.error(key, f"cannot read {shown}: {exc}") from None
    if not text:
        raise table.error(key, f"{shown} is empty")
    return text, shown


def _resolve_api_key(table: _Table, env: Mapping[str, str], *, optional: bool = False) -> Secret:
    """The key comes from ``api_key``, else ``api_key_file``, else ``$NIXLOG_API_KEY``.

    ``optional``: no key at all is an empty Secret (nothing is sent) instead of an error.
    """
    if table.has("api_key") and table.has("api_key_file"):
        raise table.error("api_key_file", "give either api_key or api_key_file, not both")
    inline = table.string("api_key", None)
    key_file = table.path("api_key_file", None)
    if inline is not None:
        if not inline.strip():
            raise table.error("api_key", "must not be empty")
        _check_key_text(table, "api_key", inline.strip(), "api.api_key")
        return Secret(inline.strip())
    if key_file is not None:
        text, shown = _read_secret_file(table, "api_key_file", key_file)
        _check_key_text(table, "api_key_file", text, shown)
        return Secret(text)
    from_env = env.get(ENV_API_KEY, "").strip()
    if from_env:
        _check_key_text(table, "api_key", from_env, f"${ENV_API_KEY}")
        return Secret(from_env)
    if optional:
        return Secret("")
    raise table.error("api_key", f"missing: set api.api_key, api.api_key_file or ${ENV_API_KEY}")
