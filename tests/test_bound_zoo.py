"""Coverage of `lipcheck.upper_bound` on the architectures of tests/zoo.py: each model is bounded, never
below the largest sigma an audit finds, or refused with one line that says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from zoo import ZOO

import lipcheck
from lipcheck.bounds import loop_transformation


@pytest.fixture(autouse=True)
def smaller_lanczos_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # the default budget of the loop transformation's Lanczos runs takes about a minute a model here
    # (benchmarks/bound_zoo.py measures it); 1/8 of it still bounds the first blocks by Lanczos
    budget = loop_transformation.LANCZOS_TOTAL_WORK >> 3
    monkeypatch.setattr(loop_transformation, "LANCZOS_TOTAL_WORK", budget)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # the batched complex products of the convolution rule ran 70 times slower on 2 busy cores with 2
    # threads than with 1 (3.4 s against 0.05 s per 32-channel 3x3 convolution)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_is_bounded_above_what_an_audit_finds_or_refused_in_one_line(name: str) -> None:
    entry = ZOO[name]
    model = entry.build()
    if entry.refused is not None:
        with pytest.raises(lipcheck.UnsupportedOperationError, match=entry.refused) as raised:
            lipcheck.upper_bound(model, entry.input_shape)
        assert "\n" not in str(raised.value) and "--assume" in str(raised.value)
        return
    bound = lipcheck.upper_bound(model, entry.input_shape).upper_bound
    x = torch.rand((2, *entry.input_shape), generator=torch.Generator().manual_seed(0))
    found = lipcheck.audit(model, x, tol=1e-6).summary.max
    assert 0 < found <= bound
