"""``benchmarks/run`` prints one complete table whose figures parse, at tiny sizes."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.daemon_cost import SLOPE_MIN_SEC, rss_slope_kb_per_h
from benchmarks.report import DASH, HEADER, Row
from benchmarks.rig import ProcSample, sample_process

REPO = Path(__file__).resolve().parent.parent

# Every figure issue 8 asks for, by the start of its row.
EXPECTED_ROWS = [
    "poll cycles/s, 12-register example map",
    "poll cycles/s against one request per register",
    "Modbus requests per poll cycle",
    "bytes written per reading over its life (insert",
    "bytes written per reading over its life, against the seed",
    "fsyncs per reading over its life",
    "drain readings/s",
    "export rows/s",
    "export peak memory MB",
    "daemon CPU ms per reading",
    "daemon resident memory MB",
    "daemon memory growth after warm-up",
    "start-up ms, nixlog --help",
    "start-up ms, nixlog db stats",
]
TINY = [
    "--quick",
    "--daemon-seconds",
    "3",
    "--soak-seconds",
    "2",
    "--poll-seconds",
    "0.25",
    "--wear-readings",
    "1000",
    "--drain-readings",
    "1000",
    "--export-rows",
    "5000",
    "--startup-runs",
    "1",
    "--no-scan",
]


def _cell_number(cell: str) -> float:
    return math.nan if cell == DASH else float(cell)


def test_run_prints_every_row_with_numbers_that_parse(tmp_path: Path) -> None:
    """The one command runs every benchmark and prints one table of parseable figures."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run"), *TINY, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NIXLOG_CONFIG": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    table = [line for line in lines[2:] if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in table]
    assert len(cells) == len(EXPECTED_ROWS)
    for expected, row in zip(EXPECTED_ROWS, cells, strict=True):
        figure, nixlog, baseline, _baseline_is, ratio = row
        assert figure.startswith(expected), (expected, figure)
        values = [_cell_number(nixlog), _cell_number(baseline), _cell_number(ratio)]
        if expected.startswith("fsyncs") and shutil.which("strace") is None:
            assert values[0] != values[0], "fsyncs are counted with strace only"
        elif expected.startswith("daemon memory growth"):
            assert baseline == DASH  # a slope (NaN on a run this short) and no baseline
        else:
            assert all(v > 0 for v in values), row  # a measured figure, never zero or NaN
    assert "`benchmarks/run --quick" in done.stdout
    assert "measuring daemon" in done.stderr


def test_row_ratio_is_figure_over_baseline_and_dashes_when_missing() -> None:
    """A row computes its ratio from its two figures and prints a dash when one is missing."""
    assert Row("drain", 58934.2, 10.0, "production").cells()[1:] == [
        "58934",
        "10",
        "production",
        "5893",
    ]
    assert Row("cpu", 0.6, 100.0, "period").cells()[-1] == "0.006"
    assert Row("slope", math.nan, None, "long runs only").cells()[1:] == [
        DASH,
        DASH,
        "long runs only",
        DASH,
    ]


def test_process_sample_reads_this_process() -> None:
    """/proc sampling returns this process's CPU time, memory, fds and threads."""
    sample = sample_process(os.getpid())
    assert sample.cpu_sec > 0
    assert sample.rss_kb > 1024
    assert sample.fds >= 3
    assert sample.threads >= 1


def test_memory_slope_needs_a_long_run_and_fits_the_second_half() -> None:
    """The RSS slope is NaN on short runs and ignores warm-up growth in the first half."""

    def at(second: float, rss_kb: int) -> ProcSample:
        return ProcSample(second, 0.0, rss_kb, 9, 3)

    short = [at(t, 50_000 + t) for t in range(0, 60, 10)]
    assert math.isnan(rss_slope_kb_per_h(short))
    # Grows 5 MB in the first minute (warm-up), then exactly 1 KB per 10 s.
    samples = [at(t, 50_000 + min(t, 60) * 80 + max(0, t - 60) // 10) for t in range(0, 601, 10)]
    assert samples[-1].at - samples[0].at >= SLOPE_MIN_SEC
    assert math.isclose(rss_slope_kb_per_h(samples), 360.0, rel_tol=1e-6)
