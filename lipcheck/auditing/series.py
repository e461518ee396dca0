"""Audit a training run's checkpoints on one data set, one checkpoint at a time, into a series report.

Each checkpoint is audited as `lipcheck audit CKPT` would (`run`), so ranks and `--workers` split
each checkpoint's batches as for one model, and memory holds one model and one batch: a checkpoint's
module is dropped before the next is loaded. Each checkpoint's report is written to a folder of
reports (rank 0 writes); with `resume`, a checkpoint whose report there is complete (it reads back
as strictly as any report) and matches (the same checkpoint bytes, data, settings, and a bound when
one is asked for) is not audited again, and the one being audited keeps its batches in a journal.

The series report (`report.series.SeriesReport`) holds each checkpoint's summary in step order, the
worst and best checkpoints, the worst one's worst samples, and the series gate: the single-report
rules on the last checkpoint, plus `--max-increase-over-best`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lipcheck.auditing import distributed
from lipcheck.auditing.provenance import data_section
from lipcheck.auditing.request import AuditRequest
from lipcheck.auditing.run import open_source, run
from lipcheck.errors import InputError
from lipcheck.io.models import file_sha256
from lipcheck.io.outputs import write_atomic
from lipcheck.options.version import __version__
from lipcheck.report import Gate, Report, SampleResult, read_report, worst_samples
from lipcheck.report.compare import comparable
from lipcheck.report.gate import RuleOptions, check_thresholds, judge, rules_for
from lipcheck.report.series import (
    WORST_SAMPLES,
    Checkpoint,
    SeriesReport,
    best_of,
    checkpoint_of,
    natural_key,
    series_gate,
    worst_of,
)

MAX_CHECKPOINTS = 100_000  # a series longer than this is a wrong glob, not a training run


@dataclass(frozen=True)
class SeriesRequest:
    """A series audit: `checkpoints` (paths, in any order) audited as `template` says (its model source
    gives --arch and its kwargs; its rules judge the last checkpoint), ordered by natural sort or by
    `step_regex`'s first group; each checkpoint's report written to `reports` (None: not written);
    with `resume`, matching complete reports there are kept."""

    checkpoints: tuple[Path, ...]
    template: AuditRequest
    reports: Path | None = None
    step_regex: str | None = None
    max_increase_over_best: float | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise InputError("give the checkpoints: several MODEL paths, or --models-from LIST.txt")
        if len(self.checkpoints) > MAX_CHECKPOINTS:
            raise InputError(
                f"{len(self.checkpoints)} checkpoints is more than {MAX_CHECKPOINTS}: check the glob"
            )
        check_thresholds({"--max-increase-over-best": self.max_increase_over_best})
        if self.resume and self.reports is None:
            raise InputError("--resume of a series keeps the checkpoints' reports: give --reports-dir DIR")
        if self.template.save_directions is not None:
            raise InputError("--save-directions is for one model: audit the checkpoint of interest alone")


def read_models_list(path: Path) -> tuple[Path, ...]:
    """The checkpoints listed in `path` (--models-from), one a line; blank lines and '#' comments skipped;
    a relative path is relative to the list's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(
            f"--models-from '{path}' cannot be read ({error}): give a text file, one path a line"
        ) from None
    listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not listed:
        raise InputError(f"--models-from '{path}' lists no checkpoint: one path a line")
    return tuple(p if p.is_absolute() else path.parent / p for p in map(Path, listed))


def order_checkpoints(paths: Sequence[Path], step_regex: str | None) -> list[tuple[int, Path]]:
    """(step, path) in step order: `step_regex`'s first group (or whole match) read as an integer from
    each path, else the position in natural sort. InputError for a path it does not match, or two
    checkpoints at one step, or the same path twice."""
    duplicates = sorted({str(p) for p in paths if list(paths).count(p) > 1})
    if duplicates:
        raise InputError(f"checkpoint '{duplicates[0]}' is given twice: give each checkpoint once")
    if step_regex is None:
        ordered = sorted(paths, key=lambda p: natural_key(str(p)))
        return list(enumerate(ordered))
    try:
        pattern = re.compile(step_regex)
    except re.error as error:
        raise InputError(f"--step-regex {step_regex!r} is not a regular expression ({error})") from None
    steps: dict[int, Path] = {}
    for path in paths:
        found = pattern.search(str(path))
        text = (found.group(1) if found.groups() else found.group(0)) if found else None
        if text is None or not text.isdigit():
            raise InputError(
                f"--step-regex {step_regex!r} finds no step number in '{path}': give a pattern whose first "
                r"group is the step's digits, such as 'epoch_(\d+)'"
            )
        if int(text) in steps:
            raise InputError(f"checkpoints '{steps[int(text)]}' and '{path}' are both step {int(text)}")
        steps[int(text)] = path
    return sorted(steps.items())


def report_names(paths: Sequence[Path]) -> dict[Path, str]:
    """The file name of each checkpoint's report: its name without suffix, plus a short hash of its path
    where two checkpoints share a name (run1/last.pt and run2/last.pt)."""
    stems = [p.stem for p in paths]
    return {
        p: f"{p.stem}.json"
        if stems.count(p.stem) == 1
        else f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}.json"
        for p in paths
    }


def run_series(
    request: SeriesRequest,
    progress: Callable[[int, int, Path, bool], None] | None = None,
) -> SeriesReport:
    """Audit every checkpoint in step order and return the series report.

    `progress` is called before each checkpoint with (position, count, path, kept): `kept` when its
    report was complete and matched, so it is not audited again. Raises as `run` does, with the
    checkpoint named.
    """
    ordered = order_checkpoints(request.checkpoints, request.step_regex)
    names = report_names([path for _, path in ordered])
    template = replace(request.template, rules=RuleOptions(), outputs=())
    world = distributed.join(template.worker_timeout)
    data = data_section(open_source(template.data, template.settings.seed))
    entries: list[Checkpoint] = []
    worst_rows: tuple[SampleResult, ...] = ()
    last: Report | None = None
    for position, (step, path) in enumerate(ordered):
        destination = None if request.reports is None else request.reports / names[path]
        kept = _matching_report(destination, path, template, data.sha256) if request.resume else None
        if progress is not None:
            progress(position, len(ordered), path, kept is not None)
        report = kept if kept is not None else _audit_one(template, path, request, destination)
        if kept is None and destination is not None and world.rank == 0:
            destination.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(destination, report.json_chunks())
        entries.append(checkpoint_of(report, step, None if destination is None else str(destination)))
        if worst_of(entries) == len(entries) - 1:
            worst_rows = tuple(worst_samples(report, WORST_SAMPLES))
        last = report
    assert last is not None
    series = SeriesReport(
        checkpoints=tuple(entries),
        data=data,
        settings=template.settings,
        order="natural" if request.step_regex is None else "step-regex",
        step_regex=request.step_regex,
        worst=worst_of(entries),
        best=best_of(entries),
        worst_samples=worst_rows,
        lipcheck_version=__version__,
    )
    return replace(
        series,
        gate=series_gate(_judge_last(request.template.rules, last), series, request.max_increase_over_best),
    )


def _audit_one(
    template: AuditRequest, path: Path, request: SeriesRequest, destination: Path | None
) -> Report:
    """One checkpoint's audit, its journal beside its report with --resume; errors name the checkpoint."""
    journal = destination.with_suffix(".journal") if request.resume and destination is not None else None
    one = replace(template, model=replace(template.model, model=path), resume=journal)
    try:
        return run(one)
    except InputError as error:
        if str(path) in str(error):
            raise
        raise error.with_context(f"checkpoint '{path}'") from error


def _matching_report(
    destination: Path | None, path: Path, template: AuditRequest, data_sha256: str
) -> Report | None:
    """The checkpoint's saved report when it is complete and matches this audit; None otherwise (it is
    audited again and the report replaced)."""
    if destination is None or not destination.is_file():
        return None
    try:
        report = read_report(destination, "checkpoint report")
    except InputError:
        return None  # incomplete or damaged: audited again
    matches = (
        report.model.sha256 == file_sha256(path)
        and report.data.sha256 == data_sha256
        and report.settings == template.settings
        and (report.bound is not None) == template.with_bound
    )
    return report if matches else None


def _judge_last(options: RuleOptions, last: Report) -> Gate:
    """The single-report rules on the last checkpoint's report (a baseline compared as by `run`)."""
    baseline = options.read_baseline()
    mismatched: list[str] = []
    if baseline is not None:
        what = f"baseline report '{options.baseline}' and the last checkpoint"
        mismatched = comparable(baseline, last.settings, last.data, what, options.allow_mismatch)
    return judge(
        rules_for(options, last, baseline=baseline, mismatched=mismatched, judged="the last checkpoint"), last
    )
