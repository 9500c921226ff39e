"""Files nixlog creates are 0640 and its directories 0750, whatever the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_db import CONFIG_TEMPLATE

CREATE_AND_HOLD = """
import json, os, stat, sys
from pathlib import Path
from nixlog import database
from tests.fixtures_db import fill
path = Path(sys.argv[1])
conn = database.open_db(path)
fill(conn, 10)
database.ensure_reserve(path)
modes = {}
for file in [path, Path(str(path) + "-wal"), Path(str(path) + "-shm"), database.reserve_path(path),
             path.parent, path.parent.parent]:
    modes[file.name] = oct(stat.S_IMODE(os.stat(file).st_mode))
conn.close()
print(json.dumps(modes))
"""


def _run(args: list[str], cwd: Path, umask: int) -> subprocess.CompletedProcess[str]:
    """Run ``args`` under ``umask`` in a child process (the test's own umask is untouched)."""
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.umask(umask),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_database_wal_shm_reserve_and_directories_are_private(tmp_path: Path, umask: int) -> None:
    """Under umask 022 (outside systemd) nothing nixlog makes is readable by other users."""
    db = tmp_path / "made" / "by-nixlog" / "nixlog.db"
    done = _run([sys.executable, "-c", CREATE_AND_HOLD, str(db)], tmp_path, umask)
    assert done.returncode == 0, done.stderr
    modes = json.loads(done.stdout)
    assert modes == {
        "nixlog.db": "0o640",
        "nixlog.db-wal": "0o640",
        "nixlog.db-shm": "0o640",
        "nixlog.db.reserve": "0o600",  # only nixlog itself ever touches the reserve
        "by-nixlog": "0o750",
        "made": "0o750",
    }


def test_export_file_is_0640_under_umask_022(tmp_path: Path) -> None:
    """`nixlog export -o` writes a 0640 file even under umask 022."""
    db = tmp_path / "data" / "nixlog.db"
    done = _run([sys.executable, "-c", CREATE_AND_HOLD, str(db)], tmp_path, 0o022)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "config.toml"
    config.write_text(CONFIG_TEMPLATE.format(db=db), encoding="utf-8")
    target = tmp_path / "out.csv"
    done = _run(
        [sys.executable, "-m", "nixlog", "export", "-c", str(config), "-o", str(target)],
        tmp_path,
        0o022,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(target) == 0o640
    assert target.read_text(encoding="utf-8").startswith("id,timestamp")


def test_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    """A database left 0644 by an older version loses its bits for other users on open."""
    from nixlog import database

    db = tmp_path / "old.db"
    database.close(database.open_db(db))
    db.chmod(0o644)
    database.close(database.open_db(db))
    assert _mode(db) == 0o640


def test_existing_parent_directories_are_left_alone(tmp_path: Path) -> None:
    """Only directories nixlog creates get 0750; an existing /var/lib-like parent keeps its mode."""
    from nixlog import database

    tmp_path.chmod(0o755)
    database.close(database.open_db(tmp_path / "new" / "x.db"))
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "new") == 0o750
