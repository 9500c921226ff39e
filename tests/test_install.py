"""install.sh and deploy/nixlog.service: real installs into a temporary prefix.

The installs are real: `python -m venv` and `pip install` of this checkout (dependencies come
from the package index, ~8 s for a fresh venv here, ~4 s for a re-install). One install is
shared by the read-only checks; the uninstall lifecycle gets its own. The system-wide mode
(user, systemctl) is only exercised with --dry-run: a test must not create users or services.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import nixlog

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = ROOT / "install.sh"
UNIT_SRC = ROOT / "deploy" / "nixlog.service"
EXAMPLE_CONFIG = ROOT / "examples" / "config.toml"


def run_install(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run install.sh with the test interpreter as the venv's base Python."""
    return subprocess.run(
        ["bash", str(INSTALL_SH), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_nixlog(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `nixlog` (not the development one) with a plain environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIXLOG_")}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns when stdout is a pipe
    return subprocess.run(
        [str(prefix / "opt/nixlog/bin/nixlog"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=prefix,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with the script's output when it did not exit 0."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a systemd unit into section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def tree(path: Path) -> list[str]:
    """Every path under `path`, relative, sorted: a cheap snapshot of a directory."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prefix with nixlog installed by `install.sh --prefix DIR --no-systemd`."""
    prefix = tmp_path_factory.mktemp("prefix")
    result = run_install("--prefix", str(prefix), "--no-systemd")
    assert_ok(result)
    return prefix


# --------------------------------------------------------------------------- the unit file


def test_unit_has_the_required_directives() -> None:
    """deploy/nixlog.service is a hardened notify service that can still open serial ports."""
    unit = unit_directives(UNIT_SRC.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/opt/nixlog/bin/nixlog daemon -c /etc/nixlog/config.toml"
    assert service["User"] == "nixlog"
    assert "dialout" in service["SupplementaryGroups"].split()
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert "78" in service["RestartPreventExitStatus"].split()
    # The daemon promises to stop within 5 s; systemd's ceiling must leave room above that.
    assert int(service["TimeoutStopSec"]) > 5
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "nixlog"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    # PrivateDevices= hides /dev/ttyUSB*: the logger could not reach its devices. The device
    # allow-list instead names every serial-port class it may open.
    assert "PrivateDevices" not in service
    allowed = unit["Service"]["DeviceAllow"]
    for serial_class in ("ttyUSB", "ttyACM", "ttyAMA", "ttyS*"):
        assert f"char-{serial_class} rw" in allowed, serial_class
    assert service["LimitCORE"] == "0"  # the API key must not end up in a core dump
    assert service["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify has no complaint about the unit (ExecStart aimed at /bin/true)."""
    # verify insists that ExecStart exists: point a copy at /bin/true, change nothing else.
    text = UNIT_SRC.read_text()
    copy = tmp_path / "nixlog.service"
    copy.write_text(text.replace("ExecStart=/opt/nixlog/bin/nixlog", "ExecStart=/bin/true"))
    assert copy.read_text() != text
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in result.stderr.splitlines() if "nixlog" in line]
    assert complaints == []
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- the script


def test_script_parses_and_is_shellcheck_clean() -> None:
    """install.sh is valid bash, and shellcheck (when installed) has nothing to say."""
    assert_ok(subprocess.run(["bash", "-n", str(INSTALL_SH)], capture_output=True, text=True))
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed; bash -n passed")
    result = subprocess.run(
        ["shellcheck", str(INSTALL_SH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_help_lists_every_option() -> None:
    """--help exits 0 and documents each option."""
    result = run_install("--help")
    assert_ok(result)
    for option in (
        "--prefix",
        "--no-systemd",
        "--dry-run",
        "--uninstall",
        "--purge",
        "--python",
        "--pip-args",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purge"], "--purge only goes with --uninstall"),
        (["--prefix", "PREFIX"], "add --no-systemd"),
        (["--bogus"], "unknown option: --bogus"),
        (["--prefix"], "--prefix needs a directory"),
    ],
)
def test_usage_errors_exit_2_and_change_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A wrong command line is one message on stderr, exit 2, and nothing written."""
    args = [str(tmp_path) if arg == "PREFIX" else arg for arg in args]
    result = run_install(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert tree(tmp_path) == []


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    """--dry-run prints every action (venv, pip, config, unit, link) and the prefix stays empty."""
    result = run_install("--prefix", str(tmp_path), "--no-systemd", "--dry-run")
    assert_ok(result)
    assert tree(tmp_path) == []
    out = result.stdout
    assert f"-m venv --clear {tmp_path}/opt/nixlog" in out
    assert "pip install" in out
    assert f"{tmp_path}/etc/nixlog/config.toml" in out
    assert f"{tmp_path}/etc/systemd/system/nixlog.service" in out
    assert f"{tmp_path}/var/lib/nixlog" in out
    assert "systemctl" not in out
    assert "useradd" not in out


def test_pip_args_reach_both_pip_calls(tmp_path: Path) -> None:
    """--pip-args (for offline wheel-houses) is passed, word by word, to every pip install."""
    wheels = tmp_path / "wheels"
    result = run_install(
        "--prefix",
        str(tmp_path / "p"),
        "--no-systemd",
        "--dry-run",
        "--pip-args",
        f"--no-index --find-links {wheels}",
    )
    assert_ok(result)
    pip_lines = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert len(pip_lines) == 2
    for line in pip_lines:
        assert f"--no-index --find-links {wheels} " in line
    assert tree(tmp_path) == []


def test_dry_run_of_a_system_install_shows_user_and_service_steps() -> None:
    """Without a prefix, --dry-run shows the nixlog user in dialout and enabling the service."""
    result = run_install("--dry-run")
    assert_ok(result)
    out = result.stdout
    assert "Dry run" in out
    if subprocess.run(["getent", "passwd", "nixlog"], capture_output=True).returncode != 0:
        assert re.search(r"useradd .*--groups dialout .*nixlog", out)
    assert "systemctl enable nixlog.service" in out
    assert "-m venv --clear /opt/nixlog" in out or "Re-using the venv /opt/nixlog" in out
    assert "journalctl -u nixlog" in out
    assert "scan-registers" in out


def test_dry_run_of_an_uninstall_changes_nothing(installed: Path) -> None:
    """--uninstall --purge --dry-run leaves an installation exactly as it was."""
    before = tree(installed)
    result = run_install(
        "--prefix", str(installed), "--no-systemd", "--uninstall", "--purge", "--dry-run"
    )
    assert_ok(result)
    assert f"rm -rf {installed}/opt/nixlog" in result.stdout
    assert tree(installed) == before


# --------------------------------------------------------------------------- real installs


def test_install_leaves_a_working_nixlog(installed: Path) -> None:
    """The installed venv runs `nixlog --version` and accepts its own installed config."""
    version = run_nixlog(installed, "--version")
    assert_ok(version)
    assert version.stdout.strip() == f"nixlog {nixlog.__version__}"
    config = installed / "etc/nixlog/config.toml"
    check = run_nixlog(installed, "config", "check", "-c", str(config))
    assert_ok(check)
    assert "OK" in check.stdout
    link = installed / "usr/local/bin/nixlog"
    assert link.is_symlink()
    assert link.resolve() == (installed / "opt/nixlog/bin/nixlog").resolve()


def test_install_writes_a_private_config_with_prefixed_paths(installed: Path) -> None:
    """The config is mode 0640, from the example, with its paths moved under the prefix."""
    config = installed / "etc/nixlog/config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    text = config.read_text()
    assert f'path = "{installed}/var/lib/nixlog/datalog.db"' in text
    example_lines = EXAMPLE_CONFIG.read_text().count("\n")
    assert text.count("\n") == example_lines
    data = installed / "var/lib/nixlog"
    assert data.is_dir()
    assert stat.S_IMODE(data.stat().st_mode) == 0o750


def test_install_writes_the_unit_with_prefixed_paths(installed: Path) -> None:
    """The installed unit runs the prefix's nixlog on the prefix's config."""
    unit_file = installed / "etc/systemd/system/nixlog.service"
    service = unit_directives(unit_file.read_text())["Service"]
    assert service["ExecStart"] == [
        f"{installed}/opt/nixlog/bin/nixlog daemon -c {installed}/etc/nixlog/config.toml"
    ]
    assert stat.S_IMODE(unit_file.stat().st_mode) == 0o644


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_installed_unit_passes_systemd_analyze_verify(installed: Path) -> None:
    """The unit install.sh writes (ExecStart is the real installed binary) verifies cleanly."""
    unit_file = installed / "etc/systemd/system/nixlog.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "nixlog" in line] == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_installed_unit_keeps_the_hardening(installed: Path) -> None:
    """The unit install.sh writes scores the same exposure (<= 2.0) as deploy/nixlog.service."""
    from tests.test_service_hardening import MAX_EXPOSURE, _exposure

    exposure, output = _exposure(installed / "etc/systemd/system/nixlog.service")
    assert exposure <= MAX_EXPOSURE, output[-3000:]


def test_second_install_is_idempotent_and_keeps_an_edited_config(installed: Path) -> None:
    """A second run re-uses the venv, keeps the edited config, and nixlog still works."""
    config = installed / "etc/nixlog/config.toml"
    edited = config.read_text().replace("poll_rate_hz = 10", "poll_rate_hz = 2")
    assert edited != config.read_text()
    config.write_text(edited)
    result = run_install("--prefix", str(installed), "--no-systemd")
    assert_ok(result)
    assert "Re-using the venv" in result.stdout
    assert f"Keeping the existing {config}" in result.stdout
    assert config.read_text() == edited
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    check = run_nixlog(installed, "config", "check", "-c", str(config))
    assert_ok(check)
    assert "2 Hz" in check.stdout


def test_uninstall_keeps_config_and_data_and_purge_removes_them(tmp_path: Path) -> None:
    """--uninstall removes venv, unit and link but keeps config and data; --purge removes all."""
    assert_ok(run_install("--prefix", str(tmp_path), "--no-systemd"))
    config = tmp_path / "etc/nixlog/config.toml"
    reading_db = tmp_path / "var/lib/nixlog/datalog.db"
    reading_db.write_bytes(b"not really a database, but data all the same")

    result = run_install("--prefix", str(tmp_path), "--no-systemd", "--uninstall")
    assert_ok(result)
    assert not (tmp_path / "opt/nixlog").exists()
    assert not (tmp_path / "etc/systemd/system/nixlog.service").exists()
    assert not (tmp_path / "usr/local/bin/nixlog").is_symlink()
    assert config.is_file()
    assert reading_db.read_bytes().startswith(b"not really")
    assert "kept the config" in result.stdout

    # A second uninstall has nothing left to do and still succeeds.
    assert_ok(run_install("--prefix", str(tmp_path), "--no-systemd", "--uninstall"))

    result = run_install("--prefix", str(tmp_path), "--no-systemd", "--uninstall", "--purge")
    assert_ok(result)
    assert not (tmp_path / "etc/nixlog").exists()
    assert not (tmp_path / "var/lib/nixlog").exists()
