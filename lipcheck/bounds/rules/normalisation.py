"""Rules of normalisations: BatchNorm in eval mode, LayerNorm and GroupNorm."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lipcheck.bounds.graph import Site, aten, like_value, rule, where
from lipcheck.bounds.norms import EXACT_SVD_MAX_SIDE, with_margin
from lipcheck.errors import UnsupportedOperationError


@rule(
    aten(
        "batch_norm",
        "_native_batch_norm_legit_no_training",
        "native_batch_norm",
        "_native_batch_norm_legit",
    ),
    linear=True,
)
@rule(aten("_native_batch_norm_legit_functional"))  # training mode, functionalised: refused below
def _batch_norm(site: Site) -> Any:
    """Eval-mode BatchNorm is the per-channel affine map x -> gamma (x - mean) / sqrt(var + eps) + beta."""
    if site.args.get("training", False) or site.args.get("running_var") is None:
        raise UnsupportedOperationError(
            f"cannot bound BatchNorm in training mode (node {site.node.name!r}{where(site.node)}): it mixes "
            "the samples of a batch; call model.eval() before bounding"
        )
    variance = site.value("running_var").detach().to(torch.float64)
    gamma = site.value("weight")
    scale = (variance + float(site.value("eps"))).rsqrt()
    if gamma is not None:
        scale = scale * gamma.detach().to(torch.float64).abs()
    factor = with_margin(float(scale.max()))
    bound = site.scale("input", "batch_norm", factor, "exact: max |gamma| / sqrt(running_var + eps)")
    return like_value(site.node, bound)


def _centred_scaling_norm(gamma: Tensor) -> Tensor:
    """||diag(g) P_k||_2 for each row g of gamma (G, k), P_k = I - 1 1^T / k the centring of k entries."""
    k = gamma.shape[-1]
    matrix = torch.diag_embed(gamma) - gamma.unsqueeze(-1) / k  # diag(g) - g 1^T / k
    return torch.linalg.matrix_norm(matrix, ord=2)


def _normalization_bound(site: Site, kind: str, gamma: Tensor, entries: int) -> float:
    """LayerNorm and GroupNorm (any mode: they do not mix samples): y = g * (x - mean) / sqrt(var + eps) + b
    over groups of d entries, var the biased variance.

    With P = I - 1 1^T / d, z = P x and s = sqrt(||z||^2 / d + eps), the normalisation is z / s and its
    Jacobian is (1/s) A P with A = I - z z^T / (d s^2). A P is symmetric with eigenvalues in [0, 1]
    (1 - ||z||^2 / (d s^2) = eps / s^2 along z, 1 across it, 0 along 1) below those of P, so
    (A P)^2 <= P and ||diag(g) A P|| <= ||diag(g) P||, while 1/s <= 1/sqrt(eps). Hence
    L <= max over groups ||diag(g) P|| / sqrt(eps), and this is the exact constant: at an input that is
    constant over a group (z = 0) the Jacobian is diag(g) P / sqrt(eps). It is large (316 max |g| for
    eps = 1e-5) because the normalisation divides by at least sqrt(eps) wherever the group is flat.

    gamma: (G, k) the scale of each entry of a group, where each of the k values covers d / k entries.
    When d / k >= 2, ||diag(g) P_d|| = max |g| (a vector with zero sum inside one value's entries is
    scaled by that value, and the rest reduces to diag(g^2) - g g^T / k <= diag(g^2)); else it is
    computed exactly (an SVD of k x k, for k <= EXACT_SVD_MAX_SIDE) or bounded by max |g|.
    """
    eps = float(site.value("eps"))
    if not eps > 0:
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}) with eps = {eps:g}: "
            "it divides by the standard deviation, which is 0 on constant inputs, so it is not Lipschitz"
        )
    gamma = gamma.detach().to(torch.float64)
    k = gamma.shape[-1]
    if entries // k >= 2:
        scale, how = float(gamma.abs().max()), "exact: max |weight|"
    elif k <= EXACT_SVD_MAX_SIDE:
        scale, how = float(_centred_scaling_norm(gamma).max()), "exact: ||diag(weight) (I - 11^T/d)||"
    else:
        scale, how = float(gamma.abs().max()), f"max |weight| (at most {k}/{k - 1} times the exact constant)"
    factor = with_margin(scale / math.sqrt(eps))
    method = (
        f"{how} / sqrt(eps), eps = {eps:g}: dominated by 1/sqrt(eps) = {1 / math.sqrt(eps):.3g}, reached "
        "only on inputs flat over a group, far above the factor at typical inputs"
    )
    bound = site.scale("input", kind, factor, method)
    return bound


@rule(aten("layer_norm", "native_layer_norm"))
def _layer_norm(site: Site) -> Any:
    shape = [int(d) for d in site.value("normalized_shape")]
    entries = math.prod(shape)
    weight = site.value("weight")
    gamma = torch.ones(entries, dtype=torch.float64) if weight is None else weight.reshape(-1)
    bound = _normalization_bound(site, "layer_norm", gamma.reshape(1, entries), entries)
    if isinstance(site.node.meta["val"], list | tuple):
        return (bound, math.inf, math.inf)  # native_layer_norm also returns the mean and 1 / std
    return bound


@rule(aten("group_norm", "native_group_norm"))
def _group_norm(site: Site) -> Any:
    shape = site.shape("input")
    groups = int(site.value("num_groups" if "num_groups" in site.args else "group"))
    channels = shape[1]
    entries = math.prod(shape[1:]) // groups
    weight = site.value("weight")
    gamma = torch.ones(channels, dtype=torch.float64) if weight is None else weight.reshape(-1)
    bound = _normalization_bound(site, "group_norm", gamma.reshape(groups, channels // groups), entries)
    if isinstance(site.node.meta["val"], list | tuple):
        return (bound, math.inf, math.inf)
    return bound
