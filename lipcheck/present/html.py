"""The HTML form of each report: one self-contained page to open from a CI artifact, offline.

A page holds everything inline: the styles, and the charts as SVG drawn by `lipcheck.present.charts`
(matplotlib, the extra `lipcheck[html]`). It loads nothing (its Content-Security-Policy forbids any
request but inline data) and runs no script, so it reads the same with JavaScript off. Each chart is a
`<figure>` with a text alternative, and the numbers behind it are in a table beneath (folded in a
`<details>` element where they are many). The output is deterministic for the same report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipcheck.present import charts
from lipcheck.present.charts import Mark
from lipcheck.present.facts import (
    TERM_COLUMNS,
    WORST,
    assumptions_text,
    bound_label,
    bound_method,
    bound_operator,
    certified_except,
    change_rows,
    comparison_lines,
    data_line,
    model_line,
    number_text,
    operator_note,
    search_note,
    shape_text,
    sigma_heading,
    sigma_histogram,
    summary_rows,
)
from lipcheck.present.page import (
    escaped,
    folded,
    html_chart,
    html_page,
    html_pairs,
    html_section,
    html_table,
    samples_table,
    verdict_banner,
)
from lipcheck.report import BoundReport, ModelBoundReport, Report, worst_samples
from lipcheck.report.compare import Comparison, SampleChange

HISTOGRAM_BINS = 30
PICTURES = 6  # the worst samples drawn beside their directions
SORTED_ROWS = 50  # rows of the table beneath the sorted sigmas; more samples are listed at even ranks
SCATTER_ROWS = 100  # rows of the table beneath the scatter; more samples list their largest changes

# ----------------------------------------------------------------------------------------------------
# An audit


def _marks(report: Report) -> list[Mark]:
    """The thresholds to draw on the sigma axis: the gate's, the baseline's value, the certified bound."""
    reduction = report.summary.reduction
    marks: list[Mark] = []
    for rule in report.gate.rules:
        if rule.name == "fail_above":
            marks.append(Mark(f"--fail-above ({reduction})", rule.threshold))
        elif rule.name == "fail_above_sample":
            marks.append(Mark("--fail-above-sample", rule.threshold))
        elif rule.name == "max_increase" and rule.baseline_value is not None:
            marks.append(Mark(f"baseline {reduction}", rule.baseline_value))
            marks.append(Mark("--max-increase limit", rule.threshold))
    if report.bound is not None:
        marks.append(Mark("certified upper bound", report.bound.upper_bound))
    return marks


def _header(report: Report) -> list[tuple[str, str]]:
    model, data, settings, environment = report.model, report.data, report.settings, report.environment
    rows = [
        ("model", model_line(model)),
        ("model sha256", model.sha256),
        ("data", data_line(data, with_digest=False)),
        ("data sha256", data.sha256 or "-"),
        (
            "settings",
            f"{operator_note(settings)}{settings.method}, tol {settings.tol:g}, max-iter "
            f"{settings.max_iter}, {settings.dtype}, batch {settings.batch_size}, seed {settings.seed}, "
            f"reduction {settings.reduction}, confidence {settings.confidence:g}{search_note(report)}",
        ),
        (
            "versions",
            f"lipcheck {report.lipcheck_version}, torch {environment.torch}, Python {environment.python}",
        ),
        ("machine", f"{environment.device}, {environment.threads} threads, {environment.platform}"),
        ("started", report.timing.started),
    ]
    return rows


def _histogram_section(report: Report) -> str:
    edges, counts = sigma_histogram(report, HISTOGRAM_BINS)
    marks = _marks(report)
    shown = ", ".join(f"{m.label} at {m.value:.4g}" for m in marks)
    description = (
        f"Histogram of sigma over {report.summary.count} samples, from {edges[0]:.4g} to {edges[-1]:.4g}"
        + (f"; marked: {shown}" if shown else "")
    )
    svg = charts.histogram(edges, counts, marks, description)
    rows = [(f"{edges[k]:.6g}", f"{edges[k + 1]:.6g}", str(int(counts[k]))) for k in range(len(counts))]
    table = html_table(("sigma from", "to", "samples"), rows, (True, True, True))
    marks_table = (
        html_table(("mark", "sigma"), [(m.label, number_text(m.value)) for m in marks], (False, True))
        if marks
        else ""
    )
    return html_section(
        "histogram",
        "Distribution of sigma",
        html_chart("histogram", svg, description + "."),
        marks_table,
        folded(table, len(rows)),
    )


def _sorted_section(report: Report) -> str:
    ordered = sorted(report.samples, key=lambda s: (-s.sigma, s.index))
    count = len(ordered)
    positions = np.unique(np.linspace(0, count - 1, min(count, charts.SORTED_POINTS)).round().astype(int))
    ranks = positions + 1
    sigma = np.array([ordered[p].sigma for p in positions], dtype=np.float64)
    upper = np.array(
        [np.nan if ordered[p].sigma_upper is None else ordered[p].sigma_upper for p in positions]
    )
    every = "" if len(positions) == count else f" (drawn at {len(positions)} evenly spaced ranks)"
    description = (
        f"The sigma of the {count} samples sorted largest first{every}, from {sigma[0]:.4g} down to "
        f"{sigma[-1]:.4g}; bars reach up to sigma_upper at confidence {report.settings.confidence:g}"
    )
    svg = charts.sorted_sigmas(ranks, sigma, upper, _marks(report), description)
    listed = np.unique(np.linspace(0, count - 1, min(count, SORTED_ROWS)).round().astype(int))
    rows = [
        (
            str(p + 1),
            str(ordered[p].index),
            number_text(ordered[p].sigma),
            number_text(ordered[p].sigma_upper),
        )
        for p in listed
    ]
    note = (
        ""
        if len(listed) == count
        else f" (every sample would be {count} rows: {len(listed)} evenly spaced ranks)"
    )
    table = html_table(
        ("rank", "sample", "sigma", "sigma_upper"),
        rows,
        (True, True, True, True),
        caption=f"Sorted sigmas{note}",
    )
    return html_section(
        "sorted",
        "Sigma per sample, sorted",
        html_chart("sorted", svg, description + "."),
        folded(table, len(rows)),
    )


def _bracket_section(report: Report) -> str:
    if report.bound is None:
        return ""
    found, certified = report.summary.max, report.bound.upper_bound
    threshold = next((r.threshold for r in report.gate.rules if r.name == "fail_above_bound"), None)
    ratio = f"{certified / found:.4g}" if found > 0 else "-"
    label = f"certified upper bound{certified_except(report.bound)}"
    description = (
        f"The Lipschitz constant lies in the bracket from the largest sigma found, {found:.4g}, to the "
        f"{label}, {certified:.4g} (ratio {ratio})"
    )
    svg = charts.bracket(found, certified, threshold, description)
    rows = [
        ("largest sigma found (lower bound)", number_text(found)),
        (label, number_text(certified)),
        ("ratio", ratio),
    ]
    if threshold is not None:
        rows.append(("--fail-above-bound", number_text(threshold)))
    return html_section(
        "bracket",
        "Bracket [largest found, certified bound]",
        html_chart("bracket", svg, description + "."),
        html_pairs(rows),
    )


def _layers_section(layers: Sequence[tuple[str, str, float, str]], assumed: str) -> str:
    """A bar chart of the layer factors (the largest `MAX_LAYERS` of a long model) and all in a table."""
    if not layers:
        return html_section(
            "layers", "Layer factors", "<p>The graph has no operation that scales perturbations.</p>\n"
        )
    drawn = list(range(len(layers)))
    if len(layers) > charts.MAX_LAYERS:
        drawn = sorted(sorted(drawn, key=lambda k: -layers[k][2])[: charts.MAX_LAYERS])
    which = (
        "" if len(drawn) == len(layers) else f" (the {len(drawn)} largest of {len(layers)}, in graph order)"
    )
    largest = max(layers, key=lambda layer: layer[2])
    description = (
        f"Bar chart of the Lipschitz factors of {len(layers)} layers{which}; the largest is "
        f"{largest[0]} ({largest[1]}) at {largest[2]:.4g}"
    )
    svg = charts.layer_factors([layers[k][0] for k in drawn], [layers[k][2] for k in drawn], description)
    rows = [(n, k, number_text(b), m) for n, k, b, m in layers]
    table = html_table(("layer", "kind", "bound", "method"), rows, (False, False, True, False))
    note = f"<p>Assumed with --assume (not verified): {escaped(assumed)}.</p>\n" if assumed else ""
    return html_section(
        "layers",
        "Layer factors of the bound",
        html_chart("layers", svg, description + "."),
        folded(table, len(layers)),
        note,
    )


def _terms_section(bound: BoundReport | None) -> str:
    """The terms of the loop transformation (one per source of deviation, summing to the bound), the
    largest named: which merged block the bound owes most to. Empty for a product bound."""
    if bound is None or not bound.terms:
        return ""
    largest = max(bound.terms, key=lambda term: term.contribution)
    total = sum(term.contribution for term in bound.terms)
    kept = (
        "the bound"
        if total <= bound.upper_bound * (1 + 1e-9)
        else f"{number_text(total)}, above the product's {number_text(bound.upper_bound)}, which is the bound"
    )
    text = (
        f"<p>The loop transformation sums these {len(bound.terms)} terms, one per source of deviation, "
        f"each the norm of the merged linear block from it to the output times what reaches it: they "
        f"add up to {escaped(kept)}. The largest, {escaped(largest.name)} ({escaped(largest.kind)}), adds "
        f"{escaped(number_text(largest.contribution))}.</p>\n"
    )
    rows = [(t.name, t.kind, number_text(t.norm), number_text(t.contribution), t.method) for t in bound.terms]
    table = html_table(TERM_COLUMNS, rows, (False, False, True, True, False))
    return html_section("terms", "Terms of the loop transformation", text, table)


def _worst_section(report: Report) -> str:
    shown = worst_samples(report, WORST)
    table = samples_table(
        shown,
        sigma_heading=sigma_heading(report.settings),
        confidence=report.settings.confidence,
        searched=report.settings.search_steps is not None,
        caption=f"Worst {len(shown)} of {report.summary.count} samples",
    )
    return html_section("worst", "Worst samples", table)


def _pictures_section(report: Report) -> str:
    directions = report.directions
    if directions is None or len(directions.inputs) == 0 or not charts.is_image(report.data.sample_shape):
        return ""
    count = len(directions.inputs)
    titles = [f"#{directions.indices[k]}  {directions.sigma[k]:.4g}" for k in range(count)]
    shape = report.data.sample_shape
    legend = (
        "mid grey is 0, each channel brighter or darker by its sign"
        if len(shape) == 3 and shape[0] == 3
        else "purple and orange are opposite signs, white is 0"
    )
    description = (
        f"The {count} samples of largest sigma (top row) above their most amplified input direction "
        f"(bottom row; {legend})"
    )
    svg = charts.thumbnails(list(directions.inputs), list(directions.vectors[:count]), titles, description)
    rows = [
        (str(directions.indices[k]), number_text(float(directions.sigma[k])),
         number_text(float(directions.residual[k]), 3), f"{float(np.abs(directions.vectors[k]).max()):.4g}")
        for k in range(count)
    ]  # fmt: skip
    table = html_table(("sample", "sigma", "residual", "largest |direction| entry"), rows, (True,) * 4)
    return html_section(
        "pictures",
        "Worst inputs and their most amplified directions",
        html_chart(
            "pictures", svg, description + ". A perturbation along the direction is amplified by sigma."
        ),
        table,
    )


def render_html(report: Report) -> str:
    """The audit report as one self-contained HTML page."""
    summary = html_section("summary", "Summary", html_pairs(summary_rows(report)))
    notes = "".join(f'<p class="note">{escaped(note)}</p>\n' for note in report.notes)
    bound = report.bound
    layers = (
        _layers_section([(x.name, x.kind, x.bound, x.method) for x in bound.layers],
                        ", ".join(f"{n} = {v:g}" for n, v in bound.assumptions.items()))
        if bound is not None else ""
    )  # fmt: skip
    body = [
        verdict_banner(
            report.gate.rules,
            "Give --fail-above, --fail-above-sample, --require-converged or a --baseline to gate.",
        ),
        notes,
        summary,
        _histogram_section(report),
        _sorted_section(report),
        _bracket_section(report),
        layers,
        _terms_section(bound),
        _worst_section(report),
        _pictures_section(report),
    ]
    return html_page(
        f"lipcheck audit: {report.model.path}",
        "lipcheck audit",
        _header(report),
        body,
        report.lipcheck_version,
    )


# ----------------------------------------------------------------------------------------------------
# A comparison


def _max_increase(comparison: Comparison) -> float | None:
    """The --max-increase percent of a comparison's rule, from its threshold and the base's value."""
    for rule in comparison.gate.rules:
        if rule.name == "max_increase" and rule.baseline_value:
            return (rule.threshold / rule.baseline_value - 1) * 100
    return None


def _listed(comparison: Comparison) -> list[SampleChange]:
    """The samples in the table beneath the scatter: all, or the `SCATTER_ROWS` largest changes (up or
    down) in index order."""
    if len(comparison.samples) <= SCATTER_ROWS:
        return list(comparison.samples)
    largest = sorted(comparison.samples, key=lambda s: (-abs(s.change), s.index))[:SCATTER_ROWS]
    return sorted(largest, key=lambda s: s.index)


def render_comparison_html(comparison: Comparison) -> str:
    """A comparison of two reports as one self-contained HTML page."""
    figures, movers = change_rows(comparison)
    parts = [verdict_banner(comparison.gate.rules, "Give --max-increase PCT to gate.")]
    if comparison.samples:
        base = np.array([s.base for s in comparison.samples], dtype=np.float64)
        new = np.array([s.new for s in comparison.samples], dtype=np.float64)
        percent = _max_increase(comparison)
        band = f", the band up to --max-increase {percent:g}% above it" if percent is not None else ""
        description = (
            f"Scatter of the new against the base sigma of {len(base)} samples matched by index, with "
            f"the line new = base{band}; {comparison.rose} rose, {comparison.fell} fell"
        )
        svg = charts.scatter(base, new, percent, description)
        rows = [
            (str(s.index), number_text(s.base), number_text(s.new), f"{s.change:+.6g}")
            for s in _listed(comparison)
        ]
        which = (
            "" if len(rows) == len(base) else f": the {len(rows)} largest changes either way of {len(base)}"
        )
        table = html_table(
            ("sample", "base", "new", "change"), rows, (True,) * 4, caption=f"Matched samples{which}"
        )
        parts.append(
            html_section(
                "scatter",
                "New against base sigma",
                html_chart("scatter", svg, description + "."),
                folded(table, len(rows)),
            )
        )
    parts.append(
        html_section(
            "figures",
            "Summary figures",
            html_table(("figure", "base", "new", "change", "change %"), figures, (False,) + (True,) * 4),
        )
    )
    movers_table = (
        html_table(("sample", "base", "new", "change", "change %"), movers, (True,) * 5)
        if movers else "<p>No sample rose.</p>\n"
    )  # fmt: skip
    parts.append(
        html_section("movers", f"Samples that rose most ({len(movers)} of {comparison.rose})", movers_table)
    )
    from lipcheck.options.version import __version__

    return html_page(
        f"lipcheck compare: {comparison.new}",
        "lipcheck compare",
        comparison_lines(comparison),
        parts,
        __version__,
    )


# ----------------------------------------------------------------------------------------------------
# A bound


def render_bound_html(report: ModelBoundReport) -> str:
    """The report of `lipcheck bound` as one self-contained HTML page."""
    bound, environment, timing = report.bound, report.environment, report.timing
    header = [
        ("model", model_line(report.model)),
        ("model sha256", report.model.sha256),
        ("input shape", f"{shape_text(bound.input_shape)} (one sample, without the batch)"),
        (
            "versions",
            f"lipcheck {report.lipcheck_version}, torch {environment.torch}, Python {environment.python}",
        ),
        ("started", report.timing.started),
    ]
    if bound.operator != "model":
        header.insert(3, ("operator", bound_operator(bound)))
    if bound.assumptions:
        header.append(("assumed", f"{assumptions_text(report)} (supplied with --assume, not verified)"))
    total = html_section(
        "bound",
        "Certified upper bound",
        html_pairs(
            [
                (bound_label(bound), number_text(bound.upper_bound)),
                ("method", bound_method(bound)),
                ("time", f"{timing.bound_seconds:.3g} s bound, {timing.load_seconds:.3g} s loading"),
            ]
        ),
    )
    layers = _layers_section(
        [(x.name, x.kind, x.bound, x.method) for x in bound.layers], assumptions_text(report)
    )
    return html_page(
        f"lipcheck bound: {report.model.path}",
        "lipcheck bound",
        header,
        [total, layers, _terms_section(bound)],
        report.lipcheck_version,
    )
