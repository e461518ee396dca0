"""The figures and phrases that every form of a report shows, computed once: the table, the Markdown,
JUnit and the HTML page all call these, so the forms cannot disagree.

Each takes the plain data of `lipcheck.report` and returns text (or rows of text), never markup.
"""

from __future__ import annotations

import numpy as np

from lipcheck.options.choices import Operator
from lipcheck.report import (
    BoundReport,
    DataSection,
    ModelBoundReport,
    ModelSection,
    Report,
    SampleResult,
    Settings,
)
from lipcheck.report.compare import Comparison

WORST = 10  # the worst samples listed by the table and the HTML page

# The terms of the loop transformation: the source of deviation, the norm of the merged block from it to
# the output, what the term adds to the bound, and how the block was normed.
TERM_COLUMNS = ("term", "kind", "block norm", "adds", "method")


def number_text(value: float | None, digits: int = 6) -> str:
    """A figure to `digits` significant digits; "-" for one that is missing."""
    return "-" if value is None else f"{value:.{digits}g}"


def model_line(model: ModelSection) -> str:
    """The audited model in one line: path, format, parameters and the start of its sha256."""
    trusted = ", loaded with --trust-pickle" if model.trusted else ""
    arch = f", --arch {model.arch}" if model.arch else ""
    return (
        f"{model.path} ({model.format}{arch}, {model.parameters:,} parameters, "
        f"sha256 {model.sha256[:12]}{trusted})"
    )


def shape_text(shape: tuple[int, ...]) -> str:
    """A sample's shape as "1x16x16" ("scalar" for no dimensions)."""
    return "x".join(str(d) for d in shape) or "scalar"


def audited_operator(settings: Settings) -> Operator | None:
    """The operator of an audit that did not measure the model's own Jacobian (--operator); else None,
    and the outputs read as they always have."""
    operator = Operator(settings.operator)
    return None if operator is Operator.model else operator


def operator_note(settings: Settings) -> str:
    """ "operator fne (sigma = ||2J - I||), " before the settings, for an audit of another operator."""
    operator = audited_operator(settings)
    return "" if operator is None else f"operator {operator.value} (sigma = ||{operator.symbol}||), "


def sigma_heading(settings: Settings) -> str:
    """The heading of the sigma column, naming the operator when it is not the model's Jacobian."""
    operator = audited_operator(settings)
    return "sigma" if operator is None else f"sigma ||{operator.symbol}||"


def data_line(data: DataSection, *, with_digest: bool) -> str:
    """ "data.npy (npy, 64 samples of 1x16x16, float32, sha256 0c6da7db82b9)": the audited data, with the
    start of its sha256 when `with_digest`."""
    source = data.path if data.path is not None else f"random, seed {data.seed}"
    key = f", key {data.key!r}" if data.key else ""
    of_total = f" of {data.total:,}" if data.total != data.count else ""
    digest = f", sha256 {data.sha256[:12]}" if with_digest and data.sha256 else ""
    return (
        f"{source} ({data.kind}{key}, {data.count:,}{of_total} samples of {shape_text(data.sample_shape)}, "
        f"{data.dtype}{digest})"
    )


def searched(report: Report) -> bool:
    """Whether the audit ran a worst-case search around each sample."""
    return report.settings.search_steps is not None


def search_note(report: Report) -> str:
    """ ", worst-case search: 20 steps within radius 0.1" after the settings, when searched."""
    if not searched(report):
        return ""
    settings = report.settings
    return f", worst-case search: {settings.search_steps} steps within radius {settings.search_radius:g}"


def searched_mark(report: Report) -> str:
    """ ", searched" after the sample of the max, whose value then counts the search."""
    return ", searched" if searched(report) else ""


def search_cells(report: Report, row: SampleResult) -> list[str]:
    """A worst sample's search sigma and distance, when searched; else no cells."""
    if not searched(report):
        return []
    return [number_text(row.search_sigma), number_text(row.search_distance)]


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """(name, value) of every summary figure, the timing, and the bound's rows with --bound."""
    summary, timing = report.summary, report.timing
    rows = [
        ("count", f"{summary.count:,}"),
        ("converged", f"{summary.converged:,} of {summary.count:,}"),
        ("max", f"{number_text(summary.max)} (sample {summary.argmax}{searched_mark(report)})"),
        ("mean", number_text(summary.mean)),
        ("min", number_text(summary.min)),
        ("median", number_text(summary.median)),
        ("p95", number_text(summary.p95)),
        (f"{summary.reduction} (reduction)", number_text(summary.value)),
        ("time", f"{timing.audit_seconds:.3g} s audit, {timing.load_seconds:.3g} s loading"),
        ("samples/s", f"{timing.samples_per_second:.4g}"),
    ]
    rows += bound_rows(report)
    return rows


def bound_rows(report: Report) -> list[tuple[str, str]]:
    """With --bound: the certified upper bound and the bracket [largest sigma found, bound]."""
    if report.bound is None:
        return []
    lower, upper = report.summary.max, report.bound.upper_bound
    ratio = f", ratio {upper / lower:.4g}" if lower > 0 else ""
    assumed = " (with --assume)" if report.bound.assumptions else ""
    return [
        (bound_label(report.bound), f"{number_text(upper)}{assumed}"),
        ("bound method", bound_method(report.bound)),
        ("bracket", f"[{number_text(lower)}, {number_text(upper)}]{ratio}"),
    ]


BOUND_METHODS = {
    "lipsdp": "LipSDP-Neuron, certified in float64 (lipsdp)",
    "liplt": "loop transformation (liplt)",
    "product": "product of the layer factors",
}


def certified_except(bound: BoundReport) -> str:
    """ "" for a deterministic bound, else " except with probability p": what follows "certified"."""
    if bound.failure_probability > 0:
        return f" except with probability {bound.failure_probability:.2g}"
    return ""


def bound_label(bound: BoundReport) -> str:
    """ "upper bound (certified)", or with the probability that a Lanczos-bounded block makes it fail."""
    return f"upper bound (certified{certified_except(bound)})"


def bound_method(bound: BoundReport) -> str:
    """ "loop transformation (liplt); the product gives 21.6": which composition made the bound."""
    name = BOUND_METHODS.get(bound.method, bound.method)
    if bound.failure_probability > 0:
        name += (
            f", probabilistic: it fails with probability at most {bound.failure_probability:.2g} over the "
            "seeded start vectors of the Lanczos runs that bounded its large blocks"
        )
    if bound.method != "product" and bound.product_bound is not None:
        return f"{name}; the product of the factors gives {number_text(bound.product_bound)}"
    return name


def bound_operator(bound: BoundReport) -> str:
    """ "fne: 2f - Id, exported as one graph": whose Lipschitz constant a bound is of."""
    return f"{bound.operator}: {Operator(bound.operator).function}, exported as one graph"


def sigma_histogram(report: Report, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The histogram of sigma at the samples: `bins` equal bins from the smallest to the largest, as
    (edges (bins + 1,), counts (bins,)). The text, Markdown and HTML charts all draw this one."""
    sigma = np.array([s.sigma for s in report.samples], dtype=np.float64)
    low, high = (float(sigma.min()), float(sigma.max())) if len(sigma) else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5 * max(abs(low), 1.0) * 0.1, high + 0.5 * max(abs(high), 1.0) * 0.1
    counts, edges = np.histogram(sigma, bins=bins, range=(low, high))
    return edges, counts


def assumptions_text(report: ModelBoundReport) -> str:
    """ "name = value, ..." of the constants supplied with --assume."""
    return ", ".join(f"{name} = {value:g}" for name, value in report.bound.assumptions.items())


def percent_text(value: float | None) -> str:
    """A signed change in percent; "-" when the base was zero."""
    return "-" if value is None else f"{value:+.3g}%"


def comparison_lines(comparison: Comparison) -> list[tuple[str, str]]:
    """(name, value) of what was compared with what, and what the comparison went on despite."""
    c = comparison
    unchanged = c.matched - c.rose - c.fell
    rows = [
        ("base", c.base),
        ("new", f"{c.new} (model {c.model})"),
        ("matched", f"{c.matched:,} samples by index: {c.rose:,} rose, {c.fell:,} fell, {unchanged:,} same"),
    ]
    if c.mismatches:
        rows.append(("compared despite", "; ".join(c.mismatches)))
    return rows


def change_rows(comparison: Comparison) -> tuple[list[list[str]], list[list[str]]]:
    """The cells of the summary figures' changes and of the samples that rose most, in that order."""
    figures = [
        [f"{f.figure} ({comparison.reduction})" if f.figure == "value" else f.figure, number_text(f.base),
         number_text(f.new), f"{f.change:+.6g}", percent_text(f.change_percent)]
        for f in comparison.figures
    ]  # fmt: skip
    samples = [
        [
            str(s.index),
            number_text(s.base),
            number_text(s.new),
            f"{s.change:+.6g}",
            percent_text(s.change_percent),
        ]
        for s in comparison.top
    ]
    return figures, samples
