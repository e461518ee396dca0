"""A training run's checkpoints audited as a series: order, figures, gate, resume and presentation.

The run is 20 state dicts of one MLP whose weights grow until step 13 and shrink after it, so the
worst checkpoint, the best one and the last one's rise over the best are known in advance; every
checkpoint's max sigma is checked against dense Jacobians in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
from lipcheck.auditing.series import SeriesRequest, order_checkpoints, read_models_list, run_series
from lipcheck.errors import InputError
from lipcheck.present.render import SERIES
from lipcheck.present.series import sparkline
from lipcheck.report import Settings, read_report
from lipcheck.report.gate import RuleOptions
from lipcheck.report.json_schema import first_problem
from lipcheck.report.series import read_series, series_schema

NETS = """
from torch import nn


def make():
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
"""
STEPS = 20
PEAK = 13  # the weights grow until this step and shrink after it


def _scale(step: int) -> float:
    return 1.06**step if step <= PEAK else 1.06**PEAK * 0.97 ** (step - PEAK)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    (folder / "nets.py").write_text(NETS)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    (folder / "ckpt").mkdir()
    for step in range(STEPS):
        weights = {name: tensor * _scale(step) ** 0.5 for name, tensor in base.items()}
        torch.save(weights, folder / "ckpt" / f"epoch_{step * 5}.pt")  # epoch_5 sorts before epoch_10
    np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((9, 6)))
    return folder


def _checkpoints(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted((folder / "ckpt").glob("*.pt")))  # lexical: the series must order them itself


def _request(folder: Path, **options: object) -> SeriesRequest:
    rules = options.pop("rules", RuleOptions())
    template = AuditRequest(
        model=ModelSource("unused", arch=str(folder / "nets.py") + ":make"),
        data=DataSource(folder / "x.npy"),
        settings=Settings(dtype="float64", tol=1e-9, seed=0),
        rules=rules,  # type: ignore[arg-type]
    )
    return SeriesRequest(_checkpoints(folder), template, **options)  # type: ignore[arg-type]


def _dense_max(folder: Path, step: int) -> float:
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()
    weights = torch.load(folder / "ckpt" / f"epoch_{step * 5}.pt", weights_only=True)
    model.load_state_dict({name: tensor.double() for name, tensor in weights.items()})
    x = torch.from_numpy(np.load(folder / "x.npy"))
    return max(torch.linalg.matrix_norm(torch.func.jacrev(model)(row), ord=2).item() for row in x)


def test_a_run_of_20_checkpoints_gives_each_ones_figures_in_step_order(
    run_folder: Path, tmp_path: Path
) -> None:
    series = run_series(_request(run_folder, reports=tmp_path / "reports"))
    assert [c.step for c in series.checkpoints] == list(range(STEPS))  # natural sort: positions
    assert [Path(c.path).name for c in series.checkpoints] == [f"epoch_{s * 5}.pt" for s in range(STEPS)]
    for step in (0, 7, PEAK, STEPS - 1):
        assert series.checkpoints[step].summary.max == pytest.approx(_dense_max(run_folder, step), rel=1e-6)
    assert series.worst == PEAK and series.best == 0
    assert max(row.sigma for row in series.worst_samples) == pytest.approx(
        series.checkpoints[PEAK].summary.max
    )
    assert first_problem(series.to_dict(), series_schema()) is None
    for checkpoint in series.checkpoints:  # one report per checkpoint, each a valid report
        assert read_report(checkpoint.report).summary == checkpoint.summary  # type: ignore[arg-type]
    saved = tmp_path / "series.json"
    saved.write_text(series.to_json())
    assert read_series(saved) == series


def test_the_step_is_read_with_a_regex_or_taken_from_natural_order(tmp_path: Path) -> None:
    paths = [Path(f"run/epoch_{n}.pt") for n in (10, 2, 1)]
    assert order_checkpoints(paths, None) == [(0, paths[2]), (1, paths[1]), (2, paths[0])]
    assert order_checkpoints(paths, r"epoch_(\d+)") == [(1, paths[2]), (2, paths[1]), (10, paths[0])]
    with pytest.raises(InputError, match="finds no step number in 'run/last.pt'"):
        order_checkpoints([*paths, Path("run/last.pt")], r"epoch_(\d+)")
    with pytest.raises(InputError, match="both step 1"):
        order_checkpoints([Path("a/epoch_1.pt"), Path("b/epoch_01.pt")], r"epoch_(\d+)")
    listed = tmp_path / "list.txt"
    listed.write_text("# the run\nckpt/a.pt\n\n/abs/b.pt\n")
    assert read_models_list(listed) == (tmp_path / "ckpt/a.pt", Path("/abs/b.pt"))


@pytest.mark.parametrize(("percent", "passed"), [(1.0, False), (90.0, True)])
def test_the_gate_judges_the_last_checkpoint_and_its_rise_over_the_best(
    run_folder: Path, percent: float, passed: bool
) -> None:
    series = run_series(
        _request(run_folder, max_increase_over_best=percent, rules=RuleOptions(fail_above=100.0))
    )
    last, best = series.last.summary.value, series.checkpoints[series.best].summary.value
    assert last == pytest.approx(_dense_max(run_folder, STEPS - 1), rel=1e-6)
    assert best == pytest.approx(_dense_max(run_folder, 0), rel=1e-6)
    assert 0.01 < last / best - 1 < 0.9  # +68%
    fail_above, over_best = series.gate.rules
    assert fail_above.name == "fail_above" and fail_above.value == last and fail_above.passed
    assert over_best.name == "max_increase_over_best" and over_best.passed is passed
    assert over_best.threshold == pytest.approx(best * (1 + percent / 100))
    assert series.gate.passed is passed


def test_resume_keeps_complete_matching_reports_and_audits_the_rest(run_folder: Path, tmp_path: Path) -> None:
    request = _request(run_folder, reports=tmp_path / "reports", resume=True)
    first = run_series(request)
    kept: list[bool] = []
    assert run_series(request, lambda position, count, path, was_kept: kept.append(was_kept)) == first
    assert kept == [True] * STEPS
    reports = [Path(c.report) for c in first.checkpoints]  # type: ignore[arg-type]
    reports[3].write_text(reports[3].read_text()[:200])  # interrupted while written: audited again
    settings = json.loads(reports[5].read_text())
    settings["settings"]["tol"] = 0.5  # another audit's report: audited again
    reports[5].write_text(json.dumps(settings))
    kept.clear()
    again = run_series(request, lambda position, count, path, was_kept: kept.append(was_kept))
    assert [k for k, was in enumerate(kept) if not was] == [3, 5]
    assert again == first


def test_the_table_markdown_and_html_show_a_row_per_checkpoint_and_the_trend(run_folder: Path) -> None:
    pytest.importorskip("matplotlib")
    series = run_series(_request(run_folder, max_increase_over_best=10.0))
    line = sparkline([c.summary.value for c in series.checkpoints])
    assert len(line) == STEPS and line[0] == "▁" and line[PEAK] == "█"
    for form in ("table", "markdown"):
        text = SERIES.render_text(series, form)
        assert all(f"epoch_{s * 5}.pt" in text for s in range(STEPS))
        assert line in text and "worst" in text and "max_increase_over_best" in text
    page = SERIES.render_text(series, "html")
    assert page.count("<svg") == 1 and 'id="chart-trend"' in page
    assert f"tbody tr:nth-child({PEAK + 1})" in page  # the worst checkpoint's row is highlighted
    assert f"Worst checkpoint: step {PEAK}" in page


def test_an_edited_series_report_is_refused(run_folder: Path, tmp_path: Path) -> None:
    data = run_series(_request(run_folder)).to_dict()
    data["worst"] = 0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(
        InputError, match="contradicts itself .*worst is checkpoint 0 but its figures give 13"
    ):
        read_series(edited)
    data["kind"] = "something"
    edited.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not a valid lipcheck series report"):
        read_series(edited)
