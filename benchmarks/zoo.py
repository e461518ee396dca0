"""Audit architectures people train, as a new user would, and check each figure against a dense Jacobian.

For each model: the product the audit chose (double backward, with the operations it evaluated by
decompositions, or forward mode), the Jacobian products spent per sample (each Lanczos iteration is
one J u and one J^T v; the adjoint test adds one J^T r per batch), the seconds per sample of a float32
audit, and the relative error of sigma against the dense Jacobian's norm on one small input in float64.
A model the audit refuses is listed with the first line of the refusal.

    python benchmarks/zoo.py [--size 64] [--samples 2] [--threads 2] [--families mobilenetv3_small_100,...]

The families are timm's when timm imports; the architectures of tests/zoo.py and the small modules of
tests/derivative_zoo.py (the patterns of MobileNetV3, ViT and LeViT that the tests reproduce) are
measured either way. Prints markdown tables
(those of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.attention
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import derivative_zoo  # noqa: E402
from zoo import ZOO  # noqa: E402

import lipcheck  # noqa: E402
from lipcheck.errors import InconsistentDerivativesError, LipcheckError, describe, first_line  # noqa: E402

# Small members of the families issue 25 tried (fourteen image families), at num_classes=10.
TIMM_FAMILIES = (
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "ghostnet_100",
    "convnext_atto",
    "regnetx_002",
    "densenet121",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "mobilevit_xxs",
    "levit_128s",
    "swin_tiny_patch4_window7_224",
    "poolformer_s12",
    "repvgg_a0",
)


# The architectures of tests/zoo.py (at 3x32x32 or 1x32x32) measured beside timm's.
LOCAL_FAMILIES = ("resnet18", "mobilenet", "vit", "mixer", "unet")


def dense_sigma(model: nn.Module, sample: Tensor, chunk: int = 256) -> float:
    """||J(sample)||_2 from the dense Jacobian, in float64, by forward mode: the columns J e_k from one
    batched forward-mode product per `chunk` basis vectors (the sample repeated). Forward mode, because
    a model's reverse mode can be wrong where its forward mode agrees with finite differences (timm's
    LeViT with a batch of one); nothing here goes through lipcheck's products."""
    # with autograd on (not no_grad), and attention on the math backend: torch's fused transformer
    # layers and flash attention have no forward mode
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return _dense_sigma_by_columns(model, sample, chunk)


def _dense_sigma_by_columns(model: nn.Module, sample: Tensor, chunk: int) -> float:
    n = sample.numel()
    columns = []
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        basis = torch.zeros(count, n, dtype=sample.dtype)
        basis[torch.arange(count), torch.arange(start, start + count)] = 1
        repeated = sample.expand(count, *sample.shape).contiguous()
        _, tangent = torch.func.jvp(model, (repeated,), (basis.reshape(count, *sample.shape),))
        columns.append(tangent.detach().reshape(count, -1).T)
    return float(torch.linalg.matrix_norm(torch.cat(columns, 1), ord=2))


def measure(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...], samples: int) -> str:
    """One markdown row: product, products per sample, seconds per sample, error against the dense norm."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(samples, *shape, generator=generator)
    try:
        model = build().eval()
        # the whole batch, as the float32 audit below sees it (a model may differentiate wrongly alone)
        precise = lipcheck.audit(model.double(), x.double(), dtype="float64", tol=1e-10, max_iter=300)
        exact = dense_sigma(model, x[0].double())
        begin = time.perf_counter()  # after a first audit, so that start-up costs are not counted
        report = lipcheck.audit(model.float(), x, dtype="float32", batch_size=samples, tol=1e-4)
        seconds = (time.perf_counter() - begin) / samples
        chosen = report.derivatives.product if report.derivatives is not None else None
        forward = _forward_seconds(model, x) if chosen != "forward" else seconds
    except InconsistentDerivativesError as error:
        how = "forward mode" if error.product == "forward" else "double backward"
        return f"| {name} | refused: J u by {how} and J^T w not adjoint (gap {error.gap:.2g}) | | | | |"
    except LipcheckError as error:
        return f"| {name} | refused: {first_line(error)[:140]} | | | | |"
    derivatives = report.derivatives
    assert derivatives is not None
    product = derivatives.product
    if derivatives.decompositions:
        product += f" ({', '.join(derivatives.decompositions)})"
    iterations = sum(row.iterations for row in report.samples) / len(report.samples)
    per_sample = 2 * iterations + 1 / samples
    error = abs(precise.samples[0].sigma - exact) / exact if exact > 0 else float("nan")
    forced = "refused" if forward is None else f"{forward:.3f}"
    return f"| {name} | {product} | {per_sample:.1f} | {seconds:.3f} | {forced} | {error:.1e} |"


def _forward_seconds(model: nn.Module, x: Tensor) -> float | None:
    """Seconds per sample of the same audit with --product forward (None when refused)."""
    begin = time.perf_counter()
    try:
        lipcheck.audit(model, x, dtype="float32", batch_size=len(x), tol=1e-4, product="forward")
    except LipcheckError:
        return None
    return (time.perf_counter() - begin) / len(x)


def timm_entries(names: tuple[str, ...], size: int) -> dict[str, Callable[[], nn.Module]]:
    """timm's models by name, random weights seeded, 10 classes; empty when timm does not import."""
    try:
        import timm
    except Exception as error:  # timm, or a package it imports (torchvision), is missing or broken
        print(f"timm does not import here ({describe(error)}): its families are skipped")
        return {}

    def make(name: str) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            torch.manual_seed(0)
            extra = {"img_size": size} if name.startswith(("vit_", "deit_", "levit", "swin")) else {}
            return timm.create_model(name, pretrained=False, num_classes=10, **extra)

        return build

    return {f"timm {name}": make(name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side of timm's inputs")
    parser.add_argument("--samples", type=int, default=2, help="samples per audit (one batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--families", default=",".join(TIMM_FAMILIES), help="timm model names, comma-separated"
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print(f"torch {torch.__version__}, {arguments.threads} threads, {arguments.samples} samples per audit\n")
    header = (
        "| model | product | products per sample | seconds per sample | seconds per sample, forward mode "
        "| error vs dense |\n|---|---|---|---|---|---|"
    )
    local: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
        f"tests/zoo.py {name}": (ZOO[name].build, ZOO[name].input_shape) for name in LOCAL_FAMILIES
    }
    for name, shape in derivative_zoo.INPUT_SHAPES.items():
        local[f"tests/derivative_zoo.py {name}"] = (getattr(derivative_zoo, name), shape)
    print(header)
    for name, (build, shape) in local.items():
        print(measure(name, build, shape, arguments.samples), flush=True)
    families = timm_entries(tuple(arguments.families.split(",")), arguments.size)
    if families:
        print("\n" + header)
        for name, build in families.items():
            print(measure(name, build, (3, arguments.size, arguments.size), arguments.samples), flush=True)


if __name__ == "__main__":
    main()
