"""Start-up time of the commands that must not import torch: `lipcheck --help`, `lipcheck gate` and
`lipcheck compare` on saved reports (issue 10: each under 0.5 s).

Each command runs in a fresh interpreter (`python -m lipcheck ...`, as a CI step runs it) `--repeats`
times; the script prints the median and the fastest wall-clock seconds, and `python -c pass` as the
floor no command can go under, and checks that torch was never imported.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 21
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "report.json"
# Runs `python -m lipcheck ARGS` and says on stderr, at exit, whether torch was imported.
PROBE = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
    "sys.argv = ['lipcheck', *sys.argv[1:]]; runpy.run_module('lipcheck', run_name='__main__')"
)


def timed(command: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        begin = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        seconds.append(time.perf_counter() - begin)
    return seconds


def imports_torch(arguments: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True)
    return done.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    repeats = parser.parse_args().repeats
    folder = Path(tempfile.mkdtemp())
    report = folder / "report.json"
    report.write_text(GOLDEN.read_text())
    commands = {
        "python -c pass": [],
        "lipcheck --help": ["--help"],
        "lipcheck gate report.json --fail-above 5": ["gate", str(report), "--fail-above", "5", "-q"],
        "lipcheck compare report.json report.json": ["compare", str(report), str(report), "-f", "json"],
    }
    print(f"{'command':<44} {'median s':>9} {'fastest s':>9}  torch imported")
    for name, arguments in commands.items():
        command = (
            [sys.executable, "-c", "pass"]
            if not arguments
            else [sys.executable, "-m", "lipcheck", *arguments]
        )
        seconds = timed(command, repeats)
        torch = "-" if not arguments else ("yes" if imports_torch(arguments) else "no")
        print(f"{name:<44} {statistics.median(seconds):>9.3f} {min(seconds):>9.3f}  {torch}")


if __name__ == "__main__":
    main()
