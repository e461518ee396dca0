"""Certified spectral norms in float64: never below the truth, with a margin for rounding.

Exact SVDs for small matrices, Gram iteration for large ones, DFTs of kernels for circular
convolutions, and a certified bound for zero-padded convolutions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Relative margin added to factors that are exact up to float64 rounding.
SAFETY_MARGIN = 1e-9
# Matrices whose smaller side is at most this get an exact SVD; larger ones get Gram iteration.
EXACT_SVD_MAX_SIDE = 2048
GRAM_ITERATIONS = 12
# Complex entries per batch of frequency matrices in the convolution rule (bounds memory).
FREQUENCY_CHUNK_ENTRIES = 1 << 23


def with_margin(value: float) -> float:
    return value * (1 + SAFETY_MARGIN)


def matrix_spectral_norm(matrix: Tensor) -> tuple[float, str]:
    """An upper bound on ||matrix||_2 (batched: the max over leading dims) and how it was computed.

    Small matrices get an exact SVD in float64 (plus the rounding margin). Large ones get Gram
    iteration (Delattre et al. 2023): with G_0 = W and G_{k+1} = G_k^T G_k, sigma_1(W)^(2^t) =
    sigma_1(G_t) <= ||G_t||_F, so ||W||_2 <= ||G_t||_F^(1/2^t) for every t; G is rescaled at each step
    (the scale is kept in a logarithm) so that nothing overflows.
    """
    w = matrix.detach().to(torch.float64)
    if w.dim() < 2:
        return with_margin(float(torch.linalg.vector_norm(w))), "exact (Euclidean norm of a vector)"
    w = w.reshape(-1, *w.shape[-2:])
    if w.shape[-2] < w.shape[-1]:
        w = w.mT
    if w.shape[-1] <= EXACT_SVD_MAX_SIDE:
        return with_margin(float(torch.linalg.svdvals(w)[..., 0].max())), "exact SVD"
    return gram_iteration_bound(w, GRAM_ITERATIONS), f"Gram iteration ({GRAM_ITERATIONS} steps)"


def gram_iteration_bound(matrix: Tensor, steps: int) -> float:
    """||matrix||_2 <= ||G_steps||_F^(1/2^steps) (Gram iteration; max over leading batch dims)."""
    g = matrix.detach().to(torch.float64).reshape(-1, *matrix.shape[-2:])
    if g.shape[-2] < g.shape[-1]:
        g = g.mT
    tiny = torch.finfo(torch.float64).tiny
    largest = g.abs().amax(dim=(-2, -1)).clamp_min(tiny)
    g = g / largest[:, None, None]  # so that the first Frobenius norm cannot overflow
    log_scale = largest.log()
    for _ in range(steps):
        norm = torch.linalg.matrix_norm(g).clamp_min(tiny)
        g = g / norm[:, None, None]
        log_scale = 2 * (log_scale + norm.log())
        g = g.mT @ g
    last = torch.linalg.matrix_norm(g).clamp_min(tiny)
    bound = ((log_scale + last.log()) / 2**steps).exp().max()
    return with_margin(float(bound))


def circular_conv_norm(weight: Tensor, sizes: Sequence[int], dilation: Sequence[int], groups: int) -> float:
    """The exact l2 norm of a multi-channel circular convolution at spatial size `sizes` (Sedghi 2019).

    weight: (C_out, C_in / groups, k_1, ..., k_d). The circulant operator is diagonalised by the
    d-dimensional DFT: its norm is the max over frequencies w of ||K(w)||_2, where K(w) is the
    (C_out x C_in) DFT of the kernel taps placed at (t * dilation) mod size (taps that land on the same
    position add up). Groups make the operator block diagonal: the max over groups. For real kernels
    K(-w) = conj(K(w)), so half the spectrum (rfftn) is enough.
    """
    d = len(sizes)
    w = weight.detach().to(torch.float64)
    c_out, c_in_group = w.shape[:2]
    if math.prod(w.shape[2:]) == 1:
        blocks = w.reshape(groups, c_out // groups, c_in_group)
        return with_margin(float(torch.linalg.matrix_norm(blocks, ord=2).max()))
    taps = w
    for axis in range(d):
        k = w.shape[2 + axis]
        positions = torch.arange(k, device=w.device) * dilation[axis] % sizes[axis]
        placed_shape = list(taps.shape)
        placed_shape[2 + axis] = sizes[axis]
        taps = torch.zeros(placed_shape, dtype=w.dtype, device=w.device).index_add_(2 + axis, positions, taps)
    spectrum = torch.fft.rfftn(taps, dim=tuple(range(2, 2 + d)))
    spectrum = spectrum.reshape(groups, c_out // groups, c_in_group, -1).permute(3, 0, 1, 2)
    spectrum = spectrum.reshape(-1, c_out // groups, c_in_group)
    if spectrum.shape[-2] > spectrum.shape[-1]:
        spectrum = spectrum.mH
    side = spectrum.shape[-2]
    chunk = max(1, FREQUENCY_CHUNK_ENTRIES // (spectrum.shape[-1] * side))
    largest = 0.0
    for start in range(0, spectrum.shape[0], chunk):
        block = spectrum[start : start + chunk]
        gram = block @ block.mH
        largest = max(largest, float(torch.linalg.eigvalsh(gram)[..., -1].max()))
    return with_margin(math.sqrt(max(largest, 0.0)))


def zero_padded_conv_bound(
    weight: Tensor,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[float, str]:
    """An upper bound on the norm of a zero-padded, strided, dilated, grouped convolution.

    Per spatial axis (input size N, output size N_o, stride s, left padding p, dilation d, kernel k),
    output i reads inputs j = i s - p + t d, which lie in [-p, J] with J = (N_o - 1) s - p + (k - 1) d.
    Extend the input by zeros to a size M >= max(N + p, J + 1, (k - 1) d + 1). Then each index j outside
    [0, N) lands, taken mod M, on an appended zero, so every zero-padded output is an output of the
    circular convolution at size M applied to the zero-extended input: conv = R C_M E with E the
    zero-extension (an isometry) and R a selection of rows (stride included), hence
    ||conv|| <= ||C_M||, computed exactly by `circular_conv_norm`.
    """
    sizes = []
    axes = zip(in_sizes, out_sizes, stride, padding, dilation, weight.shape[2:], strict=True)
    for n, n_out, s, p, d, k in axes:
        last = (n_out - 1) * s - p + (k - 1) * d
        sizes.append(max(n + p, last + 1, (k - 1) * d + 1, n))
    grid = "x".join(str(m) for m in sizes)
    if math.prod(weight.shape[2:]) == 1:
        method = "exact SVD of the channel matrix (1x1 kernel)"
    else:
        method = f"exact norm of the circular convolution at {grid} that embeds it (DFT)"
    return circular_conv_norm(weight, sizes, dilation, groups), method
