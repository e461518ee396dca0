"""The products behind every audit (double backward with decompositions, forward mode) and the adjoint
test that refuses a model whose two derivatives disagree: on small modules with the patterns of
MobileNetV3, GhostNet, ViT and LeViT (tests/derivative_zoo.py), against dense Jacobians in float64."""

from __future__ import annotations

import json
from pathlib import Path

import derivative_zoo as zoo
import numpy as np
import pytest
import torch
from cli_fixtures import assert_one_line_error, read_json, run
from conftest import exact_sigma
from torch import Tensor
from zoo import ZOO as ZOO_MODELS

import lipcheck
from lipcheck.engine import spectral_norm
from lipcheck.engine.products import adjoint_tolerance, differentiable_decompositions
from lipcheck.errors import AuditFailedError, InconsistentDerivativesError

ZOO = Path(zoo.__file__).resolve()


def inputs(name: str, count: int = 3, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *zoo.INPUT_SHAPES[name], generator=generator, dtype=torch.float64)


def dense_sigma(model: torch.nn.Module, x: Tensor) -> np.ndarray:
    """||J(x_i)||_2 per sample from the dense Jacobian (reverse mode, one output at a time)."""
    norms = []
    for sample in x:
        jacobian = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).squeeze(0), sample)
        matrix = jacobian.reshape(-1, sample.numel())
        norms.append(float(torch.linalg.matrix_norm(matrix, ord=2)))
    return np.array(norms)


@pytest.mark.parametrize(
    ("name", "product", "decomposed"),
    [
        ("mobilenet_style", "double-backward", ("hardsigmoid", "hardswish")),
        ("vit_style", "double-backward", ("scaled_dot_product_attention",)),
        ("forward_only", "forward", ()),
    ],
)
def test_auto_finds_a_product_that_measures_the_dense_norm(
    name: str, product: str, decomposed: tuple
) -> None:
    model, x = getattr(zoo, name)(double=True), inputs(name)
    result = spectral_norm(model, x, tol=1e-9, max_iter=100)
    assert result.product == product
    assert result.decompositions == decomposed
    np.testing.assert_allclose(result.sigma.numpy(), dense_sigma(model, x), rtol=1e-4)
    assert float(result.adjoint_gap.max()) <= adjoint_tolerance(torch.float64)


def test_attention_inside_torch_transformer_layers_is_reached() -> None:
    """nn.TransformerEncoderLayer calls SDPA from inside nn.MultiheadAttention, out of a function mode's
    sight: the math backend is chosen for the whole evaluation."""
    model = ZOO_MODELS["vit"].build().double()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = spectral_norm(model, x, tol=1e-9, max_iter=100)
    assert (result.product, result.decompositions) == ("double-backward", ("scaled_dot_product_attention",))
    np.testing.assert_allclose(result.sigma.numpy(), exact_sigma(model, x).detach().numpy(), rtol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_style", "vit_style"])
def test_forward_mode_measures_what_double_backward_does(name: str) -> None:
    model, x = getattr(zoo, name)(double=True), inputs(name)
    forward = spectral_norm(model, x, tol=1e-9, max_iter=100, product="forward")
    assert forward.product == "forward"
    np.testing.assert_allclose(forward.sigma.numpy(), dense_sigma(model, x), rtol=1e-4)


def test_decompositions_keep_the_values() -> None:
    model, x = zoo.mobilenet_style(double=True), inputs("mobilenet_style")
    plain = model(x)
    with differentiable_decompositions() as used:
        decomposed = model(x)
    assert used == {"hardsigmoid", "hardswish"}
    torch.testing.assert_close(decomposed, plain, rtol=1e-13, atol=1e-13)


def test_a_wrong_transpose_is_refused_not_measured() -> None:
    """LeViT's failure: double backward gives the right J u, reverse mode a J^T off by a factor, and
    Lanczos on the non-symmetric product would converge to a meaningless number."""
    model, x = zoo.wrong_transpose(double=True), inputs("wrong_transpose")
    with pytest.raises(InconsistentDerivativesError) as raised:
        spectral_norm(model, x)
    message = str(raised.value)
    assert "forward-mode and reverse-mode derivatives disagree" in message
    assert "no spectral norm is defined" in message
    assert raised.value.gap > 0.05
    assert raised.value.suggestion is None  # forward mode has no jvp here: nothing to suggest


def test_a_backward_off_by_a_factor_is_refused_by_both_products() -> None:
    model, x = zoo.wrong_backward(double=True), inputs("wrong_backward")
    with pytest.raises(InconsistentDerivativesError) as raised:
        spectral_norm(model, x)
    assert raised.value.product == "forward"  # double backward had no J u to give; forward mode disagrees
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(InconsistentDerivativesError):
            spectral_norm(zoo.wrong_backward().to(dtype), x.to(dtype), product="forward")


def test_the_refusal_names_the_product_that_agrees_with_finite_differences() -> None:
    model, x = zoo.forward_only(double=True), inputs("forward_only")
    with pytest.raises(InconsistentDerivativesError) as raised:
        spectral_norm(model, x, product="double-backward")
    assert raised.value.suggestion == "forward"
    assert "--product forward" in str(raised.value)


def test_forward_mode_refuses_a_model_that_changes_between_calls() -> None:
    model, x = zoo.stochastic_forward_only(double=True), inputs("stochastic_forward_only")
    with pytest.raises(AuditFailedError, match="changed between two calls"):
        spectral_norm(model, x)


def test_the_adjoint_gap_of_a_sample_does_not_depend_on_its_batch() -> None:
    model, x = zoo.vit_style(double=True), inputs("vit_style", count=4)
    whole = spectral_norm(model, x, max_iter=3).adjoint_gap
    alone = spectral_norm(model, x[2:3], max_iter=3).adjoint_gap
    assert float(alone[0]) == pytest.approx(float(whole[2]), abs=1e-15)


def test_the_report_records_the_product_and_each_batch_test() -> None:
    model, x = zoo.mobilenet_style(double=True), inputs("mobilenet_style", count=5)
    report = lipcheck.audit(model, x, dtype="float64", batch_size=2, tol=1e-8)
    derivatives = report.derivatives
    assert derivatives is not None
    assert derivatives.product == "double-backward"
    assert derivatives.model_calls_per_product == 0
    assert derivatives.decompositions == ("hardsigmoid", "hardswish")
    assert [(batch.first, batch.last) for batch in derivatives.adjoint] == [(0, 1), (2, 3), (4, 4)]
    assert all(batch.passed and batch.gap <= derivatives.adjoint_tolerance for batch in derivatives.adjoint)
    again = lipcheck.Report.from_json(report.to_json())
    assert again.derivatives == derivatives


def test_forward_mode_is_recorded_with_its_model_calls() -> None:
    model, x = zoo.forward_only(double=True), inputs("forward_only", count=3)
    report = lipcheck.audit(model, x, dtype="float64")
    assert report.derivatives is not None
    assert (report.derivatives.product, report.derivatives.model_calls_per_product) == ("forward", 1)
    assert report.settings.product == "auto"


# ----------------------------------------------------------------------------------------------------
# From the shell, with the factory alone (no weights file)


@pytest.mark.parametrize("name", ["mobilenet_style", "vit_style"])
def test_the_shell_audits_a_factory_alone_within_1e_4_of_the_dense_norm(name: str, tmp_path: Path) -> None:
    x = inputs(name, count=3, seed=4)
    np.save(tmp_path / "x.npy", x.numpy())
    result = run(
        "audit", "--arch", f"{ZOO}:{name}", "--arch-kwargs", json.dumps({"double": True}),
        "--data", tmp_path / "x.npy", "--dtype", "float64", "--tol", "1e-8", "--output", tmp_path / "r.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = read_json(tmp_path / "r.json")
    sigma = np.array([row["sigma"] for row in report["samples"]])
    np.testing.assert_allclose(sigma, dense_sigma(getattr(zoo, name)(double=True), x), rtol=1e-4)
    assert report["model"]["format"] == "factory"
    assert report["model"]["arch"] == f"{ZOO}:{name}"
    assert report["model"]["arch_kwargs"] == {"double": True}
    assert report["derivatives"]["product"] == "double-backward"
    assert [batch["passed"] for batch in report["derivatives"]["adjoint"]] == [True]


def test_the_shell_refuses_a_model_whose_derivatives_disagree_with_exit_3(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", inputs("wrong_transpose").numpy())
    result = run(
        "audit", "--arch", f"{ZOO}:wrong_transpose", "--data", tmp_path / "x.npy",
        "--output", tmp_path / "r.json",
    )  # fmt: skip
    assert_one_line_error(result, "forward-mode and reverse-mode derivatives disagree", code=3)
    assert not (tmp_path / "r.json").exists()


def test_the_shell_takes_the_product_by_name(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", inputs("forward_only").numpy())
    base = ("audit", "--arch", f"{ZOO}:forward_only", "--data", tmp_path / "x.npy")
    result = run(*base, "--product", "double-backward")
    assert_one_line_error(result, "--product forward", code=3)
    assert run(*base, "--product", "forward", "--output", tmp_path / "r.json").exit_code == 0
    assert read_json(tmp_path / "r.json")["settings"]["product"] == "forward"
    assert_one_line_error(run(*base, "--product", "sideways"), "--product", code=2)


def test_inspect_and_bound_take_a_factory_alone() -> None:
    arch = f"{ZOO.parent / 'cli_fixtures.py'}:make_mlp"
    shown = json.loads(run("inspect", "--arch", arch, "--json").stdout)
    assert (shown["format"], shown["arch"], shown["size_bytes"]) == ("factory", arch, 0)
    result = run("bound", "--arch", arch, "--input-shape", "6", "--format", "json")
    assert result.exit_code == 0, result.stdout + result.stderr
    bound = json.loads(result.stdout)
    assert bound["model"]["format"] == "factory"
    assert bound["upper_bound"] > 0


def test_the_same_factory_gives_the_same_hash_and_no_model_is_an_input_error() -> None:
    arch = f"{ZOO}:vit_style"
    first, second = (json.loads(run("inspect", "--arch", arch, "--json").stdout) for _ in range(2))
    assert first["sha256"] == second["sha256"]
    other = json.loads(run("inspect", "--arch", f"{ZOO}:mobilenet_style", "--json").stdout)
    assert other["sha256"] != first["sha256"]
    assert_one_line_error(run("inspect"), "no model given", "--arch")


def test_python_audits_a_factory_alone() -> None:
    x = inputs("mobilenet_style", count=2)
    report = lipcheck.audit(
        None, x, arch=f"{ZOO}:mobilenet_style", arch_kwargs={"double": True}, dtype="float64"
    )
    assert report.model.format == "factory"
    assert report.model.arch_kwargs == {"double": True}
    np.testing.assert_allclose(
        [row.sigma for row in report.samples], dense_sigma(zoo.mobilenet_style(double=True), x), rtol=1e-4
    )


def test_an_audit_refuses_forward_mode_for_a_model_that_draws_random_numbers() -> None:
    model, x = zoo.noisy_forward_only(double=True), inputs("noisy_forward_only")
    with pytest.raises(AuditFailedError, match="draws random numbers in its forward"):
        lipcheck.audit(model, x, dtype="float64")


@pytest.mark.parametrize(
    ("column", "value"), [("product", 7), ("decompositions", 200), ("adjoint_gap", -1.0)]
)
def test_rows_read_back_with_a_product_no_audit_writes_are_refused(column: str, value: float) -> None:
    from lipcheck.errors import InputError
    from lipcheck.report.columns import ROW
    from lipcheck.report.rows import check_rows

    table = np.zeros(2, dtype=ROW)
    table["index"], table["sigma"], table["iterations"] = [0, 1], 1.0, 3
    for name in ("residual", "sigma_upper", "search_sigma", "search_distance", "adjoint_gap"):
        table[name] = np.nan
    check_rows(table, "journal record 0", count=2)
    table[column][1] = value
    with pytest.raises(InputError, match=f"row 1 .sample 1. has {column}"):
        check_rows(table, "journal record 0", count=2)
