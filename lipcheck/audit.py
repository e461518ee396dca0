"""Run an audit: feed a data set's batches through the engine and collect one row per sample.

`audit_rows` is the loop: it takes an index range and a sink for rows, so a shard of a data set (one
torchrun worker) or the rest of an interrupted run are the same call with another range and a sink
that appends to a file. Because the engine starts every sample from the same seeded vector, a
sample's row does not depend on which batch it was in. `run_audit` wraps the loop with provenance,
summary and gate into a `Report`.

The model is called exactly once per batch (the engine's single evaluation); this module only wraps
that call to pass `--arg` keyword arguments, to pick `--output-key`, and to turn the model's failures
into messages that name the samples and the shapes involved.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from lipcheck import __version__
from lipcheck.bounds import upper_bound
from lipcheck.datasets import Dataset
from lipcheck.engine import spectral_norm
from lipcheck.errors import AuditFailedError, InputError, LipcheckError, ModelOutputError
from lipcheck.gate import Rule, judge
from lipcheck.models import LoadedModel
from lipcheck.report import (
    REDUCTIONS,
    BoundReport,
    BoundTiming,
    DataSection,
    Environment,
    ModelBoundReport,
    ModelSection,
    Report,
    SampleResult,
    Settings,
    Timing,
    finite_or_none,
    summarise,
)
from lipcheck.search import SearchResult, worst_case_search

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")

RowSink = Callable[[Sequence[SampleResult]], None]
Progress = Callable[[int], None]


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; 'cuda' without a GPU is an InputError."""
    if name not in DEVICES:
        raise InputError(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


def select_output(output: Any, key: str | None) -> Any:
    """The entry `key` of a dict or tuple output (`--output-key`), or the output itself."""
    if isinstance(output, Mapping):
        keys = ", ".join(repr(k) for k in output)
        if key is None:
            raise ModelOutputError(
                f"the model returned a dict with keys {keys}: choose one with --output-key"
            )
        if key not in output:
            raise ModelOutputError(f"--output-key {key!r} is not among the model's outputs {keys}")
        return output[key]
    if isinstance(output, (tuple, list)):
        last = len(output) - 1
        if key is None:
            raise ModelOutputError(
                f"the model returned a {type(output).__name__} of {len(output)} outputs: "
                f"choose one with --output-key 0..{last}"
            )
        if key.isdigit() and int(key) <= last:
            return output[int(key)]
        named = getattr(output, "_fields", ())
        if key in named:
            return getattr(output, key)
        raise ModelOutputError(
            f"--output-key {key!r} does not pick one of the model's {len(output)} outputs: use 0..{last}"
        )
    if key is not None and isinstance(output, Tensor):
        raise ModelOutputError(
            f"the model returns one tensor, so --output-key {key!r} does not apply: drop it"
        )
    return output


def _expected_shape(model: LoadedModel) -> str:
    if not model.input_spec:
        return ""
    shape = model.input_spec[0].shape
    shown = ", ".join(
        str(d) if isinstance(d, int) else ("B" if i == 0 else str(d)) for i, d in enumerate(shape)
    )
    hint = ""
    if shape and isinstance(shape[0], int):
        hint = (
            f"; it was exported with a fixed batch of {shape[0]}: export it with a dynamic batch "
            f"dimension (dynamic_shapes) or pass --batch-size {shape[0]}"
        )
    return f"; the model file records input shape ({shown}){hint}"


def audit_rows(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    *,
    indices: range,
    sink: RowSink,
    progress: Progress | None = None,
) -> None:
    """Audit the samples `indices` of `data` batch by batch, passing each batch's rows to `sink`.

    The model must already be on the settings' device and dtype (`run_audit` does that). Raises
    InputError or ModelOutputError for bad input (the message names the data and the samples), and
    AuditFailedError when the model's output is NaN or Inf or the Jacobian products fail.
    """
    device = resolve_device(settings.device)
    dtype = DTYPES[settings.dtype]
    module = model.module
    kwargs = dict(settings.model_kwargs)
    for batch, x in data.batches(indices, settings.batch_size, dtype):
        where = f"{data.name} samples {batch.start}-{batch.stop - 1}"
        shape = tuple(x.shape)

        def call(inputs: Tensor, shape: tuple[int, ...] = shape, first: int = batch.start) -> Any:
            try:
                output = module(inputs, **kwargs)
            except Exception as error:
                raise InputError(
                    f"rejected input of shape {shape} ({type(error).__name__}: {_first_line(error)})"
                    f"{_expected_shape(model)}"
                ) from error
            output = select_output(output, settings.output_key)
            if isinstance(output, Tensor) and output.is_floating_point() and output.dim() > 0:
                finite = torch.isfinite(output.reshape(output.shape[0], -1)).all(1)
                if not bool(finite.all()):
                    bad = first + int((~finite).nonzero()[0, 0])
                    raise AuditFailedError(
                        f"returned NaN or Inf at sample {bad}, so it cannot be measured there; "
                        "check the model at that input"
                    )
            return output

        try:
            if settings.search_steps is not None:
                found = worst_case_search(
                    call,
                    x.to(device),
                    radius=float(settings.search_radius or 0.0),
                    steps=settings.search_steps,
                    **_engine_options(settings),
                )
                result = found.start
            else:
                result = spectral_norm(call, x.to(device), **_engine_options(settings))
        except LipcheckError as error:
            raise type(error)(f"model '{model.path}' on {where}: {error}") from error
        except Exception as error:
            raise AuditFailedError(
                f"model '{model.path}' on {where}: the Jacobian products failed "
                f"({type(error).__name__}: {_first_line(error)})"
            ) from error
        sigma = result.sigma.double().cpu().tolist()
        iterations = result.iterations.cpu().tolist()
        converged = result.converged.cpu().tolist()
        residual = result.residual.double().cpu().tolist()
        upper = result.sigma_upper.double().cpu().tolist()
        rows = [
            SampleResult(
                i, sigma[k], iterations[k], bool(converged[k]), finite_or_none(residual[k]),
                finite_or_none(upper[k]),
            )
            for k, i in enumerate(batch)
        ]  # fmt: skip
        if settings.search_steps is not None:
            rows = _with_search(rows, found)
        sink(rows)
        if progress is not None:
            progress(len(batch))


def _engine_options(settings: Settings) -> dict[str, Any]:
    """The engine's keyword arguments from the audit's settings (for `spectral_norm` and the search)."""
    return {
        "method": settings.method,
        "max_iter": settings.max_iter,
        "tol": settings.tol,
        "seed": settings.seed,
        "krylov_dim": settings.krylov_dim,
        "confidence": settings.confidence,
    }


def _with_search(rows: list[SampleResult], found: SearchResult) -> list[SampleResult]:
    """The rows with the search's figures: the largest sigma found and how far from the sample."""
    searched = found.sigma.double().cpu().tolist()
    distance = found.distance.double().cpu().tolist()
    return [replace(row, search_sigma=searched[k], search_distance=distance[k]) for k, row in enumerate(rows)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def environment(device: torch.device) -> Environment:
    name = str(device)
    if device.type == "cuda":
        name = f"{name} ({torch.cuda.get_device_name(device)})"
    return Environment(
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        device=name,
        threads=torch.get_num_threads(),
    )


def model_section(model: LoadedModel) -> ModelSection:
    return ModelSection(
        path=model.path,
        format=model.format,
        sha256=model.sha256,
        size_bytes=model.size_bytes,
        parameters=model.parameters,
        trusted=model.trusted,
        arch=model.arch,
        arch_kwargs=dict(model.arch_kwargs),
        input_spec=tuple(asdict(spec) for spec in model.input_spec),
    )


def data_section(data: Dataset) -> DataSection:
    """What was audited, with the hash of the samples (free after an audit read them in order)."""
    info = data.info
    return DataSection(
        info.path, info.kind, info.key, info.count, info.total, info.sample_shape, info.dtype, info.seed,
        data.sha256(),
    )  # fmt: skip


def run_audit(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    *,
    rules: Sequence[Rule] = (),
    progress: Progress | None = None,
    load_seconds: float = 0.0,
    bound: BoundReport | None = None,
) -> Report:
    """Audit every sample of `data` and return the report, with the gate judged by `rules`.

    `bound`, the model's certified upper bound (`bound_model`), goes into the report with the bracket
    [largest sigma found, bound]. Moves the model to the settings' device and dtype (in place). Raises
    InputError for bad input, AuditFailedError when the audit itself fails (see `audit_rows`).
    """
    check_settings(settings)
    device = resolve_device(settings.device)
    if isinstance(model.module, torch.nn.Module):
        model.module.to(device=device, dtype=DTYPES[settings.dtype])
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[SampleResult] = []
    begin = time.perf_counter()
    audit_rows(model, data, settings, indices=range(len(data)), sink=rows.extend, progress=progress)
    seconds = time.perf_counter() - begin
    report = Report(
        model=model_section(model),
        data=data_section(data),
        settings=settings,
        environment=environment(device),
        timing=Timing(
            started=started,
            load_seconds=load_seconds,
            audit_seconds=seconds,
            total_seconds=load_seconds + seconds,
            samples_per_second=len(rows) / seconds if seconds > 0 else 0.0,
        ),
        samples=tuple(rows),
        summary=summarise(rows, settings.reduction),
        lipcheck_version=__version__,
        bound=bound,
    )
    return replace(report, gate=judge(rules, report))


def check_settings(settings: Settings) -> None:
    """InputError naming the flag of the first setting out of range."""
    if settings.method not in ("lanczos", "power"):
        raise InputError(f"--method {settings.method!r} is not one of lanczos, power")
    if settings.dtype not in DTYPES:
        raise InputError(f"--dtype {settings.dtype!r} is not one of {', '.join(DTYPES)}")
    if not 0 < settings.tol < 1:
        raise InputError(f"--tol must be in (0, 1), got {settings.tol:g}")
    if not 0 < settings.confidence < 1:
        raise InputError(f"--confidence must be in (0, 1), such as 0.99, got {settings.confidence:g}")
    if settings.max_iter < 1:
        raise InputError(f"--max-iter must be at least 1, got {settings.max_iter}")
    if settings.reduction not in REDUCTIONS:
        raise InputError(f"--reduction {settings.reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if settings.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {settings.batch_size}")
    check_search_settings(settings)


def check_search_settings(settings: Settings) -> None:
    """InputError naming the flag unless --search-steps and --search-radius come together, >= 0."""
    steps, radius = settings.search_steps, settings.search_radius
    if steps is not None and radius is None:
        raise InputError(
            "--search-steps needs --search-radius R, the l2 radius of the search around each sample"
        )
    if radius is not None and steps is None:
        raise InputError("--search-radius needs --search-steps N, the number of ascent steps")
    if steps is not None and steps < 0:
        raise InputError(f"--search-steps must be at least 0, got {steps}")
    if radius is not None and not (radius >= 0 and math.isfinite(radius)):
        raise InputError(f"--search-radius must be a finite number >= 0, got {radius:g}")


class _AuditedFunction(torch.nn.Module):
    """x -> the audited output of module(x, **model_kwargs): what an audit measures, as one module."""

    def __init__(self, module: Any, model_kwargs: Mapping[str, Any], output_key: str | None) -> None:
        super().__init__()
        self.module = module
        self.model_kwargs = dict(model_kwargs)
        self.output_key = output_key

    def forward(self, x: Tensor) -> Any:
        return select_output(self.module(x, **self.model_kwargs), self.output_key)


def bound_model(
    model: LoadedModel,
    input_shape: Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    settings: Settings | None = None,
) -> BoundReport:
    """The certified upper bound of a loaded model (`lipcheck.upper_bound`); errors name the model file.

    With audit `settings`, the bound is of the function the audit measures: the model called with the
    settings' `model_kwargs` (`--arg`), and only the output `output_key` picks (`--output-key`), so the
    bracket compares like with like. Without, it is of the model's default call, all outputs together.
    """
    module: Any = model.module
    if settings is not None and (settings.model_kwargs or settings.output_key is not None):
        module = _AuditedFunction(module, settings.model_kwargs, settings.output_key)
    try:
        return upper_bound(module, tuple(input_shape), assume=assume)
    except LipcheckError as error:
        raise type(error)(f"model '{model.path}': {error}") from error


def run_bound(
    model: LoadedModel,
    input_shape: Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    load_seconds: float = 0.0,
) -> ModelBoundReport:
    """`lipcheck bound`: the certified bound of a model file at one input shape, with provenance."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    begin = time.perf_counter()
    bound = bound_model(model, input_shape, assume=assume)
    seconds = time.perf_counter() - begin
    return ModelBoundReport(
        model=model_section(model),
        environment=environment(torch.device("cpu")),
        timing=BoundTiming(started=started, load_seconds=load_seconds, bound_seconds=seconds),
        bound=bound,
        lipcheck_version=__version__,
    )


def check_converged(report: Report) -> None:
    """AuditFailedError when no sample converged: the figures are then not estimates of anything."""
    if report.summary.count and report.summary.converged == 0:
        raise AuditFailedError(
            f"no sample converged within --max-iter {report.settings.max_iter} at --tol "
            f"{report.settings.tol:g}: raise --max-iter or --tol (the report holds the unconverged figures)"
        )
