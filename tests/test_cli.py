"""`lipcheck audit` and `lipcheck inspect` end to end: every model format and data kind against exact
dense Jacobians, the output formats and exit codes, and one test per bad-input case."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from cli_fixtures import (
    ARCH,
    MLP,
    SmallConv,
    assert_one_line_error,
    audit_json,
    export,
    mlp_inputs,
    reference,
    run,
    sigmas,
)
from safetensors.numpy import save_file as save_numpy_safetensors
from safetensors.torch import save_file

from lipcheck.datasets import random_dataset
from lipcheck.report import report_schema

EXACT = ("--dtype", "float64", "--tol", "1e-7", "--batch-size", "4")


class PickledMLP(MLP):
    """A module class that exists only here, so its pickle needs this file's code."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same MLP in every model format, and its inputs as a .npy file."""
    folder = tmp_path_factory.mktemp("models")
    model = MLP().eval()
    x = torch.from_numpy(mlp_inputs())
    paths = {
        "export": export(model, folder / "mlp.pt2", x[:2]),
        "torchscript": folder / "mlp.ts",
        "safetensors": folder / "mlp.safetensors",
        "state-dict": folder / "mlp.pt",
        "nested-state-dict": folder / "checkpoint.pth",
        "pickle": folder / "whole.pt",
        "data": folder / "inputs.npy",
    }
    torch.jit.save(torch.jit.script(model), paths["torchscript"])
    save_file(model.state_dict(), paths["safetensors"])
    torch.save(model.state_dict(), paths["state-dict"])
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, paths["nested-state-dict"])
    torch.save(PickledMLP().eval(), paths["pickle"])
    np.save(paths["data"], mlp_inputs())
    return paths


MODEL_FORMATS = {
    "export": ("torch.export", []),
    "torchscript": ("torchscript", []),
    "safetensors": ("safetensors", ["--arch", f"{ARCH}:make_mlp"]),
    "state-dict": ("state-dict", ["--arch", f"{ARCH}:make_mlp", "--arch-kwargs", '{"hidden": 8}']),
    "nested-state-dict": ("state-dict", ["--arch", f"{ARCH}:make_mlp"]),
    "pickle": ("pickle", ["--trust-pickle"]),
}


@pytest.mark.parametrize("name", list(MODEL_FORMATS))
def test_every_model_format_matches_dense_jacobians(files: dict[str, Path], name: str) -> None:
    expected_format, extra = MODEL_FORMATS[name]
    report = audit_json(files[name], "--data", files["data"], *extra, *EXACT)
    assert report["model"]["format"] == expected_format
    assert report["model"]["trusted"] == (name == "pickle")
    np.testing.assert_allclose(sigmas(report), reference(MLP(), mlp_inputs()), rtol=1e-4)
    assert [row["index"] for row in report["samples"]] == list(range(10))
    assert all(row["converged"] for row in report["samples"])


def _images(folder: Path, count: int = 5) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image")

    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (count, 5, 4, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, "RGB").save(folder / f"img_{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    return pixels.transpose(0, 3, 1, 2).astype(np.float64) / 255


def test_every_data_kind_matches_dense_jacobians(files: dict[str, Path], tmp_path: Path) -> None:
    x = mlp_inputs()
    expected = reference(MLP(), x)
    np.savez(tmp_path / "d.npz", inputs=x, labels=np.arange(10))
    torch.save(torch.from_numpy(x), tmp_path / "tensor.pt")
    torch.save({"inputs": torch.from_numpy(x), "labels": torch.arange(10)}, tmp_path / "dict.pt")
    save_numpy_safetensors({"inputs": x}, str(tmp_path / "d.safetensors"))
    cases = [
        ("npy", [files["data"]]),
        ("npz", [tmp_path / "d.npz", "--data-key", "inputs"]),
        ("pt", [tmp_path / "tensor.pt"]),
        ("pt", [tmp_path / "dict.pt", "--data-key", "inputs"]),
        ("safetensors", [tmp_path / "d.safetensors"]),
    ]
    for kind, data in cases:
        report = audit_json(files["export"], "--data", *data, *EXACT)
        assert report["data"]["kind"] == kind
        assert report["data"]["count"] == 10
        np.testing.assert_allclose(sigmas(report), expected, rtol=1e-4, err_msg=kind)


def test_image_folder_matches_dense_jacobians(tmp_path: Path) -> None:
    pixels = _images(tmp_path / "images")
    save_file(SmallConv().state_dict(), tmp_path / "conv.safetensors")
    report = audit_json(
        tmp_path / "conv.safetensors", "--arch", f"{ARCH}:make_conv", "--data", tmp_path / "images", *EXACT
    )
    assert report["data"]["kind"] == "images"
    assert report["data"]["sample_shape"] == [3, 5, 4]
    np.testing.assert_allclose(sigmas(report), reference(SmallConv(), pixels), rtol=1e-4)


def test_random_data_is_seeded_and_matches_dense_jacobians(files: dict[str, Path]) -> None:
    args = (files["export"], "--random", str(6), "--num-samples", "7", "--seed", "3", *EXACT)
    report = audit_json(*args)
    samples = random_dataset((6,), 7, seed=3).read(0, 7, torch.float64)
    np.testing.assert_allclose(sigmas(report), reference(MLP(), samples), rtol=1e-4)
    assert report["data"] == {
        "path": None, "kind": "random", "key": None, "count": 7, "total": 7,
        "sample_shape": [6], "dtype": "float64", "seed": 3,
        "sha256": hashlib.sha256(samples.numpy().tobytes()).hexdigest(),
    }  # fmt: skip
    assert sigmas(audit_json(*args)).tolist() == sigmas(report).tolist()
    assert sigmas(audit_json(*args[:-6], "--seed", "4", *EXACT)).tolist() != sigmas(report).tolist()


def test_model_args_and_output_keys(files: dict[str, Path]) -> None:
    expected = reference(MLP(), mlp_inputs())
    for arch, key in ((f"{ARCH}:make_multi", "twice"), (f"{ARCH}:make_multi", "1")):
        kwargs = '{"as_tuple": true}' if key == "1" else "{}"
        report = audit_json(
            files["state-dict"], "--arch", arch, "--arch-kwargs", kwargs, "--data", files["data"],
            "--output-key", key, "--arg", "scale=1.5", *EXACT,
        )  # fmt: skip
        np.testing.assert_allclose(sigmas(report), 3 * expected, rtol=1e-4)
        assert report["settings"]["model_kwargs"] == {"scale": 1.5}
        assert report["settings"]["output_key"] == key


def test_model_is_in_eval_mode_and_called_once_per_batch(files: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    audit_json(
        files["state-dict"], "--arch", f"{ARCH}:make_counting",
        "--arch-kwargs", json.dumps({"log": str(log)}), "--data", files["data"], "--batch-size", "4",
    )  # fmt: skip
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [{"batch": 4, "training": False}] * 2 + [{"batch": 2, "training": False}]


def test_summary_limit_and_reductions(files: dict[str, Path]) -> None:
    expected = reference(MLP(), mlp_inputs())[:6]
    reductions = {
        "max": expected.max(), "mean": expected.mean(), "sum": expected.sum(),
        "median": np.median(expected), "p95": np.percentile(expected, 95),
    }  # fmt: skip
    for reduction, value in reductions.items():
        report = audit_json(
            files["export"], "--data", files["data"], "--limit", "6", "--reduction", reduction, *EXACT
        )
        summary = report["summary"]
        assert summary["reduction"] == reduction
        assert summary["value"] == pytest.approx(value, rel=1e-4)
    assert report["data"]["count"] == 6 and report["data"]["total"] == 10
    assert summary["count"] == 6 and summary["converged"] == 6
    assert summary["argmax"] == int(np.argmax(expected))
    assert summary["max"] == pytest.approx(expected.max(), rel=1e-4)
    assert summary["min"] == pytest.approx(expected.min(), rel=1e-4)
    assert report["gate"] == {"passed": None, "rules": []}


def test_power_method_and_float32_default(files: dict[str, Path]) -> None:
    report = audit_json(files["export"], "--data", files["data"], "--method", "power", "--max-iter", "500")
    assert report["settings"]["method"] == "power" and report["settings"]["dtype"] == "float32"
    np.testing.assert_allclose(sigmas(report), reference(MLP(), mlp_inputs()), rtol=1e-2)


def test_fail_above_gate(files: dict[str, Path], tmp_path: Path) -> None:
    worst = reference(MLP(), mlp_inputs()).max()
    passed = audit_json(files["export"], "--data", files["data"], "--fail-above", worst * 1.01)
    assert passed["gate"]["passed"] is True
    assert passed["gate"]["rules"][0]["name"] == "fail_above"

    result = run(
        "audit",
        files["export"],
        "--data",
        files["data"],
        "--fail-above",
        worst * 0.99,
        "-o",
        tmp_path / "r.json",
    )
    assert result.exit_code == 1
    assert "gate failed" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, report_schema())
    verdict = report["gate"]["rules"][0]
    assert report["gate"]["passed"] is False and verdict["passed"] is False
    assert (
        verdict["threshold"] == pytest.approx(worst * 0.99) and verdict["value"] == report["summary"]["value"]
    )


def test_output_file_is_written_whole_and_only_there(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = run("audit", files["export"], "--data", files["data"], "--output", target, "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    jsonschema.validate(json.loads(target.read_text()), report_schema())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_table_and_markdown_formats(files: dict[str, Path]) -> None:
    table = run("audit", files["export"], "--data", files["data"], "--format", "table")
    assert table.exit_code == 0
    for heading in ("model", "data", "settings", "Worst 10 of 10 samples", "Summary", "samples/s", "p95"):
        assert heading in table.stdout
    assert table.stderr == ""  # no progress bar when stderr is not a terminal
    markdown = run(
        "audit", files["export"], "--data", files["data"], "--format", "markdown", "--fail-above", "100"
    )
    assert markdown.exit_code == 0
    assert "| summary | value |" in markdown.stdout and "**Gate: passed**" in markdown.stdout


def test_json_is_the_default_when_stdout_is_not_a_terminal(files: dict[str, Path]) -> None:
    result = run("audit", files["export"], "--data", files["data"])
    assert json.loads(result.stdout)["schema_version"] == 1


def test_inspect(files: dict[str, Path]) -> None:
    result = run("inspect", files["export"])
    assert result.exit_code == 0
    assert "torch.export" in result.stdout and "x (1..65536, 6) float32" in result.stdout
    described = json.loads(
        run("inspect", files["safetensors"], "--arch", f"{ARCH}:make_mlp", "--json").stdout
    )
    assert described["format"] == "safetensors"
    assert described["parameters"] == sum(p.numel() for p in MLP().parameters())
    assert described["trusted"] is False


def test_help_shows_examples() -> None:
    for command in ("audit", "bound", "inspect", "gate", "compare"):
        result = run(command, "--help")
        assert (
            result.exit_code == 0 and "Examples" in result.stdout and f"lipcheck {command}" in result.stdout
        )


def test_python_dash_m_runs_an_audit(files: dict[str, Path]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lipcheck", "audit", str(files["export"]), "--data", str(files["data"]),
         "--limit", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["summary"]["count"] == 2


# Bad input: exit 2, one line naming the file or flag, no traceback.


def test_missing_files(files: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        run("audit", tmp_path / "nope.pt2", "--data", files["data"]), "nope.pt2", "does not exist"
    )
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "nope.npy"), "nope.npy", "--data"
    )


def test_truncated_corrupt_and_unknown_model_files(files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("export", "state-dict", "safetensors"):
        truncated = tmp_path / f"truncated_{files[name].name}"
        truncated.write_bytes(files[name].read_bytes()[: files[name].stat().st_size // 2])
        result = run("audit", truncated, "--data", files["data"], "--arch", f"{ARCH}:make_mlp")
        assert_one_line_error(result, truncated.name)
        assert "truncated" in result.stderr or "corrupt" in result.stderr
    unknown = tmp_path / "model.onnx"
    unknown.write_bytes(b"\x08\x07some protobuf bytes")
    assert_one_line_error(run("audit", unknown, "--data", files["data"]), "model.onnx", "not a format")
    empty = tmp_path / "empty.pt"
    empty.touch()
    assert_one_line_error(run("audit", empty, "--data", files["data"]), "empty.pt", "empty")


def test_weights_without_arch_or_with_a_bad_factory(files: dict[str, Path], tmp_path: Path) -> None:
    weights = files["safetensors"]
    assert_one_line_error(run("audit", weights, "--data", files["data"]), "mlp.safetensors", "--arch")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    assert_one_line_error(
        run("audit", weights, "--arch", f"{broken}:make", "--data", files["data"]), "--arch", "broken.py"
    )
    result = run("audit", weights, "--arch", "no_such_package.nets:make", "--data", files["data"])
    assert_one_line_error(result, "--arch", "cannot be imported")
    assert_one_line_error(
        run("audit", weights, "--arch", f"{ARCH}:nothing", "--data", files["data"]), "'nothing'"
    )
    result = run(
        "audit", weights, "--arch", f"{ARCH}:make_mlp", "--arch-kwargs", "{bad", "--data", files["data"]
    )
    assert_one_line_error(result, "--arch-kwargs")


def test_weights_that_do_not_fit_name_the_keys(files: dict[str, Path]) -> None:
    result = run("audit", files["safetensors"], "--arch", f"{ARCH}:make_conv", "--data", files["data"])
    assert_one_line_error(
        result, "mlp.safetensors", "missing keys", "'conv1.weight'", "unexpected keys", "'first.weight'"
    )
    result = run(
        "audit",
        files["state-dict"],
        "--arch",
        f"{ARCH}:make_mlp",
        "--arch-kwargs",
        '{"hidden": 5}',
        "--data",
        files["data"],
    )
    assert_one_line_error(result, "mlp.pt", "shapes", "first.weight")


def test_a_pickle_that_needs_code_is_refused_and_not_run(files: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self) -> tuple:
            return (pathlib.Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"weight": Payload()}, evil)
    assert_one_line_error(run("audit", evil, "--data", files["data"]), "evil.pt", "--trust-pickle")
    assert_one_line_error(run("inspect", evil), "evil.pt", "--trust-pickle")
    assert_one_line_error(
        run("audit", files["pickle"], "--data", files["data"]), "whole.pt", "--trust-pickle"
    )
    assert not marker.exists()


def test_bad_data(files: dict[str, Path], tmp_path: Path) -> None:
    x = mlp_inputs()
    x[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "nan.npy"), "nan.npy", "sample 7"
    )
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "empty.npy"), "empty.npy", "empty"
    )
    np.savez(tmp_path / "two.npz", images=x, labels=np.arange(10))
    result = run("audit", files["export"], "--data", tmp_path / "two.npz")
    assert_one_line_error(result, "two.npz", "'images'", "'labels'", "--data-key")
    result = run("audit", files["export"], "--data", tmp_path / "two.npz", "--data-key", "nope")
    assert_one_line_error(result, "two.npz", "'nope'")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "data.csv"), "data.csv", "not a data format"
    )
    (tmp_path / "no_images").mkdir()
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "no_images"), "no_images", "empty"
    )


def test_data_of_the_wrong_shape_says_found_and_expected(files: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.ones((3, 9), np.float32))
    result = run("audit", files["export"], "--data", tmp_path / "wide.npy")
    assert_one_line_error(result, "wide.npy", "(3, 9)", "(B, 6)")
    result = run("audit", files["torchscript"], "--data", tmp_path / "wide.npy")
    assert_one_line_error(result, "wide.npy", "(3, 9)")


def test_a_model_that_does_not_return_a_tensor(files: dict[str, Path]) -> None:
    args = ("--data", files["data"])
    result = run("audit", files["state-dict"], "--arch", f"{ARCH}:make_multi", *args)
    assert_one_line_error(result, "'out'", "'twice'", "--output-key")
    result = run("audit", files["state-dict"], "--arch", f"{ARCH}:make_multi", *args, "--output-key", "nope")
    assert_one_line_error(result, "--output-key", "'nope'")
    weightless = files["state-dict"].parent / "weightless.safetensors"
    save_file({}, weightless)
    result = run("audit", weightless, "--arch", f"{ARCH}:make_string", *args)
    assert_one_line_error(result, "weightless.safetensors", "returned str", "expected a tensor")


def test_a_tuple_output_needs_an_output_key(files: dict[str, Path], tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    torch.jit.save(torch.jit.script(Pair()), tmp_path / "pair.ts")
    assert_one_line_error(
        run("audit", tmp_path / "pair.ts", "--data", files["data"]), "pair.ts", "--output-key 0..1"
    )


def test_usage_errors(files: dict[str, Path]) -> None:
    assert_one_line_error(run("audit", files["export"]), "--data", "--random")
    assert_one_line_error(run("audit", files["export"], "--random", "6"), "--num-samples")
    assert_one_line_error(run("audit", files["export"], "--random", "6x", "--num-samples", "2"), "--random")
    assert_one_line_error(run("audit", files["export"], "--data", files["data"], "--arg", "oops"), "--arg")
    assert_one_line_error(run("audit", files["export"], "--data", files["data"], "--tol", "2"), "--tol")
    assert_one_line_error(
        run("audit", files["export"], "--data", files["data"], "--arch", "x.py:f"), "drop --arch"
    )
    # A setting out of range is named before the baseline is read and compared with the settings.
    missing = files["data"].parent / "no-baseline.json"
    ranged = run(
        "audit",
        files["export"],
        "--data",
        files["data"],
        "--tol",
        "2",
        "--baseline",
        missing,
        "--max-increase",
        "5",
    )
    assert_one_line_error(ranged, "--tol must be in (0, 1)")


def test_usage_errors_are_one_line_naming_the_flag(files: dict[str, Path]) -> None:
    bad_choice = run("audit", files["export"], "--data", files["data"], "--method", "newton")
    assert_one_line_error(bad_choice, "--method", "newton", "lanczos", "--help")
    assert_one_line_error(run("audit", files["export"], "--bogus"), "--bogus")
    assert_one_line_error(run("audit"), "MODEL")
    assert_one_line_error(run("audit", files["export"], "--data", files["data"], "--tol", "x"), "--tol")
    assert_one_line_error(run("nosuch"), "nosuch")
    assert run("audit", "--help").exit_code == 0


def test_images_without_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "img_00.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    result = run("audit", files["export"], "--data", tmp_path / "images")
    assert_one_line_error(result, "images", 'pip install "lipcheck[images]"')


def test_debug_shows_the_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    result = run("audit", tmp_path / "nope.pt2", "--data", files["data"], "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "lipcheck: error:" in result.stderr


# The audit itself fails: exit 3.


def test_nan_output_fails_the_audit(files: dict[str, Path], tmp_path: Path) -> None:
    x = np.abs(mlp_inputs()) + 0.1
    x[5, 0] = -1
    np.save(tmp_path / "signed.npy", x)
    save_file({}, tmp_path / "none.safetensors")
    result = run(
        "audit",
        tmp_path / "none.safetensors",
        "--arch",
        f"{ARCH}:make_sqrt",
        "--data",
        tmp_path / "signed.npy",
    )
    assert_one_line_error(result, "sample 5", "NaN", code=3)


def test_no_sample_converged_fails_the_audit(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    result = run(
        "audit",
        files["export"],
        "--data",
        files["data"],
        "--max-iter",
        "1",
        "--tol",
        "1e-9",
        "-o",
        target,
        "-q",
    )
    assert_one_line_error(result, "--max-iter", code=3)
    report = json.loads(target.read_text())  # the unconverged figures are still on disk, complete
    assert report["summary"]["converged"] == 0
