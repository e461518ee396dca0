"""lipcheck's default certified bound against ECLipsE-Fast (Xu and Sivaranjani, NeurIPS 2024,
arXiv 2404.04375, the `eclipse-nn` package) on the feed-forward networks of the LipSDP comparison, the
convolutional one unrolled into its dense layers.

    pip install eclipse-nn            # optional: without it only lipcheck's side is printed
    python benchmarks/bound_eclipse.py [--threads 1] [--only mlp-2 mlp-10 mlp-784 convnet]

ECLipsE-Fast takes the weight matrices of a chain of affine layers with slope-restricted activations
(here ReLU, slopes in [0, 1]). A zero-padded stride-1 convolution is an affine map, so its matrix (read
here column by column from the convolution itself, in float64) is exactly what a dense layer would hold;
the unrolled network computes the same function. "found" is the largest sigma at 64 random inputs at four
scales, a lower bound on every method's answer.
"""

from __future__ import annotations

import argparse
import time

import torch
from bound_lipsdp import NETWORKS, largest_found
from torch import Tensor, nn

import lipcheck

try:
    from eclipse_nn import ECLipsE_Fast
except ImportError:
    ECLipsE_Fast = None

FEED_FORWARD = ("mlp-2", "mlp-10", "mlp-784", "convnet")


def dense_layers(model: nn.Sequential, shape: tuple[int, ...]) -> list[Tensor]:
    """The weight matrices of the model's affine layers, in float64, convolutions unrolled at `shape`."""
    matrices = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            matrices.append(layer.weight.detach().double())
            shape = (layer.out_features,)
        elif isinstance(layer, nn.Conv2d):
            n = int(torch.tensor(shape).prod())
            basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
            weight = layer.weight.detach().double()
            columns = nn.functional.conv2d(
                basis, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups
            )
            shape = tuple(columns.shape[1:])
            matrices.append(columns.reshape(n, -1).T.contiguous())
        elif not isinstance(layer, nn.ReLU):
            raise ValueError(f"not a ReLU chain of Linear/Conv2d layers: {layer}")
    return matrices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(FEED_FORWARD), choices=FEED_FORWARD)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"lipcheck {lipcheck.__version__}, torch {torch.__version__}; {args.threads} thread(s)")
    print(
        "| network | found | lipcheck default (method) | ECLipsE-Fast (unrolled) | default / ECLipsE-Fast "
        "| time |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name in args.only:
        model, shape = NETWORKS[name]()
        found = largest_found(model, shape)
        start = time.perf_counter()
        ours = lipcheck.upper_bound(model, shape)
        ours_time = time.perf_counter() - start
        theirs, ratio, theirs_time = "not installed", "", ""
        if ECLipsE_Fast is not None:
            weights = dense_layers(model, shape)
            start = time.perf_counter()
            value = float(ECLipsE_Fast(weights, [0.0] * (len(weights) - 1), [1.0] * (len(weights) - 1)))
            theirs_time = f" / {time.perf_counter() - start:.2f} s"
            theirs, ratio = f"{value:.4g}", f"{ours.upper_bound / value:.3f}"
        print(
            f"| {name} | {found:.4g} | {ours.upper_bound:.4g} ({ours.method}) | {theirs} | {ratio} | "
            f"{ours_time:.1f} s{theirs_time} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
