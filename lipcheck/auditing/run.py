"""Run an audit: feed a data set's batches through the engine and collect one row per sample.

`audit_batch` measures one batch into compact rows (`columns.ROW`), splitting it in halves while it
runs out of memory. `audit_columns` runs the batches of a data set: all of them, or with a `World` of
several ranks (torchrun, `--workers`) batches rank, rank + N, ..., with the rows gathered at the end
(`lipcheck.auditing.distributed`); with a `Journal` (`--resume`), finished batches are read back and new ones
made durable. Because the engine starts every sample from the same seeded vector, a sample's row does
not depend on which batch it was in, so a shard or a resumed rest gives the rows of a whole run.
`audit_rows` is the same loop over an index range, with a sink for `SampleResult`s. `run_audit` wraps
the loop with provenance, summary and gate into a `Report`.

The model is called exactly once per batch (the engine's single evaluation); this module only wraps
that call to pass `--arg` keyword arguments, to pick `--output-key`, and to turn the model's failures
into messages that name the samples and the shapes involved.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import json
import platform
import sys
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

from lipcheck import __version__
from lipcheck.auditing import distributed
from lipcheck.auditing.distributed import World
from lipcheck.auditing.journal import Journal
from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
from lipcheck.auditing.search import SearchResult, worst_case_search
from lipcheck.bounds import upper_bound
from lipcheck.engine import SpectralNormResult, operator_output, spectral_norm
from lipcheck.errors import (
    AuditFailedError,
    InputError,
    LipcheckError,
    LipcheckWarning,
    ModelOutputError,
    describe,
)
from lipcheck.io.datasets import Dataset, batches_dataset, open_dataset, random_dataset, tensor_dataset
from lipcheck.io.file_formats import MAX_READ_BYTES
from lipcheck.io.models import LoadedModel, load_model, wrap_model
from lipcheck.options.choices import Device, Dtype, Operator
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
    largest_sigma,
    path_text,
    summarise,
)
from lipcheck.report.columns import ROW, ColumnStore, SampleColumns, table_to_rows
from lipcheck.report.compare import comparable
from lipcheck.report.gate import Rule, RuleOptions, judge, rules_for

RowSink = Callable[[Sequence[SampleResult]], None]
Progress = Callable[[int], None]
# A batch's data indices, the engine's result at its samples, and the samples x (B, ...).
DirectionSink = Callable[[Sequence[int], SpectralNormResult, Tensor], None]


# Where a traceback's frames are not the model's code: torch's and lipcheck's own modules.
_LIBRARY_FOLDERS = (str(Path(torch.__file__).resolve().parent), str(Path(__file__).resolve().parents[1]))


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
    fitting = _Fitting(settings.batch_size)
    for start in range(indices.start, indices.stop, settings.batch_size):
        batch = range(start, min(start + settings.batch_size, indices.stop))
        sink(table_to_rows(audit_batch(model, data, settings, batch, fitting, directions)))
        if progress is not None:
            progress(len(batch))


class _Fitting:
    """The batch size that fits in memory, lowered by halves when a batch runs out of it."""

    def __init__(self, batch_size: int) -> None:
        self.size = batch_size
        self.split = False  # whether a batch was split (said once on stderr)


def audit_batch(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    batch: range,
    fitting: _Fitting | None = None,
    directions: DirectionSink | None = None,
) -> np.ndarray:
    """The rows (a `columns.ROW` table) of the samples `batch` of `data`, measured as one batch.

    A batch that runs out of memory is split in halves, down to one sample, and the audit goes on at
    the size that fit (`fitting`, said once as a LipcheckWarning); a single sample that does not fit
    fails the audit. Errors as `audit_rows`.
    """
    fitting = fitting or _Fitting(settings.batch_size)
    x = data.read(batch.start, batch.stop, torch_dtype(settings.dtype))
    parts = [batch[start : start + fitting.size] for start in range(0, len(batch), fitting.size)]
    tables = [
        _fitted(model, data.name, settings, part, x, batch.start, fitting, directions) for part in parts
    ]
    return tables[0] if len(tables) == 1 else np.concatenate(tables)


def _fitted(
    model: LoadedModel,
    name: str,
    settings: Settings,
    part: range,
    x: Tensor,
    first: int,
    fitting: _Fitting,
    directions: DirectionSink | None = None,
) -> np.ndarray:
    """The rows of the samples `part` (in the batch `x`, whose first sample is `first`), split in
    halves while they run out of memory."""
    try:
        return _measure_rows(
            model, name, settings, part, x[part.start - first : part.stop - first], directions
        )
    except _OutOfMemory as error:
        if len(part) == 1:
            raise AuditFailedError(
                f"{error.where}: ran out of memory on a single sample ({error.said}), after splitting "
                f"batches of {settings.batch_size} down to one: use a smaller input, or another device "
                "(--device)"
            ) from error
        said = error.said
    # Split outside the except clause: until it ends, the error's traceback holds the failed attempt's
    # frames, and with them its tensors.
    _free_memory()
    half = (len(part) + 1) // 2
    if not fitting.split:
        warnings.warn(
            f"ran out of memory on a batch of {len(part)} samples ({said}): batches are split in halves "
            "until they fit, and the report records the size that did",
            LipcheckWarning,
            stacklevel=2,
        )
        fitting.split = True
    fitting.size = min(fitting.size, half)
    tables, done = [], 0
    while done < len(part):  # in pieces of the size that fits, which may shrink on the way
        piece = part[done : done + fitting.size]
        tables.append(_fitted(model, name, settings, piece, x, first, fitting, directions))
        done += len(piece)
    return np.concatenate(tables)


class _OutOfMemory(Exception):
    """A batch ran out of memory (`said`: the allocator's error); `where` names the model and samples."""

    def __init__(self, where: str, said: str) -> None:
        super().__init__(f"{where}: {said}")
        self.where = where
        self.said = said


def _free_memory() -> None:
    """Give back what an out-of-memory batch left: its tensors (collected) and CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _measure_rows(
    model: LoadedModel,
    name: str,
    settings: Settings,
    part: range,
    x: Tensor,
    directions: DirectionSink | None = None,
) -> np.ndarray:
    """The rows of the samples `part` (x: their inputs), measured in one call of the engine; the
    engine's result goes to `directions` too, when given."""
    device = resolve_device(settings.device)
    where = f"model '{model.path}' on {name} samples {part.start}-{part.stop - 1}"
    try:
        call = _guarded_call(model, settings, tuple(x.shape), part.start)
        result, found = _measure(call, x.to(device), settings)
    except _OutOfMemory as error:
        raise _OutOfMemory(where, error.said) from error.__cause__
    except LipcheckError as error:
        raise error.with_context(where) from error
    except Exception as error:
        if _out_of_memory(error):
            raise _OutOfMemory(where, describe(error)) from error
        raise AuditFailedError(f"{where}: the Jacobian products failed ({describe(error)})") from error
    if directions is not None:
        directions(list(part), result, x)
    table = np.empty(len(part), dtype=ROW)
    table["index"] = np.arange(part.start, part.stop)
    table["sigma"] = result.sigma.double().cpu().numpy()
    table["iterations"] = result.iterations.cpu().numpy()
    table["converged"] = result.converged.cpu().numpy()
    residual = result.residual.double().cpu().numpy()
    upper = result.sigma_upper.double().cpu().numpy()
    table["residual"] = np.where(np.isfinite(residual), residual, np.nan)
    table["sigma_upper"] = np.where(np.isfinite(upper), upper, np.nan)
    if found is None:
        table["search_sigma"] = np.nan
        table["search_distance"] = np.nan
    else:
        table["search_sigma"] = found.sigma.double().cpu().numpy()
        table["search_distance"] = found.distance.double().cpu().numpy()
    return table


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
                raise _OutOfMemory("", describe(error)) from error
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


def give_back_freed_memory() -> None:
    """Have glibc's malloc return large freed blocks to the system, for a process that audits (the
    command line calls it; Python callers' processes are theirs to tune).

    glibc raises its mmap threshold each time a large block is freed, after which the batches' large
    tensors come from the heap, which fragments and keeps growing: by about 1 KB a sample audited at
    batch 8192. Setting the threshold (to its default, 128 KiB) turns that off, so the resident memory
    stays flat in the number of batches. Nothing happens where there is no glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc: musl and others have no such threshold to fix
        return


_M_MMAP_THRESHOLD = -3  # malloc.h


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


def data_section(data: Dataset, sha256: str | None = None) -> DataSection:
    """What was audited, with the hash of the samples (free after an audit read them in order), or
    `sha256` when it is known already."""
    info = data.info
    path = None if info.path is None else path_text(info.path)
    return DataSection(
        path, info.kind, info.key, info.count, info.total, info.sample_shape, info.dtype, info.seed,
        data.sha256() if sha256 is None else sha256,
    )  # fmt: skip


def audit_identity(model: LoadedModel, data: DataSection, settings: Settings, world: World) -> dict[str, Any]:
    """What makes two runs the same audit, row for row: a `--resume` journal records it."""
    kept = {k: v for k, v in asdict(settings).items() if k != "reduction"}  # the rows do not depend on it
    return {
        "lipcheck_version": __version__,
        "model_sha256": model.sha256,
        "model_arch": [model.arch, dict(model.arch_kwargs)],
        "data_sha256": data.sha256,
        "data_count": data.count,
        "settings": kept,
        "device": resolve_device(settings.device).type,
        "world_size": world.size,
    }


def audit_columns(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    *,
    world: World | None = None,
    journal: Journal | None = None,
    progress: Progress | None = None,
    directions: DirectionSink | None = None,
) -> tuple[SampleColumns, int | None]:
    """Every sample's row, as compact columns, and the batch size that fit when a batch ran out of
    memory (None when all fit).

    Batch k is samples [k B, (k+1) B) of the batch size B. With a `world` of several ranks, this rank
    audits batches rank, rank + size, ... and the rows of all ranks are gathered (see
    `lipcheck.auditing.distributed`); `progress` counts the samples of all ranks. With a `journal`, batches it
    holds are read back instead of audited, and each batch audited is added to it. The engine's
    results of the batches audited go to `directions`, when given.
    """
    world = world or World()
    size, count = settings.batch_size, len(data)
    batches = -(-count // size)
    fitting = _Fitting(size)
    store = ColumnStore()
    for round_ in range(-(-batches // world.size)):
        k = round_ * world.size + world.rank
        done, failure = 0, None
        if k < batches:
            batch = range(k * size, min((k + 1) * size, count))
            try:
                if journal is not None and k in journal.done:
                    table = journal.read(k)
                else:
                    table = audit_batch(model, data, settings, batch, fitting, directions)
                    if journal is not None:
                        journal.append(k, table)
                store.append(table)
                done = len(batch)
            except LipcheckError as error:
                if not world.sharded:
                    raise
                failure = error.with_context(f"rank {world.rank} of {world.size}, batch {k}")
        if world.sharded:
            what = f"auditing batches {round_ * world.size}-{round_ * world.size + world.size - 1}"
            done, failed = distributed.round_done(world, done, failure is not None, what)
            if failed:
                distributed.raise_first_failure(world, failure, what)
        if progress is not None and world.rank == 0:
            progress(done)
    fitted = fitting.size if fitting.split else None
    columns = store.finish()
    if not world.sharded:
        return columns, fitted
    shards = distributed.all_gather(world, (columns.table(), fitted), "gathering the rows")
    table = np.concatenate([shard for shard, _ in shards])
    merged = ColumnStore()
    merged.append(table[np.argsort(table["index"], kind="stable")])  # in index order
    sizes = [size for _, size in shards if size is not None]
    return merged.finish(), min(sizes) if sizes else None


def _open_journal(folder: Path, identity: dict[str, Any], world: World) -> Journal:
    """This rank's journal; a sharded audit fails on every rank alike when one rank's is refused."""
    if not world.sharded:
        return Journal.open(folder, identity, world.rank)
    journal, failure = None, None
    try:
        journal = Journal.open(folder, identity, world.rank)
    except LipcheckError as error:
        failure = error
    _, failed = distributed.round_done(world, 0, failure is not None, "opening the journals")
    if failed:
        if journal is not None:
            journal.close()
        distributed.raise_first_failure(world, failure, "opening the journals")
    assert journal is not None
    return journal


def run_audit(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    *,
    rules: Sequence[Rule] = (),
    progress: Progress | None = None,
    load_seconds: float = 0.0,
    bound: BoundReport | None = None,
    world: World | None = None,
    resume: Path | None = None,
    directions: int | None = 0,
    pictures: int = 0,
) -> Report:
    """Audit every sample of `data` and return the report, with the gate judged by `rules`.

    `bound`, the model's certified upper bound (`bound_model`), goes into the report with the bracket
    [largest sigma found, bound]. With `directions` K (None: all) or `pictures` M, the report's
    `directions` keep the most amplified directions of the max(K, M) samples of largest sigma, and the
    inputs of the first M. Moves the model to the settings' device and dtype (in place). With a
    `world` of several ranks, this rank audits its shard and every rank returns the whole report; with
    `resume`, a folder, each rank keeps a journal there and continues the audit it holds (see
    `audit_columns`). Raises InputError for bad input (a journal of another audit), AuditFailedError
    when the audit itself fails (see `audit_rows`).
    """
    settings.validate()
    world = world or World()
    device = resolve_device(settings.device)
    if isinstance(model.module, torch.nn.Module):
        model.module.to(device=device, dtype=torch_dtype(settings.dtype))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    described = None
    if world.sharded or resume is not None:  # hashed first: a shard's or a rest's reads are not in order
        digest = data.sha256() if world.rank == 0 else None
        digest = distributed.from_rank_zero(world, digest, "hashing the data") if world.sharded else digest
        described = data_section(data, digest)
    journal = None
    if resume is not None:
        assert described is not None  # hashed above whenever there is a journal
        identity = audit_identity(model, described, settings, world)
        journal = _open_journal(resume, identity, world)
    begin = time.perf_counter()
    try:
        kept = None if directions == 0 and pictures == 0 else _LargestSigma(directions, pictures)
        rows, fitted = audit_columns(
            model, data, settings, world=world, journal=journal, progress=progress,
            directions=kept.add if kept is not None else None,
        )  # fmt: skip
        if kept is not None and world.sharded:
            kept = _LargestSigma.merged(distributed.all_gather(world, kept, "gathering the directions"))
    finally:
        if journal is not None:
            journal.close()
    seconds = time.perf_counter() - begin
    ran = replace(environment(device), world_size=world.size, fitted_batch_size=fitted)
    report = Report(
        model=model_section(model),
        data=described or data_section(data),
        settings=settings,
        environment=ran,
        timing=Timing(
            started=started,
            load_seconds=load_seconds,
            audit_seconds=seconds,
            total_seconds=load_seconds + seconds,
            samples_per_second=len(rows) / seconds if seconds > 0 else 0.0,
        ),
        samples=rows,
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
        self.inputs: tuple[np.ndarray, ...] | None = None  # indices, sigma, inputs

    def add(self, indices: Sequence[int], result: SpectralNormResult, x: Tensor) -> None:
        sigma = result.sigma.detach().double().cpu().numpy()
        residual = result.residual.detach().double().cpu().numpy()
        index = np.asarray(indices, dtype=np.int64)
        vectors = result.vector.detach().cpu().numpy()
        self.parts.append((index, sigma, np.where(np.isfinite(residual), residual, np.nan), vectors))
        if self.keep is not None and sum(len(part[0]) for part in self.parts) > 2 * self.keep + 1:
            self.parts = [self._largest(self.parts, self.keep)]
        if self.pictures:
            inputs = (index, sigma, x.detach().cpu().numpy())
            kept = [inputs] if self.inputs is None else [self.inputs, inputs]
            self.inputs = self._largest(kept, self.pictures)

    @staticmethod
    def _largest(parts: Sequence[tuple[np.ndarray, ...]], count: int | None) -> tuple[np.ndarray, ...]:
        """The rows of the parts' columns (index, sigma, ...) of the `count` largest sigma (all when
        None), largest first, ties by index."""
        columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
        order = np.lexsort((columns[0], -columns[1]))[:count]
        return tuple(column[order] for column in columns)

    @classmethod
    def merged(cls, shards: Sequence[_LargestSigma]) -> _LargestSigma:
        """The directions kept by every rank of a sharded audit, as one process would have kept them."""
        merged = cls(None, shards[0].pictures)
        merged.keep = shards[0].keep
        merged.parts = [part for shard in shards for part in shard.parts]
        inputs = [shard.inputs for shard in shards if shard.inputs is not None]
        if inputs:
            merged.inputs = cls._largest(inputs, merged.pictures)
        return merged

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
    operator: str = Operator.model.value,
) -> BoundReport:
    """The certified upper bound of a loaded model (`lipcheck.upper_bound`); errors name the model file.

    With audit `settings`, the bound is of the function the audit measures: the model called with the
    settings' `model_kwargs` (`--arg`), only the output `output_key` picks (`--output-key`), and the
    settings' `operator` (2f - Id or Id - f exported as one graph and bounded through it), so the
    bracket compares like with like. Without, it is of the model called with `model_kwargs` (`lipcheck
    bound --arg`), all outputs together, as the `operator` (`lipcheck bound --operator`).
    """
    module: Any = model.module
    kwargs = settings.model_kwargs if settings is not None else (model_kwargs or {})
    output_key = settings.output_key if settings is not None else None
    operator = Operator(settings.operator if settings is not None else operator).value
    if kwargs or output_key is not None or operator != Operator.model:
        module = _AuditedFunction(module, kwargs, output_key, operator)
    try:
        bound = upper_bound(module, tuple(input_shape), assume=assume, method=method)
        return replace(bound, operator=operator)
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
    operator: str = Operator.model.value,
) -> ModelBoundReport:
    """`lipcheck bound`: the certified bound of a model file at one input shape, with provenance; the
    model is called with `model_kwargs` (`--arg`) besides the input, and the bound is of the
    `operator` (`--operator`: f, 2f - Id or Id - f)."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    begin = time.perf_counter()
    bound = bound_model(
        model, input_shape, assume=assume, model_kwargs=model_kwargs, method=method, operator=operator
    )
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
    world = distributed.join(request.worker_timeout)
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
        model, data, settings, progress=advance, load_seconds=load_seconds, bound=certified, world=world,
        resume=request.resume, directions=request.top if request.save_directions is not None else 0,
        pictures=request.pictures,
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
    resume: str | Path | None = None,
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
    `resume`, a folder, keeps the progress journal of `--resume`. Under torchrun, each process audits
    its shard and gets the whole report.

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
            or resume
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
        resume=None if resume is None else Path(resume),
    )
    return run(request, progress)
