"""What the HTML report and `--save-directions` cost, measured in one run.

Rendering: the time and size of the HTML page of an audit report of --samples samples (default
50,000, sigmas drawn from a gamma distribution) against its JSON, and of the comparison of two such
reports. The charts are drawn from at most 400 ranks (sorted sigmas) or as a raster (a scatter of more
than 2,000 points), so the page should stay a few hundred kilobytes whatever the audit's size.

Directions: the audit loop's seconds on the sample model with the directions of every sample kept
(`--save-directions` without `--top`) and with the HTML report's 6 pictures, against none kept; the
median and the least over --repeats interleaved runs, each as a ratio to none kept (on a shared
machine the least is the steadier of the two).

    python benchmarks/report_pages.py
    python benchmarks/report_pages.py --samples 200000 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lipcheck.auditing.loop import run_audit
from lipcheck.auditing.request import DataSource, ModelSource
from lipcheck.auditing.run import load_source, open_source
from lipcheck.present.render import COMPARISON, REPORT
from lipcheck.report import (
    DataSection,
    Environment,
    ModelSection,
    Report,
    SampleResult,
    Settings,
    Timing,
    summarise,
)
from lipcheck.report.compare import compare_reports

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def synthetic_report(count: int, seed: int) -> Report:
    sigma = np.random.default_rng(seed).gamma(8.0, 0.15, count)
    rows = tuple(SampleResult(i, float(s), 20, True, 1e-6, float(s) * 1.0001) for i, s in enumerate(sigma))
    return Report(
        model=ModelSection("model.pt2", "torch.export", "0" * 64, 1, 1, False),
        data=DataSection("data.npy", "npy", None, count, count, (3, 32, 32), "float32", sha256="1" * 64),
        settings=Settings(),
        environment=Environment("3.11", "linux", "2.13", "cpu", 2),
        timing=Timing("2026-01-01T00:00:00+00:00", 0.0, 1.0, 1.0, float(count)),
        samples=rows,
        summary=summarise(rows, "max"),
        lipcheck_version="0.1.0",
    )


def timed(function: object, *args: object) -> tuple[float, str]:
    begin = time.perf_counter()
    text = "".join(function(*args))  # type: ignore[operator]
    return time.perf_counter() - begin, text


def _line(name: str, seconds: float, text: str, reference: float | None = None) -> None:
    ratio = f"  ({seconds / reference:.2f}x json)" if reference else ""
    print(f"  {name}  {seconds:7.3f} s  {len(text) / 1e6:7.2f} MB{ratio}")


def rendering(count: int) -> None:
    report = synthetic_report(count, 0)
    json_seconds, json_text = timed(REPORT.render, report, "json")
    html_seconds, html_text = timed(REPORT.render, report, "html")
    print(f"audit report of {count:,} samples:")
    _line("json", json_seconds, json_text)
    _line("html", html_seconds, html_text, json_seconds)
    base = synthetic_report(count, 1)
    new = replace(report, samples=tuple(replace(s, sigma=s.sigma * 1.01) for s in base.samples))
    new = replace(new, summary=summarise(new.samples, "max"))
    comparison = compare_reports(base, new, base_path="base.json", new_path="new.json")
    json_seconds, json_text = timed(COMPARISON.render, comparison, "json")
    html_seconds, html_text = timed(COMPARISON.render, comparison, "html")
    print(f"comparison of {count:,} samples (its JSON holds the summary and the top movers only):")
    _line("json", json_seconds, json_text)
    _line("html", html_seconds, html_text)


def directions(repeats: int) -> None:
    model = load_source(ModelSource(str(SAMPLES / "denoiser.pt2")))
    data = open_source(DataSource(str(SAMPLES / "denoiser_inputs.npy")), 0)
    settings = Settings(device="cpu")
    kinds = {"none kept": {}, "all kept": {"directions": None}, "6 pictures": {"pictures": 6}}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    run_audit(model, data, settings)  # warm-up
    for _ in range(repeats):
        for kind, options in kinds.items():
            seconds[kind].append(run_audit(model, data, settings, **options).timing.audit_seconds)
    median, least = statistics.median(seconds["none kept"]), min(seconds["none kept"])
    print(f"audit loop on the sample model ({len(data)} samples), {repeats} runs each, interleaved:")
    for kind, values in seconds.items():
        middle = statistics.median(values)
        print(
            f"  {kind:10s} median {middle:7.3f} s ({middle / median:.3f}x)"
            f"  min {min(values):7.3f} s ({min(values) / least:.3f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    rendering(options.samples)
    directions(options.repeats)


if __name__ == "__main__":
    main()
