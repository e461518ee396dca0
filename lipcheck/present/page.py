"""The pieces every HTML page of lipcheck is built from: the style, the escaper, the page frame, tables,
sections, charts' figures, and the gate's banner.

A page holds everything inline and loads nothing: its Content-Security-Policy (`POLICY`) forbids any
request but inline data. `escaped` is the one escaper of every user-controlled string on a page.
`lipcheck.present.html` (an audit, a comparison, a bound) and `lipcheck.present.series_html` (a
training run) build their pages from these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lipcheck.present import escape
from lipcheck.present.facts import number_text
from lipcheck.report import RuleVerdict, SampleResult

STYLE = """
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
  max-width: 60rem; padding: 1rem 1.5rem 3rem; color: #1a1a1a; background: #ffffff; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.5rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #cccccc; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
table.provenance th { font-weight: 600; white-space: nowrap; }
code { font-size: 0.9em; word-break: break-all; }
.banner { padding: 0.6rem 1rem; border-radius: 4px; margin: 1rem 0; border: 2px solid; }
.banner p { margin: 0.2rem 0; font-weight: 600; font-size: 1.1rem; }
.passed { border-color: #009E73; background: #e6f5f0; }
.failed { border-color: #D55E00; background: #fbece3; }
.none { border-color: #999999; background: #f4f4f4; }
td.failed, td.passed { background: none; font-weight: 600; }
td.failed { color: #a33f00; }
td.passed { color: #006b4f; }
figure.chart { margin: 0.5rem 0; }
figure.chart svg { width: 100%; max-width: 52rem; height: auto; display: block; }
figure#chart-scatter svg { max-width: 30rem; }
figcaption { font-size: 0.85rem; color: #444444; margin-top: 0.3rem; }
details { margin: 0.3rem 0 1rem; }
summary { cursor: pointer; color: #0057a0; }
footer { margin-top: 3rem; font-size: 0.8rem; color: #666666; }
"""

# No request leaves the page: only inline styles and data: images.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def escaped(value: object) -> str:
    """`value` as HTML text or a quoted attribute value: the HTML escaper of `lipcheck.present.escape`."""
    return escape.html(value)


def html_page(
    title: str, heading: str, header: Iterable[tuple[str, str]], body: Iterable[str], version: str
) -> str:
    rows = "".join(
        f'<tr><th scope="row">{escaped(name)}</th><td>{escaped(value)}</td></tr>\n' for name, value in header
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">\n'
        f"<title>{escaped(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<header>\n<h1>{escaped(heading)}</h1>\n<table class="provenance">\n{rows}</table>\n</header>\n'
        f"<main>\n{''.join(body)}</main>\n"
        f"<footer>Written by lipcheck {escaped(version)}. This page is self-contained: it loads nothing "
        "and runs no script.</footer>\n</body>\n</html>\n"
    )


def html_table(
    heads: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool], caption: str = ""
) -> str:
    def cell(tag: str, value: str, number: bool, extra: str = "") -> str:
        kind = ' class="number"' if number else ""
        return f"<{tag}{kind}{extra}>{escaped(value)}</{tag}>"

    head = "".join(
        cell("th", name, number, ' scope="col"') for name, number in zip(heads, numeric, strict=True)
    )
    lines = [
        "<tr>"
        + "".join(cell("td", value, number) for value, number in zip(row, numeric, strict=True))
        + "</tr>"
        for row in rows
    ]
    titled = f"<caption>{escaped(caption)}</caption>" if caption else ""
    return (
        f"<table>{titled}<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(lines) + "\n</tbody></table>\n"
    )


def html_pairs(rows: Iterable[tuple[str, str]]) -> str:
    lines = "".join(
        f'<tr><th scope="row">{escaped(n)}</th><td class="number">{escaped(v)}</td></tr>\n' for n, v in rows
    )
    return f"<table>\n{lines}</table>\n"


def html_section(identifier: str, title: str, *parts: str) -> str:
    return f'<section id="{identifier}">\n<h2>{escaped(title)}</h2>\n{"".join(parts)}</section>\n'


def html_chart(identifier: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="chart" id="chart-{identifier}">\n{svg}\n'
        f"<figcaption>{escaped(caption)}</figcaption>\n</figure>\n"
    )


def folded(table: str, count: int, fold_above: int = 12) -> str:
    """The table of the numbers behind a chart: shown, or folded in <details> when it is long."""
    if count <= fold_above:
        return table
    return f"<details>\n<summary>The numbers behind the chart ({count} rows)</summary>\n{table}</details>\n"


def verdict_banner(rules: Sequence[RuleVerdict], none: str) -> str:
    """The gate's verdict as a banner, with a table of every rule."""
    if not rules:
        return (
            '<section id="verdict" class="banner none">\n<p>No gate rule was given.</p>\n'
            f"<div>{escaped(none)}</div>\n</section>\n"
        )
    failed = [rule for rule in rules if not rule.passed]
    state = "failed" if failed else "passed"
    said = (
        f"Gate failed: {len(failed)} of {len(rules)} rules"
        if failed
        else f"Gate passed: all {len(rules)} rules"
    )
    lines = [
        f'<tr><td><code>{escaped(r.name)}</code></td><td class="{"passed" if r.passed else "failed"}">'
        f'{"passed" if r.passed else "FAILED"}</td><td class="number">{escaped(number_text(r.value))}</td>'
        f'<td class="number">{escaped(number_text(r.threshold))}</td><td>{escaped(r.message)}</td></tr>'
        for r in rules
    ]
    heads = '<th scope="col">rule</th><th scope="col">verdict</th><th scope="col" class="number">value</th>'
    heads += '<th scope="col" class="number">threshold</th><th scope="col">details</th>'
    table = f"<table><thead><tr>{heads}</tr></thead><tbody>\n" + "\n".join(lines) + "\n</tbody></table>\n"
    return f'<section id="verdict" class="banner {state}">\n<p>{escaped(said)}</p>\n{table}</section>\n'


def samples_table(
    rows: Sequence[SampleResult], *, sigma_heading: str, confidence: float, searched: bool, caption: str
) -> str:
    """A table of per-sample rows (the worst samples of a report or of a series' worst checkpoint), with
    the search's columns when there was a search."""
    heads = ["sample", sigma_heading, f"sigma_upper ({confidence:g})", "iterations", "converged", "residual"]
    heads += ["search sigma", "distance"] if searched else []
    cells = []
    for row in rows:
        line = [str(row.index), number_text(row.sigma), number_text(row.sigma_upper), str(row.iterations),
                "yes" if row.converged else "no", number_text(row.residual, 3)]  # fmt: skip
        if searched:
            line += [number_text(row.search_sigma), number_text(row.search_distance)]
        cells.append(line)
    numeric = [True, True, True, True, False, True] + ([True, True] if searched else [])
    return html_table(heads, cells, numeric, caption=caption)
