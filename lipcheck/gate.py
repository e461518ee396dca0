"""Verdicts on an audit: the rules a report must pass for a CI gate, each a small named object.

A rule looks at the report's summary and returns a `RuleVerdict`; `judge` combines the verdicts into
the report's `Gate`. Adding a rule (a baseline comparison, a per-sample bound) is one class here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lipcheck.report import Gate, RuleVerdict, Summary


class Rule(Protocol):
    """A named check of an audit's summary."""

    name: str

    def judge(self, summary: Summary) -> RuleVerdict: ...


@dataclass(frozen=True)
class FailAbove:
    """Fails when the reduced value (the summary's `value`) exceeds `threshold` (`--fail-above`)."""

    threshold: float
    name: str = "fail_above"

    def judge(self, summary: Summary) -> RuleVerdict:
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

    def judge(self, summary: Summary | None = None) -> RuleVerdict:
        passed = self.upper_bound <= self.threshold
        relation = "<=" if passed else ">"
        return RuleVerdict(
            name=self.name,
            threshold=self.threshold,
            value=self.upper_bound,
            passed=passed,
            message=f"certified upper bound {self.upper_bound:.6g} {relation} {self.threshold:.6g}",
        )


def judge(rules: Sequence[Rule], summary: Summary) -> Gate:
    """The gate of a report: every rule's verdict, passed when all pass, None when there is no rule."""
    verdicts = tuple(rule.judge(summary) for rule in rules)
    return Gate(passed=all(v.passed for v in verdicts) if verdicts else None, rules=verdicts)
