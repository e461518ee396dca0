"""Every exit code of `lipcheck` (cli.ExitStatus), driven through the command line: 0 passed, 1 gate
failed, 2 usage or input error, 3 the audit failed, 70 an internal error, 130 interrupted (141, a
broken pipe, in test_streams.py)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from cli_fixtures import (
    ARCH,
    EXIT_SECONDS,
    IN_FEATURES,
    MLP,
    STARTUP_SECONDS,
    assert_one_line_error,
    exported_mlp,
    mlp_inputs,
    read_json,
    run,
    saved_mlp,
)

from lipcheck.cli import ExitStatus


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MLP's weights (for the factories of cli_fixtures) and its inputs."""
    return saved_mlp(tmp_path_factory.mktemp("exit"))


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
        "BROKEN_PIPE": 141,
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
def test_out_of_memory_on_one_sample_fails_the_audit_with_advice(
    weights: dict[str, Path], error: str
) -> None:
    result = run(*audit(weights, "make_raising", "--arch-kwargs", json.dumps({"error": error}), "-b", "4"))
    assert result.exit_code == ExitStatus.AUDIT_FAILED and result.stdout == ""
    warning, failure = result.stderr.strip().splitlines()  # the back-off, said once, then the failure
    assert warning.startswith("lipcheck: warning: ran out of memory on a batch of 4 samples")
    assert failure.startswith("lipcheck: error: ") and "samples 0-0" in failure
    advice = ("out of memory on a single sample", "batches of 4 down to one", "smaller input", "--device")
    assert all(fragment in failure for fragment in advice), failure
    assert "rejected input" not in result.stderr and "Traceback" not in result.stderr


def test_a_model_bug_fails_the_audit_without_blaming_the_input(weights: dict[str, Path]) -> None:
    result = run(*audit(weights, "make_raising", "--arch-kwargs", '{"error": "bug"}'))
    assert_one_line_error(result, "the model raised KeyError: 'layer4'", code=ExitStatus.AUDIT_FAILED)
    assert "rejected input" not in result.stderr


def test_an_internal_error_shows_the_traceback_and_asks_for_a_report(
    weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug in lipcheck")

    monkeypatch.setattr("lipcheck.auditing.run.run", broken)
    result = run(*audit(weights, "make_mlp"))
    assert result.exit_code == ExitStatus.INTERNAL_ERROR
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug in lipcheck" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lipcheck: internal error, please report it") and "ZeroDivisionError" in last


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_exits_130(weights: dict[str, Path], tmp_path: Path) -> None:
    started = tmp_path / "started"  # the readiness signal: the model writes it at its first call
    command = audit(weights, "make_slow", "--arch-kwargs", json.dumps({"started": str(started)}))
    process = subprocess.Popen(
        [sys.executable, "-m", "lipcheck", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the model was never called"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=EXIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == ExitStatus.INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "lipcheck: interrupted" and stdout == ""


def test_a_model_that_exits_fails_the_audit_instead_of_passing_it(weights: dict[str, Path]) -> None:
    result = run(*audit(weights, "make_raising", "--arch-kwargs", '{"error": "exit"}', "--fail-above", "100"))
    assert_one_line_error(result, "the model raised SystemExit(0)", "cannot end the audit", code=3)


@pytest.mark.parametrize(
    ("code", "when"),
    [("raise SystemExit(0)", "at import"), ("def make():\n    raise SystemExit(0)", "in 'make'")],
)
def test_an_arch_file_that_exits_fails_the_audit(
    weights: dict[str, Path], tmp_path: Path, code: str, when: str
) -> None:
    script = tmp_path / "script.py"
    script.write_text(code + "\n")
    result = run("audit", weights["model"], "--arch", f"{script}:make", "--data", weights["data"])
    assert_one_line_error(result, "raised SystemExit(0)", when, "__main__", code=ExitStatus.AUDIT_FAILED)


def test_ctrl_c_inside_the_model_is_an_interruption(weights: dict[str, Path]) -> None:
    result = run(*audit(weights, "make_raising", "--arch-kwargs", '{"error": "interrupt"}'))
    assert result.exit_code == ExitStatus.INTERRUPTED
    assert result.stderr.strip() == "lipcheck: interrupted"


def test_what_the_model_raised_is_not_blamed_on_the_input(weights: dict[str, Path]) -> None:
    result = run(*audit(weights, "make_in_place"))
    assert_one_line_error(
        result,
        "the model raised RuntimeError: a leaf Variable",
        f"at {ARCH}:",
        "inputs of shape (4, 6)",
        code=3,
    )
    assert "rejected" not in result.stderr


def test_an_arg_that_clashes_with_the_input_names_arg(weights: dict[str, Path]) -> None:
    result = run(*audit(weights, "make_mlp", "--arg", "x=1"))
    assert_one_line_error(result, "--arg x=1", "multiple values for argument 'x'", code=2)


def test_an_exported_model_rejects_an_input_of_another_shape(tmp_path: Path) -> None:
    model, _ = exported_mlp(tmp_path)
    np.save(tmp_path / "wide.npy", np.zeros((3, IN_FEATURES + 1), np.float32))
    result = run("audit", model, "--data", tmp_path / "wide.npy")
    assert_one_line_error(
        result, "the input of shape (3, 7) does not fit", f"records input shape (B, {IN_FEATURES})"
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--random", "100000x100000x100000", "--num-samples", "1"], "--random 100000x100000x100000"),
        (["--random", "6", "--num-samples", "1", "--seed", str(2**64)], "--seed"),
    ],
)
def test_sizes_and_seeds_out_of_range_name_their_flag(
    weights: dict[str, Path], flags: list[str], named: str
) -> None:
    result = run("audit", weights["model"], "--arch", f"{ARCH}:make_mlp", *flags)
    assert_one_line_error(result, named)


def test_sparse_data_is_refused_by_name(weights: dict[str, Path], tmp_path: Path) -> None:
    torch.save({"x": torch.from_numpy(mlp_inputs(4)).to_sparse()}, tmp_path / "sparse.pt")
    result = run("audit", weights["model"], "--arch", f"{ARCH}:make_mlp", "--data", tmp_path / "sparse.pt")
    assert_one_line_error(result, "sparse.pt' holds a sparse_coo tensor", "to_dense()")


@pytest.mark.skipif(sys.platform != "linux", reason="file names that are not UTF-8 are a Linux matter")
def test_a_data_name_that_is_not_utf8_is_written_to_every_output(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    data = Path(os.fsdecode(bytes(tmp_path) + b"/bad\xffname.npy"))
    np.save(data, mlp_inputs(4))
    outputs = [tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.md"]
    result = run("audit", weights["model"], "--arch", f"{ARCH}:make_mlp", "--data", data,
                 *[f"-o{o}" for o in outputs])  # fmt: skip
    assert result.exit_code == ExitStatus.PASSED, result.stderr
    assert json.loads(outputs[0].read_text())["data"]["path"].endswith("bad\\xffname.npy")
    ElementTree.parse(outputs[1])
    assert "bad\\xffname.npy" in outputs[2].read_text()


def test_a_failed_write_after_the_gate_says_the_verdict_and_exits_2(
    weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lipcheck.io.outputs.write_output", full)
    result = run(*audit(weights, "make_mlp", "--fail-above", "0.001", "-o", tmp_path / "r.json"))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == ExitStatus.USAGE_OR_INPUT, result.stderr
    assert lines[0].startswith("lipcheck: gate failed:") and "No space left on device" in lines[1]


@pytest.mark.parametrize("how", ["detach", "no_grad", "integers"])
def test_an_output_autograd_cannot_connect_to_the_input_fails_the_audit(
    weights: dict[str, Path], how: str
) -> None:
    result = run(
        *audit(weights, "make_flat", "--arch-kwargs", json.dumps({"how": how}), "--fail-above", "0.01")
    )
    assert_one_line_error(
        result, "no autograd path to its input", "a sigma of 0 would claim that the model is constant", code=3
    )


@pytest.mark.parametrize("how", ["round", "floor", "sign"])
def test_a_jacobian_zero_at_every_sample_is_a_warning_and_a_note(
    weights: dict[str, Path], tmp_path: Path, how: str
) -> None:
    output = tmp_path / "r.json"
    flags = ("--arch-kwargs", json.dumps({"how": how}), "--fail-above", "0.01", "-o", output)
    result = run(*audit(weights, "make_flat", *flags))
    assert result.exit_code == ExitStatus.PASSED, result.stderr
    warning = "lipcheck: warning: the Jacobian is exactly zero at all 4 samples"
    assert result.stderr.startswith(warning) and "cannot see" in result.stderr
    report = read_json(output)
    assert report["summary"]["max"] == 0 and len(report["notes"]) == 1
    assert report["notes"][0] in result.stderr
    assert "notes" not in read_json_of(run(*audit(weights, "make_mlp", "-f", "json")))


def read_json_of(result: object) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(result.stdout)  # type: ignore[attr-defined]
    return loaded


WARNING_LINE = next(
    number
    for number, line in enumerate(ARCH.read_text().splitlines(), 1)
    if 'warnings.warn("this model warns"' in line
)


def test_a_warning_of_the_model_or_torch_is_one_line_and_none_with_quiet(weights: dict[str, Path]) -> None:
    shown = run(*audit(weights, "make_warning", "-f", "json"))
    assert shown.exit_code == ExitStatus.PASSED, shown.stderr
    assert shown.stderr.strip().splitlines() == [
        f"lipcheck: warning: UserWarning at {ARCH}:{WARNING_LINE}: this model warns"
    ]
    quiet = run(*audit(weights, "make_warning", "-f", "json", "-q"))
    assert quiet.exit_code == ExitStatus.PASSED and quiet.stderr == ""


def test_a_batch_beyond_the_exported_range_is_an_input_error(tmp_path: Path) -> None:
    program = torch.export.export(
        MLP(), (torch.zeros(4, IN_FEATURES),), dynamic_shapes=({0: torch.export.Dim("batch", max=8)},)
    )
    torch.export.save(program, tmp_path / "max8.pt2")
    np.save(tmp_path / "x.npy", mlp_inputs(12))
    result = run("audit", tmp_path / "max8.pt2", "--data", tmp_path / "x.npy", "-b", "12")
    assert_one_line_error(result, "(12, 6) is out of the range the model was exported for", "<= 8")
    assert (
        run("audit", tmp_path / "max8.pt2", "--data", tmp_path / "x.npy", "-b", "8", "-f", "json").exit_code
        == 0
    )


class _Exits:
    """Pickles into a call of sys.exit(0): a trusted pickle that ends the process while loading."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (sys.exit, (0,))


def test_a_trusted_pickle_that_exits_while_loading_fails_the_audit(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    torch.save(_Exits(), tmp_path / "exits.pt")
    result = run(
        "audit", tmp_path / "exits.pt", "--trust-pickle", "--data", weights["data"], "--fail-above", "100"
    )
    assert_one_line_error(
        result, "exits.pt' raised SystemExit(0) while loading", code=ExitStatus.AUDIT_FAILED
    )


@pytest.mark.parametrize("command", ["bound", "audit --bound"])
def test_a_model_that_exits_while_torch_export_traces_it_fails(
    weights: dict[str, Path], command: str
) -> None:
    model = [weights["model"], "--arch", f"{ARCH}:make_raising", "--arch-kwargs", '{"error": "exit"}']
    where = (
        ["--input-shape", str(IN_FEATURES)] if command == "bound" else ["--data", weights["data"], "--bound"]
    )
    result = run(command.split()[0], *model, *where)
    assert_one_line_error(result, "model code raised SystemExit(0)", "cannot end lipcheck", code=3)
