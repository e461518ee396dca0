"""Present a report in the format asked for: a rich table for people, JSON for scripts, Markdown for
pull-request comments, JUnit XML for CI systems, a self-contained HTML page with charts; for each kind
of report (an audit's `Report`, `lipcheck bound`'s `ModelBoundReport`, a `Comparison` of two reports).

This module is the table from format to renderer, and the one place that imports every renderer
(`tables`, `markdown`, `ci`, `html`, and the series' `series` and `series_html`); none of them imports
it: what several forms show is computed once in `facts`, the HTML pages' frame and pieces are in `page`,
and the series' forms reuse the public pieces of the table and the Markdown (the gate's lines, cells).
It also offers the renderers the command line calls directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from rich.console import Console

from lipcheck.errors import InputError
from lipcheck.options.choices import Format
from lipcheck.present import charts
from lipcheck.present import html as html_page
from lipcheck.present.ci import github_annotations, junit_xml, render_junit
from lipcheck.present.inspection import render_model_json, render_model_text
from lipcheck.present.markdown import render_bound_markdown, render_comparison_markdown, render_markdown
from lipcheck.present.series import render_series_markdown, render_series_table
from lipcheck.present.series_html import render_series_html
from lipcheck.present.tables import (
    plain_text,
    render_bound_table,
    render_comparison_table,
    render_table,
    table_text,
)
from lipcheck.report import ModelBoundReport, Report
from lipcheck.report.compare import Comparison
from lipcheck.report.series import SeriesReport

__all__ = [
    "BOUND_REPORT",
    "COMPARISON",
    "REPORT",
    "SERIES",
    "Renderers",
    "github_annotations",
    "render_model_json",
    "render_model_text",
]

Rendered = TypeVar("Rendered")


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
        Format.html: html_page.render_html,
    },
    render_table,
)
BOUND_REPORT = Renderers[ModelBoundReport](
    "a bound report",
    {
        Format.table: lambda report: plain_text(lambda console: render_bound_table(report, console), 120),
        Format.json: ModelBoundReport.to_json,
        Format.markdown: render_bound_markdown,
        Format.html: html_page.render_bound_html,
    },
    render_bound_table,
    " (JUnit holds a gate's rules, and a bound has none): write .json, .md, .html or .txt, or gate it with "
    "lipcheck audit --fail-above-bound",
)
COMPARISON = Renderers[Comparison](
    "a comparison",
    {
        Format.table: lambda comparison: plain_text(
            lambda console: render_comparison_table(comparison, console)
        ),
        Format.json: lambda comparison: json.dumps(comparison.to_dict(), indent=2) + "\n",
        Format.markdown: render_comparison_markdown,
        Format.junit: lambda comparison: junit_xml(comparison.model, comparison.gate.rules),
        Format.html: html_page.render_comparison_html,
    },
    render_comparison_table,
)
SERIES = Renderers[SeriesReport](
    "a series report",
    {
        Format.table: lambda series: plain_text(lambda console: render_series_table(series, console), 120),
        Format.json: SeriesReport.to_json,
        Format.markdown: render_series_markdown,
        Format.html: render_series_html,
    },
    render_series_table,
    " (JUnit holds one report's rules): write .json, .md, .html or .txt",
)
