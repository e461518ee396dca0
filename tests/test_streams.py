"""The standard streams: stdout carries only the report (model prints, from Python or TorchScript's C++,
go to stderr), a broken pipe ends quietly with 141, a closed or full stdout is exit 2, an encoding that
cannot show a character degrades to escapes; and two outputs of one command cannot be the same file.

Each case runs `python -m lipcheck` in a process of its own, since they are about its descriptors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_fixtures import EXIT_SECONDS, IN_FEATURES, assert_one_line_error, exported_mlp, mlp_inputs, run
from safetensors.torch import save_file
from torch import Tensor, nn

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors and /dev/full")

BROKEN_PIPE = 141


class Chatty(nn.Module):
    """Prints at every call: from TorchScript, the print is C++'s."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(IN_FEATURES, 3)

    def forward(self, x: Tensor) -> Tensor:
        print("chatty model output")
        return self.linear(x)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("streams")
    model, data = exported_mlp(folder)
    chatty = folder / "chatty.ts"
    torch.jit.save(torch.jit.script(Chatty()), chatty)
    np.save(folder / "six.npy", mlp_inputs(6))
    arch = folder / "chatty_arch.py"  # the same model as Python code, for --arch
    arch.write_text(
        "import sys\nfrom torch import nn\n\n\nclass Chatty(nn.Linear):\n    def forward(self, x):\n"
        "        print('chatty python print')\n        sys.stdout.write('and a write\\n')\n"
        "        return super().forward(x)\n\n\ndef make():\n    print('chatty factory')\n"
        f"    return Chatty({IN_FEATURES}, 3)\n"
    )
    save_file(nn.Linear(IN_FEATURES, 3).state_dict(), folder / "chatty.safetensors")
    return {"model": model, "data": data, "chatty": chatty, "six": folder / "six.npy", "arch": arch,
            "weights": folder / "chatty.safetensors"}  # fmt: skip


def lipcheck(*args: Any, **options: Any) -> subprocess.CompletedProcess[str]:
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **options.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "lipcheck", *map(str, args)], text=True, timeout=EXIT_SECONDS, env=environment,
        **options,
    )  # fmt: skip


def audit(files: dict[str, Path], *flags: str) -> list[Any]:
    return ["audit", files["model"], "--data", files["data"], *flags]


def test_model_prints_go_to_stderr_and_stdout_is_the_report(files: dict[str, Path]) -> None:
    done = lipcheck("audit", files["chatty"], "--data", files["six"], "-f", "json", "--fail-above", "100")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["count"] == 6  # `| jq` reads it
    assert "chatty model output" in done.stderr  # TorchScript's print, written by C++
    arch = f"{files['arch']}:make"
    done = lipcheck("audit", files["weights"], "--arch", arch, "--data", files["six"], "-f", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["count"] == 6
    assert all(said in done.stderr for said in ("chatty factory", "chatty python print", "and a write"))
    done = lipcheck("bound", files["weights"], "--arch", arch, "--input-shape", "6", "-f", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["upper_bound"] > 0 and "chatty factory" in done.stderr


@pytest.mark.parametrize("command", [["--help"], ["audit", "--help"], "audit json", "audit table"])
def test_a_broken_pipe_ends_quietly_with_141(files: dict[str, Path], command: Any) -> None:
    if command == "audit json":
        command = audit(files, "-f", "json", "--fail-above", "0.001")
    elif command == "audit table":
        command = audit(files, "-f", "table")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before lipcheck writes: `| head -c 0`, deterministically
    try:
        done = lipcheck(*command, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == BROKEN_PIPE, done.stderr
    assert done.stderr == ""  # nothing blamed on the model, no traceback


def test_a_closed_stdout_is_exit_2_before_any_work(files: dict[str, Path], tmp_path: Path) -> None:
    done = lipcheck(*audit(files), stdout=None, preexec_fn=lambda: os.close(1))
    assert done.returncode == 2, done.stderr
    assert "stdout is closed" in done.stderr and "--output" in done.stderr and "Traceback" not in done.stderr
    report = tmp_path / "r.json"  # a report written to a file needs no stdout
    done = lipcheck(*audit(files, "-o", str(report), "-q"), stdout=None, preexec_fn=lambda: os.close(1))
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["summary"]["count"] == 10


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("command", ["audit json", "audit table", ["--help"]])
def test_a_full_stdout_is_exit_2(files: dict[str, Path], command: Any) -> None:
    if command == "audit json":
        command = audit(files, "-f", "json")
    elif command == "audit table":
        command = audit(files, "-f", "table")
    with open("/dev/full", "w") as full:
        done = lipcheck(*command, stdout=full)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("lipcheck: error: ") and "No space left" in lines[0]


def test_an_ascii_terminal_gets_escapes_instead_of_a_traceback(files: dict[str, Path]) -> None:
    done = lipcheck(*audit(files, "-f", "table", "--fail-above", "0.001"), env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 1, done.stderr
    assert "FAILED" in done.stdout and "Traceback" not in done.stderr
    done.stdout.encode("ascii")


def test_two_outputs_that_are_one_file_are_refused_before_any_work(
    files: dict[str, Path], tmp_path: Path
) -> None:
    same = tmp_path / "same.safetensors"
    result = run(*audit(files, "-o", same, "--save-directions", same))
    assert_one_line_error(result, "--save-directions", "--output", "same file")
    result = run(*audit(files, "-o", tmp_path / "r.json", "-o", tmp_path / "." / "r.json"))
    assert_one_line_error(result, "--output", "same file")
    (tmp_path / "link.json").symlink_to(tmp_path / "r.md")
    result = run(*audit(files, "-o", tmp_path / "r.md", "-o", tmp_path / "link.json"))
    assert_one_line_error(result, "--output", "same file")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.json"]  # nothing was written
    assert run(*audit(files, "-o", "/dev/null", "-o", "/dev/null", "-q")).exit_code == 0  # streamed into
