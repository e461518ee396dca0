"""Present a `Report`: a rich table for people, JSON for scripts, Markdown for pull-request comments.

Every renderer takes the same plain `Report`, so the formats cannot disagree.
"""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lipcheck.report import Report, worst_samples

FORMATS = ("table", "json", "markdown")
WORST = 10


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _header(report: Report) -> Table:
    model, data, settings = report.model, report.data, report.settings
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    trusted = ", loaded with --trust-pickle" if model.trusted else ""
    arch = f", --arch {model.arch}" if model.arch else ""
    grid.add_row(
        "model",
        f"{model.path} ({model.format}{arch}, {model.parameters:,} parameters, "
        f"sha256 {model.sha256[:12]}{trusted})",
    )
    source = data.path if data.path is not None else f"random, seed {data.seed}"
    key = f", key {data.key!r}" if data.key else ""
    shape = "x".join(str(d) for d in data.sample_shape) or "scalar"
    of_total = f" of {data.total:,}" if data.total != data.count else ""
    digest = f", sha256 {data.sha256[:12]}" if data.sha256 else ""
    grid.add_row(
        "data",
        f"{source} ({data.kind}{key}, {data.count:,}{of_total} samples of {shape}, {data.dtype}{digest})",
    )
    grid.add_row(
        "settings",
        f"{settings.method}, tol {settings.tol:g}, max-iter {settings.max_iter}, {settings.dtype} on "
        f"{report.environment.device}, batch {settings.batch_size}, seed {settings.seed}",
    )
    return grid


def _worst_table(report: Report) -> Table:
    shown = worst_samples(report, WORST)
    table = Table(title=f"Worst {len(shown)} of {report.summary.count} samples", title_justify="left")
    for name in ("index", "sigma", "iterations", "converged", "residual"):
        table.add_column(name, justify="left" if name == "converged" else "right")
    for row in shown:
        converged = Text("yes", style="green") if row.converged else Text("no", style="bold red")
        table.add_row(
            str(row.index), _number(row.sigma), str(row.iterations), converged, _number(row.residual)
        )
    return table


def _summary_rows(report: Report) -> list[tuple[str, str]]:
    summary, timing = report.summary, report.timing
    rows = [
        ("count", f"{summary.count:,}"),
        ("converged", f"{summary.converged:,} of {summary.count:,}"),
        ("max", f"{_number(summary.max)} (sample {summary.argmax})"),
        ("mean", _number(summary.mean)),
        ("min", _number(summary.min)),
        ("median", _number(summary.median)),
        ("p95", _number(summary.p95)),
        (f"{summary.reduction} (reduction)", _number(summary.value)),
        ("time", f"{timing.audit_seconds:.3g} s audit, {timing.load_seconds:.3g} s loading"),
        ("samples/s", f"{timing.samples_per_second:.4g}"),
    ]
    for verdict in report.gate.rules:
        rows.append(
            (f"gate {verdict.name}", f"{'passed' if verdict.passed else 'FAILED'}: {verdict.message}")
        )
    return rows


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
        f"({data.count} samples); {settings.method}, tol {settings.tol:g}, {settings.dtype}.",
        "",
        "| summary | value |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value} |" for name, value in _summary_rows(report)]
    lines += [
        "",
        "| worst sample | sigma | iterations | converged | residual |",
        "| ---: | ---: | ---: | --- | ---: |",
    ]
    for row in worst_samples(report, 5):
        lines.append(
            f"| {row.index} | {_number(row.sigma)} | {row.iterations} | {'yes' if row.converged else 'no'} "
            f"| {_number(row.residual)} |"
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
