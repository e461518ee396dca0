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

import inspect
import json
import platform
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import lipcheck
from lipcheck import __version__
from lipcheck.bounds import upper_bound
from lipcheck.choices import Device, Dtype, Operator
from lipcheck.compare import comparable
from lipcheck.datasets import Dataset, batches_dataset, open_dataset, random_dataset, tensor_dataset
from lipcheck.engine import SpectralNormResult, operator_output, spectral_norm
from lipcheck.errors import (
    AuditFailedError,
    InputError,
    LipcheckError,
    LipcheckWarning,
    ModelOutputError,
    describe,
)
from lipcheck.file_formats import MAX_READ_BYTES
from lipcheck.gate import Rule, RuleOptions, judge, rules_for
from lipcheck.models import LoadedModel, load_model, wrap_model
from lipcheck.report import (
    BoundReport,
    BoundTiming,
    DataSection,
    Directions,
    Environment,
    ModelBoundReport,
    ModelSection,
    Report,
    SampleResult,
    Settings,
    Timing,
    finite_or_none,
    largest_sigma,
    path_text,
    summarise,
)
from lipcheck.request import AuditRequest, DataSource, ModelSource
from lipcheck.search import SearchResult, worst_case_search

RowSink = Callable[[Sequence[SampleResult]], None]
Progress = Callable[[int], None]
# A batch's data indices, the engine's result at its samples, and the samples x (B, ...).
DirectionSink = Callable[[Sequence[int], SpectralNormResult, Tensor], None]


# Where a traceback's frames are not the model's code: torch's and lipcheck's own modules.
_LIBRARY_FOLDERS = tuple(str(Path(module.__file__).resolve().parent) for module in (torch, lipcheck))


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; 'cuda' without a GPU is an InputError."""
    name = Device(name).value
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


def _fits(shape: tuple[int, ...], recorded: tuple[int | str, ...], *, ranges: bool = False) -> bool:
    """Whether an input of `shape` fits the shape a model file records: the same rank, every static size
    equal, and with `ranges` every dynamic size ('2..64') at most its range's end. Not below its start:
    torch.export records a batch range from 2 that its program runs at 1."""
    if len(shape) != len(recorded):
        return False
    for size, dim in zip(shape, recorded, strict=True):
        if isinstance(dim, int):
            if size != dim:
                return False
        elif ranges and dim.partition("..")[2].isdigit() and size > int(dim.partition("..")[2]):
            return False
    return True


def _where_raised(error: BaseException) -> str:
    """'file:line' of the innermost frame of the model's code (not torch's, not lipcheck's) in the
    error's traceback; '' when there is none (a TorchScript or exported model runs inside torch)."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if not str(Path(f.filename).resolve()).startswith(_LIBRARY_FOLDERS)]
    return f"{own[-1].filename}:{own[-1].lineno}" if own else ""


def _check_model_args(module: Any, kwargs: Mapping[str, Any]) -> None:
    """InputError naming --arg when the keywords cannot be passed to the module's forward with one
    input (an unknown name, or the name of the input itself)."""
    if not kwargs:
        return
    forward = getattr(module, "forward", module)
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):  # a builtin or a compiled module: the call itself will tell
        return
    try:
        signature.bind(None, **kwargs)
    except TypeError as error:
        given = " ".join(f"--arg {k}={json.dumps(v)}" for k, v in kwargs.items())
        raise InputError(
            f"{given} does not fit the model's forward{signature} ({error}): pass only its keyword "
            "parameters other than the input"
        ) from None


def audit_rows(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    *,
    indices: range,
    sink: RowSink,
    progress: Progress | None = None,
    directions: DirectionSink | None = None,
) -> None:
    """Audit the samples `indices` of `data` batch by batch, passing each batch's rows to `sink` (and
    the engine's results with the samples to `directions`, when given).

    The model must already be on the settings' device and dtype (`run_audit` does that). Raises
    InputError or ModelOutputError for bad input (the message names the data and the samples), and
    AuditFailedError when the model's output is NaN or Inf or the Jacobian products fail.
    """
    device = resolve_device(settings.device)
    for batch, x in data.batches(indices, settings.batch_size, torch_dtype(settings.dtype)):
        where = f"model '{model.path}' on {data.name} samples {batch.start}-{batch.stop - 1}"
        try:
            call = _guarded_call(model, settings, tuple(x.shape), batch.start)
            result, found = _measure(call, x.to(device), settings)
        except LipcheckError as error:
            raise error.with_context(where) from error
        except Exception as error:
            if _out_of_memory(error):
                raise _out_of_memory_error(error, settings).with_context(where) from error
            raise AuditFailedError(f"{where}: the Jacobian products failed ({describe(error)})") from error
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
        if found is not None:
            rows = _with_search(rows, found)
        if directions is not None:
            directions(list(batch), result, x)
        sink(rows)
        if progress is not None:
            progress(len(batch))


def _guarded_call(
    model: LoadedModel, settings: Settings, shape: tuple[int, ...], first: int
) -> Callable[[Tensor], Any]:
    """The model's call on one batch (of `shape`, starting at sample `first`) as the engine makes it:
    with the `--arg` keywords, the `--output-key` output, and the model's failures as lipcheck errors
    that say what happened (a rejected input, out of memory, a bug of the model, NaN output)."""
    module, kwargs = model.module, dict(settings.model_kwargs)
    _check_model_args(module, kwargs)
    if model.input_spec and not _fits(shape, model.input_spec[0].shape):
        raise InputError(f"the input of shape {shape} does not fit the model{_expected_shape(model)}")

    def call(inputs: Tensor) -> Any:
        try:
            output = module(inputs, **kwargs)
        except LipcheckError:
            raise
        except (Exception, SystemExit) as error:  # model code cannot end the process
            if _out_of_memory(error):
                raise _out_of_memory_error(error, settings) from error
            if model.input_spec and not _fits(shape, model.input_spec[0].shape, ranges=True):
                raise InputError(
                    f"the input of shape {shape} is out of the range the model was exported for "
                    f"({describe(error)}){_expected_shape(model)}"
                ) from error
            raise AuditFailedError(_model_raised(error, shape)) from error
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

    return call


def _model_raised(error: BaseException, shape: tuple[int, ...]) -> str:
    """What a model's exception says in an audit failure: its first line, where it was raised, the input."""
    where = _where_raised(error)
    context = f"(at {where}, on inputs of shape {shape})" if where else f"(on inputs of shape {shape})"
    if isinstance(error, SystemExit):
        return (
            f"the model raised SystemExit({error.code!r}) {context}: model code cannot end the audit; "
            "remove the exit from the model"
        )
    said = describe(error)
    lines = str(error).strip().splitlines()
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        said = lines[-1].strip()  # TorchScript puts its own traceback first and the error last
    return f"the model raised {said} {context}: check the model there"


def _measure(
    call: Callable[[Tensor], Any], x: Tensor, settings: Settings
) -> tuple[SpectralNormResult, SearchResult | None]:
    """The engine's result at the samples x (B, ...), and the worst-case search's when one is asked."""
    if settings.search_steps is None:
        return spectral_norm(call, x, **_engine_options(settings)), None
    radius = float(settings.search_radius or 0.0)
    found = worst_case_search(
        call, x, radius=radius, steps=settings.search_steps, **_engine_options(settings)
    )
    return found.start, found


def _engine_options(settings: Settings) -> dict[str, Any]:
    """The engine's keyword arguments from the audit's settings (for `spectral_norm` and the search)."""
    return {
        "operator": settings.operator,
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


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `Dtype` choice ('float32' -> torch.float32)."""
    dtype: torch.dtype = getattr(torch, Dtype(name).value)
    return dtype


def _out_of_memory(error: BaseException) -> bool:
    """A CUDA or CPU allocation failure, which a smaller batch may avoid."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "DefaultCPUAllocator" in text)


def _out_of_memory_error(error: BaseException, settings: Settings) -> AuditFailedError:
    return AuditFailedError(
        f"ran out of memory with batches of {settings.batch_size} samples ({describe(error)}): "
        "lower --batch-size"
    )


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
        path=path_text(model.path),
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
    path = None if info.path is None else path_text(info.path)
    return DataSection(
        path, info.kind, info.key, info.count, info.total, info.sample_shape, info.dtype, info.seed,
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
    directions: int | None = 0,
    pictures: int = 0,
) -> Report:
    """Audit every sample of `data` and return the report, with the gate judged by `rules`.

    `bound`, the model's certified upper bound (`bound_model`), goes into the report with the bracket
    [largest sigma found, bound]. With `directions` K (None: all) or `pictures` M, the report's
    `directions` keep the most amplified directions of the max(K, M) samples of largest sigma, and the
    inputs of the first M. Moves the model to the settings' device and dtype (in place). Raises
    InputError for bad input, AuditFailedError when the audit itself fails (see `audit_rows`).
    """
    settings.validate()
    device = resolve_device(settings.device)
    if isinstance(model.module, torch.nn.Module):
        model.module.to(device=device, dtype=torch_dtype(settings.dtype))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[SampleResult] = []
    kept = None if directions == 0 and pictures == 0 else _LargestSigma(directions, pictures)
    begin = time.perf_counter()
    audit_rows(
        model, data, settings, indices=range(len(data)), sink=rows.extend, progress=progress,
        directions=kept.add if kept is not None else None,
    )  # fmt: skip
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
        notes=_zero_jacobian_notes(rows),
        directions=kept.result() if kept is not None else None,
    )
    for note in report.notes:
        warnings.warn(note, LipcheckWarning, stacklevel=2)
    return replace(report, gate=judge(rules, report))


class _LargestSigma:
    """Keeps, batch by batch, the most amplified directions of the `keep` samples of largest sigma (all
    when None) and the inputs of the `pictures` largest, so memory is set by those counts, not the data."""

    def __init__(self, keep: int | None, pictures: int) -> None:
        self.keep = None if keep is None else max(keep, pictures)
        self.pictures = pictures
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.inputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # indices, sigma, inputs

    def add(self, indices: Sequence[int], result: SpectralNormResult, x: Tensor) -> None:
        sigma = result.sigma.detach().double().cpu().numpy()
        residual = result.residual.detach().double().cpu().numpy()
        index = np.asarray(indices, dtype=np.int64)
        vectors = result.vector.detach().cpu().numpy()
        self.parts.append((index, sigma, np.where(np.isfinite(residual), residual, np.nan), vectors))
        if self.keep is not None and sum(len(part[0]) for part in self.parts) > 2 * self.keep + 1:
            self.parts = [self._largest(self.parts, self.keep)]
        if self.pictures:
            samples = x.detach().cpu().numpy()
            if self.inputs is not None:
                index, sigma, samples = (
                    np.concatenate(pair) for pair in zip(self.inputs, (index, sigma, samples), strict=True)
                )
            order = np.lexsort((index, -sigma))[: self.pictures]
            self.inputs = (index[order], sigma[order], samples[order])

    @staticmethod
    def _largest(parts: Sequence[tuple[np.ndarray, ...]], count: int | None) -> tuple[np.ndarray, ...]:
        index, sigma, residual, vectors = (np.concatenate(column) for column in zip(*parts, strict=True))
        order = np.lexsort((index, -sigma))[:count]
        return index[order], sigma[order], residual[order], vectors[order]

    def result(self) -> Directions:
        index, sigma, residual, vectors = self._largest(self.parts, self.keep)
        inputs = self.inputs[2] if self.inputs is not None else vectors[:0]
        return Directions(index, sigma, residual, vectors, inputs)


def _zero_jacobian_notes(rows: Sequence[SampleResult]) -> tuple[str, ...]:
    """A note when sigma is exactly 0 at every sample (and wherever a search went): a Jacobian audit
    measures the slope, and a step function (round, floor, sign) has slope 0 between its jumps."""
    if not rows or any(largest_sigma(row) != 0 for row in rows):
        return ()
    return (
        f"the Jacobian is exactly zero at all {len(rows)} samples: the model is constant around them, or "
        "piecewise constant (round, floor, sign), whose jumps a Jacobian audit cannot see; sigma 0 "
        "is then no bound on how much the model can amplify a perturbation",
    )


class _AuditedFunction(torch.nn.Module):
    """x -> the audited output of module(x, **model_kwargs): what an audit measures, as one module.

    With an `operator` other than "model", the output is that operator's (2 f(x) - x or x - f(x),
    `engine.operator_output`), so its exported graph, and the bound composed over it, are of the
    operator the audit measures.
    """

    def __init__(
        self,
        module: Any,
        model_kwargs: Mapping[str, Any],
        output_key: str | None,
        operator: str = Operator.model.value,
    ) -> None:
        super().__init__()
        self.module = module
        self.model_kwargs = dict(model_kwargs)
        self.output_key = output_key
        self.operator = operator

    def forward(self, x: Tensor) -> Any:
        output = select_output(self.module(x, **self.model_kwargs), self.output_key)
        if self.operator == Operator.model:
            return output
        if not isinstance(output, Tensor):
            raise ModelOutputError(
                f"--operator {self.operator} needs one output tensor of the input's shape, and the model "
                f"returned {type(output).__name__}: pick one with --output-key"
            )
        return operator_output(output, x, self.operator)


def bound_model(
    model: LoadedModel,
    input_shape: Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    settings: Settings | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    method: str = "liplt",
) -> BoundReport:
    """The certified upper bound of a loaded model (`lipcheck.upper_bound`); errors name the model file.

    With audit `settings`, the bound is of the function the audit measures: the model called with the
    settings' `model_kwargs` (`--arg`), only the output `output_key` picks (`--output-key`), and the
    settings' `operator` (2f - Id or Id - f exported as one graph and bounded through it), so the
    bracket compares like with like. Without, it is of the model called with `model_kwargs` (`lipcheck
    bound --arg`), all outputs together.
    """
    module: Any = model.module
    kwargs = settings.model_kwargs if settings is not None else (model_kwargs or {})
    output_key = settings.output_key if settings is not None else None
    operator = settings.operator if settings is not None else Operator.model.value
    if kwargs or output_key is not None or operator != Operator.model:
        module = _AuditedFunction(module, kwargs, output_key, operator)
    try:
        return upper_bound(module, tuple(input_shape), assume=assume, method=method)
    except LipcheckError as error:
        refused = _operator_refusal(error)
        if refused is not None:  # torch.export wraps the shape refusal of the operator: say it plainly
            raise refused.with_context(f"model '{model.path}'") from error
        raise error.with_context(f"model '{model.path}'") from error


def _operator_refusal(error: BaseException) -> ModelOutputError | None:
    """The ModelOutputError of `_AuditedFunction` (an output the operator cannot take) among the causes
    of an error of the bound, where torch.export's tracing wrapped it; None when there is none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ModelOutputError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def run_bound(
    model: LoadedModel,
    input_shape: Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    load_seconds: float = 0.0,
    method: str = "liplt",
) -> ModelBoundReport:
    """`lipcheck bound`: the certified bound of a model file at one input shape, with provenance; the
    model is called with `model_kwargs` (`--arg`) besides the input."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    begin = time.perf_counter()
    bound = bound_model(model, input_shape, assume=assume, model_kwargs=model_kwargs, method=method)
    seconds = time.perf_counter() - begin
    return ModelBoundReport(
        model=model_section(model),
        environment=environment(torch.device("cpu")),
        timing=BoundTiming(started=started, load_seconds=load_seconds, bound_seconds=seconds),
        bound=bound,
        lipcheck_version=__version__,
    )


def check_converged(report: Report) -> None:
    """AuditFailedError (carrying the report) when no sample converged: the figures are then not
    estimates of anything."""
    if report.summary.count and report.summary.converged == 0:
        error = AuditFailedError(
            f"no sample converged within --max-iter {report.settings.max_iter} at --tol "
            f"{report.settings.tol:g}: raise --max-iter or --tol (the report holds the unconverged figures)"
        )
        error.report = report
        raise error


def load_source(source: ModelSource) -> LoadedModel:
    """The model of a request: a file loaded with `load_model`, or a module in memory described."""
    if source.is_path:
        return load_model(
            source.model, arch=source.arch, arch_kwargs=source.arch_kwargs, trust_pickle=source.trust_pickle
        )
    return wrap_model(source.model)


def open_source(source: DataSource, seed: int) -> Dataset:
    """The data of a request: a path, random samples, a tensor or array, or an iterable of batches."""
    if source.random_shape is not None:
        return random_dataset(source.random_shape, source.num_samples or 0, seed=seed)
    if isinstance(source.data, (str, Path)):
        return open_dataset(
            source.data, key=source.key, limit=source.limit, max_read_bytes=source.max_read_bytes
        )
    if isinstance(source.data, (Tensor, np.ndarray)):
        return tensor_dataset(source.data, limit=source.limit)
    if isinstance(source.data, Iterable):
        return batches_dataset(source.data, key=source.key, limit=source.limit)
    raise InputError(
        f"data must be a path, a tensor (N, ...) or an iterable of batches, got {type(source.data).__name__}"
    )


def run(request: AuditRequest, progress: Callable[[int, int], None] | None = None) -> Report:
    """Carry out an audit request: load, bound, audit every sample, judge the rules, check convergence.

    This is what `lipcheck audit` does between parsing its flags and writing the report. `progress`
    is called after each batch with (samples done in it, samples in all). A baseline
    that does not compare with the audited data and settings stops the run before the audit (unless
    `rules.allow_mismatch`: then a `LipcheckWarning`). Raises InputError for bad input and
    AuditFailedError when the audit fails; when no sample converged, the error's `report` holds the
    unconverged figures.
    """
    options, settings = request.rules, request.settings
    baseline = options.read_baseline()
    begin = time.perf_counter()
    model = load_source(request.model)
    data = open_source(request.data, settings.seed)
    load_seconds = time.perf_counter() - begin
    # Bounded before the audit: a model that cannot be bounded fails in seconds, not after the audit.
    certified = (
        bound_model(
            model,
            data.info.sample_shape,
            assume=request.assume,
            settings=settings,
            method=request.bound_method,
        )
        if request.with_bound
        else None
    )
    mismatched: list[str] = []
    if baseline is not None:  # hashes the data now, so a mismatch stops before the audit
        what = f"baseline report '{options.baseline}' and this audit"
        mismatched = comparable(baseline, settings, data_section(data), what, options.allow_mismatch)
    advance = (lambda done: progress(done, len(data))) if progress is not None else None
    report = run_audit(
        model, data, settings, progress=advance, load_seconds=load_seconds, bound=certified,
        directions=request.top if request.save_directions is not None else 0, pictures=request.pictures,
    )  # fmt: skip
    rules = rules_for(options, report, baseline=baseline, mismatched=mismatched)
    report = replace(report, gate=judge(rules, report))
    check_converged(report)
    return report


_RULE_FIELDS = frozenset(f.name for f in fields(RuleOptions))
_SETTING_FIELDS = frozenset(f.name for f in fields(Settings))


def audit(
    model: AuditRequest | str | Path | Callable[..., Any],
    data: str | Path | Tensor | np.ndarray | Iterable[Any] | None = None,
    *,
    data_key: str | None = None,
    limit: int | None = None,
    max_read_bytes: int = MAX_READ_BYTES,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    bound: bool = False,
    assume: Mapping[str, float] | None = None,
    bound_method: str = "liplt",
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Report:
    """Audit `model` on `data` and return the `Report` that `lipcheck audit` writes; for test suites.

    `model` is a model file (as for `lipcheck audit`, with `arch`, `arch_kwargs`, `trust_pickle`), an
    nn.Module (put in eval mode and moved to the device and dtype, in place) or a callable; or a
    prepared `AuditRequest`, then the only argument. `data` is a data file or image folder (with
    `data_key`, `limit`, and `max_read_bytes` as `--max-read-bytes`), a tensor or array (N, ...), or an
    iterable of batches such as a DataLoader (a batch may be a tensor or a tuple (inputs, labels);
    `data_key` picks another entry). `bound`, `assume` and `bound_method` ("liplt" or "product") are
    `--bound`, `--assume` and `--bound-method`.
    The other keyword arguments are `Settings` fields (operator, method, tol, confidence, max_iter,
    seed, batch_size, device, dtype, reduction, krylov_dim, output_key, model_kwargs, search_steps,
    search_radius) and gate rules (fail_above, fail_above_sample, require_converged, fail_above_bound,
    baseline, max_increase, allow_mismatch), judged into `report.gate`.

    Raises InputError for bad input and AuditFailedError when the audit fails (as `run`)::

        report = lipcheck.audit(model, loader, max_iter=100)
        assert report.summary.max < 2
        report = lipcheck.audit(denoiser, images, operator="fne", fail_above=1)  # firmly nonexpansive?
        assert report.gate.passed
    """
    if isinstance(model, AuditRequest):
        if (
            data is not None
            or options
            or bound
            or assume
            or arch
            or arch_kwargs
            or trust_pickle
            or (bound_method != "liplt")
        ):
            raise InputError("lipcheck.audit(request) takes the AuditRequest alone: put the options in it")
        return run(model, progress)
    unknown = sorted(set(options) - _RULE_FIELDS - _SETTING_FIELDS)
    if unknown:
        raise InputError(
            f"lipcheck.audit() got unknown option(s) {', '.join(unknown)}: use Settings fields "
            f"({', '.join(sorted(_SETTING_FIELDS))}) or rules ({', '.join(sorted(_RULE_FIELDS))})"
        )
    settings = {name: value for name, value in options.items() if name in _SETTING_FIELDS}
    rules = {name: value for name, value in options.items() if name in _RULE_FIELDS}
    if rules.get("baseline") is not None:
        rules["baseline"] = Path(rules["baseline"])
    request = AuditRequest(
        model=ModelSource(model, arch=arch, arch_kwargs=dict(arch_kwargs or {}), trust_pickle=trust_pickle),
        data=DataSource(data, key=data_key, limit=limit, max_read_bytes=max_read_bytes),
        settings=Settings(**settings),
        rules=RuleOptions(**rules),
        bound=bound,
        assume=dict(assume or {}),
        bound_method=bound_method,
    )
    return run(request, progress)
