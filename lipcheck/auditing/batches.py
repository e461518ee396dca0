"""Measure batches: call the model once per batch through the engine, turn its failures into
messages that name the samples, and split a batch that runs out of memory."""

from __future__ import annotations

import ctypes
import gc
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lipcheck.auditing.randomness import RandomnessWatch
from lipcheck.auditing.search import SearchResult, worst_case_search
from lipcheck.engine import SpectralNormResult, spectral_norm
from lipcheck.errors import (
    AuditFailedError,
    InputError,
    LipcheckError,
    LipcheckWarning,
    ModelOutputError,
    describe,
)
from lipcheck.io.datasets import Dataset
from lipcheck.io.models import LoadedModel, check_model_args
from lipcheck.options.choices import Device, Dtype, Product
from lipcheck.report import (
    SampleResult,
    Settings,
)
from lipcheck.report.columns import PRODUCT_CODES, ROW, decomposition_bits, table_to_rows

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
    fitting = Fitting(settings.batch_size)
    for start in range(indices.start, indices.stop, settings.batch_size):
        batch = range(start, min(start + settings.batch_size, indices.stop))
        sink(table_to_rows(audit_batch(model, data, settings, batch, fitting, directions)))
        if progress is not None:
            progress(len(batch))


class Fitting:
    """The batch size that fits in memory, lowered by halves when a batch runs out of it."""

    def __init__(self, batch_size: int) -> None:
        self.size = batch_size
        self.split = False  # whether a batch was split (said once on stderr)


def audit_batch(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    batch: range,
    fitting: Fitting | None = None,
    directions: DirectionSink | None = None,
    randomness: RandomnessWatch | None = None,
) -> np.ndarray:
    """The rows (a `columns.ROW` table) of the samples `batch` of `data`, measured as one batch.

    A batch that runs out of memory is split in halves, down to one sample, and the audit goes on at
    the size that fit (`fitting`, said once as a LipcheckWarning); a single sample that does not fit
    fails the audit. Every call of the model runs under generators seeded from the settings' seed,
    through `randomness`, which remembers whether the model drew random numbers. Errors as `audit_rows`.
    """
    fitting = fitting or Fitting(settings.batch_size)
    randomness = randomness or RandomnessWatch(settings.seed)
    x = data.read(batch.start, batch.stop, torch_dtype(settings.dtype))
    parts = [batch[start : start + fitting.size] for start in range(0, len(batch), fitting.size)]
    tables = [
        _fitted(model, data.name, settings, part, x, batch.start, fitting, directions, randomness)
        for part in parts
    ]
    return tables[0] if len(tables) == 1 else np.concatenate(tables)


def _fitted(
    model: LoadedModel,
    name: str,
    settings: Settings,
    part: range,
    x: Tensor,
    first: int,
    fitting: Fitting,
    directions: DirectionSink | None,
    randomness: RandomnessWatch,
) -> np.ndarray:
    """The rows of the samples `part` (in the batch `x`, whose first sample is `first`), split in
    halves while they run out of memory."""
    try:
        inputs = x[part.start - first : part.stop - first]
        return _measure_rows(model, name, settings, part, inputs, directions, randomness)
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
        tables.append(_fitted(model, name, settings, piece, x, first, fitting, directions, randomness))
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
    directions: DirectionSink | None,
    randomness: RandomnessWatch,
) -> np.ndarray:
    """The rows of the samples `part` (x: their inputs), measured in one call of the engine; the
    engine's result goes to `directions` too, when given."""
    device = resolve_device(settings.device)
    where = f"model '{model.path}' on {name} samples {part.start}-{part.stop - 1}"
    try:
        call = _guarded_call(model, settings, tuple(x.shape), part.start, randomness)
        result, found = _measure(call, x.to(device), settings)
    except _OutOfMemory as error:
        raise _OutOfMemory(where, error.said) from error.__cause__
    except LipcheckError as error:
        raise error.with_context(where) from error
    except Exception as error:
        if _out_of_memory(error):
            raise _OutOfMemory(where, describe(error)) from error
        raise AuditFailedError(f"{where}: the Jacobian products failed ({describe(error)})") from error
    if result.product == Product.forward.value and randomness.drew:
        raise _stochastic_forward(where, randomness.drew)
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
    table["adjoint_gap"] = np.nan if result.adjoint_gap is None else result.adjoint_gap.double().cpu().numpy()
    table["product"] = PRODUCT_CODES.index(result.product)
    table["decompositions"] = decomposition_bits(result.decompositions)
    return table


def _stochastic_forward(where: str, drew: set[str]) -> AuditFailedError:
    """The refusal of the forward-mode product for a model that draws random numbers."""
    return AuditFailedError(
        f"{where}: the model draws random numbers in its forward ({', '.join(sorted(drew))}), and the "
        "forward-mode product, which calls it again for every product, is not used on such a model: put "
        "the model in eval mode (dropout) or remove the randomness, or use --product double-backward "
        "(one call per batch) where torch can differentiate the model that way"
    )


def _guarded_call(
    model: LoadedModel, settings: Settings, shape: tuple[int, ...], first: int, randomness: RandomnessWatch
) -> Callable[[Tensor], Any]:
    """The model's call on one batch (of `shape`, starting at sample `first`) as the engine makes it:
    with the `--arg` keywords, the `--output-key` output, under generators seeded by `randomness`, and
    the model's failures as lipcheck errors that say what happened (a rejected input, out of memory, a
    bug of the model, NaN output)."""
    module, kwargs = model.module, dict(settings.model_kwargs)
    check_model_args(module, kwargs)
    if model.input_spec and not _fits(shape, model.input_spec[0].shape):
        raise InputError(f"the input of shape {shape} does not fit the model{_expected_shape(model)}")

    def call(inputs: Tensor) -> Any:
        try:
            output = randomness.call(module, inputs, **kwargs)
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
        return spectral_norm(call, x, product=settings.product, **_engine_options(settings)), None
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
