"""`lipcheck audit`: the spectral norm of a model's Jacobian at every sample of a data set.

The command reads its flags into an `AuditRequest`, calls `run`, and writes the report (and the
directions, with --save-directions); the gate's verdict decides the exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lipcheck.cli.audit_options import (
    AuditAssumeOption,
    AuditQuietOption,
    BatchSizeOption,
    ConfidenceOption,
    DataKeyOption,
    DataOption,
    DeviceOption,
    DirectionsTopOption,
    DtypeOption,
    LimitOption,
    MaxIterOption,
    MaxReadBytesOption,
    MethodOption,
    ModelArgument,
    NumSamplesOption,
    OperatorOption,
    OutputKeyOption,
    ProductOption,
    RandomOption,
    ReductionOption,
    ResumeOption,
    SaveDirectionsOption,
    SearchRadiusOption,
    SearchStepsOption,
    SeedOption,
    TolOption,
    WithBoundOption,
    WorkersOption,
    WorkerTimeoutOption,
)
from lipcheck.cli.audit_series import (
    MaxIncreaseOverBestOption,
    ModelsFromOption,
    ReportsDirOption,
    StepRegexOption,
    model_paths,
    run_series_command,
    series_request,
)
from lipcheck.cli.options import (
    AllowMismatchOption,
    ArchKwargsOption,
    ArchOption,
    BaselineOption,
    BoundMethodOption,
    DebugOption,
    FailAboveBoundOption,
    FailAboveOption,
    FailAboveSampleOption,
    FormatOption,
    MaxIncreaseOption,
    ModelArgOption,
    OutputOption,
    RequireConvergedOption,
    TrustPickleOption,
    parse_assumptions,
    parse_json_object,
    parse_model_args,
    rule_options,
)
from lipcheck.cli.output import choose_format, say_gate, write_and_judge, write_report
from lipcheck.cli.progress import progress_bar
from lipcheck.cli.status import ExitStatus, invocation
from lipcheck.cli.streams import model_prints_to_stderr, say
from lipcheck.errors import AuditFailedError, InputError, LipcheckError
from lipcheck.io.file_formats import MAX_READ_BYTES
from lipcheck.options.choices import (
    WORKER_TIMEOUT_SECONDS,
    BoundMethod,
    Device,
    Dtype,
    Format,
    Method,
    Operator,
    Product,
    Reduction,
    format_for,
)

if TYPE_CHECKING:
    from lipcheck.auditing.request import AuditRequest
    from lipcheck.auditing.series import SeriesRequest
    from lipcheck.io.outputs import Destination
    from lipcheck.report import Report


EPILOG = """\
**Examples**

```
lipcheck audit model.pt2 --data inputs.npy
lipcheck audit model.pt2 --data inputs.npz --data-key images --limit 1000 --format json | jq .summary
lipcheck audit weights.safetensors --arch nets.py:make_denoiser --arch-kwargs '{"channels": 4}' --data x.pt
lipcheck audit model.pt2 --random 3x32x32 --num-samples 256 --seed 1 --dtype float64
lipcheck audit --arch timm:create_model --arch-kwargs '{"model_name": "mobilenetv3_small_100"}' --data x.npy
lipcheck audit model.pt2 --data x.npy --product forward     # J u by forward-mode AD
lipcheck audit model.pt2 --data inputs.npy --search-steps 10 --search-radius 0.5 --bound
lipcheck audit denoiser.pt2 --data images.npy --operator fne --fail-above 1 --bound
lipcheck audit model.pt2 --data images/ --fail-above 2.5 --output report.json
lipcheck audit model.pt2 --data x.npy --bound -o report.html   # charts; needs pip install "lipcheck[html]"
lipcheck audit model.pt2 --data x.npy --save-directions worst.safetensors --top 100
lipcheck audit model.pt2 --data x.npy --baseline release.json --max-increase 5 --require-converged \\
    -o report.json -o junit.xml -o summary.md
lipcheck audit model.pt2 --data big.npy --workers 4 --resume audit-journal/ -o report.json
lipcheck audit model.onnx --data x.npy   # needs pip install "lipcheck[onnx]"
lipcheck audit ckpt/*.pt --arch nets.py:make --data x.npy -o series.json -o series.html
lipcheck audit --models-from run.txt --arch nets.py:make --data x.npy --step-regex 'epoch_(\\d+)' \\
    --max-increase-over-best 10 --resume series-reports/ -o series.md
torchrun --standalone --nproc-per-node 8 -m lipcheck audit model.pt2 --data big.npy -o report.json
```

Exit codes: 0 done (gate passed), 1 gate failed (a rule failed), 2 bad input or usage,
3 the audit failed (NaN output, derivatives that fail the adjoint test, no sample converged, one
sample out of memory, a rank failed or died), 130 interrupted, 70 internal error. A batch out of
memory is split in halves; every rank of a sharded audit exits with the same code.
"""


def audit(
    model: ModelArgument = None,
    models_from: ModelsFromOption = None,
    step_regex: StepRegexOption = None,
    max_increase_over_best: MaxIncreaseOverBestOption = None,
    reports_dir: ReportsDirOption = None,
    data: DataOption = None,
    random: RandomOption = None,
    num_samples: NumSamplesOption = None,
    data_key: DataKeyOption = None,
    limit: LimitOption = None,
    max_read_bytes: MaxReadBytesOption = MAX_READ_BYTES,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: TrustPickleOption = False,
    model_arg: ModelArgOption = None,
    output_key: OutputKeyOption = None,
    operator: OperatorOption = Operator.model,
    product: ProductOption = Product.auto,
    method: MethodOption = Method.lanczos,
    tol: TolOption = 1e-4,
    confidence: ConfidenceOption = 0.99,
    max_iter: MaxIterOption = 200,
    seed: SeedOption = 0,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = Device.auto,
    dtype: DtypeOption = Dtype.float32,
    reduction: ReductionOption = Reduction.max,
    search_steps: SearchStepsOption = None,
    search_radius: SearchRadiusOption = None,
    with_bound: WithBoundOption = False,
    assume: AuditAssumeOption = None,
    bound_method: BoundMethodOption = BoundMethod.lipsdp,
    fail_above_bound: FailAboveBoundOption = None,
    output_format: FormatOption = None,
    output: OutputOption = None,
    save_directions: SaveDirectionsOption = None,
    top: DirectionsTopOption = None,
    quiet: AuditQuietOption = False,
    fail_above: FailAboveOption = None,
    fail_above_sample: FailAboveSampleOption = None,
    require_converged: RequireConvergedOption = False,
    baseline: BaselineOption = None,
    max_increase: MaxIncreaseOption = None,
    allow_mismatch: AllowMismatchOption = False,
    workers: WorkersOption = None,
    resume: ResumeOption = None,
    worker_timeout: WorkerTimeoutOption = WORKER_TIMEOUT_SECONDS,
    debug: DebugOption = False,
) -> None:
    """Audit MODEL (or the module an --arch factory returns) on a data set: the spectral norm of its
    Jacobian at every sample (or of the Jacobian of 2f - Id or Id - f, with --operator).

    Prints the worst samples and a summary (table), or the full report (json, markdown, junit, html).
    Gate flags (--fail-above, ...) are rules in the report; a failed one exits 1. Several MODELs: a series.
    """
    request, series = _requests(dict(locals()))
    if series is not None:
        return _audit_series(series, request, output_format, quiet, workers)
    _audit_one(request, output_format, quiet, workers)


def _requests(flags: dict[str, Any]) -> tuple[AuditRequest, SeriesRequest | None]:
    """The audit request of the flags (of the first MODEL), and the series request when several MODELs
    or --models-from make a series; InputError for a series flag given with one model."""
    paths: tuple[Path, ...] = ()
    if not flags["model"] and flags["models_from"] is None and flags["arch"] is not None:
        request = _audit_request({**flags, "model": None})  # the module the --arch factory returns
    else:
        paths = model_paths(flags["model"], flags["models_from"])
        request = _audit_request({**flags, "model": paths[0]})
    series_flags = {"--step-regex": flags["step_regex"], "--reports-dir": flags["reports_dir"],
                    "--max-increase-over-best": flags["max_increase_over_best"]}  # fmt: skip
    if len(paths) > 1 or flags["models_from"] is not None:
        over_best, reports = flags["max_increase_over_best"], flags["reports_dir"]
        return request, series_request(request, paths, flags["step_regex"], over_best, reports)
    for flag, value in series_flags.items():
        if value is not None:
            raise InputError(f"{flag} is for a series: give several checkpoints (MODEL...) or --models-from")
    return request, None


def _audit_series(
    series: SeriesRequest, request: AuditRequest, fmt: Format | None, quiet: bool, workers: int | None
) -> None:
    _launch_workers(workers)
    run_series_command(series, request.outputs, fmt, quiet)


def _audit_one(request: AuditRequest, output_format: Format | None, quiet: bool, workers: int | None) -> None:
    where = _destinations(request, output_format)
    _launch_workers(workers)
    report = _run(request, where, quiet)
    _write_all(report, request.top, where, quiet)


@dataclass(frozen=True)
class _Destinations:
    """Where an audit writes, prepared before anything is loaded: the reports, in `fmt` unless their
    suffix says otherwise, and the --save-directions file."""

    reports: Sequence[Destination]
    directions: Sequence[Destination]
    fmt: str


def _destinations(request: AuditRequest, output_format: Format | None) -> _Destinations:
    from lipcheck.io.outputs import prepare_outputs, refuse_shared_outputs
    from lipcheck.present.render import REPORT

    directions = [request.save_directions] if request.save_directions is not None else []
    refuse_shared_outputs(
        [("--output", path) for path in request.outputs]
        + [("--save-directions", path) for path in directions]
    )
    outputs = prepare_outputs(request.outputs, request.inputs())
    directions_file = (
        prepare_outputs([request.save_directions], request.inputs(), "--save-directions")
        if request.save_directions is not None
        else []
    )
    return _Destinations(outputs, directions_file, choose_format(output_format, outputs, REPORT))


def _launch_workers(workers: int | None) -> None:
    """--workers N outside torchrun: the same command again as N ranks under torchrun, and their code."""
    if workers is not None and workers > 1 and "WORLD_SIZE" not in os.environ:
        from lipcheck.auditing.distributed import launch_workers

        raise typer.Exit(launch_workers(workers, invocation.argv))


def _is_main_rank() -> bool:
    """Under torchrun, rank 0 shows progress and writes."""
    return os.environ.get("RANK", "0") == "0"


def _run(request: AuditRequest, where: _Destinations, quiet: bool) -> Report:
    """`run` with a progress bar when a person watches; the figures of an audit whose samples all failed
    to converge are written all the same."""
    from lipcheck.auditing.batches import give_back_freed_memory
    from lipcheck.auditing.run import run

    give_back_freed_memory()  # memory flat in the number of samples
    main_rank = _is_main_rank()
    watched = where.fmt == "table" or bool(where.reports)
    show_progress = main_rank and not quiet and sys.stderr.isatty() and watched
    try:
        with progress_bar(show_progress) as progress, model_prints_to_stderr():
            return run(request, progress=progress)
    except AuditFailedError as failure:
        if failure.report is not None and main_rank:  # no sample converged: the figures are written
            write_report(failure.report, where.reports, where.fmt, quiet)
        raise


def _write_all(report: Report, top: int | None, where: _Destinations, quiet: bool) -> None:
    """Write the directions and the report, say the gate's verdict; exit 1 when a rule failed."""
    from lipcheck.present.render import REPORT

    if not _is_main_rank():  # the same report and verdict as rank 0's, which writes and says it
        raise typer.Exit(ExitStatus.GATE_FAILED if report.gate.passed is False else ExitStatus.PASSED)
    try:
        for destination in where.directions:
            _write_directions(report, destination, top, quiet)
    except LipcheckError:
        say_gate(report.gate.rules, quiet)  # as `write_and_judge` does when a report cannot be written
        raise
    write_and_judge(report, REPORT, where.reports, where.fmt, quiet, report.gate.rules)


def _write_directions(report: Report, destination: Destination, top: int | None, quiet: bool) -> None:
    """Write the report's kept directions (`--save-directions`, `--top`) as a safetensors file."""
    from lipcheck.io.outputs import write_output

    assert report.directions is not None
    metadata = {
        "model": report.model.path,
        "model_sha256": report.model.sha256,
        "data": report.data.path or "random",
        "data_sha256": report.data.sha256 or "",
        "dtype": report.settings.dtype,
        "order": "largest sigma first",
        "lipcheck_version": report.lipcheck_version,
    }
    try:
        write_output(destination, report.directions.to_safetensors(top, metadata))
    except OSError as error:
        reason = error.strerror or error
        raise InputError(f"--save-directions '{destination.path}' cannot be written ({reason})") from error
    if not quiet:
        say(f"directions written to {destination.path}")


def _audit_request(flags: dict[str, Any]) -> AuditRequest:
    """The `AuditRequest` of `lipcheck audit`'s flags, validated before anything is loaded."""
    from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
    from lipcheck.io.datasets import parse_shape
    from lipcheck.report import Settings

    random = flags["random"]
    settings = Settings(
        operator=flags["operator"].value,
        product=flags["product"].value,
        method=flags["method"].value,
        tol=flags["tol"],
        confidence=flags["confidence"],
        max_iter=flags["max_iter"],
        seed=flags["seed"],
        batch_size=flags["batch_size"],
        device=flags["device"].value,
        dtype=flags["dtype"].value,
        reduction=flags["reduction"].value,
        search_steps=flags["search_steps"],
        search_radius=flags["search_radius"],
        output_key=flags["output_key"],
        model_kwargs=parse_model_args(flags["model_arg"]),
    )
    return AuditRequest(
        model=ModelSource(
            flags["model"],
            arch=flags["arch"],
            arch_kwargs=parse_json_object(flags["arch_kwargs"], "--arch-kwargs"),
            trust_pickle=flags["trust_pickle"],
        ),
        data=DataSource(
            flags["data"],
            key=flags["data_key"],
            limit=flags["limit"],
            random_shape=parse_shape(random) if random is not None else None,
            num_samples=flags["num_samples"],
            max_read_bytes=flags["max_read_bytes"],
        ),
        settings=settings,
        rules=rule_options(flags),
        bound=flags["with_bound"],
        assume=parse_assumptions(flags["assume"]),
        bound_method=flags["bound_method"].value,
        outputs=tuple(flags["output"] or ()),
        format=flags["output_format"],
        resume=flags["resume"],
        worker_timeout=flags["worker_timeout"],
        save_directions=flags["save_directions"],
        top=flags["top"],
        pictures=_pictures(flags["output"] or (), flags["output_format"]),
    )


def _pictures(outputs: Sequence[Path], output_format: Format | None) -> int:
    """How many of the worst samples keep their inputs: those an HTML report draws, when one is written."""
    from lipcheck.present.html import PICTURES

    fallback = output_format.value if output_format is not None else "json"
    pages = [path for path in outputs if format_for(path, fallback) == Format.html]
    return PICTURES if pages or (not outputs and output_format == Format.html) else 0
