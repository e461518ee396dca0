"""A series report (a training run's checkpoints) as a table and as Markdown.

One row per checkpoint in step order: its step, the checkpoint, the summary figures, the certified
bound with --bound, and a sparkline of the reduced value over the run so far, so the table reads as
a trend. The worst checkpoint (largest sigma found) and the best (smallest reduced value) are marked.
The HTML trend page is `lipcheck.present.series_html`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lipcheck.present import escape
from lipcheck.present.facts import data_line, number_text, operator_note
from lipcheck.present.markdown import markdown_gate
from lipcheck.present.tables import BLOCKS, gate_rows, pairs_table
from lipcheck.report.series import SeriesReport

SPARK_WIDTH = 60  # characters of the sparkline; a longer run is drawn at even positions


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """One block character per value (height by value between the smallest and the largest); a run longer
    than `width` shows `width` evenly spaced checkpoints, the first and the last among them."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(k * (len(values) - 1) / (width - 1))] for k in range(width)]
    low, high = min(values), max(values)
    if high <= low:
        return BLOCKS[0] * len(values)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[round(top * (v - low) / (high - low))] for v in values)


def _marks(series: SeriesReport, position: int) -> str:
    said = ["worst" if position == series.worst else "", "best" if position == series.best else ""]
    return ", ".join(word for word in said if word)


def series_rows(series: SeriesReport) -> list[list[str]]:
    """The table's cells per checkpoint: step, checkpoint, max, p95, median, min, reduced value, bound
    (when any), converged, mark."""
    bounded = any(c.upper_bound is not None for c in series.checkpoints)
    rows = []
    for position, c in enumerate(series.checkpoints):
        s = c.summary
        cells = [str(c.step), c.path, number_text(s.max), number_text(s.p95), number_text(s.median),
                 number_text(s.min), number_text(s.value)]  # fmt: skip
        cells += [number_text(c.upper_bound)] if bounded else []
        cells += [f"{s.converged}/{s.count}", _marks(series, position)]
        rows.append(cells)
    return rows


def series_heads(series: SeriesReport) -> list[str]:
    bounded = any(c.upper_bound is not None for c in series.checkpoints)
    reduction = series.checkpoints[0].summary.reduction
    heads = ["step", "checkpoint", "max", "p95", "median", "min", f"{reduction} (reduction)"]
    return heads + (["bound"] if bounded else []) + ["converged", ""]


def _trend_line(series: SeriesReport) -> str:
    values = [c.summary.value for c in series.checkpoints]
    reduction = series.checkpoints[0].summary.reduction
    return (
        f"{reduction} sigma by step {sparkline(values)}  ({number_text(min(values), 4)} .. "
        f"{number_text(max(values), 4)}, {len(values)} checkpoints)"
    )


def _overview(series: SeriesReport) -> list[tuple[str, str]]:
    worst, best, last = series.checkpoints[series.worst], series.checkpoints[series.best], series.last
    return [
        ("worst", f"step {worst.step}: max {number_text(worst.summary.max)} ({worst.path})"),
        (
            "best",
            f"step {best.step}: {best.summary.reduction} {number_text(best.summary.value)} ({best.path})",
        ),
        ("last", f"step {last.step}: {last.summary.reduction} {number_text(last.summary.value)}"),
    ]


def render_series_table(series: SeriesReport, console: Console) -> None:
    """Print the data line, one row per checkpoint, the sparkline, the worst/best/last and the gate."""
    settings = series.settings
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("data", Text(escape.terminal(data_line(series.data, with_digest=True))))
    grid.add_row(
        "settings",
        Text(
            f"{operator_note(settings)}{settings.method}, tol {settings.tol:g}, {settings.dtype}, "
            f"seed {settings.seed}"
        ),  # fmt: skip
    )
    table = Table(title=f"Checkpoints ({len(series.checkpoints)})", title_justify="left")
    heads = series_heads(series)
    for number, head in enumerate(heads):
        table.add_column(head, justify="left" if number in (1, len(heads) - 1) else "right",
                         overflow="fold" if number == 1 else "ellipsis")  # fmt: skip
    for cells in series_rows(series):
        table.add_row(*(Text(escape.terminal(cell)) for cell in cells))
    summary = pairs_table("Series", _overview(series) + gate_rows(series.gate.rules))
    console.print(Group(grid, Text(""), table, Text(_trend_line(series), no_wrap=True), Text(""), summary))


def render_series_markdown(series: SeriesReport) -> str:
    """The series in GitHub Markdown: the gate, one row per checkpoint, the sparkline."""
    lines = [
        "### lipcheck series",
        "",
        f"{len(series.checkpoints)} checkpoints on "
        + escape.markdown(data_line(series.data, with_digest=False)),
        "",
    ]
    lines += markdown_gate(series.gate.rules)
    heads = series_heads(series)
    lines.append("| " + " | ".join(heads) + " |")
    lines.append(
        "| " + " | ".join("---" if n in (1, len(heads) - 1) else "---:" for n in range(len(heads))) + " |"
    )
    for cells in series_rows(series):
        path, others = escape.markdown_code(cells[1]), [escape.markdown(cell) for cell in cells]
        lines.append("| " + " | ".join([others[0], path, *others[2:]]) + " |")  # the path as code
    lines += ["", escape.markdown_code(_trend_line(series)), ""]
    lines += [f"- {name}: {escape.markdown(value)}" for name, value in _overview(series)]
    return "\n".join(lines) + "\n"
