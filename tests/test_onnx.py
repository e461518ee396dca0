"""ONNX files: converted with onnx2torch, audited like the torch model they were exported from.

Every model is exported with torch.onnx.export and audited both ways; the sigmas agree to 1e-5. The
tests skip without onnx and onnx2torch (the extra lipcheck[onnx]); the file sniffing and the missing
extra's message need neither.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import assert_one_line_error, run
from torch import nn

import lipcheck
from lipcheck.errors import InputError
from lipcheck.io.models import detect_format, load_model
from lipcheck.io.onnx import is_onnx
from lipcheck.report import report_schema
from lipcheck.report.json_schema import first_problem


def _onnx_stack() -> None:
    """Skip unless onnx and onnx2torch are installed (lipcheck imports onnx2torch itself, without
    torchvision where there is none that works with this torch)."""
    for name in ("onnx", "onnx2torch"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.tanh(self.conv1(x))))


def _sigma(report: lipcheck.Report) -> list[float]:
    return [row.sigma for row in report.samples]


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)), (3, 4)),
        "conv": (
            nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1),
                nn.ReLU(),
                nn.ZeroPad2d((1, 0, 2, 1)),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(4, 2, 3, padding=1, padding_mode="zeros"),
                nn.Softplus(),
            ),
            (2, 5, 5),
        ),
        "residual": (Residual(), (3, 6, 6)),
    }


def _export(model: nn.Module, shape: tuple[int, ...], path: Path, *, opset: int | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.randn(2, *shape),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            **({"opset_version": opset} if opset is not None else {}),
        )
    return path


@pytest.mark.parametrize("name", ["mlp", "conv", "residual"])
def test_sigma_of_an_onnx_file_equals_its_torch_model(tmp_path: Path, name: str) -> None:
    _onnx_stack()
    model, shape = _models()[name]
    path = _export(model, shape, tmp_path / f"{name}.onnx")
    data = torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    settings = {"batch_size": 3, "dtype": "float64", "tol": 1e-10, "seed": 0}  # 3 batches: a dynamic batch
    from_onnx = lipcheck.audit(path, data, **settings)
    from_torch = lipcheck.audit(model, data, **settings)
    assert from_onnx.model.format == "onnx"
    assert first_problem(from_onnx.to_dict(), report_schema()) is None
    np.testing.assert_allclose(_sigma(from_onnx), _sigma(from_torch), rtol=1e-5, atol=1e-7)
    # and against the dense Jacobian of the torch model, in float64
    reference = model.double()
    dense = [
        torch.linalg.matrix_norm(
            torch.func.jacrev(lambda v: reference(v[None]).reshape(-1))(x.double()).reshape(-1, x.numel()),
            ord=2,
        ).item()
        for x in data
    ]
    np.testing.assert_allclose(_sigma(from_onnx), dense, rtol=1e-5)


def test_the_file_is_sniffed_by_content_and_inspect_shows_its_graph(tmp_path: Path) -> None:
    _onnx_stack()
    model, shape = _models()["mlp"]
    path = _export(model, shape, tmp_path / "model.bin")  # no .onnx suffix: the content says it
    assert detect_format(path).name == "onnx"
    loaded = load_model(path)
    assert loaded.format == "onnx"
    assert [(spec.name, spec.shape) for spec in loaded.input_spec] == [("x", ("batch", 3, 4))]
    assert loaded.graph["outputs"] == [{"name": "y", "shape": ["batch", 5], "dtype": "float32"}]
    assert loaded.graph["operators"] == len(__import__("onnx").load(str(path)).graph.node)
    assert loaded.graph["opset"] >= 9
    shown = run("inspect", path)
    assert shown.exit_code == 0, shown.stderr
    assert "outputs:      y (batch, 5) float32" in shown.stdout
    assert f"operators:    {loaded.graph['operators']}" in shown.stdout
    assert "opset:" in shown.stdout and "format:       onnx" in shown.stdout


def test_a_newer_opset_is_brought_down_exactly_and_the_report_says_so(tmp_path: Path) -> None:
    _onnx_stack()
    model, shape = _models()["conv"]
    path = _export(model, shape, tmp_path / "conv.onnx", opset=19)  # Constant-19 has no converter
    loaded = load_model(path)
    assert loaded.graph["opset"] == 19
    assert loaded.graph["converted_opset"] < 19
    assert any("brought down to" in note and "exact" in note for note in loaded.notes)
    data = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    settings = {"dtype": "float64", "tol": 1e-10, "seed": 0}
    np.testing.assert_allclose(
        _sigma(lipcheck.audit(path, data, **settings)),
        _sigma(lipcheck.audit(model, data, **settings)),
        rtol=1e-5,
    )


def _graph_with(onnx: object, op: str, tmp_path: Path, **attributes: object) -> Path:
    helper, proto = onnx.helper, onnx.TensorProto  # type: ignore[attr-defined]
    node = helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}", **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", proto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", proto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))  # type: ignore[attr-defined]
    return path


@pytest.mark.parametrize(
    ("op", "says"), [("Cosh", "onnx2torch cannot convert"), ("Round", "has no gradient")]
)
def test_an_unconvertible_or_gradient_free_operator_is_refused_by_name(
    tmp_path: Path, op: str, says: str
) -> None:
    _onnx_stack()
    onnx = importlib.import_module("onnx")
    path = _graph_with(onnx, op, tmp_path)
    with pytest.raises(InputError, match=f"'{op}' \\(node 'my_{op.lower()}'\\).*{says}"):
        load_model(path)
    assert_one_line_error(
        run("audit", path, "--random", "4", "--num-samples", "2"), f"'{op}'", f"my_{op.lower()}"
    )


def test_a_disagreement_with_onnxruntime_is_refused(tmp_path: Path) -> None:
    _onnx_stack()
    pytest.importorskip("onnxruntime")
    model, shape = _models()["mlp"]
    loaded = load_model(_export(model, shape, tmp_path / "m.onnx"))
    assert any("onnxruntime" in note for note in loaded.notes)
    with torch.no_grad():  # the converted weights drift from the file's: the check must catch it
        next(loaded.module.parameters()).add_(0.1)
    with pytest.raises(InputError, match="disagrees with onnxruntime"):
        loaded.module(torch.randn(2, *shape))


def test_external_data_is_read_from_beside_the_model_only(tmp_path: Path) -> None:
    _onnx_stack()
    onnx = importlib.import_module("onnx")
    model, shape = _models()["mlp"]
    path = _export(model, shape, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    onnx.save(
        proto,
        str(tmp_path / "big.onnx"),
        save_as_external_data=True,
        location="big.weights",
        size_threshold=0,
    )
    data = torch.randn(3, *shape)
    settings = {"dtype": "float64", "seed": 0}
    np.testing.assert_allclose(
        _sigma(lipcheck.audit(tmp_path / "big.onnx", data, **settings)),
        _sigma(lipcheck.audit(model, data, **settings)),
        rtol=1e-5,
    )
    for tensor in proto.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "../outside.bin"
    escaping = tmp_path / "sub" / "escaping.onnx"
    escaping.parent.mkdir()
    escaping.write_bytes(proto.SerializeToString())
    with pytest.raises(InputError, match="outside the model's folder"):
        load_model(escaping)


def test_onnx_sniffing_needs_no_onnx_package(tmp_path: Path) -> None:
    head = bytes.fromhex("0807120770797469726368")  # ir_version 7, producer_name "pytorch"
    assert is_onnx(tmp_path, head + b"\x1a\x052.3.0")
    assert not is_onnx(tmp_path, b"\x80\x02}q\x00")  # a pickle
    assert not is_onnx(tmp_path, (120).to_bytes(8, "little") + b'{"w":{}}')  # a safetensors header
    assert not is_onnx(tmp_path, b"\x08\x07\x00\x00")


def test_without_the_extra_an_onnx_file_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes.fromhex("0807120770797469726368") + b"\x1a\x052.3.0" + b"\x3a\x00")
    monkeypatch.setitem(__import__("sys").modules, "onnx2torch", None)  # an import of it raises ImportError
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(InputError, match=r"ONNX file, which needs onnx: .*lipcheck\[onnx\]"):
        load_model(path)


def test_onnx2torch_imports_without_a_working_torchvision_and_leaves_no_stand_in(tmp_path: Path) -> None:
    _onnx_stack()
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the stand-in is not used")
    code = (
        "import sys, lipcheck.io.onnx as o, pathlib\n"
        "o._import('onnx2torch', pathlib.Path('m.onnx'))\n"
        "assert 'onnx2torch' in sys.modules and 'torchvision' not in sys.modules, sorted(sys.modules)\n"
        "from onnx2torch.node_converters import nms\n"
        "try:\n"
        "    nms.torchvision.ops.nms(None, None, 0.5)\n"
        "except o.UnsupportedOperationError as error:\n"
        "    assert 'NonMaxSuppression' in str(error)\n"
        "else:\n"
        "    raise AssertionError('the stand-in did not refuse')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
