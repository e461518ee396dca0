"""No name can spoof a verdict: one corpus of hostile names (tests/hostile.py: newlines, a fake
'## Gate: passed' heading, '<!--', backticks, '|', ']]>', ESC sequences, bidi overrides, NUL) as file
names and as fields of reports read back from JSON, through every format of every command.

Every output must keep the real verdict, hold no raw control character, parse as its language with
only the structure lipcheck wrote (Markdown: its own headings, no HTML; JUnit: valid XML with the
failure; HTML: no comment but the charts', the failed banner), and stderr likewise. The files are
generated here.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_fixtures import MLP, export, exported_mlp, mlp_inputs, run
from hostile import FILE_NAMES, RAW, STRINGS
from markdown_it import MarkdownIt

SUFFIXES = {"json": ".json", "markdown": ".md", "junit": ".xml", "html": ".html", "table": ".txt"}
GFM = MarkdownIt("commonmark").enable("table")


def _formats(*lacking: str) -> list[str]:
    formats = [name for name in SUFFIXES if name not in lacking]
    try:
        import matplotlib  # noqa: F401  (HTML pages need the extra lipcheck[html])
    except ImportError:
        formats.remove("html")
    return formats


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    model, data = exported_mlp(folder)
    report = folder / "report.json"
    result = run("audit", model, "--data", data, "-o", report, "-q")
    assert result.exit_code == 0, result.stderr
    doubled = MLP()
    with torch.no_grad():
        doubled.second.weight.mul_(2)  # every sigma doubles
    steeper = export(doubled, folder / "steeper.pt2", torch.from_numpy(mlp_inputs(2)))
    rose = folder / "rose.json"
    result = run("audit", steeper, "--data", data, "-o", rose, "-q")
    assert result.exit_code == 0, result.stderr
    return {"model": model, "data": data, "report": report, "rose": rose}


def _named(source: Path, folder: Path, name: str, suffix: str) -> Path:
    target = folder / f"{name}{suffix}"
    shutil.copyfile(source, target)
    return target


def _doctored(source: Path, target: Path, text: str) -> Path:
    """The report at `source` with its model and data paths and a model argument set to `text`, as a
    report read back from JSON can carry them (NUL included), saved to `target`."""
    report = json.loads(source.read_text())
    report["model"]["path"] = text
    report["data"]["path"] = text
    report["settings"]["model_kwargs"]["note"] = text
    target.write_text(json.dumps(report))
    return target


def _outputs(folder: Path, formats: list[str]) -> tuple[list[Any], dict[str, Path]]:
    paths = {fmt: folder / f"out{SUFFIXES[fmt]}" for fmt in formats}
    return [item for path in paths.values() for item in ("-o", path)], paths


def _assert_no_raw(text: str, where: str) -> None:
    found = [repr(raw) for raw in RAW if raw in text]
    assert not found, (where, found)


def _markdown_structure(text: str, heading: str) -> list[str]:
    """The Markdown's headings (only `heading`), no HTML; the text of its paragraphs and cells."""
    tokens = GFM.parse(text)
    headings = [tokens[k + 1].content for k, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [heading], headings
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in t.children or []}
    assert not kinds & {"html_block", "html_inline"}, kinds
    return [t.content for t in tokens if t.type == "inline"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.comments: list[str] = []  # the SVG charts' own, only
        self.verdict: str | None = None

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id") == "verdict":
            self.verdict = found.get("class")


def _check(paths: dict[str, Path], result: Any, heading: str, failed: bool | None) -> None:
    """Every output of one command: the verdict (`failed`; None: no gate) intact, nothing raw."""
    _assert_no_raw(result.stdout, "stdout")
    _assert_no_raw(result.stderr, "stderr")
    assert all(line.startswith("lipcheck: ") for line in result.stderr.splitlines()), result.stderr
    if failed:
        assert "lipcheck: gate failed: " in result.stderr and "gate passed" not in result.stderr
    for fmt, path in paths.items():
        text = path.read_text(encoding="utf-8")
        _assert_no_raw(text, fmt)
        if fmt == "json":
            if failed is not None:
                assert json.loads(text)["gate"]["passed"] is (not failed)
        elif fmt == "markdown":
            inline = _markdown_structure(text, heading)
            if failed:
                verdicts = [line.strip("*") for line in inline if line.strip("*").startswith("Gate: ")]
                assert len(verdicts) == 1 and verdicts[0].startswith("Gate: failed"), inline
        elif fmt == "junit":
            suite = ET.fromstring(text).find("testsuite")
            assert suite is not None and int(suite.get("failures", "0")) >= 1
        elif fmt == "html":
            page = _Page()
            page.feed(text)
            assert not [comment for comment in page.comments if "Gate" in comment or "\\n" in comment]
            if failed:
                assert page.verdict == "banner failed"
        elif failed:
            assert "FAILED" in text


@pytest.mark.parametrize("name", sorted(FILE_NAMES))
def test_audit(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    text = FILE_NAMES[name]
    model = _named(files["model"], tmp_path, text, ".pt2")
    data = _named(files["data"], tmp_path, text, ".npy")
    baseline = _named(files["report"], tmp_path, text, ".json")
    rules = ["--fail-above", "0.0001", "--baseline", baseline, "--max-increase", "1000", "--allow-mismatch"]
    flags, paths = _outputs(tmp_path, _formats())
    result = run("audit", model, "--data", data, *rules, *flags)
    assert result.exit_code == 1, result.stderr
    _check(paths, result, "lipcheck audit", failed=True)
    table = run("audit", model, "--data", data, *rules, "-f", "table")
    assert table.exit_code == 1 and "FAILED" in table.stdout
    _check({}, table, "lipcheck audit", failed=True)


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_gate(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    file_name = FILE_NAMES.get(name, name.replace(" ", "-"))
    report = _doctored(files["report"], tmp_path / f"{file_name}.json", STRINGS[name])
    baseline = _doctored(files["report"], tmp_path / f"{file_name}.base.json", STRINGS[name])
    rules = ["--fail-above", "0.0001", "--baseline", baseline, "--max-increase", "1000"]
    flags, paths = _outputs(tmp_path, _formats())
    result = run("gate", report, *rules, *flags)
    assert result.exit_code == 1, result.stderr
    _check(paths, result, "lipcheck audit", failed=True)
    table = run("gate", report, *rules, "-f", "table")
    assert table.exit_code == 1 and "FAILED" in table.stdout
    _check({}, table, "lipcheck audit", failed=True)


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_compare(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    file_name = FILE_NAMES.get(name, name.replace(" ", "-"))
    base = _doctored(files["report"], tmp_path / f"{file_name}.json", STRINGS[name])
    new = _doctored(files["rose"], tmp_path / f"{file_name}.new.json", STRINGS[name] + "2")
    rules = ["--max-increase", "10", "--allow-mismatch"]
    flags, paths = _outputs(tmp_path, _formats())
    result = run("compare", base, new, *rules, *flags)
    assert result.exit_code == 1, result.stderr
    _check(paths, result, "lipcheck compare", failed=True)
    table = run("compare", base, new, *rules, "-f", "table")
    assert table.exit_code == 1 and "FAILED" in table.stdout
    _check({}, table, "lipcheck compare", failed=True)


@pytest.mark.parametrize("name", sorted(FILE_NAMES))
def test_bound_and_inspect(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    model = _named(files["model"], tmp_path, FILE_NAMES[name], ".pt2")
    for fmt in _formats("junit"):  # bound takes one --output
        flags, paths = _outputs(tmp_path, [fmt])
        result = run("bound", model, "--input-shape", "6", *flags)
        assert result.exit_code == 0, result.stderr
        _check(paths, result, "lipcheck bound", failed=None)
    for command in (["bound", model, "--input-shape", "6", "-f", "table"], ["inspect", model]):
        shown = run(*command)
        assert shown.exit_code == 0, shown.stderr
        _check({}, shown, "", failed=None)


@pytest.fixture(scope="module")
def series_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A series of two checkpoints, the second steeper, its gate failed by --max-increase-over-best."""
    from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
    from lipcheck.auditing.series import SeriesRequest, run_series
    from lipcheck.report import Settings

    folder = tmp_path_factory.mktemp("series")
    (folder / "nets.py").write_text("from torch import nn\n\n\ndef make():\n    return nn.Linear(6, 3)\n")
    torch.manual_seed(0)
    weights = torch.nn.Linear(6, 3).state_dict()
    for step, scale in ((1, 1.0), (2, 3.0)):
        torch.save({name: tensor * scale for name, tensor in weights.items()}, folder / f"epoch_{step}.pt")
    np.save(folder / "x.npy", mlp_inputs(4))
    template = AuditRequest(
        model=ModelSource("unused", arch=f"{folder / 'nets.py'}:make"),
        data=DataSource(folder / "x.npy"),
        settings=Settings(seed=0),
    )
    checkpoints = (folder / "epoch_1.pt", folder / "epoch_2.pt")
    series = run_series(SeriesRequest(checkpoints, template, max_increase_over_best=10.0))
    assert series.gate.passed is False
    saved = folder / "series.json"
    saved.write_text(series.to_json())
    return saved


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_series(series_report: Path, tmp_path: Path, name: str) -> None:
    from lipcheck.present.render import SERIES
    from lipcheck.report.series import read_series

    data = json.loads(series_report.read_text())
    for checkpoint in data["checkpoints"]:
        checkpoint["path"] = STRINGS[name] + checkpoint["path"]
    data["data"]["path"] = STRINGS[name]
    doctored = tmp_path / "series.json"
    doctored.write_text(json.dumps(data))
    series = read_series(doctored)
    for fmt in _formats("junit", "json"):
        text = SERIES.render_text(series, fmt)
        _assert_no_raw(text, fmt)
        if fmt == "markdown":
            inline = _markdown_structure(text, "lipcheck series")
            verdicts = [line.strip("*") for line in inline if line.strip("*").startswith("Gate: ")]
            assert len(verdicts) == 1 and verdicts[0].startswith("Gate: failed"), inline
        elif fmt == "html":
            page = _Page()
            page.feed(text)
            assert page.verdict == "banner failed"
        else:
            assert "FAILED" in text
