"""AuditRequest: one frozen value, validated when built, before any model or data is loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cli_fixtures import assert_one_line_error, run

from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
from lipcheck.errors import InputError
from lipcheck.report import Settings
from lipcheck.report.gate import RuleOptions

MISSING = Path("no/such/model.pt2")  # never opened: every case below is refused before loading


def request(**changes: object) -> AuditRequest:
    fields = {"model": ModelSource(MISSING), "data": DataSource(Path("x.npy")), **changes}
    return AuditRequest(**fields)  # type: ignore[arg-type]


def test_a_request_is_frozen_and_says_whether_it_bounds() -> None:
    built = request(rules=RuleOptions(fail_above_bound=3.0))
    assert built.with_bound and not request().with_bound
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.bound = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": DataSource()}, "give the data with --data PATH, or --random SHAPE"),
        ({"data": DataSource(random_shape=(6,))}, "--random needs --num-samples N"),
        ({"data": DataSource(random_shape=(6,), num_samples=3, limit=2)}, "--limit goes with --data"),
        ({"data": DataSource(Path("x.npy"), num_samples=3)}, "--num-samples goes with --random"),
        ({"settings": Settings(method="newton")}, "--method 'newton' is not one of lanczos, power"),
        ({"settings": Settings(device="tpu")}, "--device 'tpu' is not one of auto, cpu, cuda"),
        ({"settings": Settings(tol=2.0)}, "--tol must be in (0, 1)"),
        ({"settings": Settings(search_steps=3)}, "--search-steps needs --search-radius"),
        ({"rules": RuleOptions(max_increase=5.0)}, "--max-increase needs --baseline"),
        ({"rules": RuleOptions(fail_above=-1.0)}, "--fail-above must be a number >= 0"),
        ({"assume": {"aten.erf.default": 1.0}}, "--assume goes with --bound"),
        (
            {"model": ModelSource(MISSING.as_posix, arch="nets.py:make")},
            "arch, arch_kwargs and trust_pickle go",
        ),
    ],
)
def test_inconsistent_requests_are_refused_when_built(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        request(**changes)


def test_the_cli_refuses_flags_before_loading_the_model(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt2"
    result = run("audit", missing, "--random", "6", "--num-samples", "3", "--limit", "2")
    assert_one_line_error(result, "--limit goes with --data")
    assert "missing.pt2" not in result.stderr
