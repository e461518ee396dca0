"""Benchmark of the spectral-norm engine, as ratios measured in one run (CPU, 2 threads).

(a) cost of one engine product J^T J u (`JacobianOperator.gram`, after the one forward) over the cost
    of one forward+backward pass of the model (forward, then backward with respect to the input);
    for reference, deepinv's JacobianSpectralNorm per-iteration cost over the same.
(b) products per sample to reach 1e-4 relative error against the exact norm (dense Jacobian from
    torch.func.jacrev, torch.linalg.matrix_norm(ord=2), float64), power method vs Lanczos.
(c) end to end at equal accuracy (1e-4 against exact on every sample): lipcheck's `spectral_norm`
    stopping by itself, with the largest tol that gives that accuracy, against deepinv's
    JacobianSpectralNorm given the smallest max_iter that does (same global seed for its start).

Workloads: a DnCNN-like residual denoiser (7 conv layers, 32 channels, 3x3, ReLU, He-initialised,
B=4 at 1x24x24), an MLP, and the seed's diagonal 1..50 example. deepinv is optional.

    python benchmarks/engine.py            # the figures of docs/benchmarks.md, a few minutes
    python benchmarks/engine.py --quick    # fewer repeats and smaller searches, well under a minute
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import lipcheck
from lipcheck.engine import JacobianOperator, solve, spectral_norm

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


def workloads() -> list[Workload]:
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    denoiser = ResidualDenoiser().eval()
    torch.manual_seed(SEED)
    mlp = nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 64)
    ).eval()  # fmt: skip
    cases = [
        ("denoiser", denoiser, torch.rand(4, 1, 24, 24, generator=generator)),
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


def relative_error(sigma: Tensor, exact: Tensor) -> Tensor:
    return (sigma.double() - exact).abs() / exact


# (a) ----------------------------------------------------------------------------------------------


@dataclass
class ProductCost:
    forward_backward: float  # seconds
    setup: float  # the first J u: building the graph of J^T w, once per batch
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

    operator = JacobianOperator.from_function(work.model, x)
    start = time.perf_counter()
    v = operator.jvp(u)
    setup = time.perf_counter() - start
    functions: dict[str, Callable[[], object]] = {
        "forward_backward": forward_backward,
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
        setup=setup,
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
    lipcheck_tol: float | None
    lipcheck_products: int  # the most products spent on a sample
    lipcheck_error: float
    lipcheck_seconds: float
    deepinv_max_iter: int | None
    deepinv_error: float | None
    deepinv_seconds: float | None


def lipcheck_tol(work: Workload) -> tuple[float | None, int, float]:
    """The loosest tol of LIPCHECK_TOLS within ACCURACY on every sample (None: none is), with the most
    products spent on a sample and the largest relative error at that tol."""
    for tol in LIPCHECK_TOLS:
        result = spectral_norm(work.model, work.x, tol=tol, max_iter=1000, seed=SEED)
        error = float(relative_error(result.sigma, work.exact).max())
        if error <= ACCURACY:
            return tol, int(result.iterations.max()), error
    return None, int(result.iterations.max()), error


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
) -> Tensor:
    """deepinv's per-sample norms, from its own forward unless (y, x) are given; global seed SEED."""
    torch.manual_seed(SEED)
    if y is None or x is None:
        x = work.x.detach().requires_grad_()
        y = work.model(x)
    if eval_mode is None:
        eval_mode = work.deepinv_eval_mode
    loss = DeepinvJacobianSpectralNorm(max_iter=max_iter, tol=1e-12, eval_mode=eval_mode, reduction="none")
    return loss(y, x).detach()


def deepinv_smallest_max_iter(work: Workload, limit: int) -> int | None:
    """The smallest max_iter reaching ACCURACY on every sample: doubling, then bisection.

    With a fixed seed, max_iter=k returns the Rayleigh quotient of the power method's k-th iterate,
    which approaches the norm from below as k grows, so the search is over a monotone predicate.
    """

    def accurate(max_iter: int) -> bool:
        return bool((relative_error(deepinv_sigma(work, max_iter), work.exact) <= ACCURACY).all())

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


def end_to_end(work: Workload, repeats: int, deepinv_limit: int) -> EndToEnd:
    """Settings for equal accuracy first, then both timed in turns (best of `repeats`)."""
    tol, products, error = lipcheck_tol(work)
    tol_used = LIPCHECK_TOLS[-1] if tol is None else tol
    functions: dict[str, Callable[[], object]] = {
        "lipcheck": lambda: spectral_norm(work.model, work.x, tol=tol_used, max_iter=1000, seed=SEED)
    }
    deepinv_max_iter = deepinv_error = None
    if DeepinvJacobianSpectralNorm is not None:
        deepinv_max_iter = deepinv_smallest_max_iter(work, deepinv_limit)
        if deepinv_max_iter is not None:
            iterations = deepinv_max_iter
            deepinv_error = float(relative_error(deepinv_sigma(work, iterations), work.exact).max())
            functions["deepinv"] = lambda: deepinv_sigma(work, iterations)
    times = best_times(functions, repeats)
    return EndToEnd(
        tol, products, error, times["lipcheck"], deepinv_max_iter, deepinv_error, times.get("deepinv")
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
    header = ["model", "fwd+bwd ms", "product", "J u", "J^T v", "first J u", "deepinv iteration"]
    rows, ratios = [], {}
    for work in cases:
        cost = product_cost(work, repeats, number)
        fb = cost.forward_backward
        ratios[work.name] = cost.product / fb
        deepinv = None if cost.deepinv_iteration is None else cost.deepinv_iteration / fb
        parts = [cost.product, cost.jvp, cost.vjp, cost.setup]
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


def report_end_to_end(cases: list[Workload], repeats: int, deepinv_limit: int) -> dict[str, float | None]:
    """Print (c); return each model's speedup over deepinv, None without deepinv."""
    print(f"\n(c) end to end at {ACCURACY:g} vs exact on every sample (forward included, best of repeats)")
    header = [
        "model",
        "lipcheck tol",
        "products",
        "error",
        "ms",
        "deepinv max_iter",
        "error",
        "ms",
        "speedup",
    ]
    rows, speedups = [], {}
    for work in cases:
        result = end_to_end(work, repeats, deepinv_limit)
        speedup = None if result.deepinv_seconds is None else result.deepinv_seconds / result.lipcheck_seconds
        speedups[work.name] = speedup
        if DeepinvJacobianSpectralNorm is None:
            deepinv = ["not installed", "-", "-"]
        elif result.deepinv_max_iter is None:
            deepinv = [f">{deepinv_limit}", "-", "-"]
        else:
            seconds = None if result.deepinv_seconds is None else result.deepinv_seconds * 1e3
            deepinv = [
                str(result.deepinv_max_iter),
                _number(result.deepinv_error, ".1e"),
                _number(seconds, ".1f"),
            ]
        lipcheck_cells = [
            _number(result.lipcheck_tol, "g") if result.lipcheck_tol else "none (not reached)",
            str(result.lipcheck_products),
            f"{result.lipcheck_error:.1e}",
            f"{result.lipcheck_seconds * 1e3:.1f}",
        ]
        rows.append([work.name, *lipcheck_cells, *deepinv, _number(speedup, ".1f", "x")])
    print(_table(header, rows))
    return speedups


def report_targets(product: float, products: float | None, speedup: float | None) -> None:
    print("\ntargets (DnCNN-like denoiser)")
    rows = [
        ["one product / fwd+bwd", f"{product:.2f}", f"<= {TARGET_PRODUCT_COST:g}",
         _status(product, TARGET_PRODUCT_COST, at_most=True)],
        ["power / lanczos products to 1e-4", _number(products, ".1f"), f">= {TARGET_PRODUCT_RATIO:g}",
         _status(products, TARGET_PRODUCT_RATIO, at_most=False)],
        ["end to end vs deepinv", _number(speedup, ".1f", "x"), f">= {TARGET_SPEEDUP:g}x",
         _status(speedup, TARGET_SPEEDUP, at_most=False)],
    ]  # fmt: skip
    print(_table(["target", "measured", "goal", "status"], rows))


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
    arguments = parser.parse_args()
    torch.set_num_threads(THREADS)
    repeats, number = (3, 3) if arguments.quick else (9, 10)
    power_limit = 400 if arguments.quick else 2000
    deepinv_limit = 512 if arguments.quick else 4096

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
    cases = workloads()
    for work in cases:
        exact = ", ".join(f"{float(s):.5f}" for s in work.exact)
        mode = "" if DeepinvJacobianSpectralNorm is None else f", deepinv eval_mode={work.deepinv_eval_mode}"
        print(f"  {work.name}: x {tuple(work.x.shape)}, exact sigma [{exact}]{mode}")

    costs = report_product_costs(cases, repeats, number)
    ratios = report_products(cases, power_limit)
    speedups = report_end_to_end(cases, repeats, deepinv_limit)
    report_targets(costs["denoiser"], ratios["denoiser"], speedups["denoiser"])
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
