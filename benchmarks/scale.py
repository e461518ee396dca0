"""Data-parallel and resumed audits, measured in one run: ratios against one process.

Ranks: samples/s of `lipcheck audit --workers N` (N ranks through torch.distributed.run, one thread
each) for N in --ranks, on the MLP audit of benchmarks/audit.py, against one process with one thread.
The rate is the report's (samples over the audit's own seconds, gathering included); the wall time of
the command, start-up included, is printed beside it. On a machine with C idle cores, N <= C ranks
should give close to N times one rank's rate.

Resume: the same audit with --resume DIR, killed (SIGKILL) once half of its batches are in the
journal, then run again: the time of the resumed run against that of an uninterrupted run.

    python benchmarks/scale.py                       # 1, 2 and 4 ranks, and resume
    python benchmarks/scale.py --ranks 1 2 --samples 32768
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from audit import FEATURES, save_model

from lipcheck.auditing.journal import MAGIC, journal_name


def lipcheck_audit(model: Path, data: Path, batch_size: int, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "lipcheck", "audit", str(model), "--data", str(data), "--batch-size",
            str(batch_size), "--device", "cpu", "--quiet", "-o", str(out), *flags]  # fmt: skip


def timed(command: list[str]) -> tuple[float, dict]:
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_one_thread())
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}: {' '.join(command)}\n{done.stderr}")
    return seconds, json.loads(Path(command[command.index("-o") + 1]).read_text())


def _one_thread() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ranks(folder: Path, model: Path, data: Path, batch_size: int, counts: list[int]) -> None:
    rates = {}
    for count in counts:
        flags = ["--workers", str(count)] if count > 1 else []
        wall, report = timed(lipcheck_audit(model, data, batch_size, folder / f"r{count}.json", *flags))
        rates[count] = report["timing"]["samples_per_second"]
        assert report["environment"]["world_size"] == count and report["environment"]["threads"] == 1
        print(f"{count} rank(s): {rates[count]:9.1f} samples/s ({rates[count] / rates[counts[0]]:.2f}x "
              f"{counts[0]} rank), {wall:.1f} s wall with start-up")  # fmt: skip
    first = json.loads((folder / f"r{counts[0]}.json").read_text())["samples"]
    for count in counts[1:]:
        same = json.loads((folder / f"r{count}.json").read_text())["samples"] == first
        print(f"{count} ranks: samples identical to {counts[0]} rank's: {same}")


def resume(folder: Path, model: Path, data: Path, batch_size: int, samples: int) -> None:
    whole, first = timed(lipcheck_audit(model, data, batch_size, folder / "whole.json"))
    journal = folder / "journal"
    command = lipcheck_audit(model, data, batch_size, folder / "resumed.json", "--resume", str(journal))
    batches = -(-samples // batch_size)
    process = subprocess.Popen(command, env=_one_thread(), stderr=subprocess.DEVNULL)
    file = journal / journal_name(0)
    while process.poll() is None and (not file.exists() or file.read_bytes().count(MAGIC) < batches // 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    held = file.read_bytes().count(MAGIC)
    again, report = timed(command)
    same = report["samples"] == first["samples"]
    audit, resumed = first["timing"]["audit_seconds"], report["timing"]["audit_seconds"]
    share = resumed / audit
    print(f"killed at {held} of {batches} batches and rerun with --resume: its audit took {resumed:.2f} s "
          f"against {audit:.2f} s uninterrupted ({share:.2f} of it, {100 * (1 - share):.0f}% saved); "
          f"wall with start-up {again:.1f} s against {whole:.1f} s; samples identical: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-resume", action="store_true", help="only the ranks")
    options = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {options.samples} samples of {FEATURES}, "
          f"batch {options.batch_size}, one thread a rank")  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model = save_model(folder)
        data = folder / "x.npy"
        np.save(
            data, np.random.default_rng(0).standard_normal((options.samples, FEATURES)).astype(np.float32)
        )
        ranks(folder, model, data, options.batch_size, options.ranks)
        if not options.no_resume:
            resume(folder, model, data, options.batch_size, options.samples)


if __name__ == "__main__":
    main()
