"""Every report format compared whole against a stored file (tests/golden/), like ruff's snapshots.

The reports are fixed and deterministic (no timing, version or machine varies), so any change in
what users see shows as a diff of tests/golden/ in review. After an intended change, rewrite the
files with `LIPCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py` and read the diff.

An HTML page is compared by its structure: each chart's drawing (the SVG's content, which depends on
the matplotlib version) is replaced by a placeholder; its text alternative and everything else stay.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cli_fixtures import make_report

from lipcheck.options.choices import Format
from lipcheck.present.render import BOUND_REPORT, COMPARISON, REPORT, Renderers
from lipcheck.report import (
    AdjointBatch,
    BoundReport,
    BoundTerm,
    BoundTiming,
    Derivatives,
    Environment,
    LayerBound,
    ModelBoundReport,
    bound_schema,
    report_schema,
)
from lipcheck.report.compare import compare_reports
from lipcheck.report.gate import (
    FailAbove,
    FailAboveBound,
    FailAboveSample,
    MaxIncrease,
    RequireConverged,
    judge,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LIPCHECK_UPDATE_GOLDEN") == "1"

BOUND = BoundReport(
    upper_bound=9.75,
    layers=(
        LayerBound("first", "linear", "linear", 2.5, "exact SVD (8x6)"),
        LayerBound("act", "tanh", "tanh", 1.0, "1"),
        LayerBound("second", "linear_1", "linear", 5.0, "exact SVD (4x8)"),
    ),
    assumptions={"aten.erf.default": 1.13},
    input_shape=(6,),
    method="liplt",
    product_bound=12.5,
    terms=(
        BoundTerm(
            "input",
            "x",
            "all activations at their centre slope",
            2.0,
            2.0,
            "exact SVD of the merged block (4 x 6)",
        ),
        BoundTerm("act", "tanh", "tanh deviation", 3.1, 7.75, "exact SVD of the merged block (4 x 8)"),
    ),
)


def audit_report() -> Any:
    """Four samples (two unconverged, one without a residual or sigma_upper), every kind of rule (one
    passes), a bound."""
    derivatives = Derivatives(
        "double-backward",
        ("hardsigmoid",),
        0,
        0.0035,
        (AdjointBatch(0, 1, 2e-7, True), AdjointBatch(2, 3, 1e-7, True)),
    )
    report = replace(make_report([1.5, 2.75, 0.5, 3.0]), bound=BOUND, derivatives=derivatives)
    upper = (1.515, None, 0.5005, 3.25)  # sigma_upper: None where the run could not bound it
    samples = tuple(replace(row, sigma_upper=value) for row, value in zip(report.samples, upper, strict=True))
    report = replace(report, samples=samples)
    rules = [
        FailAbove(2.0),
        FailAboveSample(2.6),
        RequireConverged(),
        FailAboveBound(20.0, BOUND.upper_bound),
    ]
    return replace(report, gate=judge(rules, report))


def bound_report() -> ModelBoundReport:
    return ModelBoundReport(
        model=make_report([1.0]).model,
        environment=Environment("3.11", "linux", "2.13", "cpu", 2),
        timing=BoundTiming("2025-01-01T00:00:00+00:00", 0.1, 0.25),
        bound=BOUND,
        lipcheck_version="0.1.0",
    )


def comparison() -> Any:
    base, new = make_report([1.5, 2.0, 0.5]), make_report([1.5, 2.5, 0.25, 4.0])
    rules = [MaxIncrease(5.0, base.summary.value, "base.json")]
    return compare_reports(base, new, base_path="base.json", new_path="new.json", top=3, rules=rules)


KINDS: dict[str, tuple[Any, Renderers[Any]]] = {
    "report": (audit_report(), REPORT),
    "bound": (bound_report(), BOUND_REPORT),
    "comparison": (comparison(), COMPARISON),
}
CASES = [(kind, fmt) for kind, (_, renderers) in KINDS.items() for fmt in renderers.text]


def golden_name(kind: str, fmt: Format) -> str:
    return f"{kind}{fmt.suffix}"


_DRAWING = re.compile(r"<svg\b[^>]*?(aria-label=\"[^\"]*\")[^>]*>.*?</svg>", re.DOTALL)


def html_structure(page: str) -> str:
    """The page with each chart's drawing replaced by `<svg LABEL>[drawing]</svg>`."""
    return _DRAWING.sub(lambda found: f"<svg {found.group(1)}>[drawing]</svg>", page)


@pytest.mark.parametrize(("kind", "fmt"), CASES, ids=[golden_name(k, f) for k, f in CASES])
def test_output_is_exactly_the_golden_file(kind: str, fmt: Format) -> None:
    value, renderers = KINDS[kind]
    text = renderers.render_text(value, fmt)
    if fmt == Format.html:
        text = html_structure(text)
    path = GOLDEN / golden_name(kind, fmt)
    if UPDATE:
        path.write_text(text, encoding="utf-8", newline="")
    assert path.exists(), f"{path} is missing: write it with LIPCHECK_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "now")
        )
        pytest.fail(
            f"{path.name} differs (LIPCHECK_UPDATE_GOLDEN=1 rewrites it after an intended change):\n{diff}"
        )


def test_every_golden_file_is_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(golden_name(k, f) for k, f in CASES)


def test_the_golden_json_follows_the_schemas() -> None:
    jsonschema.validate(json.loads((GOLDEN / "report.json").read_text()), report_schema())
    jsonschema.validate(json.loads((GOLDEN / "bound.json").read_text()), bound_schema())


def test_a_bound_report_has_no_junit_form() -> None:
    assert Format.junit not in BOUND_REPORT.text
    with pytest.raises(Exception, match="a bound report has no junit form"):
        BOUND_REPORT.render(bound_report(), Format.junit)
