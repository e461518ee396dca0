"""Every exit code of `lipcheck` (cli.ExitStatus), driven through the command line: 0 passed, 1 gate
failed, 2 usage or input error, 3 the audit failed, 70 an internal error, 130 interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import ARCH, MLP, assert_one_line_error, mlp_inputs, run
from safetensors.torch import save_file

from lipcheck.cli import ExitStatus


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MLP's weights (for the factories of cli_fixtures) and its inputs."""
    folder = tmp_path_factory.mktemp("exit")
    save_file(MLP().state_dict(), folder / "mlp.safetensors")
    np.save(folder / "x.npy", mlp_inputs(4))
    return {"model": folder / "mlp.safetensors", "data": folder / "x.npy"}


def audit(weights: dict[str, Path], factory: str, *flags: str) -> list[str]:
    return [
        "audit",
        str(weights["model"]),
        "--arch",
        f"{ARCH}:{factory}",
        "--data",
        str(weights["data"]),
        *flags,
    ]


def test_the_codes_are_the_documented_ones() -> None:
    assert {status.name: int(status) for status in ExitStatus} == {
        "PASSED": 0,
        "GATE_FAILED": 1,
        "USAGE_OR_INPUT": 2,
        "AUDIT_FAILED": 3,
        "INTERNAL_ERROR": 70,
        "INTERRUPTED": 130,
    }


def test_passed_and_gate_failed(weights: dict[str, Path]) -> None:
    assert (
        run(*audit(weights, "make_mlp", "--fail-above", "100", "-f", "json")).exit_code == ExitStatus.PASSED
    )
    failed = run(*audit(weights, "make_mlp", "--fail-above", "0.001", "-f", "json"))
    assert failed.exit_code == ExitStatus.GATE_FAILED and "lipcheck: gate failed:" in failed.stderr


def test_usage_and_input_errors(weights: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(run(*audit(weights, "make_mlp", "--no-such-flag")), "--no-such-flag")
    assert_one_line_error(run(*audit(weights, "make_mlp", "--method", "newton")), "--method")
    assert_one_line_error(run("audit", tmp_path / "missing.pt2", "--data", weights["data"]), "missing.pt2")


@pytest.mark.parametrize("error", ["cuda-oom", "cpu-oom"])
def test_out_of_memory_fails_the_audit_and_says_to_lower_the_batch_size(
    weights: dict[str, Path], error: str
) -> None:
    result = run(*audit(weights, "make_raising", "--arch-kwargs", json.dumps({"error": error}), "-b", "4"))
    assert_one_line_error(result, "out of memory", "batches of 4 samples", "lower --batch-size", code=3)
    assert "rejected input" not in result.stderr


def test_a_model_bug_fails_the_audit_without_blaming_the_input(weights: dict[str, Path]) -> None:
    result = run(*audit(weights, "make_raising", "--arch-kwargs", '{"error": "bug"}'))
    assert_one_line_error(result, "the model raised KeyError: 'layer4'", code=ExitStatus.AUDIT_FAILED)
    assert "rejected input" not in result.stderr


def test_an_internal_error_shows_the_traceback_and_asks_for_a_report(
    weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug in lipcheck")

    monkeypatch.setattr("lipcheck.auditing.run", broken)
    result = run(*audit(weights, "make_mlp"))
    assert result.exit_code == ExitStatus.INTERNAL_ERROR
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug in lipcheck" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lipcheck: internal error, please report it") and "ZeroDivisionError" in last


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_exits_130(weights: dict[str, Path], tmp_path: Path) -> None:
    started = tmp_path / "started"
    command = audit(weights, "make_slow", "--arch-kwargs", json.dumps({"started": str(started)}))
    process = subprocess.Popen(
        [sys.executable, "-m", "lipcheck", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    deadline = time.monotonic() + 60
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), process.communicate(timeout=10)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitStatus.INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "lipcheck: interrupted" and stdout == ""
