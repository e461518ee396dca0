"""Summary statistics of sigma over the audited samples, and the worst of them.

Both read a tuple of `SampleResult` or the compact `columns.SampleColumns` of an audit alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lipcheck.options.choices import Reduction, choose
from lipcheck.report.audit_report import Report
from lipcheck.report.columns import table_to_rows
from lipcheck.report.samples import SampleResult, largest_sigma
from lipcheck.report.sections import Summary

REDUCTIONS: dict[Reduction, Callable[[np.ndarray], float]] = {
    Reduction.max: lambda s: float(np.max(s)),
    Reduction.mean: lambda s: float(np.mean(s)),
    Reduction.sum: lambda s: float(np.sum(s)),
    Reduction.median: lambda s: float(np.median(s)),
    Reduction.p95: lambda s: float(np.percentile(s, 95)),
}


def summarise(samples: Sequence[SampleResult], reduction: str) -> Summary:
    """Summary statistics of sigma over `samples` (at least one); `reduction` names `value`.

    Compact columns (`columns.SampleColumns`) are summarised from their arrays, a chunk at a time, with
    one column of sigma in memory (for the median and p95), never an object per sample.
    """
    choose(Reduction, reduction, "reduction")
    if hasattr(samples, "tables"):
        return _summarise_columns(samples, reduction)
    sigma = np.array([s.sigma for s in samples], dtype=np.float64)
    found = np.array([largest_sigma(s) for s in samples], dtype=np.float64)
    worst = int(np.argmax(found))
    return Summary(
        count=len(samples),
        converged=sum(1 for s in samples if s.converged),
        max=float(found[worst]),
        mean=float(np.mean(sigma)),
        min=float(np.min(sigma)),
        median=float(np.median(sigma)),
        p95=float(np.percentile(sigma, 95)),
        reduction=reduction,
        value=REDUCTIONS[Reduction(reduction)](found if reduction == "max" else sigma),
        argmax=samples[worst].index,
    )


def _summarise_columns(samples: Any, reduction: str) -> Summary:
    """`summarise` of `SampleColumns`: the same figures, from the arrays (NaN is a missing search)."""
    largest, argmax, converged = -math.inf, 0, 0
    for table in samples.tables():
        found = np.fmax(table["sigma"], table["search_sigma"])
        k = int(np.argmax(found))
        if found[k] > largest:  # the first of equal maxima, as np.argmax over all of them
            largest, argmax = float(found[k]), int(table["index"][k])
        converged += int(np.count_nonzero(table["converged"]))
    sigma = samples.column("sigma")
    mean, low, total = float(np.mean(sigma)), float(np.min(sigma)), float(np.sum(sigma))
    median = float(np.median(sigma, overwrite_input=True))  # reorders sigma: the sums are taken
    p95 = float(np.percentile(sigma, 95, overwrite_input=True))
    values = {"max": largest, "mean": mean, "sum": total, "median": median, "p95": p95}
    return Summary(
        count=len(samples), converged=converged, max=largest, mean=mean, min=low, median=median,
        p95=p95, reduction=reduction, value=values[Reduction(reduction).value], argmax=argmax,
    )  # fmt: skip


def worst_samples(report: Report, count: int = 10) -> list[SampleResult]:
    """The `count` samples with the largest sigma (searched, when searched), largest first (ties by index)."""
    samples = report.samples
    if not hasattr(samples, "tables"):
        return sorted(samples, key=lambda s: (-largest_sigma(s), s.index))[:count]
    best: list[SampleResult] = []  # compact columns: the best of each chunk, merged
    for table in samples.tables():
        order = np.lexsort((table["index"], -np.fmax(table["sigma"], table["search_sigma"])))[:count]
        chunk = table_to_rows(table[order])
        best = sorted([*best, *chunk], key=lambda s: (-largest_sigma(s), s.index))[:count]
    return best
