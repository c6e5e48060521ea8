"""Start-up time of the command line against `python -c "import torch"` (the floor of any torch tool).

Usage: .venv/bin/python benchmarks/startup.py [--repeats 7]. Prints the median wall seconds of each command, each
in a fresh process, interleaved, and its ratio to the torch import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "schedcmp --help": [sys.executable, "-m", "schedcmp", "--help"],
    "schedcmp --version": [sys.executable, "-m", "schedcmp", "--version"],
    "schedcmp run --help": [sys.executable, "-m", "schedcmp", "run", "--help"],
    "schedcmp list-compatible": [sys.executable, "-m", "schedcmp", "list-compatible"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    floor = statistics.median(seconds["python -c 'import torch'"])
    print(f"{'command':<28} {'median s':>9} {'x import torch':>15}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>9.3f} {median / floor:>15.2f}")


if __name__ == "__main__":
    main()
