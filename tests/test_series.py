"""A training run's checkpoints audited as a series: order, figures, gate, resume and presentation.

The run is 20 state dicts of one MLP whose weights grow until step 13 and shrink after it, so the
worst checkpoint, the best one and the last one's rise over the best are known in advance; every
checkpoint's max sigma is checked against dense Jacobians in float64.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import assert_one_line_error, run

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


def write_training_run(folder: Path) -> Path:
    """folder/nets.py (the factory `make`), folder/ckpt/epoch_0.pt ... epoch_95.pt (20 state dicts whose
    weights grow until step 13, then shrink) and folder/x.npy (9 samples of 6)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nets.py").write_text(NETS)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    (folder / "ckpt").mkdir(exist_ok=True)
    for step in range(STEPS):
        weights = {name: tensor * _scale(step) ** 0.5 for name, tensor in base.items()}
        torch.save(weights, folder / "ckpt" / f"epoch_{step * 5}.pt")  # epoch_5 sorts before epoch_10
    np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((9, 6)))
    return folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_training_run(tmp_path_factory.mktemp("run"))


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


# ----------------------------------------------------------------------------------------------------
# The command line: lipcheck audit ckpt/*.pt --arch nets.py:make --data x.npy -o series.json ...


def _cli_series(run_folder: Path, *extra: object) -> object:
    return run(
        "audit", *_checkpoints(run_folder), "--arch", f"{run_folder / 'nets.py'}:make",
        "--data", run_folder / "x.npy", "--dtype", "float64", *extra,
    )  # fmt: skip


def test_the_command_line_writes_the_series_and_one_report_per_checkpoint(
    run_folder: Path, tmp_path: Path
) -> None:
    result = _cli_series(run_folder, "-o", tmp_path / "series.json", "-o", tmp_path / "series.md")
    assert result.exit_code == 0, result.stderr
    series = read_series(tmp_path / "series.json")
    assert series.worst == PEAK and len(series.checkpoints) == STEPS
    reports = sorted((tmp_path / "series-checkpoints").glob("*.json"))
    assert len(reports) == STEPS and all(read_report(path) for path in reports)
    markdown = (tmp_path / "series.md").read_text()
    assert sum(line.startswith("| ") and "epoch_" in line for line in markdown.splitlines()) == STEPS


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (("--max-increase-over-best", 1), 1),
        (("--max-increase-over-best", 90), 0),
        (("--fail-above", 0.01), 1),
    ],
)
def test_the_command_line_gate_exits_by_the_series_verdict(
    run_folder: Path, tmp_path: Path, flags: tuple[object, ...], code: int
) -> None:
    result = _cli_series(run_folder, *flags, "-o", tmp_path / "series.json")
    assert result.exit_code == code, result.stderr
    assert read_series(tmp_path / "series.json").gate.passed is (code == 0)


def test_the_command_line_resumes_per_checkpoint_and_reads_a_list(run_folder: Path, tmp_path: Path) -> None:
    listed = run_folder / "run.txt"
    listed.write_text("".join(f"ckpt/{path.name}\n" for path in _checkpoints(run_folder)))
    flags = ("--models-from", listed, "--step-regex", r"epoch_(\d+)", "--resume", tmp_path / "kept")
    common = (
        "--arch",
        f"{run_folder / 'nets.py'}:make",
        "--data",
        run_folder / "x.npy",
        "--dtype",
        "float64",
    )
    first = run("audit", *flags, *common, "-o", tmp_path / "first.json")
    assert first.exit_code == 0, first.stderr
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "kept").glob("*.json")}
    assert len(written) == STEPS
    again = run("audit", *flags, *common, "-o", tmp_path / "again.json")
    assert again.exit_code == 0, again.stderr
    assert {path: path.stat().st_mtime_ns for path in written} == written  # none audited again
    assert read_series(tmp_path / "again.json") == read_series(tmp_path / "first.json")
    assert [c.step for c in read_series(tmp_path / "again.json").checkpoints] == [s * 5 for s in range(STEPS)]


def test_series_flags_need_a_series(run_folder: Path) -> None:
    one = _checkpoints(run_folder)[0]
    result = run("audit", one, "--arch", f"{run_folder / 'nets.py'}:make", "--data", run_folder / "x.npy",
                 "--max-increase-over-best", 5)  # fmt: skip
    assert_one_line_error(result, "--max-increase-over-best is for a series")
    assert_one_line_error(_cli_series(run_folder, "-o", run_folder / "x.npy"), "--output", "x.npy")


def test_workers_split_each_checkpoint_and_resume_keeps_their_reports(
    run_folder: Path, tmp_path: Path
) -> None:
    """--workers 2: each checkpoint's batches over two ranks, the figures of one process; rerun with
    --resume, no checkpoint is audited again (their reports keep their bytes)."""
    checkpoints = [str(path) for path in _checkpoints(run_folder)[:3]]
    common = ["--arch", f"{run_folder / 'nets.py'}:make", "--data", str(run_folder / "x.npy"),
              "--dtype", "float64", "--batch-size", "4", "--resume", str(tmp_path / "kept")]  # fmt: skip
    single = run("audit", *checkpoints, *common[:-2], "-o", tmp_path / "single.json")
    assert single.exit_code == 0, single.stderr
    for name in ("first", "again"):
        command = [sys.executable, "-m", "lipcheck", "audit", *checkpoints, *common, "--workers", "2",
                   "-o", str(tmp_path / f"{name}.json")]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        if name == "first":
            kept = {path: path.read_bytes() for path in (tmp_path / "kept").glob("*.json")}
    assert {path: path.read_bytes() for path in kept} == kept and len(kept) == 3
    ranked, alone = read_series(tmp_path / "again.json"), read_series(tmp_path / "single.json")
    for figure in ("max", "median", "min"):
        assert [getattr(c.summary, figure) for c in ranked.checkpoints] == pytest.approx(
            [getattr(c.summary, figure) for c in alone.checkpoints], rel=1e-9
        )
    assert all(read_report(path).environment.world_size == 2 for path in kept)
