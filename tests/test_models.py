"""Model loading: formats detected from content, provenance, no code run without trust; and through
`lipcheck audit`, every format against dense Jacobians and each bad model file named."""

from __future__ import annotations

import hashlib
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import (
    ARCH,
    EXACT,
    MLP,
    assert_one_line_error,
    audit_json,
    export,
    mlp_inputs,
    reference,
    run,
    sigmas,
)
from safetensors.torch import save_file

from lipcheck.errors import InputError
from lipcheck.io.models import detect_format, load_model


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    model = MLP().eval()
    paths = {
        "torch.export": export(model, folder / "a.bin", torch.from_numpy(mlp_inputs(2))),
        "torchscript": folder / "b.bin",
        "safetensors": folder / "c.bin",
        "pickle": folder / "d.bin",
    }
    torch.jit.save(torch.jit.script(model), paths["torchscript"])
    save_file(model.state_dict(), paths["safetensors"])
    torch.save(model.state_dict(), paths["pickle"])
    return paths


@pytest.mark.parametrize("name", ["torch.export", "torchscript", "safetensors", "pickle"])
def test_format_is_detected_from_content_not_suffix(model_files: dict[str, Path], name: str) -> None:
    assert detect_format(model_files[name]).name == name


def test_provenance_and_eval_mode(model_files: dict[str, Path]) -> None:
    path = model_files["pickle"]
    loaded = load_model(path, arch=f"{ARCH}:make_mlp")
    assert loaded.format == "state-dict"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.size_bytes == path.stat().st_size
    assert loaded.parameters == sum(p.numel() for p in MLP().parameters())
    assert loaded.trusted is False and loaded.arch == f"{ARCH}:make_mlp"
    assert isinstance(loaded.module, torch.nn.Module) and not loaded.module.training


def test_export_records_its_input_spec(model_files: dict[str, Path]) -> None:
    (spec,) = load_model(model_files["torch.export"]).input_spec
    assert spec.name == "x" and spec.shape == ("1..65536", 6) and spec.dtype == "float32"


def test_package_module_factories(model_files: dict[str, Path]) -> None:
    loaded = load_model(model_files["safetensors"], arch="cli_fixtures:make_mlp")
    assert loaded.format == "safetensors"


def test_pickled_code_runs_only_with_trust(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (pathlib.Path.touch, (marker,))

    torch.save(Payload(), tmp_path / "payload.pt")
    with pytest.raises(InputError, match=r"needs code to load.*--trust-pickle"):
        load_model(tmp_path / "payload.pt")
    assert not marker.exists()
    with pytest.raises(InputError):  # trusted: it runs, and what it returns is not a model
        load_model(tmp_path / "payload.pt", trust_pickle=True)
    assert marker.exists()


# Through the command line: every format against dense Jacobians, and each bad model file named.


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
