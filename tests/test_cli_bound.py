"""`lipcheck bound` and `lipcheck audit --bound`: the figures of `lipcheck.upper_bound`, never below the
exact dense Jacobian norm, in every format; the bracket; `--fail-above-bound`; `--assume`; the refusals.

The factories at the top are --arch targets (this file is imported by path)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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
)
from safetensors.torch import save_file
from torch import Tensor, nn

import lipcheck
from lipcheck.report import ModelBoundReport, bound_schema, report_schema

HERE = Path(__file__).resolve()
CONV_SHAPE = (3, 5, 5)


class Erfc(nn.Module):
    """A linear layer then erfc, an operation lipcheck has no rule for (its constant is 2 / sqrt(pi))."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.special.erfc(self.linear(x))


def make_erfc() -> nn.Module:
    torch.manual_seed(0)
    return Erfc()


class NoiseLevel(nn.Module):
    """A denoiser whose forward needs the noise level, as deepinv's DRUNet does: x - sigma conv(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")

    def forward(self, x: Tensor, sigma: float) -> Tensor:
        return self.conv(x) * sigma


def make_noise_level() -> nn.Module:
    torch.manual_seed(0)
    return NoiseLevel()


class Amplifier(nn.Module):
    """A linear layer scaled by 1e30 twenty times: a bound past float64's range."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(20):
            x = 1e30 * self.linear(x)
        return x


def make_amplifier() -> nn.Module:
    torch.manual_seed(0)
    return Amplifier()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bound")
    paths = {
        "export": export(MLP(), folder / "mlp.pt2", torch.from_numpy(mlp_inputs())[:2]),
        "conv": folder / "conv.safetensors",
        "erfc": folder / "erfc.safetensors",
        "torchscript": folder / "mlp.ts",
        "data": folder / "inputs.npy",
        "images": folder / "images.npy",
    }
    save_file(SmallConv().state_dict(), paths["conv"])
    save_file(make_erfc().state_dict(), paths["erfc"])
    torch.jit.save(torch.jit.script(MLP().eval()), paths["torchscript"])
    np.save(paths["data"], mlp_inputs())
    np.save(paths["images"], np.random.default_rng(0).standard_normal((4, *CONV_SHAPE)).astype(np.float32))
    return paths


def bound_json(*args: Any) -> dict[str, Any]:
    """Run `lipcheck bound ... --format json`, check exit 0 and the schema, return the report."""
    result = run("bound", *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, bound_schema())
    return report


def largest_exact_norm(module: nn.Module, shape: tuple[int, ...], count: int = 8) -> float:
    """The largest exact dense Jacobian norm over random inputs: a lower bound on the Lipschitz constant."""
    x = torch.randn(count, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return float(reference(module, 2 * x).max())


CASES = {
    "mlp": (lambda f: (f["export"],), MLP, (6,), "6"),
    "conv": (lambda f: (f["conv"], "--arch", f"{ARCH}:make_conv"), SmallConv, CONV_SHAPE, "3,5,5"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bound_json_is_upper_bound_and_never_below_the_exact_norm(files: dict[str, Path], name: str) -> None:
    model_args, factory, shape, written = CASES[name]
    report = bound_json(*model_args(files), "--input-shape", written)
    expected = lipcheck.upper_bound(factory().eval(), shape)
    assert report["upper_bound"] == pytest.approx(expected.upper_bound, rel=1e-12)
    assert report["upper_bound"] >= largest_exact_norm(factory(), shape)
    assert report["bound"]["input_shape"] == list(shape)
    assert [(layer["name"], layer["kind"], layer["method"]) for layer in report["bound"]["layers"]] == [
        (layer.name, layer.kind, layer.method) for layer in expected.layers
    ]
    assert [layer["bound"] for layer in report["bound"]["layers"]] == pytest.approx(
        [layer.bound for layer in expected.layers], rel=1e-12
    )
    assert report["bound"]["assumptions"] == {}
    assert report["model"]["sha256"] and report["timing"]["bound_seconds"] >= 0
    assert ModelBoundReport.from_dict(report).to_dict() == report


def test_bound_table_and_markdown_show_every_factor_and_the_total(files: dict[str, Path]) -> None:
    args = (files["conv"], "--arch", f"{ARCH}:make_conv", "--input-shape", "3x5x5")
    expected = lipcheck.upper_bound(SmallConv().eval(), CONV_SHAPE)
    total = f"{expected.upper_bound:.6g}"
    table = run("bound", *args, "--format", "table")
    assert table.exit_code == 0, table.stderr
    for text in ("conv.safetensors", "3x5x5", "upper bound (certified)", total, "conv1", "conv2", "tanh"):
        assert text in table.stdout
    markdown = run("bound", *args, "--format", "markdown")
    assert markdown.exit_code == 0
    assert f"**{total}**" in markdown.stdout and "| layer | kind | bound | method |" in markdown.stdout
    assert markdown.stdout.count("| `conv") == 2


def test_bound_output_file(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "bound.json"
    result = run("bound", files["export"], "--input-shape", "6", "--output", target, "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    jsonschema.validate(json.loads(target.read_text()), bound_schema())
    assert [p.name for p in tmp_path.iterdir()] == ["bound.json"]
    # The suffix picks the format, as for audit; there is no JUnit form of a bound (and no `junit` format).
    markdown = tmp_path / "bound.md"
    assert run("bound", files["export"], "--input-shape", "6", "-o", markdown, "-q").exit_code == 0
    assert markdown.read_text().count("| layer | kind | bound | method |") == 1
    assert_one_line_error(
        run("bound", files["export"], "--input-shape", "6", "-o", tmp_path / "b.xml"), "JUnit"
    )
    assert_one_line_error(run("bound", files["export"], "--input-shape", "6", "-f", "junit"), "--format")
    missing = tmp_path / "no_folder" / "b.json"
    assert_one_line_error(run("bound", files["export"], "--input-shape", "6", "-o", missing), "no_folder")


def test_assume_supplies_a_constant_and_is_recorded(files: dict[str, Path]) -> None:
    args = (files["erfc"], "--arch", f"{HERE}:make_erfc", "--input-shape", "4")
    result = run("bound", *args)
    assert_one_line_error(result, "erfc.safetensors", "aten.special_erfc.default", "--assume")
    constant = 2 / math.sqrt(math.pi)
    report = bound_json(*args, "--assume", f"aten.special_erfc.default={constant}")
    assert report["bound"]["assumptions"] == {"aten.special_erfc.default": constant}
    assert report["bound"]["layers"][-1]["kind"] == "assumed"
    assert report["upper_bound"] >= largest_exact_norm(make_erfc(), (4,))
    table = run("bound", *args, "--assume", "aten.special_erfc=1.2", "--format", "table")
    assert "aten.special_erfc = 1.2" in table.stdout and "not verified" in table.stdout


def test_arg_passes_keyword_arguments_of_the_forward_to_the_export(tmp_path: Path) -> None:
    weights = tmp_path / "noise_level.safetensors"
    save_file(make_noise_level().state_dict(), weights)
    args = (weights, "--arch", f"{HERE}:make_noise_level", "--input-shape", "3x6x6")
    assert_one_line_error(run("bound", *args), "noise_level.safetensors", "sigma", "--arg")
    report = bound_json(*args, "--arg", "sigma=0.5")
    expected = lipcheck.upper_bound(make_noise_level().conv, (3, 6, 6)).upper_bound
    assert report["upper_bound"] == pytest.approx(0.5 * expected, rel=1e-9)
    assert_one_line_error(run("bound", *args, "--arg", "sigma"), "--arg", "KEY=VALUE")


def test_a_bound_past_float64_is_exit_3_with_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "amplifier.safetensors"
    save_file(make_amplifier().state_dict(), weights)
    result = run("bound", weights, "--arch", f"{HERE}:make_amplifier", "--input-shape", "3")
    assert_one_line_error(result, "amplifier.safetensors", "overflows", "no finite bound", code=3)


def test_models_that_cannot_be_bounded_and_bad_flags(files: dict[str, Path]) -> None:
    result = run("bound", files["torchscript"], "--input-shape", "6")
    assert_one_line_error(result, "mlp.ts", "TorchScript")
    result = run("bound", files["export"], "--input-shape", "7")
    assert_one_line_error(result, "mlp.pt2", "torch.export could not trace", "(1, 7)")
    assert_one_line_error(run("bound", files["export"]), "--input-shape")
    assert_one_line_error(run("bound", files["export"], "--input-shape", "6x"), "--input-shape", "'6x'")
    for bad in ("erf", "aten.erf.default=-1", "aten.erf.default=inf", "=2"):
        assert_one_line_error(
            run("bound", files["export"], "--input-shape", "6", "--assume", bad), "--assume"
        )
    result = run("bound", files["export"], "--input-shape", "6", "--assume", "aten.erf.default=1")
    assert_one_line_error(result, "mlp.pt2", "aten.erf.default", "does not contain")
    assert_one_line_error(run("bound", files["conv"], "--input-shape", "3x5x5"), "--arch")


def test_help_shows_examples() -> None:
    result = run("bound", "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout and "lipcheck bound" in result.stdout


# lipcheck audit --bound: the bracket [max found, certified bound].


def test_audit_bound_adds_the_bracket(files: dict[str, Path]) -> None:
    report = audit_json(files["export"], "--data", files["data"], "--bound")
    expected = lipcheck.upper_bound(MLP().eval(), (6,)).upper_bound
    lower, upper = report["bracket"]
    assert report["upper_bound"] == upper == pytest.approx(expected, rel=1e-12)
    assert lower == report["summary"]["max"] <= upper
    assert report["bracket_ratio"] == pytest.approx(upper / lower)
    assert report["bound"]["input_shape"] == [6]
    assert "upper_bound" not in audit_json(files["export"], "--data", files["data"], "--limit", "2")


def test_audit_bound_is_of_the_audited_call_and_output(files: dict[str, Path]) -> None:
    # --arg scale=1.5 and --output-key twice audit 3 f(x): the bound must be of that, not of f.
    weights = files["export"].parent / "mlp.safetensors"
    save_file(MLP().state_dict(), weights)
    report = audit_json(
        weights, "--arch", f"{ARCH}:make_multi", "--data", files["data"], "--bound",
        "--arg", "scale=1.5", "--output-key", "twice",
    )  # fmt: skip
    lower, upper = report["bracket"]
    assert lower <= upper
    assert upper == pytest.approx(3 * lipcheck.upper_bound(MLP().eval(), (6,)).upper_bound, rel=1e-9)


def test_audit_bound_with_search_and_images(files: dict[str, Path]) -> None:
    report = audit_json(
        files["conv"], "--arch", f"{ARCH}:make_conv", "--data", files["images"], "--bound",
        "--search-steps", "3", "--search-radius", "0.5", "--dtype", "float64",
    )  # fmt: skip
    lower, upper = report["bracket"]
    searched = max(row["search_sigma"] for row in report["samples"])
    assert lower == searched <= upper
    assert report["bound"]["input_shape"] == list(CONV_SHAPE)
    assert upper >= largest_exact_norm(SmallConv(), CONV_SHAPE)


def test_audit_bound_in_the_table_and_markdown(files: dict[str, Path]) -> None:
    for fmt in ("table", "markdown"):
        result = run("audit", files["export"], "--data", files["data"], "--bound", "--format", fmt)
        assert result.exit_code == 0
        assert "upper bound (certified)" in result.stdout and "bracket" in result.stdout
        assert "ratio" in result.stdout


def test_fail_above_bound_gate(files: dict[str, Path], tmp_path: Path) -> None:
    upper = lipcheck.upper_bound(MLP().eval(), (6,)).upper_bound
    passed = audit_json(files["export"], "--data", files["data"], "--fail-above-bound", upper * 1.01)
    assert passed["upper_bound"] == pytest.approx(upper)  # --fail-above-bound implies --bound
    assert passed["gate"]["passed"] is True
    verdict = passed["gate"]["rules"][0]
    assert verdict["name"] == "fail_above_bound" and verdict["value"] == passed["upper_bound"]

    target = tmp_path / "r.json"
    result = run(
        "audit", files["export"], "--data", files["data"], "--fail-above-bound", upper * 0.99, "-o", target
    )
    assert result.exit_code == 1
    assert "gate failed" in result.stderr and "certified upper bound" in result.stderr
    failed = json.loads(target.read_text())
    jsonschema.validate(failed, report_schema())
    assert failed["gate"]["passed"] is False and failed["gate"]["rules"][0]["passed"] is False
    # The bound fails the gate although every sample is far below the threshold.
    assert failed["summary"]["max"] < upper * 0.99

    # `lipcheck gate` judges the saved bound again, without the model.
    regated = tmp_path / "regated.json"
    assert run("gate", target, "--fail-above-bound", upper * 1.01, "-o", regated).exit_code == 0
    verdict = json.loads(regated.read_text())["gate"]["rules"][0]
    assert verdict["name"] == "fail_above_bound" and verdict["value"] == pytest.approx(upper)
    assert run("gate", target, "--fail-above-bound", upper * 0.99, "-q").exit_code == 1
    unbounded = tmp_path / "unbounded.json"
    assert run("audit", files["export"], "--data", files["data"], "-o", unbounded).exit_code == 0
    assert_one_line_error(run("gate", unbounded, "--fail-above-bound", 1), "--fail-above-bound", "--bound")


def test_audit_bound_refusals(files: dict[str, Path]) -> None:
    result = run("audit", files["torchscript"], "--data", files["data"], "--bound")
    assert_one_line_error(result, "mlp.ts", "TorchScript")
    result = run("audit", files["export"], "--data", files["data"], "--assume", "aten.erf.default=1")
    assert_one_line_error(result, "--assume", "--bound")


@pytest.mark.parametrize("method", ["lipsdp", "liplt", "product"])
def test_bound_method_from_the_command_line_is_the_librarys(files: dict[str, Path], method: str) -> None:
    args = (files["conv"], "--arch", f"{ARCH}:make_conv", "--input-shape", "3x5x5")
    report = bound_json(*args, *(["--bound-method", method] if method != "lipsdp" else []))  # the default
    expected = lipcheck.upper_bound(SmallConv().eval(), CONV_SHAPE, method=method)
    assert report["upper_bound"] == pytest.approx(expected.upper_bound, rel=1e-12)
    assert report["bound"]["method"] == expected.method == method
    assert report["bound"]["product_bound"] == pytest.approx(expected.product_bound, rel=1e-12)
    assert [(t["node"], t["kind"]) for t in report["bound"]["terms"]] == [
        (t.node, t.kind) for t in expected.terms
    ]
    assert [t["contribution"] for t in report["bound"]["terms"]] == pytest.approx(
        [t.contribution for t in expected.terms], rel=1e-12
    )
    table = run("bound", *args, "--bound-method", method, "--format", "table")
    assert table.exit_code == 0, table.stderr
    assert ("Terms of the loop transformation" in table.stdout) == (method != "product")
    assert ("loop transformation (liplt)" in table.stdout) == (method == "liplt")
    assert ("LipSDP-Neuron, certified in float64 (lipsdp)" in table.stdout) == (method == "lipsdp")


def test_audit_bound_reports_its_method_and_bracket_ratio_in_every_format(files: dict[str, Path]) -> None:
    args = (files["export"], "--data", files["data"], "--bound")
    default = audit_json(*args)
    liplt = audit_json(*args, "--bound-method", "liplt")
    product = audit_json(*args, "--bound-method", "product")
    assert default["bound"]["method"] == "lipsdp" and liplt["bound"]["method"] == "liplt"
    assert product["bound"]["method"] == "product"
    assert default["upper_bound"] <= liplt["upper_bound"] <= product["upper_bound"]
    assert product["upper_bound"] == liplt["bound"]["product_bound"] == default["bound"]["product_bound"]
    for report in (default, liplt, product):
        lower, upper = report["bracket"]
        assert report["bracket_ratio"] == pytest.approx(upper / lower)
    junit = run("audit", *args, "--format", "junit", "--fail-above-bound", "1e6")
    assert junit.exit_code == 0, junit.stderr
    assert 'name="bound_method" value="lipsdp"' in junit.stdout and 'name="bracket_ratio"' in junit.stdout
    table = run("audit", *args, "--format", "table", "--bound-method", "product")
    assert "product of the layer factors" in table.stdout and "ratio" in table.stdout
    failed = run(
        "audit", *args, "--format", "json", "--fail-above-bound", f"{default['upper_bound'] * 0.99:.6g}"
    )
    assert failed.exit_code == 1


def test_bound_method_needs_the_bound_and_a_known_name(files: dict[str, Path]) -> None:
    assert_one_line_error(
        run("audit", files["export"], "--data", files["data"], "--bound-method", "product"),
        "--bound-method goes with --bound",
    )
    result = run("bound", files["export"], "--input-shape", "6", "--bound-method", "sdp")
    assert result.exit_code == 2 and "--bound-method" in result.stderr
