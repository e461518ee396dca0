"""Fuzz `lipcheck audit` over option values (issue 13): whatever the values, the outcome is a documented
exit code (0 passed, 1 gate failed, 2 usage or input, 3 audit failed), never a traceback, and a usage
or input error is one line on stderr.

Values that would make a valid audit slow (millions of samples or iterations, a huge model) are left
out of the strategies: the property is about parsing and validation, not about patience.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_fixtures import ARCH, run, saved_mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcheck.cli import ExitStatus

DOCUMENTED = {ExitStatus.PASSED, ExitStatus.GATE_FAILED, ExitStatus.USAGE_OR_INPUT, ExitStatus.AUDIT_FAILED}

JUNK = st.sampled_from(["", "x", "-", "1e", "0x10", "nan", "-inf", "inf", "1,5", " 3", "١", "\x00", "--"])
HUGE = st.sampled_from([str(2**63), str(2**64), str(-(2**64)), "1e308", "-1e308", "1e-320"])
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr) | JUNK | HUGE
SMALL_COUNTS = st.integers(-3, 12).map(str) | JUNK
SEEDS = st.integers(-(2**70), 2**70).map(str) | JUNK | HUGE

# option -> values; the model is the MLP of cli_fixtures on 4 samples of 6 features.
OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--method": st.sampled_from(["lanczos", "power", "Lanczos", "newton", ""]),
    "--tol": FLOATS,
    "--confidence": FLOATS,
    "--max-iter": SMALL_COUNTS,
    "--seed": SEEDS,
    "--batch-size": st.integers(-2, 2**40).map(str) | JUNK | HUGE,
    "--device": st.sampled_from(["cpu", "auto", "cuda", "tpu", ""]),
    "--dtype": st.sampled_from(["float32", "float64", "float16", "bfloat16", "int8", ""]),
    "--reduction": st.sampled_from(["max", "mean", "p95", "median", "sum", ""]),
    "--search-steps": SMALL_COUNTS,
    "--search-radius": FLOATS,
    "--limit": SMALL_COUNTS | HUGE,
    "--random": st.sampled_from(["6", "0", "6x1", "2x3", "-6", "6x", "x", "100000x100000x100000", ""])
    | st.text(max_size=12),
    "--num-samples": SMALL_COUNTS,
    "--data-key": st.text(max_size=8),
    "--output-key": st.text(max_size=8),
    "--arg": st.sampled_from(["scale=2", "x=1", "=1", "scale", "scale=1e308", "nope=1", "scale=[1]"])
    | st.text(max_size=10).map(lambda value: f"scale={value}"),
    "--arch-kwargs": st.sampled_from(["{}", "[]", "null", '{"nope": 1}', "{", '"x"', '{"hidden": -1}']),
    "--fail-above": FLOATS,
    "--fail-above-sample": FLOATS,
    "--max-increase": FLOATS,
    "--max-read-bytes": st.integers(-(2**65), 2**65).map(str) | JUNK,
    "--format": st.sampled_from(["json", "table", "markdown", "junit", "yaml", ""]),
}
FLAGS = ["--require-converged", "--allow-mismatch", "--quiet", "--bound"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return saved_mlp(tmp_path_factory.mktemp("fuzz"))


@st.composite
def audit_options(draw: st.DrawFn) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=6, unique=True))
    argv: list[str] = []
    for name in chosen:
        argv += [name, draw(OPTIONS[name])]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    return argv


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=audit_options(), with_data=st.booleans())
def test_audit_options_end_in_a_documented_exit_code(
    files: dict[str, Path], options: list[str], with_data: bool
) -> None:
    data = ["--data", str(files["data"])] if with_data else []
    result = run("audit", files["model"], "--arch", f"{ARCH}:make_mlp", *data, *options)
    stderr = result.stderr
    assert result.exit_code in DOCUMENTED, (options, result.exit_code, stderr)
    assert "Traceback" not in stderr and "Traceback" not in result.stdout, (options, stderr)
    if result.exit_code == ExitStatus.USAGE_OR_INPUT:
        lines = [line for line in stderr.splitlines() if not line.startswith("lipcheck: warning:")]
        assert len(lines) == 1 and lines[0].startswith("lipcheck: error: "), (options, stderr)
