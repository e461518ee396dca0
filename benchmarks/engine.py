"""Benchmark of the spectral-norm engine, as ratios measured in one run (CPU, 2 threads).

(a) cost of one engine product J^T J u (`JacobianOperator.gram`, after the one forward) over the cost
    of one forward+backward pass of the model (forward, then backward with respect to the input);
    for reference, deepinv's JacobianSpectralNorm per-iteration cost over the same.
(b) products per sample to reach 1e-4 relative error against the exact norm (dense Jacobian from
    torch.func.jacrev, torch.linalg.matrix_norm(ord=2), float64), power method vs Lanczos.
(c) end to end at equal accuracy (1e-4 against exact on every sample): lipcheck's `spectral_norm`
    stopping by itself, with the largest tol that gives that accuracy, against deepinv's
    JacobianSpectralNorm given the smallest max_iter that does (same global seed for its start);
    lipcheck also at tol 1e-6 against the same deepinv runs. Each side's time is the median of the
    repeats, the two sides taking turns, so the ratio is measured in one process.

Workloads: a DnCNN-like residual denoiser (7 conv layers, 32 channels, 3x3, ReLU, B=4 at 1x24x24)
twice, with its He-initialised random weights and after a short training to remove noise from
synthetic images (about 20 s, seeded); an MLP; and the seed's diagonal 1..50 example. deepinv is
optional.

    python benchmarks/engine.py            # the figures of docs/benchmarks.md, about 17 minutes
    python benchmarks/engine.py --quick    # fewer repeats and smaller searches: about a minute
                                           # without deepinv, a few with it
    python benchmarks/engine.py --quick --threads 1 --only denoiser --only "trained denoiser"
                                           # the two denoisers only, on one thread of a busy machine
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import lipcheck
from lipcheck.engine import JacobianOperator, SpectralNormResult, check_batch_coupling, solve, spectral_norm

try:
    from deepinv.loss.regularisers import JacobianSpectralNorm as DeepinvJacobianSpectralNorm
except ImportError:
    DeepinvJacobianSpectralNorm = None

ACCURACY = 1e-4  # relative error against the exact norm, on every sample
SEED = 0
THREADS = 2
# tol values tried for lipcheck, loosest first: the first whose result is within ACCURACY is used.
LIPCHECK_TOLS = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7)
TARGET_PRODUCT_COST = 1.3
TARGET_PRODUCT_RATIO = 8.0
TARGET_SPEEDUP = 15.0
TIGHT_TOL = 1e-6  # lipcheck is also timed at this tol, against the same deepinv runs
TARGET_TIGHT_SPEEDUP = 13.0
TRAINING_STEPS = 300  # of the trained denoiser
NOISE = 0.1  # standard deviation of the noise it learns to remove
DENOISERS = ("denoiser", "trained denoiser")
WORKLOADS = (*DENOISERS, "mlp", "diagonal")


class ResidualDenoiser(nn.Module):
    """DnCNN-like: x - net(x), net of `depth` 3x3 convolutions with ReLU between them."""

    def __init__(self, depth: int = 7, channels: int = 32) -> None:
        super().__init__()
        widths = [1] + [channels] * (depth - 1) + [1]
        layers: list[nn.Module] = []
        for index, (inputs, outputs) in enumerate(zip(widths, widths[1:], strict=False)):
            convolution = nn.Conv2d(inputs, outputs, 3, padding=1)
            nn.init.kaiming_normal_(convolution.weight, nonlinearity="relu")
            nn.init.zeros_(convolution.bias)
            layers.append(convolution)
            if index < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.net(x)


class Diagonal(nn.Module):
    """The seed's example: x -> x @ diag(1..50), norm 50."""

    def __init__(self, size: int = 50) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.diag(torch.arange(1.0, size + 1.0)))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix


@dataclass
class Workload:
    name: str
    model: nn.Module  # float32, eval mode
    x: Tensor  # (B, ...) float32
    exact: Tensor  # (B,) float64
    deepinv_eval_mode: bool = True


def exact_sigma(model: nn.Module, x: Tensor) -> Tensor:
    """||df/dx (x_i)||_2 per sample from the dense Jacobian, in float64."""
    model64 = copy.deepcopy(model).double().requires_grad_(False)
    norms = []
    for sample in x.double():
        jacobian = torch.func.jacrev(lambda z, m=model64: m(z.unsqueeze(0)).squeeze(0))(sample)
        norms.append(torch.linalg.matrix_norm(jacobian.reshape(-1, sample.numel()), ord=2))
    return torch.stack(norms)


def synthetic_images(count: int, generator: torch.Generator) -> Tensor:
    """(count, 1, 24, 24) piecewise-smooth images in [0, 1]: a bicubically upsampled 6x6 random field
    with three flat rectangles of random grey levels pasted on it."""
    field = torch.randn(count, 1, 6, 6, generator=generator)
    images = nn.functional.interpolate(field, size=(24, 24), mode="bicubic", align_corners=False)
    low, high = images.amin((2, 3), keepdim=True), images.amax((2, 3), keepdim=True)
    images = (images - low) / (high - low)
    corners = torch.randint(0, 20, (count, 3, 2), generator=generator)
    sizes = torch.randint(3, 12, (count, 3, 2), generator=generator)
    levels = torch.rand(count, 3, generator=generator)
    for image in range(count):
        for corner, size, level in zip(corners[image], sizes[image], levels[image], strict=True):
            (row, column), (height, width) = corner.tolist(), size.tolist()
            images[image, 0, row : row + height, column : column + width] = level
    return images


def trained_denoiser(steps: int = TRAINING_STEPS) -> tuple[ResidualDenoiser, Tensor]:
    """The denoiser trained with Adam (lr 1e-3, batches of 16) to remove Gaussian noise of standard
    deviation NOISE from synthetic images, and a batch of 4 noisy images of the same kind.

    Training crowds the top of the Jacobian's spectrum (sample 0: 1.0700, 1.0629, 1.0619, where the
    random weights give 4.7788, 4.6959, 4.4890), which is where the power method is slowest.
    """
    torch.manual_seed(SEED)
    model = ResidualDenoiser()
    generator = torch.Generator().manual_seed(SEED + 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        clean = synthetic_images(16, generator)
        noisy = clean + NOISE * torch.randn(clean.shape, generator=generator)
        loss = nn.functional.mse_loss(model(noisy), clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.requires_grad_(False)
    clean = synthetic_images(4, generator)
    return model.eval(), clean + NOISE * torch.randn(clean.shape, generator=generator)


def workloads() -> list[Workload]:
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    denoiser = ResidualDenoiser().eval()
    trained, noisy = trained_denoiser()
    torch.manual_seed(SEED)
    mlp = nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 64)
    ).eval()  # fmt: skip
    cases = [
        ("denoiser", denoiser, torch.rand(4, 1, 24, 24, generator=generator)),
        ("trained denoiser", trained, noisy),
        ("mlp", mlp, torch.randn(8, 64, generator=generator)),
        ("diagonal", Diagonal().eval(), torch.randn(1, 1, 50, generator=generator)),
    ]
    result = [Workload(name, model, x, exact_sigma(model, x)) for name, model, x in cases]
    if DeepinvJacobianSpectralNorm is not None:
        for work in result:
            work.deepinv_eval_mode = deepinv_eval_mode(work)
    return result


def best_times(functions: dict[str, Callable[[], object]], repeats: int, number: int = 1) -> dict[str, float]:
    """Seconds per call of each function: the best over `repeats` rounds of the mean of `number` calls.

    The functions take turns within each round (after one warm-up call each), so a machine that
    slows down for a while slows all of them alike and the ratios stay fair.
    """
    for function in functions.values():
        function()
    best = dict.fromkeys(functions, math.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(number):
                function()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


def median_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds per call of each function: the median of `repeats` calls, taken in turns as in
    `best_times`. End-to-end runs are compared by their medians: on a machine shared with other work
    the best of a few runs depends on when the machine was quiet, the median less so."""
    for function in functions.values():
        function()
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def relative_error(sigma: Tensor, exact: Tensor) -> Tensor:
    return (sigma.double() - exact).abs() / exact


# (a) ----------------------------------------------------------------------------------------------


@dataclass
class ProductCost:
    forward_backward: float  # seconds
    forward: float  # the engine's one forward (JacobianOperator.from_function)
    setup: float  # the coupling check, whose backward builds the graph of w -> J^T w, and the first J u
    product: float  # one J^T J u
    jvp: float  # its J u part (double backward)
    vjp: float  # its J^T v part (one backward)
    deepinv_iteration: float | None


def product_cost(work: Workload, repeats: int, number: int) -> ProductCost:
    x = work.x
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))

    def forward_backward() -> None:
        xr = x.detach().requires_grad_()
        y = work.model(xr)
        torch.autograd.grad(y, xr, u if y.shape == x.shape else torch.ones_like(y))

    def setup() -> None:  # the coupling check's backward builds the graph that J u differentiates
        fresh = JacobianOperator.from_function(work.model, x)
        check_batch_coupling(fresh)
        fresh.jvp(u)

    operator = JacobianOperator.from_function(work.model, x)
    v = operator.jvp(u)
    functions: dict[str, Callable[[], object]] = {
        "forward_backward": forward_backward,
        "forward": lambda: JacobianOperator.from_function(work.model, x),
        "setup": setup,
        "product": lambda: operator.gram(u),
        "jvp": lambda: operator.jvp(u),
        "vjp": lambda: operator.vjp(v),
    }
    times = best_times(functions, repeats, number)
    deepinv_iteration = None
    if DeepinvJacobianSpectralNorm is not None:
        # deepinv's iteration: the difference of two runs on the same graph, over the extra iterations.
        short, long = 2, 2 + 4 * number
        calls: dict[str, Callable[[], object]] = {
            "short": lambda: deepinv_sigma(work, short, operator.y, operator.x),
            "long": lambda: deepinv_sigma(work, long, operator.y, operator.x),
        }
        deepinv_times = best_times(calls, repeats)
        deepinv_iteration = (deepinv_times["long"] - deepinv_times["short"]) / (long - short)
    return ProductCost(
        forward_backward=times["forward_backward"],
        forward=times["forward"],
        setup=times["setup"] - times["forward"],
        product=times["product"],
        jvp=times["jvp"],
        vjp=times["vjp"],
        deepinv_iteration=deepinv_iteration,
    )


# (b) ----------------------------------------------------------------------------------------------


def products_to_accuracy(work: Workload, method: str, limit: int) -> list[int | None]:
    """Per sample, the products after which sigma stays within ACCURACY of exact (None: not by `limit`).

    The solver runs with a tolerance it cannot meet, for 64 products, then 128, ..., until every
    sample has stayed within ACCURACY for at least the second half of the run, or `limit`.
    """
    max_iter = min(64, limit)
    while True:
        counts = _products_within(work, method, max_iter)
        settled = all(c is not None and 2 * c <= max_iter for c in counts)
        if settled or max_iter >= limit:
            return counts
        max_iter = min(2 * max_iter, limit)


def _products_within(work: Workload, method: str, max_iter: int) -> list[int | None]:
    operator = JacobianOperator.from_function(work.model, work.x)
    history: list[Tensor] = []
    solve(
        operator,
        method=method,  # type: ignore[arg-type]
        max_iter=max_iter,
        tol=1e-12,
        seed=SEED,
        check_coupling=False,
        callback=lambda iteration, sigma, active: history.append(sigma.clone()),
    )
    errors = torch.stack([relative_error(sigma, work.exact) for sigma in history])  # (products, B)
    counts: list[int | None] = []
    for sample in range(errors.shape[1]):
        outside = (errors[:, sample] > ACCURACY).nonzero()
        within_from = (
            int(outside[-1]) + 1 if len(outside) else 0
        )  # index of the first product that stays within
        counts.append(within_from + 1 if within_from < len(history) else None)
    return counts


# (c) ----------------------------------------------------------------------------------------------


@dataclass
class EndToEnd:
    seeds: list[int]
    lipcheck_tol: float | None  # the loosest that reaches ACCURACY at every seed (None: none does)
    lipcheck_products: list[int]  # per seed, the most products spent on a sample
    lipcheck_mean_products: float  # per sample, over samples and seeds
    tight_products: list[int]  # the same at tol TIGHT_TOL
    tight_mean_products: float
    tight_error: float
    lipcheck_error: float  # the largest relative error over seeds and samples
    lipcheck_seconds: dict[str, float]  # "seed 0", "median", "slowest": per run
    deepinv_max_iter: list[int | None]  # per seed, the smallest max_iter reaching ACCURACY
    deepinv_error: float | None
    deepinv_runs: dict[str, int]  # "seed 0", "median", "any start": the max_iter of each run timed
    deepinv_seconds: dict[str, float]  # the same runs: seconds per run


def lipcheck_run(work: Workload, tol: float, seed: int) -> SpectralNormResult:
    """lipcheck at its default settings but for tol (the default, 1e-4, is tried first) and the seed."""
    return spectral_norm(work.model, work.x, tol=tol, seed=seed)


def lipcheck_tol(work: Workload, seeds: list[int]) -> tuple[float | None, list[int], float, float]:
    """The loosest tol of LIPCHECK_TOLS within ACCURACY on every sample at every seed (None: none
    is), with the most products spent on a sample at each seed, the mean products per sample and the
    largest relative error."""
    for tol in LIPCHECK_TOLS:
        products, mean, error = lipcheck_products(work, tol, seeds)
        if error <= ACCURACY:
            return tol, products, mean, error
    return None, products, mean, error


def lipcheck_products(work: Workload, tol: float, seeds: list[int]) -> tuple[list[int], float, float]:
    """At tol, per seed the most products spent on a sample; the mean per sample over samples and
    seeds; the largest relative error."""
    results = [lipcheck_run(work, tol, seed) for seed in seeds]
    error = max(float(relative_error(result.sigma, work.exact).max()) for result in results)
    products = [int(result.iterations.max()) for result in results]
    mean = float(torch.cat([result.iterations for result in results]).double().mean())
    return products, mean, error


def deepinv_eval_mode(work: Workload) -> bool:
    """deepinv's faster eval_mode=True where it runs; it fails on some models (detach_ of a view)."""
    try:
        deepinv_sigma(work, 2, eval_mode=True)
    except RuntimeError:
        return False
    return True


def deepinv_sigma(
    work: Workload,
    max_iter: int,
    y: Tensor | None = None,
    x: Tensor | None = None,
    eval_mode: bool | None = None,
    seed: int = SEED,
) -> Tensor:
    """deepinv's per-sample norms, from its own forward unless (y, x) are given.

    deepinv draws its start vector from torch's global generator, seeded here with `seed`.
    """
    torch.manual_seed(seed)
    if y is None or x is None:
        x = work.x.detach().requires_grad_()
        y = work.model(x)
    if eval_mode is None:
        eval_mode = work.deepinv_eval_mode
    loss = DeepinvJacobianSpectralNorm(max_iter=max_iter, tol=1e-12, eval_mode=eval_mode, reduction="none")
    return loss(y, x).detach()


def deepinv_smallest_max_iter(work: Workload, limit: int, seed: int) -> int | None:
    """The smallest max_iter reaching ACCURACY on every sample from the start of `seed`.

    With a fixed start, max_iter=k returns the Rayleigh quotient of the power method's k-th iterate,
    which approaches the norm from below as k grows, so doubling then bisection finds it.
    """

    def accurate(max_iter: int) -> bool:
        sigma = deepinv_sigma(work, max_iter, seed=seed)
        return bool((relative_error(sigma, work.exact) <= ACCURACY).all())

    high = 4
    while not accurate(high):
        if high >= limit:
            return None
        high = min(2 * high, limit)
    low = high // 2  # not accurate (or 2, below any useful count)
    while high - low > 1:
        middle = (low + high) // 2
        if accurate(middle):
            high = middle
        else:
            low = middle
    return high


def _median_index(values: list[int]) -> int:
    """The index of the (lower) median of values."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    return order[(len(order) - 1) // 2]


def end_to_end(work: Workload, repeats: int, deepinv_limit: int, seeds: list[int]) -> EndToEnd:
    """Settings for equal accuracy at every seed first, then the runs compared, timed in turns.

    Both methods start from a random vector. lipcheck stops by itself; deepinv runs the max_iter it
    is given, and the smallest max_iter that reaches ACCURACY depends on its start. Compared: the
    first seed on both sides; the median seed on both sides; and lipcheck's slowest seed against
    deepinv with the max_iter that reaches ACCURACY from every one of the seeds (what a user who
    cannot check against the exact norm would have to set, at the least).
    """
    tol, products, mean_products, error = lipcheck_tol(work, seeds)
    tol_used = LIPCHECK_TOLS[-1] if tol is None else tol
    median, slowest = seeds[_median_index(products)], seeds[products.index(max(products))]
    tight, tight_mean, tight_error = lipcheck_products(work, TIGHT_TOL, seeds)
    tight_slowest = seeds[tight.index(max(tight))]
    functions: dict[str, Callable[[], object]] = {
        "lipcheck seed 0": lambda: lipcheck_run(work, tol_used, seeds[0]),
        "lipcheck median": lambda: lipcheck_run(work, tol_used, median),
        "lipcheck slowest": lambda: lipcheck_run(work, tol_used, slowest),
        "lipcheck tight slowest": lambda: lipcheck_run(work, TIGHT_TOL, tight_slowest),
    }
    deepinv_max_iter: list[int | None] = []
    deepinv_error = None
    runs: dict[str, int] = {}
    if DeepinvJacobianSpectralNorm is not None:
        deepinv_max_iter = [deepinv_smallest_max_iter(work, deepinv_limit, seed) for seed in seeds]
        if all(count is not None for count in deepinv_max_iter):
            counts = [count for count in deepinv_max_iter if count is not None]
            runs = {"seed 0": counts[0], "median": counts[_median_index(counts)], "any start": max(counts)}
            deepinv_error = max(
                float(relative_error(deepinv_sigma(work, count, seed=seed), work.exact).max())
                for seed, count in zip(seeds, counts, strict=True)
            )
            for name, count in runs.items():
                functions[f"deepinv {name}"] = lambda count=count: deepinv_sigma(work, count)
    times = median_times(functions, repeats)
    return EndToEnd(
        seeds=seeds,
        lipcheck_tol=tol,
        lipcheck_products=products,
        lipcheck_mean_products=mean_products,
        tight_products=tight,
        tight_mean_products=tight_mean,
        tight_error=tight_error,
        lipcheck_error=error,
        lipcheck_seconds={
            name.removeprefix("lipcheck "): t for name, t in times.items() if "lipcheck" in name
        },
        deepinv_max_iter=deepinv_max_iter,
        deepinv_error=deepinv_error,
        deepinv_runs=runs,
        deepinv_seconds={name.removeprefix("deepinv "): t for name, t in times.items() if "deepinv" in name},
    )


# presentation -------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _counts(counts: list[int | None], limit: int) -> str:
    return ", ".join(f">{limit}" if c is None else str(c) for c in counts)


def _worst(counts: list[int | None]) -> int | None:
    return None if any(c is None for c in counts) else max(c for c in counts if c is not None)


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _status(value: float | None, target: float, at_most: bool) -> str:
    if value is None:
        return "n/a (deepinv not installed)" if DeepinvJacobianSpectralNorm is None else "n/a"
    return "met" if (value <= target if at_most else value >= target) else "NOT met"


def report_product_costs(cases: list[Workload], repeats: int, number: int) -> dict[str, float]:
    """Print (a); return each model's product / fwd+bwd."""
    print("\n(a) cost of one product J^T J u / one forward+backward (best of repeats)")
    header = [
        "model",
        "fwd+bwd ms",
        "product",
        "J u",
        "J^T v",
        "forward",
        "check + first J u",
        "deepinv iteration",
    ]
    rows, ratios = [], {}
    for work in cases:
        cost = product_cost(work, repeats, number)
        fb = cost.forward_backward
        ratios[work.name] = cost.product / fb
        deepinv = None if cost.deepinv_iteration is None else cost.deepinv_iteration / fb
        parts = [cost.product, cost.jvp, cost.vjp, cost.forward, cost.setup]
        rows.append(
            [work.name, f"{fb * 1e3:.3f}", *(f"{t / fb:.2f}" for t in parts), _number(deepinv, ".2f")]
        )
    print(_table(header, rows))
    return ratios


def report_products(cases: list[Workload], limit: int) -> dict[str, float | None]:
    """Print (b); return each model's power / lanczos products (worst sample), None if unknown."""
    print(f"\n(b) products per sample to reach {ACCURACY:g} relative error vs exact")
    header = ["model", "power (per sample)", "lanczos (per sample)", "power / lanczos (worst)"]
    rows, ratios = [], {}
    for work in cases:
        power = products_to_accuracy(work, "power", limit)
        lanczos = products_to_accuracy(work, "lanczos", limit)
        worst_power, worst_lanczos = _worst(power), _worst(lanczos)
        ratio = None if worst_power is None or worst_lanczos is None else worst_power / worst_lanczos
        ratios[work.name] = ratio
        shown = (
            f">{limit / worst_lanczos:.1f}"
            if worst_power is None and worst_lanczos
            else _number(ratio, ".1f")
        )
        rows.append([work.name, _counts(power, limit), _counts(lanczos, limit), shown])
    print(_table(header, rows))
    return ratios


# (c)'s comparisons: label, lipcheck's run, deepinv's run (see `end_to_end`).
COMPARISONS = [
    ("seed 0", "seed 0", "seed 0"),
    ("median", "median", "median"),
    ("slowest lipcheck vs any start", "slowest", "any start"),
    ("tol 1e-6: slowest lipcheck vs any start", "tight slowest", "any start"),
]


def report_end_to_end(
    cases: list[Workload], repeats: int, deepinv_limit: int, seeds: list[int]
) -> dict[str, dict[str, float]]:
    """Print (c); return each model's speedups over deepinv by comparison (empty without deepinv)."""
    print(
        f"\n(c) end to end at {ACCURACY:g} vs exact on every sample, from the start vectors of seeds "
        f"{seeds[0]}..{seeds[-1]} (forward included, median of repeats); lipcheck also at tol {TIGHT_TOL:g}"
    )
    header = ["model", "lipcheck tol", "products per seed", "per sample", "error", f"at tol {TIGHT_TOL:g}",
              "per sample", "error", "deepinv max_iter per seed", "error"]  # fmt: skip
    timing_header = ["model", "comparison", "lipcheck ms", "deepinv max_iter", "deepinv ms", "speedup"]
    rows, timing_rows, speedups = [], [], {}
    for work in cases:
        result = end_to_end(work, repeats, deepinv_limit, seeds)
        if DeepinvJacobianSpectralNorm is None:
            deepinv = ["not installed", "-"]
        else:
            deepinv = [_counts(result.deepinv_max_iter, deepinv_limit), _number(result.deepinv_error, ".1e")]
        tol = _number(result.lipcheck_tol, "g") if result.lipcheck_tol else "none (not reached)"
        products = ", ".join(map(str, result.lipcheck_products))
        tight = ", ".join(map(str, result.tight_products))
        rows.append(
            [work.name, tol, products, f"{result.lipcheck_mean_products:.1f}", f"{result.lipcheck_error:.1e}",
             tight, f"{result.tight_mean_products:.1f}", f"{result.tight_error:.1e}", *deepinv]
        )  # fmt: skip
        speedups[work.name] = {}
        for label, lipcheck_name, deepinv_name in COMPARISONS:
            lipcheck_seconds = result.lipcheck_seconds[lipcheck_name]
            deepinv_seconds = result.deepinv_seconds.get(deepinv_name)
            max_iter = result.deepinv_runs.get(deepinv_name)
            speedup = None if deepinv_seconds is None else deepinv_seconds / lipcheck_seconds
            if speedup is not None:
                key = lipcheck_name if lipcheck_name == "tight slowest" else deepinv_name
                speedups[work.name][key] = speedup
            timing_rows.append(
                [
                    work.name,
                    label,
                    f"{lipcheck_seconds * 1e3:.1f}",
                    _number(max_iter, "d"),
                    _number(None if deepinv_seconds is None else deepinv_seconds * 1e3, ".1f"),
                    _number(speedup, ".1f", "x"),
                ]
            )
    print(_table(header, rows))
    print()
    print(_table(timing_header, timing_rows))
    return speedups


def report_targets(
    costs: dict[str, float], ratios: dict[str, float | None], speedups: dict[str, dict[str, float]]
) -> None:
    print("\ntargets (DnCNN-like denoisers)")
    rows = []
    for model in costs:
        rows.append(
            [model, "one product / fwd+bwd", f"{costs[model]:.2f}", f"<= {TARGET_PRODUCT_COST:g}",
             _status(costs[model], TARGET_PRODUCT_COST, at_most=True)]
        )  # fmt: skip
        rows.append(
            [model, "power / lanczos products to 1e-4", _number(ratios[model], ".1f"),
             f">= {TARGET_PRODUCT_RATIO:g}", _status(ratios[model], TARGET_PRODUCT_RATIO, at_most=False)]
        )  # fmt: skip
        for name in ("seed 0", "median", "any start"):
            speedup = speedups[model].get(name)
            rows.append(
                [model, f"end to end vs deepinv ({name})", _number(speedup, ".1f", "x"),
                 f">= {TARGET_SPEEDUP:g}x", _status(speedup, TARGET_SPEEDUP, at_most=False)]
            )  # fmt: skip
        speedup = speedups[model].get("tight slowest")
        rows.append(
            [model, f"end to end vs deepinv (any start), tol {TIGHT_TOL:g}", _number(speedup, ".1f", "x"),
             f">= {TARGET_TIGHT_SPEEDUP:g}x", _status(speedup, TARGET_TIGHT_SPEEDUP, at_most=False)]
        )  # fmt: skip
    print(_table(["model", "target", "measured", "goal", "status"], rows))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller searches (< 1 min)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument(
        "--only", action="append", choices=WORKLOADS, help="measure only this workload (repeatable)"
    )
    parser.add_argument(
        "--deepinv-limit",
        type=int,
        help="the largest max_iter tried for deepinv (default 512 with --quick, else 4096); a crowded "
        "trained denoiser can need more than 512",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    repeats, number = (3, 3) if arguments.quick else (9, 10)
    power_limit = 400 if arguments.quick else 2000
    deepinv_limit = arguments.deepinv_limit or (512 if arguments.quick else 4096)

    started = time.perf_counter()
    versions = (
        f"lipcheck {lipcheck.__version__}, torch {torch.__version__}, python {platform.python_version()}"
    )
    print(f"{versions}; {torch.get_num_threads()} threads of {os.cpu_count()} cpus, {cpu_name()}")
    if DeepinvJacobianSpectralNorm is None:
        print("deepinv not installed: its columns are skipped (pip install deepinv)")
    else:
        import deepinv

        print(f"deepinv {deepinv.__version__}")
    print(f"mode: {'quick' if arguments.quick else 'full'}; accuracy target {ACCURACY:g} relative vs exact")
    cases = [work for work in workloads() if not arguments.only or work.name in arguments.only]
    for work in cases:
        exact = ", ".join(f"{float(s):.5f}" for s in work.exact)
        mode = "" if DeepinvJacobianSpectralNorm is None else f", deepinv eval_mode={work.deepinv_eval_mode}"
        print(f"  {work.name}: x {tuple(work.x.shape)}, exact sigma [{exact}]{mode}")

    costs = report_product_costs(cases, repeats, number)
    ratios = report_products(cases, power_limit)
    seeds = list(range(3 if arguments.quick else 8))
    speedups = report_end_to_end(cases, repeats, deepinv_limit, seeds)
    report_targets({name: costs[name] for name in DENOISERS if name in costs}, ratios, speedups)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
