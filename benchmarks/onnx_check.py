"""What the onnxruntime cross-check of an ONNX file costs, as fractions of the audit it guards.

A conv net with upsampling (3x32x32 -> 3x64x64) is exported with torch.onnx.export, then: loaded with
and without the onnxruntime session (the session's cost), its first batch run with and without the
check (the check's cost: one onnxruntime forward pass and a comparison), and audited. Prints seconds
and the two costs as fractions of the audit. Needs onnx, onnx2torch and onnxruntime.

    python benchmarks/onnx_check.py    # about a minute on 2 CPU cores
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lipcheck
from lipcheck.io import onnx as onnx_files
from lipcheck.io.models import load_model

SAMPLES, BATCH = 16, 16


def timed(run: Callable[[], Any], repeats: int = 3) -> float:
    """The best of `repeats` wall times of `run`."""
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - begin)
    return best


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(32, 3, 3, padding=1),
    ).eval()  # fmt: skip
    x = torch.randn(SAMPLES, 3, 32, 32)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "conv.onnx"
        torch.onnx.export(model, (x[:2],), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17)  # fmt: skip
        checked = timed(lambda: load_model(path))
        with_session = onnx_files._runtime_check
        onnx_files._runtime_check = lambda proto, where: (None, "not checked")  # the load without a session
        unchecked = timed(lambda: load_model(path))
        onnx_files._runtime_check = with_session
        module = load_model(path).module
        forward = timed(lambda: module.converted(x[:BATCH]))
        fresh = iter([load_model(path).module for _ in range(3)])  # each checks its first call only
        first = timed(lambda: next(fresh)(x[:BATCH]))
        audit = timed(lambda: lipcheck.audit(path, x, batch_size=BATCH, max_iter=50), repeats=1)
    session, check = checked - unchecked, first - forward
    print(f"load: {checked:.3f} s with the onnxruntime session, {unchecked:.3f} s without ({session:.3f} s)")
    print(f"first batch of {BATCH}: {first:.3f} s checked, {forward:.3f} s not ({check:.3f} s)")
    print(f"audit of {SAMPLES} samples: {audit:.2f} s")
    print(f"session / audit = {session / audit:.2%}, check / audit = {check / audit:.2%}")


if __name__ == "__main__":
    main()
