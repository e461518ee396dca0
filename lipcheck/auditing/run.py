"""Carry out an audit request (`run`) and the public `lipcheck.audit`: load the model and the data,
bound, audit every sample (loop.py), judge the rules and check convergence."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lipcheck.auditing import distributed
from lipcheck.auditing.bound import bound_model
from lipcheck.auditing.loop import (
    run_audit,
)
from lipcheck.auditing.provenance import data_section
from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
from lipcheck.errors import (
    AuditFailedError,
    InputError,
)
from lipcheck.io.datasets import Dataset, batches_dataset, open_dataset, random_dataset, tensor_dataset
from lipcheck.io.file_formats import MAX_READ_BYTES
from lipcheck.io.models import LoadedModel, load_model, wrap_model
from lipcheck.report import (
    Report,
    Settings,
)
from lipcheck.report.compare import comparable
from lipcheck.report.gate import RuleOptions, judge, rules_for


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
    """The model of a request: a file loaded with `load_model`, the module an --arch factory returns,
    or a module in memory described."""
    if source.is_path or source.is_factory:
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
    model: AuditRequest | str | Path | Callable[..., Any] | None,
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
    bound_method: str = "lipsdp",
    progress: Callable[[int, int], None] | None = None,
    resume: str | Path | None = None,
    **options: Any,
) -> Report:
    """Audit `model` on `data` and return the `Report` that `lipcheck audit` writes; for test suites.

    `model` is a model file (as for `lipcheck audit`, with `arch`, `arch_kwargs`, `trust_pickle`), an
    nn.Module (put in eval mode and moved to the device and dtype, in place) or a callable; None with
    `arch` (the module that factory returns, as it returns it); or a prepared `AuditRequest`, then the
    only argument. `data` is a data file or image folder (with
    `data_key`, `limit`, and `max_read_bytes` as `--max-read-bytes`), a tensor or array (N, ...), or an
    iterable of batches such as a DataLoader (a batch may be a tensor or a tuple (inputs, labels);
    `data_key` picks another entry). `bound`, `assume` and `bound_method` ("lipsdp", "liplt" or "product") are
    `--bound`, `--assume` and `--bound-method`.
    The other keyword arguments are `Settings` fields (operator, method, tol, confidence, max_iter,
    seed, batch_size, device, dtype, reduction, krylov_dim, output_key, model_kwargs, search_steps,
    search_radius, product) and gate rules (fail_above, fail_above_sample, require_converged,
    fail_above_bound, baseline, max_increase, allow_mismatch), judged into `report.gate`.
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
            or (bound_method != "lipsdp")
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
