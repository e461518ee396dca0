"""The audit's own overhead and its memory bound, measured in one run.

Overhead (default): samples/s of the full `lipcheck audit` path (loading a .pt2 model and a .npy data
file, slicing, casting, the audit loop, the JSON report) against `spectral_norm` alone on the same
tensors already in memory, on a small MLP (issue: overhead under 10%). The two totals come from
different runs, and on a shared machine they drift by 10% or more from run to run; so it also times,
within each CLI run, the engine's calls and everything else, and prints the median of their ratio.

    python benchmarks/audit.py                       # overhead, 16384 samples of 64 features
    python benchmarks/audit.py --samples 8192 --repeats 7

Memory (--memory): writes a .npy data set of --gigabytes (default 1.1 GB) and audits it through the
CLI in a child process at --batch-size 4096, then prints the child's peak RSS (VmHWM). Not for CI.
Samples have --features values (default 1024: 270k rows in 1.1 GB, a few minutes on two cores).
With --memory-samples N, N samples (and the first N/10 against all N): whether the memory of an audit
is flat in the number of samples (the rows are compact columns, spilled to a file, streamed as JSON).

    python benchmarks/audit.py --memory --folder /tmp/lipcheck-bench
    python benchmarks/audit.py --memory --features 8 --memory-samples 3000000 --batch-size 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

FEATURES = 64


def small_model(features: int = FEATURES) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(features, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, features)
    ).eval()


def save_model(folder: Path, features: int = FEATURES) -> Path:
    path = folder / f"mlp{features}.pt2"
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    example = (torch.randn(2, features),)
    program = torch.export.export(small_model(features), example, dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def overhead(samples: int, batch_size: int, repeats: int) -> None:
    from typer.testing import CliRunner

    from lipcheck import spectral_norm
    from lipcheck.cli import app

    with tempfile.TemporaryDirectory() as folder:
        model_path = save_model(Path(folder))
        data = np.random.default_rng(0).standard_normal((samples, FEATURES)).astype(np.float32)
        data_path = Path(folder) / "x.npy"
        np.save(data_path, data)
        model = torch.export.load(str(model_path)).module()
        x = torch.from_numpy(data)

        def engine_alone() -> float:
            begin = time.perf_counter()
            for start in range(0, samples, batch_size):
                spectral_norm(model, x[start : start + batch_size], seed=0)
            return time.perf_counter() - begin

        import lipcheck.auditing.batches

        inside: list[float] = []  # seconds spent in spectral_norm during the CLI run

        def timed_spectral_norm(*args: object, **kwargs: object) -> object:
            begin = time.perf_counter()
            try:
                return spectral_norm(*args, **kwargs)
            finally:
                inside.append(time.perf_counter() - begin)

        def through_cli() -> tuple[float, float]:
            args = ["audit", str(model_path), "--data", str(data_path), "--batch-size", str(batch_size),
                    "--device", "cpu", "--quiet", "--format", "json"]  # fmt: skip
            inside.clear()
            lipcheck.auditing.batches.spectral_norm = timed_spectral_norm  # type: ignore[assignment]
            try:
                begin = time.perf_counter()
                result = CliRunner().invoke(app, args)
                seconds = time.perf_counter() - begin
            finally:
                lipcheck.auditing.batches.spectral_norm = spectral_norm
            assert result.exit_code == 0, result.stderr
            json.loads(result.stdout)
            return seconds, sum(inside)

        engine_alone()  # warm up both paths once
        through_cli()
        timings = [(engine_alone(), *through_cli()) for _ in range(repeats)]  # interleaved against drift
        engine = min(t[0] for t in timings)
        cli = min(t[1] for t in timings)
        # The overhead within each CLI run (its time outside the engine over its time in it), the median
        # over runs: both parts come from the same run, so a busy spell does not skew their ratio.
        within = sorted((t[1] - t[2]) / t[2] for t in timings)[len(timings) // 2]
        outside = sorted(t[1] - t[2] for t in timings)[len(timings) // 2]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {samples} samples of {FEATURES}, "
          f"batch {batch_size}, {repeats} interleaved runs")  # fmt: skip
    print(f"engine alone : {samples / engine:10.1f} samples/s ({engine:.3f} s, best run)")
    print(f"lipcheck CLI : {samples / cli:10.1f} samples/s ({cli:.3f} s, best run, loading included)")
    print(f"CLI time / engine-alone time (best runs): {cli / engine:.3f}  ({100 * (cli / engine - 1):+.1f}%)")
    print(
        f"within one CLI run, time outside the engine (loading, slicing, casting, checks, report): "
        f"{outside:.3f} s = {100 * within:.1f}% of its time in the engine (median of {repeats} runs)"
    )


def memory(folder: Path, gigabytes: float, batch_size: int, features: int, samples: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model_path = save_model(folder, features)
    rows = samples if samples is not None else int(gigabytes * 1e9 / (features * 4))
    data_path = folder / f"big{features}x{rows}.npy"
    if not data_path.exists() or np.load(data_path, mmap_mode="r").shape != (rows, features):
        array = np.lib.format.open_memmap(data_path, mode="w+", dtype=np.float32, shape=(rows, features))
        chunk = 1 << 14
        generator = np.random.default_rng(0)
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            array[start:stop] = generator.standard_normal((stop - start, features), dtype=np.float32)
        array.flush()
        del array
    size = data_path.stat().st_size
    command = [sys.executable, "-m", "lipcheck", "audit", str(model_path), "--data", str(data_path),
               "--batch-size", str(batch_size), "--device", "cpu", "--quiet", "--format", "json",
               "--output", str(folder / "report.json")]  # fmt: skip
    print(f"data {size / 1e9:.2f} GB ({rows} samples of {features} float32), batch {batch_size}")
    # With --samples, the first tenth against all of them (the 300k vs 3M); else a sixteenth.
    share = rows // 10 if samples is not None else rows // 16
    peaks = []
    for limit in (share, None):
        seconds, peak = _run_measured(command + ([] if limit is None else ["--limit", str(limit)]))
        report = json.loads((folder / "report.json").read_text())
        peaks.append((report["summary"]["count"], peak))
        what = f"the first {limit} samples" if limit else "every sample"
        print(f"{what}: {report['summary']['count']} audited in {seconds:.1f} s "
              f"({report['timing']['samples_per_second']:.0f} samples/s), "
              f"peak RSS {peak / 2**20:.1f} MiB ({peak / size:.2f} x the data set)")  # fmt: skip
    (few, low), (many, high) = peaks
    print(f"peak RSS of all {many} samples - that of the first {few}: {(high - low) / 2**20:+.1f} MiB "
          f"({(high - low) / 2**20 / ((many - few) / 1e6):+.2f} MiB per million samples)")  # fmt: skip


def _run_measured(command: list[str]) -> tuple[float, int]:
    """Run `command`; its wall time and its own peak RSS in bytes.

    The peak is the child's VmHWM, read from /proc while it runs: the high-water mark of its own
    address space. (ru_maxrss would be wrong here: Linux carries the parent's resident size over into a
    forked child, and this process has just written the data set through a memory map.)
    """
    begin = time.perf_counter()
    child = subprocess.Popen(command)
    status = Path(f"/proc/{child.pid}/status")
    peak = 0
    while child.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - begin
    if child.returncode != 0:
        raise SystemExit(f"lipcheck exited with {child.returncode}: {' '.join(command)}")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=None, help="default 256, or 4096 with --memory")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="run the memory benchmark instead")
    parser.add_argument("--gigabytes", type=float, default=1.1)
    parser.add_argument("--features", type=int, default=1024, help="--memory: values per sample")
    parser.add_argument(
        "--memory-samples", type=int, default=None, help="--memory: this many samples instead of --gigabytes"
    )
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "lipcheck-bench")
    options = parser.parse_args()
    if options.memory:
        memory(
            options.folder,
            options.gigabytes,
            options.batch_size or 4096,
            options.features,
            options.memory_samples,
        )
    else:
        overhead(options.samples, options.batch_size or 256, options.repeats)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
