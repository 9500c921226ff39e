"""Property tests over hostile input: config values, mutated configs, command-line options.

Whatever the input, nixlog answers with a known exit code, at most a few lines on stderr and
never a traceback. Examples are bounded so the file runs in a few seconds on CI. No example
can reach the network: every host is 127.0.0.1 (a closed port) and every serial path is
missing, and output paths stay inside the test's directory.
"""

from __future__ import annotations

import copy
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nixlog.cli import app
from nixlog.config import RegisterConfig, _check_overlaps, _overlaps, _Table
from nixlog.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "config.toml"
KNOWN_EXITS = {0, 2, 69, 74, 75, 78}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values that broke nixlog once, or that a parser or the OS treats specially.
NASTY_STRINGS = [
    "",
    " ",
    "/",
    "/dev/zero",
    "/dev/null",
    "~nosuchuser-nixlog/x.db",
    "a\x00b",
    "192.168.1.50:502",
    "tcp://[::1",
    "tcp://127.0.0.1:99999",
    "http://[::1/v1",
    "=cmd|' /C calc'!A0",
    "-2-3",
    "x" * 5000,
    "é\u202e\ufeff",
    "[temp]",
]
NASTY_NUMBERS = [10**400, -(10**400), 2**63, -(2**63) - 1, 0, -1]


def _toml_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(),
        st.sampled_from(NASTY_NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=40),
        st.sampled_from(NASTY_STRINGS),
    )


def _toml_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        _toml_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=3),
        ),
        max_leaves=8,
    )


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of the document, tables and arrays included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _leaf_paths(value, (*prefix, index))


def _example_document(directory: Path) -> dict[str, Any]:
    """examples/config.toml with its database in ``directory`` and no network peer."""
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    document["database"]["path"] = str(directory / "fuzz.db")
    document["modbus"]["port"] = "/dev/nixlog-fuzz-missing"
    document["api"]["endpoint"] = "http://127.0.0.1:9/v1"
    return dict(document)


def _check_answer(result: Any, what: object) -> None:
    """The contract for hostile input: known exit code, few stderr lines, no traceback."""
    output = result.stdout + result.stderr
    assert result.exit_code in KNOWN_EXITS, (what, result.exit_code, result.exception, output)
    if isinstance(what, list) and {"-v", "--verbose"} & set(what):
        return  # --verbose asks for the cause's traceback on purpose
    assert len(result.stderr.splitlines()) <= 3, (what, result.stderr)
    assert "Traceback" not in output, what


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------- config values


@FUZZ
@given(data=st.data(), value=_toml_values())
def test_any_value_at_any_key_of_the_example_is_answered(
    workdir: Path, data: st.DataObject, value: Any
) -> None:
    """Replacing any key of the example config with any TOML value gives a clean answer."""
    document = _example_document(workdir)
    paths = list(_leaf_paths(document))
    path = data.draw(st.sampled_from(paths), label="key path")
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = copy.deepcopy(value)
    config = workdir / "values.toml"
    try:
        config.write_text(tomli_w.dumps(document), encoding="utf-8")
    except (ValueError, TypeError):
        return  # not representable as TOML (e.g. an integer beyond 64 bits): nothing to test
    config.chmod(0o600)
    result = CliRunner().invoke(app, ["config", "check", "-c", str(config)])
    _check_answer(result, (path, value))


@FUZZ
@given(
    key=st.sampled_from(
        ["storage_limit_gb", "max_db_mb", "flush_interval_sec", "path"]
    ),
    digits=st.integers(min_value=310, max_value=6000),
)
def test_huge_integer_literals_are_answered(workdir: Path, key: str, digits: int) -> None:
    """Integers beyond the float range, up to thousands of digits (tomli-w cannot write them)."""
    text = re.sub(
        rf"(?m)^(# )?{key} = .*$",
        f"{key} = 1{'0' * digits}",
        EXAMPLE.read_text(encoding="utf-8"),
        count=1,
    )
    assert f"{key} = 1000" in text
    config = workdir / "huge.toml"
    config.write_text(text, encoding="utf-8")
    config.chmod(0o600)
    result = CliRunner().invoke(app, ["config", "check", "-c", str(config)])
    _check_answer(result, (key, digits))
    assert result.exit_code == 78


# --------------------------------------------------------------------------- mutated files


@FUZZ
@given(data=st.data())
def test_mutated_example_configs_are_answered(workdir: Path, data: st.DataObject) -> None:
    """Deleted, duplicated, spliced or truncated lines of the example give a clean answer."""
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        index = data.draw(st.integers(min_value=0, max_value=len(lines) - 1), label="line")
        action = data.draw(
            st.sampled_from(["delete", "duplicate", "splice", "truncate", "nest"]), label="do"
        )
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "splice":
            cut = data.draw(st.integers(min_value=0, max_value=len(lines[index])), label="at")
            junk = data.draw(
                st.one_of(st.text(max_size=12), st.sampled_from(NASTY_STRINGS)), label="junk"
            )
            lines[index] = lines[index][:cut] + junk + lines[index][cut:]
        elif action == "nest":
            depth = data.draw(st.integers(min_value=1, max_value=3000), label="depth")
            lines.insert(index, f"deep = {'[' * depth}{']' * depth}\n")
        else:
            lines = lines[: index + 1]
        if not lines:
            break
    config = workdir / "mutated.toml"
    config.write_bytes("".join(lines).encode("utf-8", "surrogatepass"))
    config.chmod(0o600)
    result = CliRunner().invoke(app, ["config", "check", "-c", str(config)])
    _check_answer(result, "".join(lines)[:400])


# --------------------------------------------------------------------------- options


def _option_strategy(workdir: Path) -> dict[str, st.SearchStrategy[list[str]]]:
    """Per command: option tokens, each with values that stay local and finish quickly."""
    good = str(workdir / "good.toml")
    configs = st.sampled_from(
        [
            good,
            good,
            str(workdir / "long-db-path.toml"),
            str(workdir / "foreign-db.toml"),
            str(workdir / "missing.toml"),
            "/dev/zero",
            str(workdir),
            "",
        ]
    )
    when = st.one_of(
        st.sampled_from(
            ["99999999999999d", "3000000d", "0001-01-01", "9999-12-31T23:59:59-12:00", "7d",
             "2026-11-26", "-1d", "1e400d", "nan", ""]
        ),
        st.text(max_size=20),
    )
    outputs = st.sampled_from(
        [str(workdir / "out.csv"), str(workdir), "/", str(workdir / "no" / "x.csv"), ""]
    )
    numbers = st.one_of(
        st.integers(min_value=-5, max_value=70000).map(str),
        st.sampled_from(["x", "1e400", "nan", "-0", "99999999999999999999", ""]),
    )
    ports = st.sampled_from(
        ["/dev/nixlog-fuzz-missing", "tcp://127.0.0.1:9", "192.168.1.50:502", "tcp://[::1",
         "tcp://127.0.0.1:99999", "", "COM3"]
    )
    junk = st.one_of(st.text(max_size=10), st.sampled_from(["--bogus", "-x", "--", "-"]))

    def pair(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
        return st.tuples(st.just(name), values).map(list)

    def flag(name: str) -> st.SearchStrategy[list[str]]:
        return st.just([name])

    common = [pair("-c", configs), pair("--config", configs), flag("-v"), flag("--verbose")]
    per_command: dict[str, list[st.SearchStrategy[list[str]]]] = {
        "config check": [],
        "db stats": [flag("--json")],
        "export": [pair("--since", when), pair("--until", when), pair("-o", outputs),
                   flag("--unsent")],
        "prune": [flag("--dry-run"), flag("--vacuum")],
        "poll": [flag("--once"), pair("--count", numbers), flag("--json")],
        "publish": [flag("--once"), flag("--dry-run")],
        "scan-registers": [
            pair("--port", ports), pair("--units", st.one_of(numbers, st.just("1-3,5"))),
            pair("--kind", st.sampled_from(["holding", "all", "x", ""])),
            pair("--start", numbers), pair("--count", numbers), pair("--timeout", numbers),
            pair("--baudrate", numbers), pair("--parity", st.sampled_from(["N", "e", "Q"])),
            pair("--stopbits", numbers), pair("--output", outputs), flag("--json"),
        ],
    }
    # Junk is rare: a stray token makes the whole line a usage error, hiding the other values.
    maybe_junk = st.one_of(st.just([]), st.just([]), st.just([]), junk.map(lambda t: [t]))

    def command_line(options: list[st.SearchStrategy[list[str]]]) -> st.SearchStrategy[list[str]]:
        groups = st.lists(st.one_of(*common, *options), max_size=5)
        return st.tuples(groups, maybe_junk).map(
            lambda drawn: [token for group in drawn[0] for token in group] + drawn[1]
        )

    return {command: command_line(options) for command, options in per_command.items()}


@pytest.fixture(scope="module")
def option_workdir(workdir: Path) -> Path:
    """A valid config (missing serial port, API on a closed local port) and its database."""
    from nixlog import database

    document = _example_document(workdir)
    document["modbus"]["timeout_sec"] = 0.05
    document["modbus"]["retries"] = 0
    good = workdir / "good.toml"
    good.write_text(tomli_w.dumps(document), encoding="utf-8")
    good.chmod(0o600)
    database.close(database.open_db(workdir / "fuzz.db"))
    # The same config over a path the file system refuses, and over a foreign database.
    document["database"]["path"] = str(workdir / ("a" * 300) / "x.db")
    (workdir / "long-db-path.toml").write_text(tomli_w.dumps(document), encoding="utf-8")
    foreign = workdir / "foreign.db"
    database.close(database.open_db(foreign))
    raw = sqlite3.connect(foreign)
    raw.execute("UPDATE meta SET value = 'v2-beta' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    document["database"]["path"] = str(foreign)
    (workdir / "foreign-db.toml").write_text(tomli_w.dumps(document), encoding="utf-8")
    for name in ("long-db-path.toml", "foreign-db.toml"):
        (workdir / name).chmod(0o600)
    return workdir


COMMANDS = ["config check", "db stats", "export", "prune", "poll", "publish", "scan-registers"]


@pytest.mark.parametrize("command", COMMANDS)
def test_any_options_of_a_command_are_answered(
    option_workdir: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random option strings for each command: known exit code, one short answer."""
    strategy = _option_strategy(option_workdir)[command]

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(args=strategy)
    def check(args: list[str]) -> None:
        result = CliRunner().invoke(app, [*command.split(), *args], env={"NIXLOG_CONFIG": ""})
        _check_answer(result, args)

    monkeypatch.chdir(option_workdir)  # no ./config.toml here: only -c decides
    check()


@pytest.mark.parametrize("command", ["daemon", "simulate", "demo"])
def test_long_running_commands_parse_any_options_cleanly(command: str) -> None:
    """Options of the commands that run until stopped: a bad one is always one usage line."""

    @settings(max_examples=25, deadline=None)
    @given(args=st.lists(st.text(max_size=10), max_size=4))
    def check(args: list[str]) -> None:
        # The trailing unknown option guarantees the command never starts.
        result = CliRunner().invoke(app, [command, *args, "--no-such-option-zz"])
        _check_answer(result, args)
        assert result.exit_code == 2

    check()


# --------------------------------------------------------------------------- real process


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["config", "check", "-c", "/dev/zero"], 78),
        (["export", "--since", "99999999999999d"], 2),
        (["poll", "--count", "x"], 2),
        (["scan-registers", "--port", "192.168.1.50:502"], 2),
        (["db", "stats", "-c", "/"], 2),
    ],
)
def test_real_entry_point_answers_hostile_input_in_one_line(
    tmp_path: Path, args: list[str], code: int
) -> None:
    """The installed `python -m nixlog` answers hostile input with one line and its code."""
    done = subprocess.run(
        [sys.executable, "-m", "nixlog", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NIXLOG_CONFIG": ""},
    )
    assert done.returncode == code, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("Error: ")
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- overlap check


_REGISTERS = st.builds(
    lambda address, kind, unit, size, bit: RegisterConfig(
        name="r",
        address=address,
        kind=kind,
        unit_id=unit,
        type="bool" if bit is not None or kind in ("coil", "discrete") else size,
        bit=bit if kind in ("holding", "input") else None,
    ),
    address=st.integers(min_value=0, max_value=12),
    kind=st.sampled_from(["holding", "input", "coil"]),
    unit=st.integers(min_value=1, max_value=2),
    size=st.sampled_from(["uint16", "float32", "float64"]),
    bit=st.one_of(st.none(), st.integers(min_value=0, max_value=2)),
)


@settings(max_examples=300, deadline=None)
@given(registers=st.lists(_REGISTERS, max_size=12))
def test_sorted_overlap_check_agrees_with_the_pairwise_one(
    registers: list[RegisterConfig],
) -> None:
    """The O(n log n) check refuses exactly the maps the pairwise check refuses."""
    pairwise = any(
        _overlaps(registers[i], registers[j])
        for j in range(len(registers))
        for i in range(j)
    )
    table = _Table(Path("c.toml"), "modbus", {})
    if pairwise:
        with pytest.raises(ConfigError, match="overlaps"):
            _check_overlaps(table, registers)
    else:
        _check_overlaps(table, registers)
