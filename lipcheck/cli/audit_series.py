"""`lipcheck audit CKPT...`: a training run's checkpoints audited on one data set, as a series.

Several MODEL paths (a shell glob such as ckpt/*.pt) or `--models-from LIST.txt` make `lipcheck audit`
a series audit: each checkpoint is audited with the same flags (one at a time, each split over the
ranks as one model is), its report written to the reports folder, and the series report (one row per
checkpoint, the worst and best, the trend) written to the outputs. The gate is the single-report
rules on the last checkpoint, plus --max-increase-over-best.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lipcheck.cli.output import choose_format, write_and_judge
from lipcheck.cli.status import ExitStatus
from lipcheck.cli.streams import model_prints_to_stderr, say
from lipcheck.errors import InputError
from lipcheck.options.choices import Format

if TYPE_CHECKING:
    from lipcheck.auditing.request import AuditRequest
    from lipcheck.auditing.series import SeriesRequest

ModelsFromOption = Annotated[
    Path | None,
    typer.Option(
        "--models-from",
        help="A text file listing the checkpoints of a series, one path a line (relative to the file's "
        "folder; '#' comments). Makes the audit a series audit, as several MODEL paths do.",
        metavar="LIST.txt",
        show_default=False,
    ),
]
StepRegexOption = Annotated[
    str | None,
    typer.Option(
        "--step-regex",
        help=r"Order a series by the step read from each path: the regex's first group, e.g. 'epoch_(\d+)'. "
        "Default: natural sort of the paths (epoch_2 before epoch_10), steps 0, 1, ...",
        metavar="REGEX",
        show_default=False,
    ),
]
MaxIncreaseOverBestOption = Annotated[
    float | None,
    typer.Option(
        "--max-increase-over-best",
        help="Series gate: fail when the last checkpoint's reduced sigma is more than PCT % above the "
        "best (lowest) checkpoint's.",
        metavar="PCT",
        show_default=False,
    ),
]
ReportsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--reports-dir",
        help="Series: write each checkpoint's report here (created). Default: the --resume folder, else "
        "a folder beside the first --output named after it (series.json -> series-checkpoints/).",
        metavar="DIR",
        show_default=False,
    ),
]


def model_paths(models: Sequence[Path] | None, models_from: Path | None) -> tuple[Path, ...]:
    """The MODEL arguments and the --models-from list's paths; InputError when there are none."""
    from lipcheck.auditing.series import read_models_list

    paths = tuple(models or ()) + (read_models_list(models_from) if models_from is not None else ())
    if not paths:
        raise InputError(
            "give the model: lipcheck audit MODEL --data ... (or several, or --models-from LIST.txt)"
        )
    return paths


def series_request(
    template: AuditRequest,
    paths: tuple[Path, ...],
    step_regex: str | None,
    max_increase_over_best: float | None,
    reports_dir: Path | None,
) -> SeriesRequest:
    """The series of `template` (the audit flags, read for the first checkpoint) over `paths`."""
    from lipcheck.auditing.series import SeriesRequest

    reports = reports_dir or template.resume or _beside_first_output(template.outputs)
    return SeriesRequest(
        checkpoints=paths,
        template=replace(template, pictures=0, resume=None, outputs=()),
        reports=reports,
        step_regex=step_regex,
        max_increase_over_best=max_increase_over_best,
        resume=template.resume is not None,
    )


def _beside_first_output(outputs: Sequence[Path]) -> Path | None:
    files = [path for path in outputs if str(path) != "-" and not str(path).startswith("/dev/")]
    return files[0].parent / f"{files[0].stem}-checkpoints" if files else None


def run_series_command(
    request: SeriesRequest, outputs: Sequence[Path], output_format: Format | None, quiet: bool
) -> None:
    """Prepare the outputs, audit the series, write its report and say the gate; exit 1 when it failed."""
    from lipcheck.auditing.series import run_series
    from lipcheck.io.outputs import prepare_outputs
    from lipcheck.present.render import SERIES

    inputs = {f"checkpoint '{path}'": path for path in request.checkpoints}
    inputs |= {k: v for k, v in request.template.inputs().items() if k != "the model (MODEL)"}
    destinations = prepare_outputs(outputs, inputs)
    fmt = choose_format(output_format, destinations, SERIES)
    main_rank = os.environ.get("RANK", "0") == "0"
    tell = main_rank and not quiet and sys.stderr.isatty()

    def progress(position: int, count: int, path: Path, kept: bool) -> None:
        if tell:
            said = "kept (its report is complete and matches)" if kept else "auditing"
            say(f"checkpoint {position + 1}/{count} {path}: {said}")

    with model_prints_to_stderr():
        series = run_series(request, progress)
    if not main_rank:  # rank 0 writes and says the verdict
        raise typer.Exit(ExitStatus.GATE_FAILED if series.gate.passed is False else ExitStatus.PASSED)
    write_and_judge(series, SERIES, destinations, fmt, quiet, series.gate.rules)
