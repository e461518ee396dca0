"""The report of a series of checkpoints of one training run, audited on one data set (no torch).

A `SeriesReport` holds, per checkpoint in step order, the summary statistics of its own audit report
(and its certified bound with `--bound`), which checkpoint is the worst (the largest sigma found) and
which the best (the smallest reduced value), the worst checkpoint's worst samples, and the series
gate. Its JSON Schema ships at `lipcheck/report/schemas/series.schema.json`; `read_series` checks a
saved one as strictly as `read_report` checks an audit report: schema, then figures it gives again.

The series gate: the single-report rules judge the last checkpoint's report, and
`MaxIncreaseOverBest` (`--max-increase-over-best PCT`) fails when the last checkpoint's reduced value
is more than PCT % above the best checkpoint's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lipcheck.errors import InputError
from lipcheck.report.audit_report import Report
from lipcheck.report.gate import percent_change
from lipcheck.report.json_schema import first_problem
from lipcheck.report.read import MAX_NESTING, nesting_depth, refuse_constant, shipped_schema
from lipcheck.report.records import build
from lipcheck.report.samples import SampleResult, sample_dict
from lipcheck.report.sections import DataSection, Gate, RuleVerdict, Settings, Summary

SERIES_SCHEMA_VERSION = 1
SERIES_KIND = "lipcheck-series"
WORST_SAMPLES = 10  # the worst checkpoint's samples kept in the series report, largest sigma first


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of the series: where it is, its step, and the summary of its audit.

    `report` is the path of its own audit report (None when the series was audited without a folder
    for them); `upper_bound` its certified bound with `--bound`, else None; `notes` its report's notes.
    """

    step: int
    path: str
    sha256: str
    format: str
    report: str | None
    summary: Summary
    upper_bound: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesReport:
    """A training run's checkpoints audited on one data set with one set of settings.

    `order` is "natural" (natural sort of the paths) or "step-regex" (`step_regex`'s first group);
    `worst` and `best` are positions in `checkpoints`; `worst_samples` are the worst checkpoint's
    largest-sigma samples, largest first.
    """

    checkpoints: tuple[Checkpoint, ...]
    data: DataSection
    settings: Settings
    order: str
    step_regex: str | None
    worst: int
    best: int
    worst_samples: tuple[SampleResult, ...]
    gate: Gate = Gate()
    lipcheck_version: str = ""
    schema_version: int = SERIES_SCHEMA_VERSION

    @property
    def last(self) -> Checkpoint:
        return self.checkpoints[-1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict whose keys follow the series schema (lists where the dataclasses hold tuples)."""
        body = {
            "schema_version": self.schema_version,
            "kind": SERIES_KIND,
            "lipcheck_version": self.lipcheck_version,
            "data": json.loads(json.dumps(asdict(self.data))),
            "settings": json.loads(json.dumps(asdict(self.settings))),
            "order": self.order,
            "step_regex": self.step_regex,
            "checkpoints": [
                {**asdict(c), "summary": asdict(c.summary), "notes": list(c.notes)} for c in self.checkpoints
            ],
            "worst": self.worst,
            "best": self.best,
            "worst_samples": [sample_dict(s) for s in self.worst_samples],
            "gate": {"passed": self.gate.passed, "rules": [asdict(rule) for rule in self.gate.rules]},
        }
        return json.loads(json.dumps(body))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeriesReport:
        return cls(
            checkpoints=tuple(
                build(Checkpoint, c, summary=lambda s: build(Summary, s), notes=tuple)
                for c in data["checkpoints"]
            ),
            data=build(DataSection, data["data"], sample_shape=tuple),
            settings=build(Settings, data["settings"]),
            order=data["order"],
            step_regex=data["step_regex"],
            worst=data["worst"],
            best=data["best"],
            worst_samples=tuple(build(SampleResult, row) for row in data["worst_samples"]),
            gate=Gate.from_dict(data["gate"]),
            lipcheck_version=data["lipcheck_version"],
            schema_version=data["schema_version"],
        )


def checkpoint_of(report: Report, step: int, report_path: str | None) -> Checkpoint:
    """The series' entry of one checkpoint's audit report."""
    return Checkpoint(
        step=step,
        path=report.model.path,
        sha256=report.model.sha256,
        format=report.model.format,
        report=report_path,
        summary=report.summary,
        upper_bound=None if report.bound is None else report.bound.upper_bound,
        notes=tuple(report.notes),
    )


def worst_of(checkpoints: Sequence[Checkpoint]) -> int:
    """The position of the checkpoint with the largest sigma found (the first of equal ones)."""
    return max(range(len(checkpoints)), key=lambda i: (checkpoints[i].summary.max, -i))


def best_of(checkpoints: Sequence[Checkpoint]) -> int:
    """The position of the checkpoint with the smallest reduced value (the first of equal ones)."""
    return min(range(len(checkpoints)), key=lambda i: (checkpoints[i].summary.value, i))


@dataclass(frozen=True)
class MaxIncreaseOverBest:
    """Fails when the last checkpoint's reduced value is more than `percent` % above the best one's
    (`--max-increase-over-best PCT`): the run got worse than it was."""

    percent: float
    name: str = "max_increase_over_best"

    def judge(self, series: SeriesReport) -> RuleVerdict:
        best, last = series.checkpoints[series.best], series.last
        threshold = best.summary.value * (1 + self.percent / 100)
        value = last.summary.value
        passed = value <= threshold
        change = percent_change(best.summary.value, value)
        changed = f"{change:+.3g}%" if change is not None else f"{value - best.summary.value:+.6g}"
        return RuleVerdict(
            name=self.name,
            threshold=threshold,
            value=value,
            passed=passed,
            message=(
                f"last checkpoint (step {last.step}) {last.summary.reduction} sigma {value:.6g} vs best "
                f"(step {best.step}) {best.summary.value:.6g} ({changed}) {'<=' if passed else '>'} "
                f"+{self.percent:g}% ({threshold:.6g})"
            ),
            baseline=best.path,
            baseline_value=best.summary.value,
        )


def series_gate(last_gate: Gate, series: SeriesReport, max_increase_over_best: float | None) -> Gate:
    """The series gate: the last checkpoint's verdicts (its report judged by the single-report rules),
    plus `MaxIncreaseOverBest` when asked for; None when there is no rule."""
    verdicts = list(last_gate.rules)
    if max_increase_over_best is not None:
        verdicts.append(MaxIncreaseOverBest(max_increase_over_best).judge(series))
    return Gate(passed=all(v.passed for v in verdicts) if verdicts else None, rules=tuple(verdicts))


def natural_key(text: str) -> tuple[Any, ...]:
    """A sort key that orders digit runs by value: epoch_2 before epoch_10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def series_schema() -> dict[str, Any]:
    """The JSON Schema that every series report validates against."""
    return shipped_schema("series.schema.json")


def read_series(path: str | Path, what: str = "series report") -> SeriesReport:
    """The series report saved at `path`, checked before anything trusts it: JSON, nesting, schema, and
    its worst and best checkpoints given again by its figures. InputError naming the file otherwise."""
    source = Path(path)
    where, fix = f"{what} '{source}'", "give a series report written by lipcheck audit CKPT... -o FILE.json"
    if not source.is_file():
        raise InputError(f"{where} {'is not a file' if source.exists() else 'does not exist'}: {fix}")
    text = source.read_bytes()
    if nesting_depth(text) > MAX_NESTING:
        raise InputError(f"{where} nests deeper than {MAX_NESTING} levels: {fix}")
    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{where} is not JSON: {fix}") from None
    problem = first_problem(data, series_schema())
    if problem is not None:
        raise InputError(f"{where} is not a valid lipcheck series report ({problem}): {fix}")
    series = SeriesReport.from_dict(data)
    problem = series_inconsistency(series)
    if problem is not None:
        raise InputError(f"{where} contradicts itself ({problem}): it was edited or damaged; audit again")
    return series


def series_inconsistency(series: SeriesReport) -> str | None:
    """What in a series report its own figures contradict, or None."""
    if not series.checkpoints:
        return "it has no checkpoint"
    for name, computed in (("worst", worst_of(series.checkpoints)), ("best", best_of(series.checkpoints))):
        if getattr(series, name) != computed:
            return f"{name} is checkpoint {getattr(series, name)} but its figures give {computed}"
    steps = [c.step for c in series.checkpoints]
    if series.order == "step-regex" and steps != sorted(steps):
        return "its checkpoints are not in step order"
    worst = series.checkpoints[series.worst].summary
    if series.worst_samples and not math.isclose(
        max(max(s.sigma, s.search_sigma or 0.0) for s in series.worst_samples), worst.max, rel_tol=1e-9
    ):
        return "its worst samples do not reach the worst checkpoint's max"
    return None
