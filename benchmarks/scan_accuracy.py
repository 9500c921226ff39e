"""How often `scan-registers` drafts the right type: the meter-like map and random maps.

The meter-like map is ``tests/test_scan_accuracy.py``'s KNOWN_MAP (41 values a power meter
shows). The random maps draw 41 values each from the same kinds (float32 in all byte orders,
uint32/int32 and uint64/int64 in the orders meters use, texts, 16-bit values) with random
magnitudes and reserved zero registers between them: harder than a real meter (adjacent
negative values, counters with any low word), so they bound the accuracy from below.

The words are the simulator's (``SimulatorContext.image``), the draft is the scanner's
(``choose_registers``): the same path as a scan, without the sockets.

Run: python benchmarks/scan_accuracy.py [--maps 20]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixlog.config import RegisterConfig
from nixlog.model import Value
from nixlog.scanner import choose_registers
from nixlog.simulator import SimulatorContext
from tests.test_scan_accuracy import KNOWN_MAP, is_right, known_context

VALUES_PER_MAP = 41
TEXTS = ("PM5560", "iEM3255", "SN-88231", "ACME", "V1.0.4", "Meter A1")


def random_map(seed: int) -> list[tuple[RegisterConfig, Value]]:
    """41 values of random kinds and magnitudes, with reserved zero registers between."""
    rng = random.Random(seed)
    entries: list[tuple[RegisterConfig, Value]] = []
    address = 0
    for index in range(VALUES_PER_MAP):
        if rng.random() < 0.2:
            for _ in range(rng.randint(1, 3)):
                entries.append((RegisterConfig(f"zero_{address}", address), 0))
                address += 1
        kind = rng.choice(["f", "f", "f", "u32", "i32", "u64", "i64", "s", "u16", "u16", "i16"])
        name = f"v{index}"
        value: Value
        if kind == "f":
            low, high = rng.choice([(200, 240), (0, 50), (-2000, 9000), (0.5, 1)])
            value = round(rng.uniform(low, high), rng.choice([1, 2, 2, 3]))
            order = rng.choice(["ABCD", "ABCD", "CDAB", "CDAB", "BADC", "DCBA"])
            register = RegisterConfig(name, address, type="float32", byte_order=order)
        elif kind == "u32":
            value = rng.randint(70_000, 400_000_000)
            order = rng.choice(["ABCD", "CDAB"])
            register = RegisterConfig(name, address, type="uint32", byte_order=order)
        elif kind == "i32":
            value = rng.randint(-30_000, -2)
            order = rng.choice(["ABCD", "CDAB"])
            register = RegisterConfig(name, address, type="int32", byte_order=order)
        elif kind == "u64":
            value = rng.randint(100_000, 10**11)
            order = rng.choice(["ABCD", "CDAB"])
            register = RegisterConfig(name, address, type="uint64", byte_order=order)
        elif kind == "i64":
            value = rng.randint(-1_000_000, -40_000)
            register = RegisterConfig(name, address, type="int64")
        elif kind == "s":
            value = rng.choice(TEXTS)
            register = RegisterConfig(name, address, type="string", length=rng.choice([4, 6, 8]))
        elif kind == "u16":
            value = rng.choice(
                [
                    rng.randint(2200, 2400),
                    rng.randint(0, 20),
                    rng.randint(4990, 5010),
                    rng.randint(100, 3000),
                ]
            )
            register = RegisterConfig(name, address)
        else:
            value = rng.randint(-2000, -1)
            register = RegisterConfig(name, address, type="int16")
        entries.append((register, value))
        address = register.end
    return entries


def count_right(
    entries: list[tuple[RegisterConfig, Value]], context: SimulatorContext
) -> tuple[int, int]:
    """How many of the map's non-zero values the draft gets right (and how many there are)."""
    end = max(register.end for register, _ in entries)
    words = dict(enumerate(int(w) for w in context.image(1, "holding", 0, end)))
    drafted = {d.address: d for d in choose_registers(1, "holding", words, skip_zeros=True)}
    # A value that happens to be 0 is a zero register: it has no type to guess.
    known = [(r, v) for r, v in entries if v != 0 and not r.name.startswith("reserved_")]
    return sum(is_right(r, v, drafted.get(r.address)) for r, v in known), len(known)


def random_map_score(seed: int) -> tuple[int, int]:
    """(right types, non-zero values) on the random map of ``seed``."""
    entries = random_map(seed)
    context = SimulatorContext([register for register, _ in entries])
    for register, value in entries:
        context.pin(register.name, value)
    return count_right(entries, context)


def main(argv: list[str] | None = None) -> int:
    """Print the meter-like map's count and the random maps' spread."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=20, help="random maps to draw")
    args = parser.parse_args(argv)
    known, total = count_right(list(KNOWN_MAP), known_context())
    scores = [random_map_score(seed) for seed in range(1, args.maps + 1)]
    shares = [right / values for right, values in scores]
    print(f"meter-like map: {known} of {total} types right")
    print(
        f"random maps ({len(scores)}): {100 * sum(shares) / len(shares):.0f} % of the values "
        f"typed right on average (worst map {100 * min(shares):.0f} %, "
        f"best {100 * max(shares):.0f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
