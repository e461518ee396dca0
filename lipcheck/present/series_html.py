"""The trend page of a series report: how sigma evolved over a training run, as one self-contained page.

It shows the gate, the max, p95, median and min of sigma against the step (with the certified bound
where the checkpoints have one), the worst checkpoint ringed on the chart and highlighted in the table,
and the worst checkpoint's worst samples, as the audit page lists them. It is built from the same
pieces as the audit page (`lipcheck.present.html`): inline SVG, no script, nothing loaded.
"""

from __future__ import annotations

import numpy as np

from lipcheck.present import charts
from lipcheck.present.facts import data_line, operator_note
from lipcheck.present.page import (
    escaped,
    folded,
    html_chart,
    html_page,
    html_section,
    html_table,
    samples_table,
    verdict_banner,
)
from lipcheck.present.series import series_heads, series_rows
from lipcheck.report.series import SeriesReport


def _trend_section(series: SeriesReport) -> str:
    checkpoints = series.checkpoints
    steps = np.array([c.step for c in checkpoints], dtype=np.float64)
    lines = [
        (name, np.array([getattr(c.summary, name) for c in checkpoints], dtype=np.float64))
        for name in ("max", "p95", "median", "min")
    ]
    bounds = np.array([np.nan if c.upper_bound is None else c.upper_bound for c in checkpoints])
    worst = checkpoints[series.worst]
    description = (
        f"max, p95, median and min of sigma at each of {len(checkpoints)} checkpoints against the step"
        + ("; the certified bound as a dash-dot line" if np.isfinite(bounds).any() else "")
        + f"; the worst checkpoint, step {worst.step} (max {worst.summary.max:.4g}), ringed"
    )
    svg = charts.trend(steps, lines, bounds if np.isfinite(bounds).any() else None, series.worst, description)
    return html_section("trend", "Sigma over the run", html_chart("trend", svg, description))


def _checkpoints_section(series: SeriesReport) -> str:
    heads = series_heads(series)
    numeric = [True, False] + [True] * (len(heads) - 4) + [True, False]
    table = html_table(heads, series_rows(series), numeric, caption="One row per checkpoint, in step order")
    worst = series.worst + 1  # the rows of tbody count from 1
    highlight = (
        f"<style>#checkpoints tbody tr:nth-child({worst}) {{ background: #fbece3; font-weight: 600; }}"
        "</style>\n"
    )
    return html_section("checkpoints", "Checkpoints", highlight, folded(table, len(series.checkpoints), 30))


def _worst_samples_section(series: SeriesReport) -> str:
    worst = series.checkpoints[series.worst]
    table = samples_table(
        series.worst_samples,
        sigma_heading="sigma",
        confidence=series.settings.confidence,
        searched=any(row.search_sigma is not None for row in series.worst_samples),
        caption=f"Worst {len(series.worst_samples)} of {worst.summary.count} samples of step {worst.step} "
        f"({worst.path})",
    )
    report = f"<p>Its own report: <code>{escaped(worst.report)}</code></p>\n" if worst.report else ""
    return html_section("worst", f"Worst checkpoint: step {worst.step}", report, table)


def render_series_html(series: SeriesReport) -> str:
    """The series report as one self-contained HTML page."""
    settings = series.settings
    header = [
        ("data", data_line(series.data, with_digest=True)),
        ("settings", f"{operator_note(settings)}{settings.method}, tol {settings.tol:g}, {settings.dtype}, "
                     f"seed {settings.seed}"),
        ("checkpoints", f"{len(series.checkpoints)}, ordered by "
                        + (f"--step-regex {series.step_regex}" if series.step_regex
                           else "natural sort of names")),
    ]  # fmt: skip
    notes = sorted({note for c in series.checkpoints for note in c.notes})
    body = [
        verdict_banner(
            series.gate.rules, "Give --fail-above, --max-increase-over-best PCT or another rule to gate."
        ),
        "".join(f'<p class="note">{escaped(note)}</p>\n' for note in notes),
        _trend_section(series),
        _checkpoints_section(series),
        _worst_samples_section(series),
    ]
    return html_page(
        "lipcheck series", "lipcheck series: a training run", header, body, series.lipcheck_version
    )
