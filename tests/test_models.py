"""Model loading: formats detected from content, provenance, and no code run without trust."""

from __future__ import annotations

import hashlib
import pathlib
from pathlib import Path

import pytest
import torch
from cli_fixtures import ARCH, MLP, export, mlp_inputs
from safetensors.torch import save_file

from lipcheck.errors import InputError
from lipcheck.models import detect_format, load_model


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
