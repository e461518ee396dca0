"""The HTML pages of audit, compare and bound: self-contained, accessible, deterministic; and the
error that names the extra when matplotlib is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import SmallConv, make_report
from test_golden import KINDS, audit_report

from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
from lipcheck.auditing.run import run as run_request
from lipcheck.options.choices import Format
from lipcheck.present.render import COMPARISON, REPORT
from lipcheck.report import Settings
from lipcheck.report.compare import compare_reports

PAGES = {kind: renderers.render_text(value, Format.html) for kind, (value, renderers) in KINDS.items()}


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_a_page_loads_nothing_and_runs_no_script(kind: str) -> None:
    page = PAGES[kind]
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page  # the browser refuses any request the page would make
    assert "<script" not in page.lower()
    assert not re.search(r"\bon[a-z]+\s*=", page)  # no inline event handlers
    references = re.findall(r"""\b(?:src|href|xlink:href)\s*=\s*["']([^"']*)""", page)
    assert all(ref.startswith(("data:", "#")) for ref in references), references
    assert "@import" not in page and "url(" not in page.replace("url(#", "")


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_every_chart_has_a_text_alternative_and_its_numbers_beneath(kind: str) -> None:
    page = PAGES[kind]
    figures = re.findall(r'<figure class="chart" id="chart-([a-z]+)">(.*?)</figure>\n(.{0,400})', page, re.S)
    assert figures
    for name, figure, after in figures:
        svg = re.search(r'<svg role="img" aria-label="([^"]+)"', figure)
        assert svg is not None and len(svg.group(1)) > 30, name
        assert "<figcaption>" in figure
        assert after.lstrip().startswith(("<table", "<details")), name


def test_the_audit_page_shows_each_part_with_the_report_figures() -> None:
    page = PAGES["report"]
    for section in ("verdict", "summary", "histogram", "sorted", "bracket", "layers", "worst"):
        assert f'<section id="{section}"' in page
    assert '<section id="verdict" class="banner failed">' in page
    assert "Gate failed: 3 of 4 rules" in page
    # the thresholds drawn on the histogram, listed beneath it
    for mark, value in (
        ("--fail-above (max)", "2"),
        ("--fail-above-sample", "2.6"),
        ("certified upper bound", "9.75"),
    ):
        assert f'<tr><td>{mark}</td><td class="number">{value}</td></tr>' in page
    # the histogram's table counts every sample
    histogram = page[page.index('<section id="histogram">') : page.index('<section id="sorted">')]
    counts = re.findall(r'<td class="number">[^<]*</td><td class="number">(\d+)</td></tr>', histogram)
    assert len(counts) == 30
    assert sum(map(int, counts)) == 4
    # every layer factor is in the table beneath the bar chart
    for layer in ("first", "act", "second"):
        assert f"<tr><td>{layer}</td>" in page


@pytest.mark.parametrize("kind", ["report", "bound"])
def test_the_loop_transformations_terms_are_listed_with_the_largest_named(kind: str) -> None:
    value, _ = KINDS[kind]
    bound = value.bound
    page = PAGES[kind]
    terms = page[page.index('<section id="terms">') :]
    terms = terms[: terms.index("</section>")]
    largest = max(bound.terms, key=lambda term: term.contribution)
    assert f"The largest, {largest.name} ({largest.kind})" in terms
    assert "they add up to the bound" in terms
    assert sum(term.contribution for term in bound.terms) == pytest.approx(bound.upper_bound)
    for term in bound.terms:
        assert f"<tr><td>{term.name}</td><td>{term.kind}</td>" in terms
    product = replace(bound, method="product", terms=())
    bare = REPORT.render_text(replace(value, bound=product), Format.html) if kind == "report" else None
    assert bare is None or 'id="terms"' not in bare


def test_without_a_gate_or_bound_the_page_says_so_and_leaves_them_out() -> None:
    page = REPORT.render_text(make_report([1.0, 2.0, 1.5]), Format.html)
    assert '<section id="verdict" class="banner none">' in page
    assert 'id="bracket"' not in page and 'id="layers"' not in page


def test_a_page_is_the_same_in_another_process() -> None:
    """No random ids, no dates: two processes write the same bytes (the golden tests rely on it)."""
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from test_golden import audit_report\n"
        "from lipcheck.present.render import REPORT\n"
        "sys.stdout.write(REPORT.render_text(audit_report(), 'html'))\n"
    )
    tests, root = str(Path(__file__).parent), str(Path(__file__).parent.parent)
    other = subprocess.run(
        [sys.executable, "-c", script, tests, root], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )  # fmt: skip
    assert other.stdout == REPORT.render_text(audit_report(), Format.html)


def test_a_large_audit_stays_small() -> None:
    sigma = list(np.random.default_rng(0).gamma(4.0, 0.25, 20_000))
    page = REPORT.render_text(make_report(sigma), Format.html)
    assert len(page) < 600_000
    assert "drawn at 400 evenly spaced ranks" in page


def test_a_large_comparison_stays_small_and_lists_its_largest_changes() -> None:
    sigma = np.random.default_rng(0).gamma(4.0, 0.25, 20_000)
    base, new = make_report(list(sigma)), make_report(list(sigma * 1.01))
    moved = replace(new.samples[7], sigma=100.0)  # the one largest change
    new = replace(new, samples=(*new.samples[:7], moved, *new.samples[8:]))
    page = COMPARISON.render_text(compare_reports(base, new, base_path="b", new_path="n"), Format.html)
    assert len(page) < 600_000
    assert "data:image/png;base64," in page  # the scatter is a raster of 20,000 points
    assert "the 100 largest changes either way of 20000" in page
    assert '<tr><td class="number">17</td>' in page  # sample 17, the index of the row moved


def test_without_matplotlib_html_is_one_error_naming_the_extra(tmp_path: Path) -> None:
    """In a process where matplotlib cannot be imported: the other formats work, and an .html output
    is refused before anything is read, in one line that names the extra to install."""
    saved = tmp_path / "r.json"
    saved.write_text(make_report([1.0, 2.0]).to_json())
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from lipcheck.cli import main\n"
        "sys.argv = ['lipcheck', *sys.argv[1:]]\n"
        "main()\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }

    def lipcheck(*args: object) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", script, *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)

    markdown = lipcheck("gate", saved, "--fail-above", 3, "-o", tmp_path / "r.md")
    assert markdown.returncode == 0, markdown.stderr
    refused = lipcheck("gate", saved, "--fail-above", 3, "-o", tmp_path / "r.md", "-o", tmp_path / "r.html")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"lipcheck: error: --output '{tmp_path / 'r.html'}': HTML reports draw their charts with matplotlib, "
        'which is missing: pip install "lipcheck[html]"'
    ]
    assert not (tmp_path / "r.html").exists()


def test_the_commands_write_their_pages(small_pages: dict[str, Path]) -> None:
    pages = {name: path.read_text() for name, path in small_pages.items()}
    audit = pages["audit"]
    for chart in ("histogram", "sorted", "bracket", "layers", "pictures"):
        assert f'id="chart-{chart}"' in audit
    # the thumbnails: the worst samples by sigma, with their residuals
    assert "Worst inputs and their most amplified directions" in audit
    assert 'id="chart-scatter"' in pages["compare"] and "Samples that rose most" in pages["compare"]
    assert 'id="chart-layers"' in pages["bound"] and "conv1" in pages["bound"]


def test_pictures_are_the_samples_of_largest_sigma() -> None:
    x = np.random.default_rng(3).standard_normal((11, 1, 5, 5)).astype(np.float32)
    settings = Settings(batch_size=3)  # the kept rows come from four batches
    report = run_request(AuditRequest(ModelSource(SmallConv(1)), DataSource(x), settings, pictures=4))
    directions = report.directions
    assert directions is not None
    largest = sorted(report.samples, key=lambda row: (-row.sigma, row.index))[:4]
    assert directions.indices.tolist() == [row.index for row in largest]
    np.testing.assert_array_equal(directions.inputs, x[directions.indices])
    np.testing.assert_allclose(np.linalg.norm(directions.vectors.reshape(4, -1), axis=1), 1.0, atol=1e-6)
