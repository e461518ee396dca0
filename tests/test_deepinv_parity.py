"""Parity with deepinv's JacobianSpectralNorm and FNEJacobianSpectralNorm, when deepinv is installed.

deepinv's own tests of the two classes run with lipcheck's classes swapped in, and lipcheck's values,
reductions and gradients are compared with deepinv's at enough iterations for its power method to
converge. Where the two differ on purpose (eval_mode keeps no graph, reduced_batchsize works), the
difference is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lipcheck import FNEJacobianSpectralNorm, JacobianSpectralNorm

deepinv_regularisers = pytest.importorskip("deepinv.loss.regularisers")

PLUGINS = Path(__file__).parent / "plugins"
# deepinv 0.5.0 defines test_jacobian_spectral_values twice in test_loss.py; the second definition,
# parametrised over these reductions, shadows the first, so these are the tests pytest collects.
DEEPINV_TEST_IDS = {
    f"test_loss.py::test_jacobian_spectral_values[{r}]" for r in ("none", "mean", "sum", "max")
}
# Enough power iterations for deepinv to converge to float32 rounding on the problems below.
CONVERGED = 1000
REDUCTIONS = ["max", "mean", "sum", "none", None]
# deepinv's class name -> lipcheck's drop-in
OURS: dict[str, type[nn.Module]] = {
    "JacobianSpectralNorm": JacobianSpectralNorm,
    "FNEJacobianSpectralNorm": FNEJacobianSpectralNorm,
}


def deepinv_value(
    cls_name: str, *args: object, seed: int = 0, call: dict[str, object] | None = None, **settings: object
) -> Tensor:
    """deepinv's loss `cls_name`(**settings) applied to (*args, **call), with its random start seeded."""
    torch.manual_seed(seed)
    return getattr(deepinv_regularisers, cls_name)(**settings)(*args, **(call or {}))


def test_deepinvs_own_tests_pass_with_lipcheck_swapped_in(tmp_path: Path) -> None:
    deepinv_tests = Path(deepinv_regularisers.__file__).parents[1] / "tests"
    if not (deepinv_tests / "test_loss.py").is_file():
        pytest.skip(f"deepinv's tests are not installed in {deepinv_tests}")
    record = tmp_path / "record.json"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
        "LIPCHECK_SWAP_RECORD": str(record),
    }
    command = [
        sys.executable, "-m", "pytest", str(deepinv_tests / "test_loss.py"), "-k", "jacobian_spectral",
        "-p", "deepinv_swap", "-p", "no:cacheprovider", "--rootdir", str(deepinv_tests), "-o", "addopts=",
        "-q",
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600, check=False
    )
    log = completed.stdout[-4000:] + completed.stderr[-4000:]
    assert completed.returncode == 0, log
    swap = json.loads(record.read_text())
    assert set(swap["outcomes"]) >= DEEPINV_TEST_IDS, log
    assert set(swap["outcomes"].values()) == {"passed"}, swap["outcomes"]
    ran = len(swap["outcomes"])
    for bound in swap["bound"].values():
        assert bound == {
            "JacobianSpectralNorm": "lipcheck.engine.regularisers.JacobianSpectralNorm",
            "FNEJacobianSpectralNorm": "lipcheck.engine.regularisers.FNEJacobianSpectralNorm",
        }
    assert swap["calls"]["FNEJacobianSpectralNorm"] == ran
    assert swap["calls"]["JacobianSpectralNorm"] == 2 * ran  # once directly, once inside FNE


SCALES = torch.tensor([1.0, 2.0, -3.0, 4.0, 5.0])[:, None, None, None]


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
def test_scaled_identities_and_their_fne_match_for_every_reduction(reduction: str | None) -> None:
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    settings = {"max_iter": 100, "tol": 1e-4, "reduction": reduction}
    theirs = deepinv_value("JacobianSpectralNorm", SCALES * x, x, **settings)
    ours = JacobianSpectralNorm(**settings)(SCALES * x, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)

    def model(z: Tensor) -> Tensor:
        return SCALES * z

    theirs = deepinv_value("FNEJacobianSpectralNorm", SCALES * x, x, model, **settings)
    ours = FNEJacobianSpectralNorm(**settings)(SCALES * x, x, model)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    expected = (2 * SCALES - 1).abs().flatten()
    expected = {"max": expected.max(), "mean": expected.mean(), "sum": expected.sum()}.get(
        reduction, expected
    )
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("reduction", ["median", ""])
def test_an_unknown_reduction_is_a_value_error_in_both(reduction: str) -> None:
    for name, ours in OURS.items():
        with pytest.raises(ValueError):
            getattr(deepinv_regularisers, name)(reduction=reduction)
        with pytest.raises(ValueError):
            ours(reduction=reduction)


DIAGONAL = torch.diag(torch.arange(1.0, 51.0)).unsqueeze(0)  # the seed's example: norm 50, FNE 99


@pytest.mark.parametrize("interpolation", [False, True])
def test_the_seed_diagonal_example_and_its_fne_2k_minus_1_match(interpolation: bool) -> None:
    x = torch.randn(1, 1, 50, generator=torch.Generator().manual_seed(1)).requires_grad_()
    settings = {"max_iter": CONVERGED, "tol": 1e-6}
    theirs = deepinv_value("JacobianSpectralNorm", x @ DIAGONAL, x, **settings)
    ours = JacobianSpectralNorm(**settings)(x @ DIAGONAL, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    assert abs(ours.item() - 50) < 1e-3

    def model(z: Tensor) -> Tensor:
        return z @ DIAGONAL

    arguments = (x @ DIAGONAL, torch.randn_like(x), model)
    theirs = deepinv_value(
        "FNEJacobianSpectralNorm", *arguments, call={"interpolation": interpolation}, **settings
    )
    ours = FNEJacobianSpectralNorm(**settings)(*arguments, interpolation=interpolation)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    assert abs(ours.item() - 99) < 1e-2


def test_a_batch_of_diagonal_maps_matches_per_sample() -> None:
    """Each sample its own diagonal map, with shuffled entries of both signs; norm c_i, gap 2%."""
    generator = torch.Generator().manual_seed(2)
    norms = torch.tensor([1.0, 2.5, 0.3, 7.0])
    magnitudes = torch.stack([torch.randperm(50, generator=generator) + 1.0 for _ in norms]) / 50
    signs = torch.where(torch.rand(4, 50, generator=generator) < 0.5, -1.0, 1.0)
    diagonals = (norms[:, None] * magnitudes * signs).view(4, 1, 5, 10)
    x = torch.randn(4, 1, 5, 10, generator=generator).requires_grad_()
    settings = {"max_iter": CONVERGED, "tol": 1e-6, "reduction": "none"}
    theirs = deepinv_value("JacobianSpectralNorm", diagonals * x, x, **settings)
    ours = JacobianSpectralNorm(**settings)(diagonals * x, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours.detach(), norms, rtol=1e-5, atol=0)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6)).double()


def parameter_gradients(model: nn.Module, value: Callable[[], Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The value and its gradients with respect to the model's parameters (zeros where unused)."""
    model.zero_grad()
    result = value()
    result.backward()
    return result.detach(), [
        torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()
    ]


@pytest.mark.parametrize("loss", sorted(OURS))
def test_back_propagated_values_match_deepinvs_at_convergence(loss: str) -> None:
    """deepinv back-propagates through every power iteration; lipcheck through one product at the
    converged vector. At convergence both give d sigma / d theta."""
    model = small_model()
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    settings = {"max_iter": 400, "tol": 1e-12, "reduction": "sum", "eval_mode": False}

    def arguments() -> tuple[object, ...]:
        if loss == "FNEJacobianSpectralNorm":
            return (x.clone(), x.clone(), model)
        xr = x.clone().requires_grad_()
        return (model(xr), xr)

    theirs, their_gradients = parameter_gradients(
        model, lambda: deepinv_value(loss, *arguments(), **settings)
    )
    ours, our_gradients = parameter_gradients(model, lambda: OURS[loss](**settings)(*arguments()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)
    assert any(bool(g.abs().sum() > 0) for g in our_gradients)
    for got, want in zip(our_gradients, their_gradients, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def test_eval_mode_gives_the_same_values_and_ours_keeps_no_graph() -> None:
    model = small_model()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    y = model(x)
    settings = {"max_iter": 400, "tol": 1e-12, "reduction": "none"}
    theirs = deepinv_value("JacobianSpectralNorm", y, x, eval_mode=True, **settings)
    ours = JacobianSpectralNorm(eval_mode=True, **settings)(y, x)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-10, atol=0)
    assert not ours.requires_grad and ours.grad_fn is None
    training = JacobianSpectralNorm(eval_mode=False, **settings)(y, x)
    assert training.requires_grad and deepinv_value("JacobianSpectralNorm", y, x, **settings).requires_grad


def test_reduced_batchsize_raises_in_deepinv_and_works_in_lipcheck() -> None:
    model = small_model()
    x = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    y = model(x)
    settings = {"max_iter": 400, "tol": 1e-12, "reduction": "none"}
    with pytest.raises(RuntimeError):
        deepinv_value("JacobianSpectralNorm", y, x, reduced_batchsize=2, **settings)
    with pytest.raises(RuntimeError):
        deepinv_value("FNEJacobianSpectralNorm", x, x, model, reduced_batchsize=2, **settings)

    full = deepinv_value("JacobianSpectralNorm", y, x, **settings).detach()
    reduced = JacobianSpectralNorm(reduced_batchsize=2, **settings)(y, x)
    assert reduced.shape == (2,)
    torch.testing.assert_close(reduced.detach(), full[:2], rtol=1e-10, atol=0)
    reduced.sum().backward()

    full = deepinv_value("FNEJacobianSpectralNorm", x.detach(), x.detach(), model, **settings).detach()
    reduced = FNEJacobianSpectralNorm(reduced_batchsize=2, **settings)(x.detach(), x.detach(), model)
    torch.testing.assert_close(reduced.detach(), full[:2], rtol=1e-10, atol=0)
