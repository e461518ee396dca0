"""Shared helpers of the command-line tests: tiny model factories (also used as --arch), model and
data files in every format, a CLI runner, and exact per-sample spectral norms from dense Jacobians.

The factories are importable by path, so a test passes `--arch {ARCH}:make_mlp`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from lipcheck.cli import app
from lipcheck.report import (
    DataSection,
    Environment,
    ModelSection,
    Report,
    SampleResult,
    Settings,
    Timing,
    report_schema,
    summarise,
)
from lipcheck.report.gate import FailAbove, judge

ARCH = Path(__file__).resolve()

# Limits of a test that waits on another process. On a busy two-core machine, starting Python and torch
# alone can take a minute, so they are generous: they only bound a hang, and a test waits on a readiness
# signal (a file the model writes, a line it prints), never on the clock.
STARTUP_SECONDS = 600  # until a started process signals that it is ready
EXIT_SECONDS = 300  # until a process that was told to end (or just runs its course) has ended
IN_FEATURES = 6


def _seed_parameters(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


class MLP(nn.Module):
    def __init__(self, features: int = IN_FEATURES, hidden: int = 8, out: int = 4) -> None:
        super().__init__()
        self.first = nn.Linear(features, hidden)
        self.second = nn.Linear(hidden, out)
        _seed_parameters(self, 3)

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return scale * self.second(torch.tanh(self.first(x)))


class MultiOutput(MLP):
    """Returns a dict {"out": f(x), "twice": 2 f(x)} or a tuple (f(x), 2 f(x))."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, x: Tensor, scale: float = 1.0) -> Any:  # type: ignore[override]
        y = super().forward(x, scale)
        return (y, 2 * y) if self.as_tuple else {"out": y, "twice": 2 * y}


class SmallConv(nn.Module):
    """(B, C, H, W) -> (B, 2, H, W)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)
        _seed_parameters(self, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(torch.tanh(self.conv1(x)))


class CountingMLP(MLP):
    """Appends one line per forward call to `log`: the batch size and whether it was in training mode."""

    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        with open(self.log, "a") as stream:
            stream.write(json.dumps({"batch": x.shape[0], "training": self.training}) + "\n")
        return super().forward(x, scale)


class SqrtModel(nn.Module):
    """sqrt(x): NaN wherever the input is negative."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(x)


class StringModel(nn.Module):
    def forward(self, x: Tensor) -> str:
        return "not a tensor"


class RaisingMLP(MLP):
    """Raises `error` (a name in `RAISED`) from its forward: a model that runs out of memory or has a bug."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        raise RAISED[self.error]


RAISED: dict[str, BaseException] = {
    "cuda-oom": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "cpu-oom": RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"),
    "bug": KeyError("layer4"),
    "exit": SystemExit(0),
    "interrupt": KeyboardInterrupt(),
}


class InPlaceMLP(MLP):
    """Scales its input in place: autograd refuses that on the audited input (a leaf that needs grad)."""

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        x.mul_(2)
        return super().forward(x, scale)


class SlowMLP(MLP):
    """Creates the file `started` on its first call, then takes `seconds` per call: a run to interrupt."""

    def __init__(self, started: str, seconds: float = 60.0) -> None:
        super().__init__()
        self.started, self.seconds = started, seconds

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        Path(self.started).touch()
        time.sleep(self.seconds)
        return super().forward(x, scale)


def make_raising(error: str) -> nn.Module:
    return RaisingMLP(error)


class MemoryBoundMLP(MLP):
    """Raises torch.OutOfMemoryError on a batch of more than `most` samples, as a GPU would; appends the
    batch size of each call to the file `calls` when given."""

    def __init__(self, most: int, calls: str | None = None) -> None:
        super().__init__()
        self.most, self.calls = most, calls

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        if self.calls is not None:
            with open(self.calls, "a") as log:
                log.write(f"{x.shape[0]}\n")
        if x.shape[0] > self.most:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
        return super().forward(x, scale)


def make_memory_bound(most: int, calls: str | None = None) -> nn.Module:
    return MemoryBoundMLP(most, calls)


class FragileMLP(MLP):
    """Raises ValueError on an input with a value above `limit`: a model bug that one batch meets."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        if bool((x.abs() > self.limit).any()):
            raise ValueError(f"an input above {self.limit}")
        return super().forward(x, scale)


def make_fragile(limit: float) -> nn.Module:
    return FragileMLP(limit)


class PacedMLP(MLP):
    """Takes `seconds` per call; on each call writes its process id to folder/pid-RANK (RANK as torchrun
    sets it, else 0), so that a test can kill that rank while it audits."""

    def __init__(self, folder: str, seconds: float) -> None:
        super().__init__()
        self.folder, self.seconds = Path(folder), seconds

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        (self.folder / f"pid-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
        time.sleep(self.seconds)
        return super().forward(x, scale)


def make_paced(folder: str, seconds: float) -> nn.Module:
    return PacedMLP(folder, seconds)


class FlatMLP(MLP):
    """An MLP whose output autograd cannot connect to the input (detach, no_grad, integers) or whose
    Jacobian is zero everywhere (round, floor, sign): `how` names which."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        if self.how == "no_grad":
            with torch.no_grad():
                return super().forward(x, scale)
        y = super().forward(x, scale)
        flat = {"detach": y.detach, "integers": lambda: y.long().float(), "round": lambda: torch.round(y),
                "floor": lambda: torch.floor(y), "sign": lambda: torch.sign(y)}  # fmt: skip
        return flat[self.how]()


def make_flat(how: str) -> nn.Module:
    return FlatMLP(how)


class WarningMLP(MLP):
    """Warns in its forward, as torch and model code do (a UserWarning)."""

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        warnings.warn("this model warns", UserWarning, stacklevel=1)
        return super().forward(x, scale)


def make_warning() -> nn.Module:
    return WarningMLP()


def make_in_place() -> nn.Module:
    return InPlaceMLP()


def make_slow(started: str) -> nn.Module:
    return SlowMLP(started)


def make_mlp(**kwargs: Any) -> nn.Module:
    return MLP(**kwargs)


def make_multi(as_tuple: bool = False) -> nn.Module:
    return MultiOutput(as_tuple)


def make_conv(channels: int = 3) -> nn.Module:
    return SmallConv(channels)


def make_counting(log: str) -> nn.Module:
    return CountingMLP(log)


def make_sqrt() -> nn.Module:
    return SqrtModel()


def make_string() -> nn.Module:
    return StringModel()


def exact_sigma(f: Callable[[Tensor], Tensor], x: Tensor) -> np.ndarray:
    """||df/dx (x_i)||_2 per sample from the dense Jacobian in float64 (jacrev + matrix_norm)."""
    norms = []
    for sample in x.double():
        jacobian = torch.func.jacrev(lambda z: f(z.unsqueeze(0)).squeeze(0))(sample)
        norms.append(float(torch.linalg.matrix_norm(jacobian.detach().reshape(-1, sample.numel()), ord=2)))
    return np.array(norms)


def reference(module: nn.Module, x: np.ndarray | Tensor, **kwargs: Any) -> np.ndarray:
    module = module.double().eval()
    x = torch.as_tensor(np.asarray(x)).double()
    return exact_sigma(lambda z: module(z, **kwargs), x)


def mlp_inputs(count: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, IN_FEATURES)).astype(np.float32)


def export(module: nn.Module, path: Path, example: Tensor) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


EXACT = ("--dtype", "float64", "--tol", "1e-7", "--batch-size", "4")


class PickledMLP(MLP):
    """A module class that exists only in the tests, so its pickle needs this file's code."""


runner = CliRunner()


def run(*args: Any, env: dict[str, str] | None = None) -> Any:
    """Invoke the CLI in-process (with `env` added to the environment); the result has exit_code,
    stdout and stderr."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def exported_mlp(folder: Path) -> tuple[Path, Path]:
    """The MLP exported to folder/mlp.pt2 and its inputs (`mlp_inputs()`) in folder/inputs.npy."""
    np.save(folder / "inputs.npy", mlp_inputs())
    return export(MLP(), folder / "mlp.pt2", torch.from_numpy(mlp_inputs(2))), folder / "inputs.npy"


def saved_mlp(folder: Path) -> dict[str, Path]:
    """The MLP's weights in folder/mlp.safetensors (for the factories above) and 4 inputs in folder/x.npy."""
    from safetensors.torch import save_file

    save_file(MLP().state_dict(), folder / "mlp.safetensors")
    np.save(folder / "x.npy", mlp_inputs(4))
    return {"model": folder / "mlp.safetensors", "data": folder / "x.npy"}


def read_json(path: Path) -> dict[str, Any]:
    """A report written by the CLI, checked against the schema."""
    report = json.loads(Path(path).read_text())
    jsonschema.validate(report, report_schema())
    return report


def audit_json(*args: Any) -> dict[str, Any]:
    """Run `lipcheck audit ... --format json`, check exit 0 and the schema, return the report."""
    result = run("audit", *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, report_schema())
    return report


def sigmas(report: dict[str, Any]) -> np.ndarray:
    return np.array([row["sigma"] for row in report["samples"]])


def assert_one_line_error(result: Any, *fragments: str, code: int = 2) -> None:
    """Exit `code`, one line on stderr that contains every fragment, no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lipcheck: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""


def make_report(sigma: list[float], reduction: str = "max", threshold: float | None = None) -> Report:
    """A report of samples 10, 11, ... of these sigmas (even positions converged), gated by --fail-above."""
    rows = tuple(
        SampleResult(10 + i, s, 3, i % 2 == 0, None if i == 1 else 1e-6) for i, s in enumerate(sigma)
    )
    report = Report(
        model=ModelSection(
            "m.pt2",
            "torch.export",
            "0" * 64,
            10,
            5,
            False,
            input_spec=({"name": "x", "shape": ["s0", 4], "dtype": "float32"},),
        ),  # fmt: skip
        data=DataSection("d.npy", "npy", None, len(rows), 100, (4,), "float32", sha256="1" * 64),
        settings=Settings(reduction=reduction, model_kwargs={"sr": 16000}),
        environment=Environment("3.11", "linux", "2.13", "cpu", 2),
        timing=Timing("2025-01-01T00:00:00+00:00", 0.1, 1.0, 1.1, len(rows)),
        samples=rows,
        summary=summarise(rows, reduction),
        lipcheck_version="0.1.0",
    )
    return replace(report, gate=judge([FailAbove(threshold)] if threshold is not None else [], report))


def write_pages(folder: Path) -> dict[str, Path]:
    """HTML pages of a real audit of image data (with the bound and its thumbnails), a comparison
    and a bound, written by the command line into `folder`."""
    from safetensors.torch import save_file

    save_file(SmallConv().state_dict(), folder / "conv.safetensors")
    x = np.random.default_rng(2).standard_normal((9, 3, 6, 6)).astype(np.float32)
    np.save(folder / "x.npy", x)
    model = ("--arch", f"{ARCH}:make_conv")
    pages = {name: folder / f"{name}.html" for name in ("audit", "compare", "bound")}
    data = ("--data", folder / "x.npy")
    audited = run(
        "audit", folder / "conv.safetensors", *model, *data, "--bound", "--fail-above", 10,
        "-o", pages["audit"], "-o", folder / "new.json", "-q",
    )  # fmt: skip
    assert audited.exit_code == 0, audited.stderr
    base = run("audit", folder / "conv.safetensors", *model, "--data", folder / "x.npy", "--tol", "1e-2",
               "-o", folder / "base.json", "-q")  # fmt: skip
    assert base.exit_code == 0, base.stderr
    compared = run(
        "compare", folder / "base.json", folder / "new.json", "--allow-mismatch", "--max-increase", 5,
        "-o", pages["compare"], "-q",
    )  # fmt: skip
    assert compared.exit_code in (0, 1), compared.stderr
    bound = run("bound", folder / "conv.safetensors", *model, "--input-shape", "3x6x6", "-o", pages["bound"])
    assert bound.exit_code == 0, bound.stderr
    return pages
