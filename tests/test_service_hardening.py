"""The systemd unit as `systemd-analyze` judges it: exposure <= 2.0 and `verify` clean.

Runs only where systemd-analyze exists (CI installs Debian's `systemd` package for it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT_SRC = ROOT / "deploy" / "nixlog.service"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)"
)


def _unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart aimed at /bin/true (verify insists the binary exists)."""
    text = UNIT_SRC.read_text(encoding="utf-8")
    copy = tmp_path / "nixlog.service"
    copy.write_text(text.replace("ExecStart=/opt/nixlog/bin/nixlog", "ExecStart=/bin/true"))
    return copy


def _exposure(unit: Path) -> tuple[float, str]:
    """The overall exposure `systemd-analyze security --offline=yes` gives ``unit``."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output[-2000:]
    return float(match.group(1)), output


def test_unit_exposure_is_at_most_two(tmp_path: Path) -> None:
    """The hardened unit scores <= 2.0 ("OK") although serial ports stay reachable."""
    exposure, output = _exposure(_unit_copy(tmp_path))
    assert exposure <= MAX_EXPOSURE, output[-3000:]


def test_the_score_comes_from_the_hardening(tmp_path: Path) -> None:
    """The measurement is real: the same unit without its hardening block scores far worse."""
    copy = _unit_copy(tmp_path)
    text = copy.read_text(encoding="utf-8")
    start = text.index("# ---- Hardening")
    end = text.index("[Install]")
    bare = tmp_path / "bare" / "nixlog.service"
    bare.parent.mkdir()
    bare.write_text(text[:start] + text[end:], encoding="utf-8")
    assert _exposure(bare)[0] > 5.0


def test_unit_verifies_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` has no complaint about the hardened unit."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in result.stderr.splitlines() if "nixlog" in line]
    assert complaints == []
    assert result.returncode == 0, result.stderr
