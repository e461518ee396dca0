"""The audit loop: an index range and a sink, so shards and resumed runs reproduce a whole run."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from cli_fixtures import ARCH, MLP, MemoryBoundMLP, run, saved_mlp

from lipcheck.auditing.batches import audit_rows
from lipcheck.auditing.loop import run_audit
from lipcheck.errors import LipcheckWarning
from lipcheck.io.datasets import random_dataset
from lipcheck.io.models import LoadedModel
from lipcheck.report import SampleResult, Settings, report_schema


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


def test_a_batch_that_runs_out_of_memory_is_split_in_halves_and_the_audit_completes(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    data = random_dataset((6,), 11, seed=2)
    whole = run_audit(loaded(MLP()), data, Settings(batch_size=8, device="cpu"))
    bounded = loaded(MemoryBoundMLP(most=3, calls=str(calls)))  # torch.OutOfMemoryError above 3 samples
    with pytest.warns(LipcheckWarning, match="ran out of memory on a batch of 8 samples") as said:
        report = run_audit(bounded, data, Settings(batch_size=8, device="cpu"))
    assert len([w for w in said if issubclass(w.category, LipcheckWarning)]) == 1  # said once
    assert report.environment.fitted_batch_size == 2  # 8 and 4 ran out, 2 fit
    assert whole.environment.fitted_batch_size is None
    # 8 -> 4 -> 2 on the first batch; the rest goes at the size that fit, without running out again
    assert [int(n) for n in calls.read_text().split()] == [8, 4, 2, 2, 2, 2, 2, 1]
    assert [row.index for row in report.samples] == list(range(11))
    assert [row.sigma for row in report.samples] == pytest.approx(
        [row.sigma for row in whole.samples], rel=1e-5
    )
    assert report.summary.count == 11 and report.summary.converged == whole.summary.converged


def test_the_command_line_records_the_batch_size_that_fit(tmp_path: Path) -> None:
    saved = saved_mlp(tmp_path)
    args = ["audit", str(saved["model"]), "--arch", f"{ARCH}:make_memory_bound", "--arch-kwargs",
            '{"most": 1}', "--data", str(saved["data"]), "--device", "cpu", "--format", "json"]  # fmt: skip
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "lipcheck: warning: ran out of memory on a batch of 4 samples (OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 4 GiB): batches are split in halves until they fit, and the report records the "
        "size that did"
    ]
    report = json.loads(result.stdout)
    jsonschema.validate(report, report_schema())
    assert report["environment"]["fitted_batch_size"] == 1 and report["summary"]["count"] == 4
