"""Verdicts on an audit: the rules a report must pass for a CI gate, each a small named object.

A rule looks at a report and returns a `RuleVerdict` (`value` judged against `threshold`, passed when
`value <= threshold`); `judge` combines the verdicts into the report's `Gate`. Rules judge a finished
report, so `lipcheck gate` judges a saved one again without recomputing. Adding a rule is one class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lipcheck.errors import InputError
from lipcheck.report.audit_report import Report
from lipcheck.report.read import read_report
from lipcheck.report.samples import largest_sigma
from lipcheck.report.sections import Gate, RuleVerdict

LISTED = 10  # failing sample indices named in a message; the verdict's `failing_samples` has them all

# How far (relative) the largest measured sigma may exceed a certified upper bound before the two
# contradict each other: a Krylov estimate never exceeds the exact norm, so only rounding (float32
# products against a float64 bound) can put it above, by far less than this.
CONTRADICTION_SLACK = 1e-3


class Rule(Protocol):
    """A named check of an audit report."""

    @property
    def name(self) -> str: ...

    def judge(self, report: Report) -> RuleVerdict: ...


@dataclass(frozen=True)
class FailAbove:
    """Fails when the reduced value (the summary's `value`) exceeds `threshold` (`--fail-above`)."""

    threshold: float
    name: str = "fail_above"

    def judge(self, report: Report) -> RuleVerdict:
        summary = report.summary
        passed = summary.value <= self.threshold
        relation = "<=" if passed else ">"
        return RuleVerdict(
            name=self.name,
            threshold=self.threshold,
            value=summary.value,
            passed=passed,
            message=f"{summary.reduction} sigma {summary.value:.6g} {relation} {self.threshold:.6g}",
        )


@dataclass(frozen=True)
class FailAboveBound:
    """Fails when the certified upper bound exceeds `threshold` (`--fail-above-bound`).

    The other rules judge values measured at samples, which only bound the Lipschitz constant from
    below; this one judges the certified bound (`lipcheck.upper_bound`), so when it passes, the model
    is proven to be `threshold`-Lipschitz on inputs of the audited shape (up to any `--assume`d
    constants). It judges the bound it carries, not the samples' summary.
    """

    threshold: float
    upper_bound: float
    name: str = "fail_above_bound"

    def judge(self, report: Report | None = None) -> RuleVerdict:
        passed = self.upper_bound <= self.threshold
        relation = "<=" if passed else ">"
        return RuleVerdict(
            name=self.name,
            threshold=self.threshold,
            value=self.upper_bound,
            passed=passed,
            message=f"certified upper bound {self.upper_bound:.6g} {relation} {self.threshold:.6g}",
        )


@dataclass(frozen=True)
class FailAboveSample:
    """Fails when any one sample's sigma exceeds `threshold` (`--fail-above-sample`); value: the max.

    After a worst-case search a sample's sigma is the largest found around it (`largest_sigma`).
    """

    threshold: float
    name: str = "fail_above_sample"

    def judge(self, report: Report) -> RuleVerdict:
        failing = tuple(s.index for s in report.samples if largest_sigma(s) > self.threshold)
        worst = f"max {report.summary.max:.6g} at sample {report.summary.argmax}"
        if failing:
            message = (
                f"{_samples(len(failing))} of {report.summary.count} above {self.threshold:.6g}: "
                f"{listed(failing)} ({worst})"
            )
        else:
            message = f"every sample's sigma <= {self.threshold:.6g} ({worst})"
        return RuleVerdict(
            name=self.name,
            threshold=self.threshold,
            value=report.summary.max,
            passed=not failing,
            message=message,
            failing_samples=failing,
        )


@dataclass(frozen=True)
class RequireConverged:
    """Fails when a sample did not converge (`--require-converged`); value: how many did not."""

    name: str = "require_converged"

    def judge(self, report: Report) -> RuleVerdict:
        failing = tuple(s.index for s in report.samples if not s.converged)
        count = report.summary.count
        settings = report.settings
        if failing:
            message = (
                f"{_samples(len(failing))} of {count} did not converge within --max-iter "
                f"{settings.max_iter} at --tol {settings.tol:g}: {listed(failing)}"
            )
        else:
            message = f"all {count} samples converged"
        return RuleVerdict(
            name=self.name,
            threshold=0,
            value=len(failing),
            passed=not failing,
            message=message,
            failing_samples=failing,
        )


@dataclass(frozen=True)
class MaxIncrease:
    """Fails when the reduced value rises more than `percent` % above a baseline report's.

    The threshold is the baseline's value times 1 + percent/100 (`--baseline B --max-increase PCT`).
    `mismatches` are the differences between the baseline and the judged report that the user chose to
    ignore (`--allow-mismatch`); the verdict's message repeats them.
    """

    percent: float
    baseline_value: float
    baseline: str
    mismatches: tuple[str, ...] = ()
    name: str = "max_increase"

    def judge(self, report: Report) -> RuleVerdict:
        summary = report.summary
        threshold = self.baseline_value * (1 + self.percent / 100)
        passed = summary.value <= threshold
        change = percent_change(self.baseline_value, summary.value)
        changed = f"{change:+.3g}%" if change is not None else f"{summary.value - self.baseline_value:+.6g}"
        message = (
            f"{summary.reduction} sigma {summary.value:.6g} vs {self.baseline_value:.6g} in baseline "
            f"'{self.baseline}' ({changed}) {'<=' if passed else '>'} +{self.percent:g}% "
            f"({threshold:.6g})"
        )
        if self.mismatches:
            message += f"; compared despite: {'; '.join(self.mismatches)}"
        return RuleVerdict(
            name=self.name,
            threshold=threshold,
            value=summary.value,
            passed=passed,
            message=message,
            baseline=self.baseline,
            baseline_value=self.baseline_value,
        )


@dataclass(frozen=True)
class RuleOptions:
    """The gate's flags, shared by `lipcheck audit` and `lipcheck gate` (and `compare`'s baseline)."""

    fail_above: float | None = None
    fail_above_sample: float | None = None
    require_converged: bool = False
    fail_above_bound: float | None = None
    baseline: Path | None = None
    max_increase: float | None = None
    allow_mismatch: bool = False

    def validate(self) -> None:
        """InputError naming the flag of a negative threshold, or of flags that do not go together."""
        check_thresholds(
            {
                "--fail-above": self.fail_above,
                "--fail-above-sample": self.fail_above_sample,
                "--max-increase": self.max_increase,
                "--fail-above-bound": self.fail_above_bound,
            }
        )
        if self.max_increase is not None and self.baseline is None:
            raise InputError("--max-increase needs --baseline REPORT.json, the report to compare with")
        if self.baseline is not None and self.max_increase is None:
            raise InputError(
                "--baseline needs --max-increase PCT, how many percent the reduced sigma may rise (0: none)"
            )
        if self.allow_mismatch and self.baseline is None:
            raise InputError("--allow-mismatch goes with --baseline REPORT.json --max-increase PCT")

    @property
    def empty(self) -> bool:
        """Whether no rule is asked for."""
        return (
            self.fail_above is None
            and self.fail_above_sample is None
            and not self.require_converged
            and self.fail_above_bound is None
            and self.baseline is None
        )

    def read_baseline(self) -> Report | None:
        """The --baseline report, read and checked; None without one."""
        if self.baseline is None:
            return None
        return read_report(self.baseline, "baseline report (--baseline)")


def check_thresholds(thresholds: Mapping[str, float | None]) -> None:
    """InputError naming the flag of a threshold that is negative or not finite."""
    for flag, value in thresholds.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"{flag} must be a number >= 0, got {value:g}")


def rules_for(
    options: RuleOptions,
    report: Report,
    *,
    baseline: Report | None = None,
    mismatched: Sequence[str] = (),
    judged: str = "this audit",
) -> list[Rule]:
    """The rules of `options` for judging `report` (`judged` names it in errors).

    `baseline` is the --baseline report (read with `options.read_baseline()` when not given), whose
    comparability the caller checked (`compare.comparable`); `mismatched` are the differences it
    accepted with --allow-mismatch, repeated in the max_increase verdict.
    """
    rules: list[Rule] = []
    if options.fail_above is not None:
        rules.append(FailAbove(options.fail_above))
    if options.fail_above_sample is not None:
        rules.append(FailAboveSample(options.fail_above_sample))
    if options.require_converged:
        rules.append(RequireConverged())
    if options.fail_above_bound is not None:
        if report.bound is None:
            raise InputError(
                f"--fail-above-bound: {judged} holds no certified bound; write it with lipcheck audit --bound"
            )
        rules.append(FailAboveBound(options.fail_above_bound, report.bound.upper_bound))
    if options.max_increase is not None and options.baseline is not None:
        base = baseline if baseline is not None else options.read_baseline()
        assert base is not None
        value, path = base.summary.value, str(options.baseline)
        rules.append(MaxIncrease(options.max_increase, value, path, tuple(mismatched)))
    return rules


def judge(rules: Sequence[Rule], report: Report) -> Gate:
    """The gate of a report: every rule's verdict, passed when all pass, None when there is no rule.

    A report whose certified bound lies below a sigma it measured (`bound_contradiction`) gets a
    failing verdict besides, rules or not: one of its figures is wrong, so no gate can pass on it.
    """
    verdicts = tuple(rule.judge(report) for rule in rules)
    contradiction = bound_contradiction(report)
    if contradiction is not None:
        verdicts += (contradiction,)
    return Gate(passed=all(v.passed for v in verdicts) if verdicts else None, rules=verdicts)


def bound_contradiction(report: Report) -> RuleVerdict | None:
    """The failing verdict `bound_contradiction` when the report's certified upper bound is below its
    largest measured sigma (beyond `CONTRADICTION_SLACK`); None when there is no bound or it holds.

    A sigma is measured at a real input, so a bound below it is not a bound: an `--assume`d constant
    too small, or a defect. It is an error of the report, never a pass.
    """
    if report.bound is None:
        return None
    bound, found = report.bound.upper_bound, report.summary.max
    if found <= bound * (1 + CONTRADICTION_SLACK):
        return None
    assumed = report.bound.assumptions
    cause = (
        f"check the --assume constants ({', '.join(f'{k}={v:g}' for k, v in assumed.items())})"
        if assumed
        else "this is a defect of lipcheck's bound, please report it"
    )
    return RuleVerdict(
        name="bound_contradiction",
        threshold=bound,
        value=found,
        passed=False,
        message=(
            f"contradiction: sample {report.summary.argmax} has sigma {found:.6g}, above the certified upper "
            f"bound {bound:.6g}, so the bound is wrong and no gate passes: {cause}"
        ),
        failing_samples=(report.summary.argmax,),
    )


def percent_change(base: float, new: float) -> float | None:
    """100 (new - base) / base; None when base is 0 (no relative change exists) or the ratio overflows
    float64 (a base of 1e-300 and a new 1e300): JSON has no Infinity, and the absolute change says it."""
    if not base:
        return None
    change = 100 * (new - base) / base
    return change if math.isfinite(change) else None


def listed(indices: Sequence[int], most: int = LISTED) -> str:
    """'3, 8, 12' or '3, 8, 12, ... and 40 more': a list of sample indices short enough for a line."""
    shown = ", ".join(str(i) for i in indices[:most])
    return f"{shown} and {len(indices) - most} more" if len(indices) > most else shown


def _samples(count: int) -> str:
    return f"{count} sample{'s' if count != 1 else ''}"
