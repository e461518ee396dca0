"""docs/ci.md: the shell commands of every recipe, taken from the page, run on the sample model as the
CI system would run them (bash, errexit), with the `pip install` lines left out; so the page cannot
drift from what lipcheck does."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_fixtures import read_json, run

import lipcheck

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ci.md"


def fenced(section: str, language: str) -> str:
    """The first ```language block under the heading '## section' of docs/ci.md."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    match = re.search(rf"```{language}\n(.*?)```", text[start : end if end > 0 else None], re.S)
    assert match, f"no {language} block under '## {section}'"
    return match.group(1)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, indent: int) -> tuple[str, int]:
    """The lines after `start` indented deeper than `indent` (a YAML `|` block), dedented; the next line."""
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    return textwrap.dedent("\n".join(lines[start + 1 : end])), end


def values(yaml: str, key: str) -> list[str]:
    """Every value of `key` in a YAML block: `key: text`, `key: |` with its block, or a list under `key:`
    whose items are texts or `|` blocks. Enough YAML for the recipes; each value is one string."""
    lines = yaml.splitlines()
    found = []
    for number, line in enumerate(lines):
        match = re.match(rf"^(\s*)(?:- )?{key}:\s*(.*)$", line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2)
        if value == "|":
            found.append(_block(lines, number, indent)[0])
        elif value:
            found.append(value)
        item = number + 1
        while not value and item < len(lines) and re.match(r"^\s*- ", lines[item]):
            text = lines[item].strip()[2:]
            if text == "|":
                block, item = _block(lines, item, _indent(lines[item]))
                found.append(block)
            else:
                found.append(text)
                item += 1
    return found


def without_pip(script: str) -> tuple[str, int]:
    """The script with its `pip install` lines replaced by `:` (tests install nothing); how many."""
    lines = script.splitlines()
    kept = [":" if line.strip().startswith("pip install") else line for line in lines]
    return "\n".join(kept), sum(1 for a, b in zip(lines, kept, strict=True) if a != b)


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The baseline written by the page's own command (one `lipcheck` line, run in-process)."""
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "sample_models").symlink_to(REPO / "sample_models")
    (command,) = fenced("The baseline", "bash").strip().splitlines()
    argv = shlex.split(command)
    assert argv[0] == "lipcheck"
    with inside(folder):
        result = run(*argv[1:])
    assert result.exit_code == 0, result.stderr
    return folder / "lipcheck-baseline.json"


@pytest.fixture
def checkout(tmp_path: Path, baseline: Path) -> Path:
    """A working copy as a CI job sees it: the sample model and the committed baseline."""
    (tmp_path / "sample_models").symlink_to(REPO / "sample_models")
    (tmp_path / "lipcheck-baseline.json").write_text(baseline.read_text())
    bin_folder = tmp_path / ".bin"
    bin_folder.mkdir()
    shim = bin_folder / "lipcheck"  # the installed entry point, for this checkout's lipcheck
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lipcheck "$@"\n')
    shim.chmod(0o755)
    return tmp_path


def shell(script: str, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` as GitHub's and GitLab's runners do: bash, errexit, pipefail."""
    package_root = str(Path(lipcheck.__file__).resolve().parents[1])
    environment = {
        **os.environ,
        "PATH": f"{folder / '.bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        **env,
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=folder, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def check_reports(folder: Path, junit: str) -> None:
    """The gate passed with the recipe's rules; the JUnit file has one passing testcase per rule."""
    report = read_json(folder / "lipcheck-report.json")
    assert report["gate"]["passed"] is True
    assert [v["name"] for v in report["gate"]["rules"]] == ["require_converged", "max_increase"]
    suite = ET.parse(folder / junit).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "sample_models/denoiser.pt2"
    assert [case.get("name") for case in suite.iter("testcase")] == ["require_converged", "max_increase"]
    assert suite.get("failures") == "0"


def test_github_actions_recipe(checkout: Path) -> None:
    workflow = fenced("GitHub Actions", "yaml")
    summary = checkout / "step-summary.md"
    installs = 0
    for step in values(workflow, "run"):
        script, removed = without_pip(step)
        installs += removed
        result = shell(script, checkout, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
        assert result.returncode == 0, (step, result.stderr)
        assert "::error" not in result.stderr
    assert installs == 2
    check_reports(checkout, "lipcheck-junit.xml")
    text = summary.read_text()
    assert "### lipcheck audit" in text and "**Gate: passed**" in text and "`max_increase` | passed" in text
    assert "```mermaid\nxychart-beta" in text
    assert '<section id="verdict" class="banner passed">' in (checkout / "lipcheck-report.html").read_text()
    (uploaded,) = [v for v in values(workflow, "path") if "lipcheck" in v]
    assert all((checkout / name).is_file() for name in uploaded.split())


def test_gitlab_ci_recipe(checkout: Path) -> None:
    job = fenced("GitLab CI", "yaml")
    script, removed = without_pip("\n".join(values(job, "script")))
    assert removed == 2
    result = shell(script, checkout, GITLAB_CI="true", CI="true")
    assert result.returncode == 0, result.stderr
    (junit,) = values(job, "junit")
    check_reports(checkout, junit)
    assert all((checkout / name).is_file() for name in values(job, "paths"))


def test_pre_commit_hook(checkout: Path) -> None:
    config = fenced("A local check before each commit", "yaml")
    (entry,) = values(config, "entry")
    (files,) = values(config, "files")
    assert re.search(files, "sample_models/denoiser.pt2")
    result = shell(entry, checkout)
    assert result.returncode == 0, result.stderr
    for text in ("Summary", "gate require_converged", "gate max_increase"):
        assert text in result.stdout
    assert "lipcheck: gate passed" in result.stderr
