"""The rich tables of each report, for a terminal, and as plain text for a file (`--output x.txt`)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from math import ceil
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from lipcheck.options.choices import Operator
from lipcheck.present import escape
from lipcheck.present.facts import (
    TERM_COLUMNS,
    WORST,
    assumptions_text,
    bound_label,
    bound_method,
    bound_operator,
    change_rows,
    comparison_lines,
    data_line,
    model_line,
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
from lipcheck.report import ModelBoundReport, Report, RuleVerdict, worst_samples
from lipcheck.report.compare import Comparison

TEXT_BINS = 32  # characters of the table's one-line histogram
BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = ".,:-=+*#"
RESIDUAL_DIGITS = 3  # the residual is a diagnostic: its order of magnitude is what a reader needs


def _header(report: Report) -> Table:
    model, data, settings = report.model, report.data, report.settings
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", escape.terminal(model_line(model)))
    grid.add_row("data", escape.terminal(data_line(data, with_digest=True)))
    grid.add_row(
        "settings",
        escape.terminal(
            f"{operator_note(settings)}{settings.method}, tol {settings.tol:g}, "
            f"max-iter {settings.max_iter}, {settings.dtype} on {report.environment.device}, "
            f"batch {settings.batch_size}, "
            f"seed {settings.seed}" + _scale_note(report) + search_note(report)
        ),
    )
    return grid


def _scale_note(report: Report) -> str:
    """', 4 ranks' for a sharded audit; ', batches split to 16 (out of memory)' after a back-off."""
    ran = report.environment
    ranks = f", {ran.world_size} ranks" if ran.world_size > 1 else ""
    fitted = ran.fitted_batch_size
    split = f", batches split to {fitted} (out of memory)" if fitted is not None else ""
    return ranks + split


def _worst_table(report: Report) -> Table:
    shown = worst_samples(report, WORST)
    title = (
        f"Worst {len(shown)} of {report.summary.count} samples "
        f"(sigma_upper at confidence {report.settings.confidence:g})"
    )
    table = Table(title=title, title_justify="left")
    sigma = sigma_heading(report.settings)
    for name in ("index", sigma, "sigma_upper", "iterations", "converged", "residual"):
        table.add_column(name, justify="left" if name == "converged" else "right")
    for row in shown:
        converged = Text("yes", style="green") if row.converged else Text("no", style="bold red")
        table.add_row(
            str(row.index),
            number_text(row.sigma),
            number_text(row.sigma_upper),
            str(row.iterations),
            converged,
            number_text(row.residual, RESIDUAL_DIGITS),
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
        table.add_row(str(row.index), number_text(row.sigma), *search_cells(report, row))
    return table


def gate_rows(verdicts: Sequence[RuleVerdict]) -> list[tuple[str, str]]:
    return [(f"gate {v.name}", f"{'passed' if v.passed else 'FAILED'}: {v.message}") for v in verdicts]


def pairs_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        style = "bold red" if value.startswith("FAILED") else None
        table.add_row(escape.terminal(name), Text(escape.terminal(value), style=style or ""))
    return table


def text_histogram(report: Report, bins: int = TEXT_BINS, blocks: str = BLOCKS) -> str:
    """One line: the smallest sigma, a block character per bin (height by count; a blank for an empty
    bin, so that one outlier stands apart from the rest), the largest sigma."""
    edges, counts = sigma_histogram(report, bins)
    top = int(counts.max()) if len(counts) else 0
    bars = "".join(
        " " if count == 0 else blocks[max(0, ceil(len(blocks) * int(count) / top) - 1)] for count in counts
    )
    low, high = number_text(float(edges[0]), 4), number_text(float(edges[-1]), 4)
    return f"sigma {low} {bars} {high}  (histogram, max bin {top})"


def render_table(report: Report, console: Console) -> None:
    """Print the header, the worst samples, the summary and a one-line histogram to `console`."""
    summary = pairs_table("Summary", summary_rows(report) + gate_rows(report.gate.rules))
    search = [_search_table(report), Text("")] if searched(report) else []
    blocks = ASCII_BLOCKS if console.options.ascii_only else BLOCKS  # a terminal that cannot show them
    histogram = Text(text_histogram(report, blocks=blocks), no_wrap=True, overflow="ellipsis")
    console.print(
        Group(_header(report), Text(""), _worst_table(report), Text(""), *search, summary, histogram)
    )


def plain_text(render: Callable[[Console], None], width: int = 100) -> str:
    buffer = io.StringIO()
    render(escape.console(file=buffer, width=width, color_system=None, force_terminal=False))
    return buffer.getvalue()


def table_text(report: Report, width: int = 100) -> str:
    """The table as plain text (no colour), for a file."""
    return plain_text(lambda console: render_table(report, console), width)


def _terminal_cells(*cells: str) -> list[str]:
    """Cells of a table row that may hold names (of layers, of operations, paths), escaped."""
    return [escape.terminal(cell) for cell in cells]


def _bound_header(report: ModelBoundReport) -> Table:
    model, bound = report.model, report.bound
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", escape.terminal(model_line(model)))
    grid.add_row("input shape", f"{shape_text(bound.input_shape)} (one sample, without the batch)")
    if bound.operator != Operator.model.value:
        grid.add_row("operator", escape.terminal(bound_operator(bound)))
    if bound.assumptions:
        assumed = f"{assumptions_text(report)} (supplied with --assume, not verified)"
        grid.add_row("assumed", escape.terminal(assumed))
    return grid


def render_bound_table(report: ModelBoundReport, console: Console) -> None:
    """Print the model, every layer factor and the certified bound to `console`."""
    bound = report.bound
    layers = Table(title=f"Layer factors ({len(bound.layers)})", title_justify="left")
    for name in ("layer", "kind", "bound", "method"):
        layers.add_column(name, justify="right" if name == "bound" else "left")
    for layer in bound.layers:
        layers.add_row(*_terminal_cells(layer.name, layer.kind, number_text(layer.bound), layer.method))
    parts: list[Any] = [_bound_header(report), Text(""), layers, Text("")]
    if bound.terms:
        terms = Table(title=f"Terms of the loop transformation ({len(bound.terms)})", title_justify="left")
        for name in TERM_COLUMNS:
            terms.add_column(name, justify="right" if name in ("block norm", "adds") else "left")
        for term in bound.terms:
            terms.add_row(
                *_terminal_cells(
                    term.name, term.kind, number_text(term.norm), number_text(term.contribution), term.method
                )
            )
        parts += [terms, Text("")]
    total = Table(show_header=False)
    total.add_column(style="bold")
    total.add_column(justify="right")
    total.add_row(bound_label(bound), Text(number_text(bound.upper_bound), style="bold"))
    total.add_row("method", escape.terminal(bound_method(bound)))
    total.add_row(
        "time", f"{report.timing.bound_seconds:.3g} s bound, {report.timing.load_seconds:.3g} s loading"
    )
    console.print(Group(*parts, total))


def render_comparison_table(comparison: Comparison, console: Console) -> None:
    """Print what was compared, the change of every summary figure and the samples that rose most."""
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    for name, value in comparison_lines(comparison):
        header.add_row(*_terminal_cells(name, value))
    figures, samples = change_rows(comparison)
    parts: list[RenderableType] = [header, Text("")]
    for title, first, rows in (
        ("Summary", "figure", figures),
        (f"Samples that rose most ({len(samples)} of {comparison.rose})", "index", samples),
    ):
        table = Table(title=title, title_justify="left", pad_edge=False)
        for name in (first, "base", "new", "change", "change %"):
            table.add_column(name, justify="left" if name == "figure" else "right")
        for row in rows:
            table.add_row(*_terminal_cells(*row))
        parts += [table, Text("")]
    if comparison.gate.rules:
        parts.append(pairs_table("Gate", gate_rows(comparison.gate.rules)))
    console.print(Group(*parts))
