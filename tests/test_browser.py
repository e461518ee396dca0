"""The HTML reports in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright
over the DevTools protocol) opens each page offline with JavaScript off, takes a screenshot, and
checks that every chart is drawn (non-blank pixels in its box), that no request left the file, and
that the console shows no error (a request the page's Content-Security-Policy refused would be one).

Without Chromium or Playwright the tests skip and say why; with LIPCHECK_REQUIRE_BROWSER=1 (set by
.ci/run) they fail instead, so CI cannot pass without running them. With LIPCHECK_SCREENSHOTS=FOLDER
the full-page screenshots of the sample audit are kept there (as in docs/images/).
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_fixtures import run
from PIL import Image
from test_series import PEAK, write_training_run

from lipcheck.report.series import read_series

CHROMIUM = Path(os.environ.get("LIPCHECK_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("LIPCHECK_REQUIRE_BROWSER") == "1"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return 'Playwright is not installed (pip install -e ".[test]")'
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LIPCHECK_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing()
    if missing is not None:
        if REQUIRED:
            pytest.fail(f"{missing}; LIPCHECK_REQUIRE_BROWSER=1 asks for the browser tests to run")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, small_pages: dict[str, Path]) -> dict[str, Path]:
    """The sample audit of the README with and without the bound, and a comparison and a bound."""
    folder = tmp_path_factory.mktemp("pages")
    written = {f"small-{name}": path for name, path in small_pages.items()}
    here = Path.cwd()
    os.chdir(SAMPLES.parent)  # the README's command line, paths as a user types them
    try:
        for name, extra in (("sample-audit", ()), ("sample-audit-bound", ("--bound",))):
            written[name] = folder / f"{name}.html"
            result = run(
                "audit", "sample_models/denoiser.pt2", "--data", "sample_models/denoiser_inputs.npy", *extra,
                "--fail-above", 2, "-o", written[name], "-q",
            )  # fmt: skip
            assert result.exit_code == 0, result.stderr
        os.chdir(write_training_run(folder / "run"))  # the recipe's command line: a run of 20 checkpoints
        written["series-trend"] = folder / "series.html"
        result = run(
            "audit", *sorted(Path("ckpt").glob("*.pt")), "--arch", "nets.py:make", "--data", "x.npy",
            "--bound", "-o", folder / "series.json", "-o", written["series-trend"], "-q",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert read_series(folder / "series.json").worst == PEAK  # the JSON validates
    finally:
        os.chdir(here)
    return written


CHARTS = {
    "sample-audit": ("histogram", "sorted", "pictures"),
    "sample-audit-bound": ("histogram", "sorted", "bracket", "layers", "pictures"),
    "small-audit": ("histogram", "sorted", "bracket", "layers", "pictures"),
    "small-compare": ("scatter",),
    "small-bound": ("layers",),
    "series-trend": ("trend",),
}


def drawn_fraction(png: bytes) -> float:
    """The fraction of pixels of a screenshot that are not (nearly) white."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return float((pixels.min(axis=2) < 235).mean())


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_a_page_renders_offline_with_every_chart_drawn(
    browser: Any, pages: dict[str, Path], name: str
) -> None:
    path = pages[name]
    context = browser.new_context(
        java_script_enabled=False, offline=True, viewport={"width": 1100, "height": 900}
    )
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri(), wait_until="load")

    figures = page.locator("figure.chart")
    assert sorted(figures.evaluate_all("nodes => nodes.map(n => n.id)")) == sorted(
        f"chart-{chart}" for chart in CHARTS[name]
    )
    for index in range(figures.count()):
        drawing = figures.nth(index).locator("svg")
        box = drawing.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 80, (name, index, box)
        fraction = drawn_fraction(drawing.screenshot())
        assert 0.01 < fraction < 0.95, (name, figures.nth(index).get_attribute("id"), fraction)
    screenshot = page.screenshot(full_page=True)
    assert drawn_fraction(screenshot) > 0.02
    kept = os.environ.get("LIPCHECK_SCREENSHOTS")
    if name == "series-trend":  # the worst checkpoint's row stands out
        worst = page.locator(f"#checkpoints tbody tr:nth-child({PEAK + 1})")
        assert worst.evaluate("row => getComputedStyle(row).fontWeight") == "600"
        assert f"epoch_{PEAK * 5}.pt" in worst.inner_text()
    if kept and (name.startswith("sample-") or name == "series-trend"):
        Path(kept).mkdir(parents=True, exist_ok=True)
        picture = Image.open(io.BytesIO(screenshot)).convert("RGB").quantize(64)  # a tenth of the bytes
        picture.save(Path(kept, f"{name}.png"), optimize=True)
    context.close()

    assert requests == [path.as_uri()], requests  # the page itself, nothing else
    assert errors == []
