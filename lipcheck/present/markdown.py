"""Each report in GitHub Markdown, fit for a pull-request comment or a step summary, with its
histogram as a Mermaid chart that GitHub draws."""

from __future__ import annotations

from collections.abc import Sequence

from lipcheck.options.choices import Operator
from lipcheck.present import escape
from lipcheck.present.facts import (
    TERM_COLUMNS,
    assumptions_text,
    bound_method,
    change_rows,
    comparison_lines,
    number_text,
    operator_note,
    search_cells,
    search_note,
    searched,
    shape_text,
    sigma_heading,
    sigma_histogram,
    summary_rows,
)
from lipcheck.report import BoundReport, ModelBoundReport, Report, RuleVerdict, worst_samples
from lipcheck.report.compare import Comparison

MERMAID_BINS = 12  # bars of the Markdown report's chart


def markdown_gate(verdicts: Sequence[RuleVerdict]) -> list[str]:
    if not verdicts:
        return []
    failed = sum(1 for v in verdicts if not v.passed)
    verdict = f"failed ({failed} of {len(verdicts)} rules)" if failed else "passed"
    lines = [
        f"**Gate: {verdict}**",
        "",
        "| rule | verdict | value | threshold | details |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for v in verdicts:
        lines.append(
            f"| {escape.markdown_code(v.name)} | {'passed' if v.passed else '**FAILED**'} "
            f"| {number_text(v.value)} | {number_text(v.threshold)} | {escape.markdown(v.message)} |"
        )
    return [*lines, ""]


def render_markdown(report: Report) -> str:
    """A summary table in GitHub Markdown, fit for a pull-request comment."""
    model, data, settings = report.model, report.data, report.settings
    source = data.path if data.path is not None else f"random (seed {data.seed})"
    lines = [
        "### lipcheck audit",
        "",
        f"Model {escape.markdown_code(model.path)} ({escape.markdown(model.format)}, sha256 "
        f"{escape.markdown_code(model.sha256[:12])}) on {escape.markdown_code(source)} "
        f"({data.count} samples); "
        + escape.markdown(
            f"{operator_note(settings)}{settings.method}, tol {settings.tol:g}, {settings.dtype}"
            f"{search_note(report)}."
        ),
        "",
        *markdown_gate(report.gate.rules),
        "| summary | value |",
        "| --- | ---: |",
    ]
    lines += [
        f"| {escape.markdown(name)} | {escape.markdown(value)} |" for name, value in summary_rows(report)
    ]
    lines += ["", *mermaid_histogram(report)]
    search_heads, search_rule = (
        (" search sigma | distance |", " ---: | ---: |") if searched(report) else ("", "")
    )
    lines += [
        "",
        f"| worst sample | {escape.markdown(sigma_heading(settings))} "
        f"| sigma_upper ({settings.confidence:g}) | iterations | converged | residual |{search_heads}",
        f"| ---: | ---: | ---: | ---: | --- | ---: |{search_rule}",
    ]
    for row in worst_samples(report, 5):
        lines.append(
            f"| {row.index} | {number_text(row.sigma)} | {number_text(row.sigma_upper)} | {row.iterations} "
            f"| {'yes' if row.converged else 'no'} "
            f"| {number_text(row.residual)} |" + "".join(f" {cell} |" for cell in search_cells(report, row))
        )
    return "\n".join(lines) + "\n"


def mermaid_histogram(report: Report, bins: int = MERMAID_BINS) -> list[str]:
    """The histogram of sigma as a Mermaid `xychart-beta` bar chart, which GitHub draws in Markdown
    (a step summary, a pull-request comment); elsewhere it reads as a list of numbers."""
    edges, counts = sigma_histogram(report, bins)
    centres = ", ".join(f'"{(edges[k] + edges[k + 1]) / 2:.3g}"' for k in range(len(counts)))
    return [
        "```mermaid",
        "xychart-beta",
        f'    title "sigma over {report.summary.count} samples"',
        f'    x-axis "sigma (bin centre)" [{centres}]',
        f'    y-axis "samples" 0 --> {max(int(counts.max()), 1)}',
        f"    bar [{', '.join(str(int(c)) for c in counts)}]",
        "```",
    ]


def _of_operator(bound: BoundReport) -> str:
    if bound.operator == Operator.model.value:
        return ""
    return f" of {Operator(bound.operator).function} (--operator {bound.operator})"


def render_bound_markdown(report: ModelBoundReport) -> str:
    """The certified bound and its layer factors in GitHub Markdown."""
    model, bound = report.model, report.bound
    lines = [
        "### lipcheck bound",
        "",
        f"Model {escape.markdown_code(model.path)} ({escape.markdown(model.format)}, sha256 "
        f"{escape.markdown_code(model.sha256[:12])}) on inputs of shape {shape_text(bound.input_shape)}: "
        f"certified upper bound **{number_text(bound.upper_bound)}** on the l2 Lipschitz constant"
        f"{escape.markdown(_of_operator(bound))} ({escape.markdown(bound_method(bound))}).",
        "",
        "| layer | kind | bound | method |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [
        f"| {escape.markdown_code(layer.name)} | {escape.markdown(layer.kind)} | {number_text(layer.bound)} "
        f"| {escape.markdown(layer.method)} |"
        for layer in bound.layers
    ]
    if bound.terms:
        lines += ["", "| " + " | ".join(TERM_COLUMNS) + " |", "| --- | --- | ---: | ---: | --- |"]
        lines += [
            f"| {escape.markdown_code(t.name)} | {escape.markdown(t.kind)} | {number_text(t.norm)} "
            f"| {number_text(t.contribution)} | {escape.markdown(t.method)} |"
            for t in bound.terms
        ]
    if bound.assumptions:
        lines += ["", f"Assumed with `--assume` (not verified): {escape.markdown(assumptions_text(report))}."]
    return "\n".join(lines) + "\n"


def render_comparison_markdown(comparison: Comparison) -> str:
    """The comparison in GitHub Markdown, for a step summary or a pull-request comment."""
    figures, samples = change_rows(comparison)
    lines = ["### lipcheck compare", ""]
    lines += [f"- {name}: {escape.markdown(value)}" for name, value in comparison_lines(comparison)]
    lines += ["", *markdown_gate(comparison.gate.rules)]
    for first, rows in (("figure", figures), ("sample that rose most", samples)):
        if rows:
            lines += [f"| {first} | base | new | change | change % |", "| --- | ---: | ---: | ---: | ---: |"]
            lines += ["| " + " | ".join(escape.markdown(cell) for cell in row) + " |" for row in rows] + [""]
    if not samples:
        lines.append("No sample rose.")
    return "\n".join(lines).rstrip("\n") + "\n"
