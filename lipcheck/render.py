"""Present a `Report`: a rich table for people, JSON for scripts, Markdown for pull-request comments.

Every renderer takes the same plain `Report`, so the formats cannot disagree. The report of
`lipcheck bound` (`ModelBoundReport`) has its own three renderers at the end.
"""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lipcheck.report import ModelBoundReport, ModelSection, Report, SampleResult, worst_samples

FORMATS = ("table", "json", "markdown")
WORST = 10


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _model_line(model: ModelSection) -> str:
    trusted = ", loaded with --trust-pickle" if model.trusted else ""
    arch = f", --arch {model.arch}" if model.arch else ""
    return (
        f"{model.path} ({model.format}{arch}, {model.parameters:,} parameters, "
        f"sha256 {model.sha256[:12]}{trusted})"
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _header(report: Report) -> Table:
    model, data, settings = report.model, report.data, report.settings
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", _model_line(model))
    source = data.path if data.path is not None else f"random, seed {data.seed}"
    key = f", key {data.key!r}" if data.key else ""
    shape = _shape(data.sample_shape)
    of_total = f" of {data.total:,}" if data.total != data.count else ""
    grid.add_row(
        "data", f"{source} ({data.kind}{key}, {data.count:,}{of_total} samples of {shape}, {data.dtype})"
    )
    grid.add_row(
        "settings",
        f"{settings.method}, tol {settings.tol:g}, max-iter {settings.max_iter}, {settings.dtype} on "
        f"{report.environment.device}, batch {settings.batch_size}, seed {settings.seed}"
        + _search_note(report),
    )
    return grid


def _searched(report: Report) -> bool:
    return report.settings.search_steps is not None


def _search_note(report: Report) -> str:
    if not _searched(report):
        return ""
    settings = report.settings
    return f", worst-case search: {settings.search_steps} steps within radius {settings.search_radius:g}"


def _worst_table(report: Report) -> Table:
    shown = worst_samples(report, WORST)
    table = Table(title=f"Worst {len(shown)} of {report.summary.count} samples", title_justify="left")
    for name in ("index", "sigma", "iterations", "converged", "residual"):
        table.add_column(name, justify="left" if name == "converged" else "right")
    if _searched(report):
        table.add_column("search sigma", justify="right")
        table.add_column("distance", justify="right")
    for row in shown:
        converged = Text("yes", style="green") if row.converged else Text("no", style="bold red")
        table.add_row(
            str(row.index),
            _number(row.sigma),
            str(row.iterations),
            converged,
            _number(row.residual),
            *_search_cells(report, row),
        )
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
    for verdict in report.gate.rules:
        rows.append(
            (f"gate {verdict.name}", f"{'passed' if verdict.passed else 'FAILED'}: {verdict.message}")
        )
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
        ("bracket", f"[{_number(lower)}, {_number(upper)}]{ratio}"),
    ]


def render_table(report: Report, console: Console) -> None:
    """Print the header, the worst samples and the summary to `console`."""
    summary = Table(title="Summary", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    for name, value in _summary_rows(report):
        style = "bold red" if value.startswith("FAILED") else None
        summary.add_row(name, Text(value, style=style) if style else value)
    console.print(Group(_header(report), Text(""), _worst_table(report), Text(""), summary))


def table_text(report: Report, width: int = 100) -> str:
    """The table as plain text (no colour), for a file."""
    buffer = io.StringIO()
    render_table(report, Console(file=buffer, width=width, color_system=None, force_terminal=False))
    return buffer.getvalue()


def render_markdown(report: Report) -> str:
    """A summary table in GitHub Markdown, fit for a pull-request comment."""
    model, data, settings = report.model, report.data, report.settings
    source = data.path if data.path is not None else f"random (seed {data.seed})"
    lines = [
        "### lipcheck audit",
        "",
        f"Model `{model.path}` ({model.format}, sha256 `{model.sha256[:12]}`) on `{source}` "
        f"({data.count} samples); {settings.method}, tol {settings.tol:g}, {settings.dtype}"
        f"{_search_note(report)}.",
        "",
        "| summary | value |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value} |" for name, value in _summary_rows(report)]
    search_heads, search_rule = (
        (" search sigma | distance |", " ---: | ---: |") if _searched(report) else ("", "")
    )
    lines += [
        "",
        f"| worst sample | sigma | iterations | converged | residual |{search_heads}",
        f"| ---: | ---: | ---: | --- | ---: |{search_rule}",
    ]
    for row in worst_samples(report, 5):
        lines.append(
            f"| {row.index} | {_number(row.sigma)} | {row.iterations} | {'yes' if row.converged else 'no'} "
            f"| {_number(row.residual)} |" + "".join(f" {cell} |" for cell in _search_cells(report, row))
        )
    if report.gate.passed is not None:
        lines += ["", f"**Gate: {'passed' if report.gate.passed else 'failed'}**"]
    return "\n".join(lines) + "\n"


def render_text(report: Report, format: str) -> str:
    """The report as text in `format` (one of `FORMATS`)."""
    if format == "json":
        return report.to_json()
    if format == "markdown":
        return render_markdown(report)
    return table_text(report)


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
    total = Table(show_header=False)
    total.add_column(style="bold")
    total.add_column(justify="right")
    total.add_row("upper bound (certified)", Text(_number(bound.upper_bound), style="bold"))
    total.add_row(
        "time", f"{report.timing.bound_seconds:.3g} s bound, {report.timing.load_seconds:.3g} s loading"
    )
    console.print(Group(_bound_header(report), Text(""), layers, Text(""), total))


def render_bound_markdown(report: ModelBoundReport) -> str:
    """The certified bound and its layer factors in GitHub Markdown."""
    model, bound = report.model, report.bound
    lines = [
        "### lipcheck bound",
        "",
        f"Model `{model.path}` ({model.format}, sha256 `{model.sha256[:12]}`) on inputs of shape "
        f"{_shape(bound.input_shape)}: certified upper bound **{_number(bound.upper_bound)}** on the l2 "
        "Lipschitz constant.",
        "",
        "| layer | kind | bound | method |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [
        f"| `{layer.name}` | {layer.kind} | {_number(layer.bound)} | {layer.method} |"
        for layer in bound.layers
    ]
    if bound.assumptions:
        lines += ["", f"Assumed with `--assume` (not verified): {_assumptions(report)}."]
    return "\n".join(lines) + "\n"


def render_bound_text(report: ModelBoundReport, format: str) -> str:
    """The report of `lipcheck bound` as text in `format` (one of `FORMATS`)."""
    if format == "json":
        return report.to_json()
    if format == "markdown":
        return render_bound_markdown(report)
    buffer = io.StringIO()
    render_bound_table(report, Console(file=buffer, width=120, color_system=None, force_terminal=False))
    return buffer.getvalue()
