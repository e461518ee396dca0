"""The default settings against exact dense Jacobians on crowded spectra, and the per-sample error bars.

These are the cases where a single-start Krylov method is most easily fooled: the top singular values
of a sample sit within a fraction of a percent of each other (trained denoisers, near-identity residual
maps, tanh MLPs), so a Ritz pair that has converged to sigma_2 looks converged. docs/engine.md,
"Stopping" and "Error bars", says what the engine promises here; these tests hold it to that.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lipcheck import spectral_norm
from lipcheck.engine import lanczos, power_method, start_vector

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def singular_values(model: nn.Module, x: Tensor) -> Tensor:
    """(B, k) float64 singular values of the per-sample Jacobians, largest first, from dense Jacobians."""
    reference = copy.deepcopy(model).double()

    def one(z: Tensor) -> Tensor:
        return reference(z.unsqueeze(0)).squeeze(0)

    with torch.no_grad():
        jacobians = torch.vmap(torch.func.jacrev(one))(x.double())
    return torch.linalg.svdvals(jacobians.reshape(len(x), -1, x[0].numel()))


class NearIdentity(nn.Module):
    """x + 0.3 g(x), as in ResNets and flows: singular values crowd around 1."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.g = nn.Sequential(nn.Linear(width, 128), nn.Tanh(), nn.Linear(128, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.3 * self.g(x)


class ResidualConvolutions(nn.Module):
    """x - 0.5 r(x), r four 3x3 convolutions with ReLU: a random residual denoiser."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        widths = [1, channels, channels, channels, 1]
        layers: list[nn.Module] = []
        for inputs, outputs in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(inputs, outputs, 3, padding=1), nn.ReLU()]
        self.r = nn.Sequential(*layers[:-1])

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.5 * self.r(x)


def sample_model() -> tuple[nn.Module, Tensor]:
    """The README's trained denoiser as a plain module (the exported program's weights) and its 64 inputs."""
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLES / "make_sample.py")
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    model = maker.Denoiser()
    program = torch.export.load(SAMPLES / "denoiser.pt2")
    model.load_state_dict(program.state_dict)
    return model.eval(), torch.from_numpy(np.load(SAMPLES / "denoiser_inputs.npy"))


def corpus() -> dict[str, tuple[nn.Module, Tensor]]:
    torch.manual_seed(0)
    tanh = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 64))
    torch.manual_seed(1)
    near_identity = NearIdentity()
    torch.manual_seed(2)
    convolutions = ResidualConvolutions()
    return {
        "trained denoiser (sample model)": sample_model(),
        "tanh MLP": (tanh.eval(), torch.randn(256, 64, generator=torch.Generator().manual_seed(1))),
        "near-identity residual map": (
            near_identity.eval(),
            torch.randn(256, 64, generator=torch.Generator().manual_seed(2)),
        ),
        "residual conv denoiser": (
            convolutions.eval(),
            torch.randn(64, 1, 12, 12, generator=torch.Generator().manual_seed(3)),
        ),
    }


@pytest.fixture(scope="module")
def crowded() -> dict[str, tuple[nn.Module, Tensor, Tensor]]:
    return {name: (model, x, singular_values(model, x)) for name, (model, x) in corpus().items()}


def test_the_corpus_is_crowded(crowded) -> None:
    # Guard against the corpus drifting into easy cases: median relative gap sigma_1 - sigma_2 below 6%
    # on every model, and below 1% on the residual maps.
    for name, (_, _, values) in crowded.items():
        gap = float(((values[:, 0] - values[:, 1]) / values[:, 0]).median())
        assert gap < (0.01 if "residual" in name else 0.06), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_settings_are_right_on_every_sample_of_crowded_spectra(crowded, seed: int) -> None:
    # 640 samples a seed: none beyond 1e-3 of the exact norm, at most 1% beyond 1e-4, all converged.
    total = beyond_1e4 = 0
    for name, (model, x, values) in crowded.items():
        exact = values[:, 0]
        result = spectral_norm(model, x, seed=seed)
        error = (result.sigma.double() - exact).abs() / exact
        assert bool(result.converged.all()), name
        worst = int(error.argmax())
        assert float(error[worst]) <= 1e-3, f"{name}: sample {worst} is {float(error[worst]):.2e} off"
        total += len(x)
        beyond_1e4 += int((error > 1e-4).sum())
    assert beyond_1e4 <= 0.01 * total


def test_the_sample_audit_is_within_1e4_on_all_64_samples(crowded) -> None:
    # The README's sample audit runs at these settings (default tol, seed 0, float32, one batch of 64).
    _, x, values = crowded["trained denoiser (sample model)"]
    exact = values[:, 0]
    program = torch.export.load(SAMPLES / "denoiser.pt2").module()
    result = spectral_norm(program, x)
    error = (result.sigma.double() - exact).abs() / exact
    assert float(error.max()) <= 1e-4
    assert bool((result.sigma_upper.double() >= exact).all())


# Known spectra (eigenvalues of A = J^T J, largest first) where a random start is most easily fooled.
def _spectra(n: int) -> dict[str, Tensor]:
    index = torch.arange(n, dtype=torch.float64)
    return {
        "clustered top": torch.cat([torch.tensor([1.0, 0.999, 0.998, 0.995]), 0.9 * (1 - index[4:] / n)]),
        "exact multiplicity": torch.cat([torch.ones(3), 0.99 * (1 - index[3:] / n)]),
        "near identity": 1 + 0.01 * torch.linspace(1, -1, n, dtype=torch.float64) ** 3,
        "separated": torch.cat([torch.ones(1), 0.5 * (1 - index[1:] / n)]),
        "geometric": 0.97**index,
    }


def _operators(n: int = 100) -> tuple[list[str], Tensor, Tensor]:
    """(names, matrices (K, n, n), exact sigma_max (K,)) for the spectra above in random bases."""
    names, matrices, exact = [], [], []
    generator = torch.Generator().manual_seed(11)
    for name, values in _spectra(n).items():
        basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        names.append(name)
        matrices.append(basis @ torch.diag(values) @ basis.T)
        exact.append(values.max().sqrt())
    return names, torch.stack(matrices), torch.stack(exact)


STARTS = 500


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_sigma_upper_covers_the_exact_norm_at_the_stated_confidence(solver: str) -> None:
    # STARTS seeded start vectors for each matrix, all in one batched run: row (k, s) is matrix k from
    # the start vector that seed s gives the engine.
    names, matrices, exact = _operators()
    count, n = len(names), matrices.shape[1]
    starts = torch.cat([start_vector(torch.Size((1, n)), seed, torch.float64, torch.device("cpu"))
                        for seed in range(STARTS)])  # fmt: skip
    u0 = starts.repeat(count, 1)
    repeated = matrices.repeat_interleave(STARTS, 0)

    def gram(u: Tensor) -> Tensor:
        return torch.bmm(repeated, u.unsqueeze(2)).squeeze(2)

    solve = lanczos if solver == "lanczos" else power_method
    sigma, *_, upper = solve(gram, u0, max_iter=200, tol=1e-4)
    missed = (upper < exact.repeat_interleave(STARTS)).view(count, STARTS).sum(1)
    # Every family on its own, not only the pooled fraction: at most 1% of the starts may miss.
    for name, misses in zip(names, missed.tolist(), strict=True):
        assert misses <= (1 - 0.99) * STARTS, f"{name}: {misses} of {STARTS} starts not covered"
    if solver == "lanczos":
        assert float((upper / sigma - 1).median()) <= 0.02


def test_a_lower_confidence_gives_a_tighter_bound() -> None:
    model, x = corpus()["tanh MLP"]
    loose = spectral_norm(model, x[:32], confidence=0.9, tol=1e-6)
    strict = spectral_norm(model, x[:32], confidence=0.999, tol=1e-6)
    assert bool((loose.sigma_upper <= strict.sigma_upper).all())
    assert bool((loose.sigma_upper >= loose.sigma).all())


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, True, math.nan])
def test_confidence_must_be_a_probability(confidence) -> None:
    from lipcheck import InputError

    with pytest.raises(InputError, match="confidence"):
        spectral_norm(torch.tanh, torch.ones(2, 3), confidence=confidence)


@pytest.mark.parametrize("scale", [1e-12, 1e-8, 1e8, 1e12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_scale_of_the_model_does_not_change_the_relative_result(scale: float, dtype: torch.dtype) -> None:
    # Every threshold is relative to the sample's own values: at norm 1e-8 a fixed absolute floor
    # once called the Krylov space exhausted after one product, 68% low.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16)).to(dtype).eval()
    x = torch.randn(8, 16, dtype=dtype, generator=torch.Generator().manual_seed(1))
    exact = singular_values(model, x)[:, 0]
    result = spectral_norm(lambda z: scale * model(z), x)
    error = (result.sigma.double() / scale - exact).abs() / exact
    assert float(error.max()) <= 1e-4
    assert bool((result.sigma_upper.double() / scale >= exact * (1 - 1e-6)).all())


def test_a_samples_bound_and_stop_do_not_depend_on_its_batch() -> None:
    # The root-finding of the bound runs over the batch at once; a row that has converged stops
    # moving, so a sample alone and in a batch stops at the same product with the same bound (in
    # float64, where the model's own arithmetic does not depend on the batch's size either).
    model, x = corpus()["tanh MLP"]
    model, x = copy.deepcopy(model).double(), x[:24].double()
    full = spectral_norm(model, x)
    for index in (0, 7, 23):
        alone = spectral_norm(model, x[index : index + 1])
        assert alone.iterations.item() == full.iterations[index].item()
        assert alone.sigma.item() == pytest.approx(full.sigma[index].item(), rel=1e-12)
        assert alone.sigma_upper.item() == pytest.approx(full.sigma_upper[index].item(), rel=1e-9)
