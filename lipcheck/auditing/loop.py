"""Run an audit: feed a data set's batches through the engine and collect one row per sample.

`audit_batch` measures one batch into compact rows (`columns.ROW`), splitting it in halves while it
runs out of memory. `audit_columns` runs the batches of a data set: all of them, or with a `World` of
several ranks (torchrun, `--workers`) batches rank, rank + N, ..., with the rows gathered at the end
(`lipcheck.auditing.distributed`); with a `Journal` (`--resume`), finished batches are read back and new ones
made durable. Because the engine starts every sample from the same seeded vector, a sample's row does
not depend on which batch it was in, so a shard or a resumed rest gives the rows of a whole run.
`audit_rows` is the same loop over an index range, with a sink for `SampleResult`s. `run_audit` wraps
the loop with provenance, summary and gate into a `Report`.

The model is called once per batch (the engine's single evaluation; once more per product with the
forward-mode product, which `--product auto` chooses at the first batch only where double backward
cannot differentiate the model); this module only wraps
that call to pass `--arg` keyword arguments, to pick `--output-key`, and to turn the model's failures
into messages that name the samples and the shapes involved.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lipcheck.auditing import distributed
from lipcheck.auditing.batches import (
    DirectionSink,
    Fitting,
    Progress,
    audit_batch,
    resolve_device,
    torch_dtype,
)
from lipcheck.auditing.distributed import World
from lipcheck.auditing.journal import Journal
from lipcheck.auditing.provenance import audit_identity, data_section, environment, model_section
from lipcheck.auditing.randomness import RandomnessWatch
from lipcheck.engine import SpectralNormResult
from lipcheck.engine.products import adjoint_tolerance
from lipcheck.errors import (
    LipcheckError,
    LipcheckWarning,
)
from lipcheck.io.datasets import Dataset
from lipcheck.io.models import LoadedModel
from lipcheck.options.choices import Product
from lipcheck.options.version import __version__
from lipcheck.report import (
    BoundReport,
    Directions,
    Report,
    SampleResult,
    Settings,
    Timing,
    largest_sigma,
    summarise,
)
from lipcheck.report.columns import PRODUCT_CODES, ColumnStore, SampleColumns, derivatives_of
from lipcheck.report.gate import Rule, judge


def audit_columns(
    model: LoadedModel,
    data: Dataset,
    settings: Settings,
    *,
    world: World | None = None,
    journal: Journal | None = None,
    progress: Progress | None = None,
    directions: DirectionSink | None = None,
    randomness: RandomnessWatch | None = None,
) -> tuple[SampleColumns, int | None]:
    """Every sample's row, as compact columns, and the batch size that fit when a batch ran out of
    memory (None when all fit). With `--product auto`, the product of this rank's first batch (audited
    or read back) is used by name for the rest.

    Batch k is samples [k B, (k+1) B) of the batch size B. With a `world` of several ranks, this rank
    audits batches rank, rank + size, ... and the rows of all ranks are gathered (see
    `lipcheck.auditing.distributed`); `progress` counts the samples of all ranks. With a `journal`, batches it
    holds are read back instead of audited, and each batch audited is added to it. The engine's
    results of the batches audited go to `directions`, when given; the model's calls go through
    `randomness` (seeded generators, and whether the model drew from them).
    """
    world = world or World()
    size, count = settings.batch_size, len(data)
    batches = -(-count // size)
    fitting = Fitting(size)
    randomness = randomness or RandomnessWatch(settings.seed)
    store = ColumnStore()
    pinned = settings
    for round_ in range(-(-batches // world.size)):
        k = round_ * world.size + world.rank
        done, failure = 0, None
        if k < batches:
            batch = range(k * size, min((k + 1) * size, count))
            try:
                if journal is not None and k in journal.done:
                    table = journal.read(k)
                else:
                    table = audit_batch(model, data, pinned, batch, fitting, directions, randomness)
                    if journal is not None:
                        journal.append(k, table)
                store.append(table)
                pinned = _pin_product(pinned, table)
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


def _pin_product(settings: Settings, table: np.ndarray) -> Settings:
    """The settings of the next batches: `auto` replaced by the product the rows of `table` used."""
    if settings.product != Product.auto.value or not len(table) or table["product"][0] >= len(PRODUCT_CODES):
        return settings
    return replace(settings, product=PRODUCT_CODES[int(table["product"][0])])


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
        randomness = RandomnessWatch(settings.seed)
        rows, fitted = audit_columns(
            model, data, settings, world=world, journal=journal, progress=progress,
            directions=kept.add if kept is not None else None, randomness=randomness,
        )  # fmt: skip
        if world.sharded:  # a rank that drew random numbers says so in the one report
            randomness.drew.update(*distributed.all_gather(world, randomness.drew, "gathering the notes"))
        if kept is not None and world.sharded:
            kept = _LargestSigma.merged(distributed.all_gather(world, kept, "gathering the directions"))
    finally:
        if journal is not None:
            journal.close()
    seconds = time.perf_counter() - begin
    ran = replace(environment(device), world_size=world.size, fitted_batch_size=fitted)
    warned = _zero_jacobian_notes(rows) + tuple(note for note in [randomness.note()] if note)
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
        notes=(*model.notes, *warned),  # the loading's (an ONNX conversion), then the run's
        directions=kept.result() if kept is not None else None,
        derivatives=derivatives_of(
            rows, settings.batch_size, adjoint_tolerance(torch_dtype(settings.dtype), device)
        ),
    )
    for note in warned:
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
