"""Present a `Report`: a rich table for people, JSON for scripts, Markdown for pull-request comments,
JUnit XML for CI systems, a self-contained HTML page with charts (`lipcheck.present.html`); and the same
formats for a `Comparison` of two reports.

Every renderer takes the same plain data, so the formats cannot disagree. The report of
`lipcheck bound` (`ModelBoundReport`) has its own renderers.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from math import ceil
from typing import Any, Generic, TypeVar

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from lipcheck.errors import InputError
from lipcheck.options.choices import Format, Operator
from lipcheck.present import charts
from lipcheck.report import (
    BoundReport,
    DataSection,
    ModelBoundReport,
    ModelSection,
    Report,
    RuleVerdict,
    SampleResult,
    Settings,
    worst_samples,
)
from lipcheck.report.compare import Comparison
from lipcheck.report.gate import listed

WORST = 10
TEXT_BINS = 32  # characters of the table's one-line histogram
MERMAID_BINS = 12  # bars of the Markdown report's chart
BLOCKS = "▁▂▃▄▅▆▇█"
RESIDUAL_DIGITS = 3  # the residual is a diagnostic: its order of magnitude is what a reader needs
JUNIT_LISTED = 100  # failing sample indices in a JUnit failure's text

Rendered = TypeVar("Rendered")


def _number(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _model_line(model: ModelSection) -> str:
    trusted = ", loaded with --trust-pickle" if model.trusted else ""
    arch = f", --arch {model.arch}" if model.arch else ""
    return (
        f"{model.path} ({model.format}{arch}, {model.parameters:,} parameters, "
        f"sha256 {model.sha256[:12]}{trusted})"
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _operator(settings: Settings) -> Operator | None:
    """The operator of an audit that did not measure the model's own Jacobian (--operator); else None,
    and the outputs read as they always have."""
    operator = Operator(settings.operator)
    return None if operator is Operator.model else operator


def _operator_note(settings: Settings) -> str:
    operator = _operator(settings)
    return "" if operator is None else f"operator {operator.value} (sigma = ||{operator.symbol}||), "


def _sigma_heading(settings: Settings) -> str:
    operator = _operator(settings)
    return "sigma" if operator is None else f"sigma ||{operator.symbol}||"


def _header(report: Report) -> Table:
    model, data, settings = report.model, report.data, report.settings
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", _model_line(model))
    grid.add_row("data", _data_line(data, with_digest=True))
    grid.add_row(
        "settings",
        f"{_operator_note(settings)}{settings.method}, tol {settings.tol:g}, max-iter {settings.max_iter}, "
        f"{settings.dtype} on {report.environment.device}, batch {settings.batch_size}, seed {settings.seed}"
        + _scale_note(report)
        + _search_note(report),
    )
    return grid


def _data_line(data: DataSection, *, with_digest: bool) -> str:
    """ "data.npy (npy, 64 samples of 1x16x16, float32, sha256 0c6da7db82b9)": the audited data, with the
    start of its sha256 when `with_digest`."""
    source = data.path if data.path is not None else f"random, seed {data.seed}"
    key = f", key {data.key!r}" if data.key else ""
    of_total = f" of {data.total:,}" if data.total != data.count else ""
    digest = f", sha256 {data.sha256[:12]}" if with_digest and data.sha256 else ""
    return (
        f"{source} ({data.kind}{key}, {data.count:,}{of_total} samples of {_shape(data.sample_shape)}, "
        f"{data.dtype}{digest})"
    )


def _scale_note(report: Report) -> str:
    """', 4 ranks' for a sharded audit; ', batches split to 16 (out of memory)' after a back-off."""
    ran = report.environment
    ranks = f", {ran.world_size} ranks" if ran.world_size > 1 else ""
    fitted = ran.fitted_batch_size
    split = f", batches split to {fitted} (out of memory)" if fitted is not None else ""
    return ranks + split


def _searched(report: Report) -> bool:
    return report.settings.search_steps is not None


def _search_note(report: Report) -> str:
    if not _searched(report):
        return ""
    settings = report.settings
    return f", worst-case search: {settings.search_steps} steps within radius {settings.search_radius:g}"


def _worst_table(report: Report) -> Table:
    shown = worst_samples(report, WORST)
    title = (
        f"Worst {len(shown)} of {report.summary.count} samples "
        f"(sigma_upper at confidence {report.settings.confidence:g})"
    )
    table = Table(title=title, title_justify="left")
    sigma = _sigma_heading(report.settings)
    for name in ("index", sigma, "sigma_upper", "iterations", "converged", "residual"):
        table.add_column(name, justify="left" if name == "converged" else "right")
    for row in shown:
        converged = Text("yes", style="green") if row.converged else Text("no", style="bold red")
        table.add_row(
            str(row.index),
            _number(row.sigma),
            _number(row.sigma_upper),
            str(row.iterations),
            converged,
            _number(row.residual, RESIDUAL_DIGITS),
        )
    return table


def _search_table(report: Report) -> Table:
    """The worst samples' worst-case search: a table of its own, so that both fit 80 columns."""
    shown, settings = worst_samples(report, WORST), report.settings
    title = f"Worst-case search: {settings.search_steps} steps within radius {settings.search_radius:g}"
    table = Table(title=title, title_justify="left")
    for name in ("index", "sigma", "search sigma", "distance"):
        table.add_column(name, justify="right")
    for row in shown:
        table.add_row(str(row.index), _number(row.sigma), *_search_cells(report, row))
    return table


def _searched_mark(report: Report) -> str:
    return ", searched" if _searched(report) else ""


def _search_cells(report: Report, row: SampleResult) -> list[str]:
    if not _searched(report):
        return []
    return [_number(row.search_sigma), _number(row.search_distance)]


def _summary_rows(report: Report) -> list[tuple[str, str]]:
    summary, timing = report.summary, report.timing
    rows = [
        ("count", f"{summary.count:,}"),
        ("converged", f"{summary.converged:,} of {summary.count:,}"),
        ("max", f"{_number(summary.max)} (sample {summary.argmax}{_searched_mark(report)})"),
        ("mean", _number(summary.mean)),
        ("min", _number(summary.min)),
        ("median", _number(summary.median)),
        ("p95", _number(summary.p95)),
        (f"{summary.reduction} (reduction)", _number(summary.value)),
        ("time", f"{timing.audit_seconds:.3g} s audit, {timing.load_seconds:.3g} s loading"),
        ("samples/s", f"{timing.samples_per_second:.4g}"),
    ]
    rows += _bound_rows(report)
    return rows


def _bound_rows(report: Report) -> list[tuple[str, str]]:
    """With --bound: the certified upper bound and the bracket [largest sigma found, bound]."""
    if report.bound is None:
        return []
    lower, upper = report.summary.max, report.bound.upper_bound
    ratio = f", ratio {upper / lower:.4g}" if lower > 0 else ""
    assumed = " (with --assume)" if report.bound.assumptions else ""
    return [
        ("upper bound (certified)", f"{_number(upper)}{assumed}"),
        ("bound method", _bound_method(report.bound)),
        ("bracket", f"[{_number(lower)}, {_number(upper)}]{ratio}"),
    ]


BOUND_METHODS = {
    "liplt": "loop transformation (liplt)",
    "product": "product of the layer factors",
}


def _bound_method(bound: BoundReport) -> str:
    """ "loop transformation (liplt); the product gives 21.6": which composition made the bound."""
    name = BOUND_METHODS.get(bound.method, bound.method)
    if bound.method != "product" and bound.product_bound is not None:
        return f"{name}; the product of the factors gives {_number(bound.product_bound)}"
    return name


def _bound_operator(bound: BoundReport) -> str:
    """ "fne: 2f - Id, exported as one graph": whose Lipschitz constant a bound is of."""
    return f"{bound.operator}: {Operator(bound.operator).function}, exported as one graph"


def _of_operator(bound: BoundReport) -> str:
    if bound.operator == Operator.model.value:
        return ""
    return f" of {Operator(bound.operator).function} (--operator {bound.operator})"


def _gate_rows(verdicts: Sequence[RuleVerdict]) -> list[tuple[str, str]]:
    return [(f"gate {v.name}", f"{'passed' if v.passed else 'FAILED'}: {v.message}") for v in verdicts]


def _pairs(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        style = "bold red" if value.startswith("FAILED") else None
        table.add_row(name, Text(value, style=style) if style else value)
    return table


def sigma_histogram(report: Report, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The histogram of sigma at the samples: `bins` equal bins from the smallest to the largest, as
    (edges (bins + 1,), counts (bins,)). The text, Markdown and HTML charts all draw this one."""
    sigma = np.array([s.sigma for s in report.samples], dtype=np.float64)
    low, high = (float(sigma.min()), float(sigma.max())) if len(sigma) else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5 * max(abs(low), 1.0) * 0.1, high + 0.5 * max(abs(high), 1.0) * 0.1
    counts, edges = np.histogram(sigma, bins=bins, range=(low, high))
    return edges, counts


def text_histogram(report: Report, bins: int = TEXT_BINS) -> str:
    """One line: the smallest sigma, a block character per bin (height by count; a blank for an empty
    bin, so that one outlier stands apart from the rest), the largest sigma."""
    edges, counts = sigma_histogram(report, bins)
    top = int(counts.max()) if len(counts) else 0
    bars = "".join(
        " " if count == 0 else BLOCKS[max(0, ceil(len(BLOCKS) * int(count) / top) - 1)] for count in counts
    )
    low, high = _number(float(edges[0]), 4), _number(float(edges[-1]), 4)
    return f"sigma {low} {bars} {high}  (histogram, max bin {top})"


def render_table(report: Report, console: Console) -> None:
    """Print the header, the worst samples, the summary and a one-line histogram to `console`."""
    summary = _pairs("Summary", _summary_rows(report) + _gate_rows(report.gate.rules))
    search = [_search_table(report), Text("")] if _searched(report) else []
    histogram = Text(text_histogram(report), no_wrap=True, overflow="ellipsis")
    console.print(
        Group(_header(report), Text(""), _worst_table(report), Text(""), *search, summary, histogram)
    )


def _plain(render: Callable[[Console], None], width: int = 100) -> str:
    buffer = io.StringIO()
    render(Console(file=buffer, width=width, color_system=None, force_terminal=False))
    return buffer.getvalue()


def table_text(report: Report, width: int = 100) -> str:
    """The table as plain text (no colour), for a file."""
    return _plain(lambda console: render_table(report, console), width)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_gate(verdicts: Sequence[RuleVerdict]) -> list[str]:
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
            f"| `{v.name}` | {'passed' if v.passed else '**FAILED**'} | {_number(v.value)} "
            f"| {_number(v.threshold)} | {_cell(v.message)} |"
        )
    return [*lines, ""]


def render_markdown(report: Report) -> str:
    """A summary table in GitHub Markdown, fit for a pull-request comment."""
    model, data, settings = report.model, report.data, report.settings
    source = data.path if data.path is not None else f"random (seed {data.seed})"
    lines = [
        "### lipcheck audit",
        "",
        f"Model `{model.path}` ({model.format}, sha256 `{model.sha256[:12]}`) on `{source}` "
        f"({data.count} samples); {_operator_note(settings)}{settings.method}, tol {settings.tol:g}, "
        f"{settings.dtype}"
        f"{_search_note(report)}.",
        "",
        *_markdown_gate(report.gate.rules),
        "| summary | value |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value} |" for name, value in _summary_rows(report)]
    lines += ["", *mermaid_histogram(report)]
    search_heads, search_rule = (
        (" search sigma | distance |", " ---: | ---: |") if _searched(report) else ("", "")
    )
    lines += [
        "",
        f"| worst sample | {_cell(_sigma_heading(settings))} | sigma_upper ({settings.confidence:g}) "
        f"| iterations | converged | residual |{search_heads}",
        f"| ---: | ---: | ---: | ---: | --- | ---: |{search_rule}",
    ]
    for row in worst_samples(report, 5):
        lines.append(
            f"| {row.index} | {_number(row.sigma)} | {_number(row.sigma_upper)} | {row.iterations} "
            f"| {'yes' if row.converged else 'no'} "
            f"| {_number(row.residual)} |" + "".join(f" {cell} |" for cell in _search_cells(report, row))
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


def render_junit(report: Report) -> str:
    """JUnit XML: one testsuite named after the model, one testcase per gate rule."""
    model, data = report.model, report.data
    operator = _operator(report.settings)
    return junit_xml(
        report.model.path,
        report.gate.rules,
        seconds=report.timing.total_seconds,
        timestamp=report.timing.started,
        properties={
            **({} if operator is None else {"operator": f"{operator.value} (sigma = ||{operator.symbol}||)"}),
            "model_sha256": model.sha256,
            "data": data.path if data.path is not None else f"random (seed {data.seed})",
            "data_sha256": data.sha256 or "",
            "samples": str(data.count),
            "reduction": report.summary.reduction,
            "value": repr(report.summary.value),
            **_bound_properties(report),
        },
    )


def _bound_properties(report: Report) -> dict[str, str]:
    """With --bound: the bound, its method and the bracket ratio, as JUnit properties."""
    if report.bound is None:
        return {}
    lower, upper = report.summary.max, report.bound.upper_bound
    return {
        "upper_bound": repr(upper),
        "bound_method": report.bound.method,
        "bracket_ratio": repr(upper / lower) if lower > 0 else "",
    }


def _junit_timestamp(iso: str) -> str:
    """An ISO 8601 time as JUnit's schema wants it: UTC, to the second, without a zone suffix."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def junit_xml(
    suite: str,
    verdicts: Sequence[RuleVerdict],
    *,
    seconds: float = 0.0,
    timestamp: str | None = None,
    properties: Mapping[str, str] | None = None,
) -> str:
    """A JUnit document of one testsuite `suite` with a testcase per verdict; a failed rule's testcase
    holds a <failure> whose message and text give the measured value and the threshold."""
    failures = sum(1 for v in verdicts if not v.passed)
    counts = {"tests": str(len(verdicts)), "failures": str(failures), "errors": "0"}
    root = ET.Element("testsuites", name="lipcheck", **counts, time=f"{seconds:.3f}")
    node = ET.SubElement(root, "testsuite", name=suite, **counts, skipped="0", time=f"{seconds:.3f}")
    if timestamp:
        node.set("timestamp", _junit_timestamp(timestamp))
    if properties:
        listing = ET.SubElement(node, "properties")
        for name, value in properties.items():
            ET.SubElement(listing, "property", name=name, value=value)
    for verdict in verdicts:
        case = ET.SubElement(node, "testcase", classname=suite, name=verdict.name, time="0")
        if verdict.passed:
            ET.SubElement(case, "system-out").text = verdict.message
            continue
        lines = [f"value: {verdict.value:.6g}", f"threshold: {verdict.threshold:.6g}"]
        if verdict.baseline is not None:
            lines.append(f"baseline: {verdict.baseline} ({_number(verdict.baseline_value)})")
        if verdict.failing_samples:
            failing = verdict.failing_samples
            lines.append(f"failing samples ({len(failing)}): {listed(failing, JUNIT_LISTED)}")
        failure = ET.SubElement(case, "failure", message=verdict.message, type=verdict.name)
        failure.text = "\n".join(lines)
    ET.indent(root)
    document = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _NOT_XML.sub(_escaped, document) + "\n"


# Characters XML 1.0 cannot hold, even escaped: control characters but tab and newlines, surrogates,
# U+FFFE and U+FFFF. A path or a message may carry them; the document shows them as '\\xNN' escapes.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def github_annotations(verdicts: Sequence[RuleVerdict]) -> list[str]:
    """`::error::` workflow commands for the failed rules, so GitHub Actions marks them on the run."""
    return [
        f"::error title={_escape(f'lipcheck {v.name}', property=True)}::{_escape(v.message)}"
        for v in verdicts
        if not v.passed
    ]


def _escape(text: str, property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property else text


# ----------------------------------------------------------------------------------------------------
# The report of `lipcheck bound`


def _assumptions(report: ModelBoundReport) -> str:
    return ", ".join(f"{name} = {value:g}" for name, value in report.bound.assumptions.items())


def _bound_header(report: ModelBoundReport) -> Table:
    model, bound = report.model, report.bound
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", _model_line(model))
    grid.add_row("input shape", f"{_shape(bound.input_shape)} (one sample, without the batch)")
    if bound.operator != Operator.model.value:
        grid.add_row("operator", _bound_operator(bound))
    if bound.assumptions:
        grid.add_row("assumed", f"{_assumptions(report)} (supplied with --assume, not verified)")
    return grid


def render_bound_table(report: ModelBoundReport, console: Console) -> None:
    """Print the model, every layer factor and the certified bound to `console`."""
    bound = report.bound
    layers = Table(title=f"Layer factors ({len(bound.layers)})", title_justify="left")
    for name in ("layer", "kind", "bound", "method"):
        layers.add_column(name, justify="right" if name == "bound" else "left")
    for layer in bound.layers:
        layers.add_row(layer.name, layer.kind, _number(layer.bound), layer.method)
    parts: list[Any] = [_bound_header(report), Text(""), layers, Text("")]
    if bound.terms:
        terms = Table(title=f"Terms of the loop transformation ({len(bound.terms)})", title_justify="left")
        for name in TERM_COLUMNS:
            terms.add_column(name, justify="right" if name in ("block norm", "adds") else "left")
        for term in bound.terms:
            terms.add_row(term.name, term.kind, _number(term.norm), _number(term.contribution), term.method)
        parts += [terms, Text("")]
    total = Table(show_header=False)
    total.add_column(style="bold")
    total.add_column(justify="right")
    total.add_row("upper bound (certified)", Text(_number(bound.upper_bound), style="bold"))
    total.add_row("method", _bound_method(bound))
    total.add_row(
        "time", f"{report.timing.bound_seconds:.3g} s bound, {report.timing.load_seconds:.3g} s loading"
    )
    console.print(Group(*parts, total))


# The terms of the loop transformation: the source of deviation, the norm of the merged block from it to
# the output, what the term adds to the bound, and how the block was normed.
TERM_COLUMNS = ("term", "kind", "block norm", "adds", "method")


def render_bound_markdown(report: ModelBoundReport) -> str:
    """The certified bound and its layer factors in GitHub Markdown."""
    model, bound = report.model, report.bound
    lines = [
        "### lipcheck bound",
        "",
        f"Model `{model.path}` ({model.format}, sha256 `{model.sha256[:12]}`) on inputs of shape "
        f"{_shape(bound.input_shape)}: certified upper bound **{_number(bound.upper_bound)}** on the l2 "
        f"Lipschitz constant{_of_operator(bound)} ({_bound_method(bound)}).",
        "",
        "| layer | kind | bound | method |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [
        f"| `{layer.name}` | {layer.kind} | {_number(layer.bound)} | {layer.method} |"
        for layer in bound.layers
    ]
    if bound.terms:
        lines += ["", "| " + " | ".join(TERM_COLUMNS) + " |", "| --- | --- | ---: | ---: | --- |"]
        lines += [
            f"| `{t.name}` | {t.kind} | {_number(t.norm)} | {_number(t.contribution)} | {t.method} |"
            for t in bound.terms
        ]
    if bound.assumptions:
        lines += ["", f"Assumed with `--assume` (not verified): {_assumptions(report)}."]
    return "\n".join(lines) + "\n"


# A comparison of two reports.


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3g}%"


def _comparison_lines(comparison: Comparison) -> list[tuple[str, str]]:
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


def _change_rows(comparison: Comparison) -> tuple[list[list[str]], list[list[str]]]:
    figures = [
        [f"{f.figure} ({comparison.reduction})" if f.figure == "value" else f.figure, _number(f.base),
         _number(f.new), f"{f.change:+.6g}", _percent(f.change_percent)]
        for f in comparison.figures
    ]  # fmt: skip
    samples = [
        [str(s.index), _number(s.base), _number(s.new), f"{s.change:+.6g}", _percent(s.change_percent)]
        for s in comparison.top
    ]
    return figures, samples


def render_comparison_table(comparison: Comparison, console: Console) -> None:
    """Print what was compared, the change of every summary figure and the samples that rose most."""
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    for name, value in _comparison_lines(comparison):
        header.add_row(name, value)
    figures, samples = _change_rows(comparison)
    parts: list[RenderableType] = [header, Text("")]
    for title, first, rows in (
        ("Summary", "figure", figures),
        (f"Samples that rose most ({len(samples)} of {comparison.rose})", "index", samples),
    ):
        table = Table(title=title, title_justify="left", pad_edge=False)
        for name in (first, "base", "new", "change", "change %"):
            table.add_column(name, justify="left" if name == "figure" else "right")
        for row in rows:
            table.add_row(*row)
        parts += [table, Text("")]
    if comparison.gate.rules:
        parts.append(_pairs("Gate", _gate_rows(comparison.gate.rules)))
    console.print(Group(*parts))


def render_comparison_markdown(comparison: Comparison) -> str:
    """The comparison in GitHub Markdown, for a step summary or a pull-request comment."""
    figures, samples = _change_rows(comparison)
    lines = ["### lipcheck compare", ""]
    lines += [f"- {name}: {_cell(value)}" for name, value in _comparison_lines(comparison)]
    lines += ["", *_markdown_gate(comparison.gate.rules)]
    for first, rows in (("figure", figures), ("sample that rose most", samples)):
        if rows:
            lines += [f"| {first} | base | new | change | change % |", "| --- | ---: | ---: | ---: | ---: |"]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    if not samples:
        lines.append("No sample rose.")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------
# `lipcheck inspect`: what was loaded


def _input_spec(specs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{s['name']} ({', '.join(map(str, s['shape']))}) {s['dtype']}" for s in specs) or "-"


# How a field of `ModelSection` reads, where `str` would not do.
_INSPECTED: dict[str, Callable[[Any], str]] = {
    "input_spec": _input_spec,
    "arch_kwargs": lambda value: json.dumps(value) if value else "-",
    "trusted": lambda value: (
        "yes (loading executed code from the file)" if value else "no (nothing from the file was run)"
    ),
}


def _inspected(name: str, value: Any) -> str:
    shown = _INSPECTED.get(name)
    return shown(value) if shown is not None else "-" if value is None else str(value)


def render_model_text(model: ModelSection) -> str:
    """One 'name: value' line per field of a loaded model's description."""
    return "".join(f"{name + ':':<13} {_inspected(name, value)}\n" for name, value in model.__dict__.items())


def render_model_json(model: ModelSection) -> str:
    return json.dumps(model.__dict__, indent=2, default=list) + "\n"


# ----------------------------------------------------------------------------------------------------
# The renderers of each kind of report, looked up by format


def _html() -> Any:
    """`lipcheck.present.html`, imported when a page is rendered (it imports this module)."""
    from lipcheck.present import html as html_report

    return html_report


@dataclass(frozen=True)
class Renderers(Generic[Rendered]):
    """How one kind of report is presented: its text per `Format` (a string, or pieces of one to
    stream), and its table on a terminal. A format missing from `text` is one the kind lacks."""

    kind: str
    text: Mapping[Format, Callable[[Rendered], str | Iterable[str]]]
    console: Callable[[Rendered, Console], None]
    lacking: str = ""  # why a format is missing and what to do instead

    def check(self, format: str | Format, flag: str) -> Format:
        """The format, or InputError naming `flag` when this kind has no such form, or when it is HTML
        and matplotlib (the extra `lipcheck[html]`) is missing: checked before any work is done."""
        chosen = Format(format)
        if chosen not in self.text:
            raise InputError(f"{flag}: {self.kind} has no {chosen.value} form{self.lacking}")
        if chosen == Format.html:
            charts.require(flag)
        return chosen

    def render(self, value: Rendered, format: str | Format, flag: str = "--format") -> str | Iterable[str]:
        """`value` as text in `format`: a string, or pieces of one to write as they come."""
        return self.text[self.check(format, flag)](value)

    def render_text(self, value: Rendered, format: str | Format) -> str:
        """`value` as one string in `format`."""
        return "".join(self.render(value, format))


REPORT = Renderers[Report](
    "an audit report",
    {
        Format.table: table_text,
        Format.json: Report.json_chunks,
        Format.markdown: render_markdown,
        Format.junit: render_junit,
        Format.html: lambda report: _html().render_html(report),
    },
    render_table,
)
BOUND_REPORT = Renderers[ModelBoundReport](
    "a bound report",
    {
        Format.table: lambda report: _plain(lambda console: render_bound_table(report, console), 120),
        Format.json: ModelBoundReport.to_json,
        Format.markdown: render_bound_markdown,
        Format.html: lambda report: _html().render_bound_html(report),
    },
    render_bound_table,
    " (JUnit holds a gate's rules, and a bound has none): write .json, .md, .html or .txt, or gate it with "
    "lipcheck audit --fail-above-bound",
)
COMPARISON = Renderers[Comparison](
    "a comparison",
    {
        Format.table: lambda comparison: _plain(lambda console: render_comparison_table(comparison, console)),
        Format.json: lambda comparison: json.dumps(comparison.to_dict(), indent=2) + "\n",
        Format.markdown: render_comparison_markdown,
        Format.junit: lambda comparison: junit_xml(comparison.model, comparison.gate.rules),
        Format.html: lambda comparison: _html().render_comparison_html(comparison),
    },
    render_comparison_table,
)
