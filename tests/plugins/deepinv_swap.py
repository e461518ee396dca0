"""A pytest plugin that runs deepinv's own tests with lipcheck's losses in place of deepinv's.

Loaded with `python -m pytest -p deepinv_swap ...` (this folder on PYTHONPATH), it replaces
`JacobianSpectralNorm` and `FNEJacobianSpectralNorm` in `deepinv.loss` and `deepinv.loss.regularisers`
when pytest loads it, before any test module runs `from deepinv.loss.regularisers import ...`.
It writes, to the JSON file named by the environment variable LIPCHECK_SWAP_RECORD:

- "bound": for each collected test, the module and name of the classes its module bound to the two names,
- "calls": how many times each lipcheck class's forward ran,
- "outcomes": each test's node id and outcome ("passed", "failed", "skipped", "error").
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from typing import Any

import deepinv.loss
import deepinv.loss.regularisers
import pytest

import lipcheck

SWAPPED = ("JacobianSpectralNorm", "FNEJacobianSpectralNorm")

_calls: Counter[str] = Counter()
_bound: dict[str, dict[str, str]] = {}
_outcomes: dict[str, str] = {}


def _count_calls(cls: type) -> None:
    original = cls.forward

    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        _calls[cls.__name__] += 1
        return original(self, *args, **kwargs)

    cls.forward = forward  # type: ignore[attr-defined]


for _name in SWAPPED:
    _count_calls(getattr(lipcheck, _name))
    for _module in (deepinv.loss, deepinv.loss.regularisers):
        setattr(_module, _name, getattr(lipcheck, _name))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        _bound[item.nodeid] = {
            name: f"{getattr(module, name).__module__}.{name}" for name in SWAPPED if hasattr(module, name)
        }


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
    elif report.when == "call" or report.skipped:
        _outcomes.setdefault(report.nodeid, report.outcome)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("LIPCHECK_SWAP_RECORD")
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"bound": _bound, "calls": dict(_calls), "outcomes": _outcomes}, file, indent=1)
