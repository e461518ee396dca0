"""The audit loop: an index range and a sink, so shards and resumed runs reproduce a whole run."""

from __future__ import annotations

import pytest
import torch
from cli_fixtures import MLP

from lipcheck.auditing import audit_rows, run_audit
from lipcheck.datasets import random_dataset
from lipcheck.models import LoadedModel
from lipcheck.report import SampleResult, Settings


def loaded(module: torch.nn.Module) -> LoadedModel:
    return LoadedModel(module.eval(), "mlp", "pickle", "0" * 64, 0, 0, False)


def test_shards_give_the_rows_of_a_whole_run() -> None:
    model, data = loaded(MLP()), random_dataset((6,), 11, seed=2)
    whole = run_audit(model, data, Settings(batch_size=4, device="cpu")).samples
    shards: list[SampleResult] = []
    for indices in (range(8, 11), range(0, 4), range(4, 8)):  # shards on batch boundaries: bit-identical
        audit_rows(model, data, Settings(batch_size=4, device="cpu"), indices=indices, sink=shards.extend)
    assert sorted(shards, key=lambda row: row.index) == list(whole)
    other: list[SampleResult] = []  # other batches: the same up to rounding
    audit_rows(model, data, Settings(batch_size=3, device="cpu"), indices=range(2, 9), sink=other.extend)
    assert [row.index for row in other] == list(range(2, 9))
    assert [row.sigma for row in other] == pytest.approx([row.sigma for row in whole[2:9]], rel=1e-5)


def test_progress_counts_samples() -> None:
    seen: list[int] = []
    run_audit(
        loaded(MLP()), random_dataset((6,), 5), Settings(batch_size=2, device="cpu"), progress=seen.append
    )
    assert seen == [2, 2, 1]


def test_a_model_in_training_mode_is_put_in_eval_mode_and_batchnorm_is_fine() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6)).train()
    model = LoadedModel(module, "bn", "pickle", "0" * 64, 0, 0, False)
    model.module.eval()
    report = run_audit(model, random_dataset((6,), 4), Settings(device="cpu"))
    assert report.summary.converged == 4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_follows_the_dtype(dtype: str) -> None:
    model = loaded(MLP())
    report = run_audit(model, random_dataset((6,), 3), Settings(dtype=dtype, device="cpu"))
    assert next(model.module.parameters()).dtype == getattr(torch, dtype)
    assert report.settings.dtype == dtype
