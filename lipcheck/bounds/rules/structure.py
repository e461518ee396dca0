"""Rules of operations that move, copy, pad, select or join values: factors of at most the
largest number of copies of an entry."""

from __future__ import annotations

import math
import operator

from torch import Tensor

from lipcheck.bounds.graph import (
    Site,
    aten,
    broadcast_copies,
    first_tensor,
    like_value,
    monomial_norm,
    rule,
    where,
)
from lipcheck.bounds.norms import SAFETY_MARGIN
from lipcheck.bounds.rules.linear import absorbs_circular_pad
from lipcheck.errors import UnsupportedOperationError


@rule(
    aten(
        "view",
        "reshape",
        "_unsafe_view",
        "flatten",
        "unflatten",
        "permute",
        "transpose",
        "t",
        "contiguous",
        "clone",
        "squeeze",
        "unsqueeze",
        "alias",
        "detach",
        "movedim",
        "swapaxes",
        "view_as",
        "reshape_as",
        "lift_fresh_copy",
        "numpy_T",
        "mT",
        "neg",
        "pixel_shuffle",
        "pixel_unshuffle",
        "channel_shuffle",
    ),
    linear=True,
)
def _rearrangement(site: Site) -> float:
    """A permutation of the entries (or a sign flip): an isometry, factor 1."""
    return site.lip(first_tensor(site))


@rule(aten("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"), linear=True)
def _dropout(site: Site) -> float:
    if site.value("train"):
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}) in training mode: "
            "dropout is random; call model.eval() before bounding"
        )
    return site.lip("input")


@rule(aten("_to_copy", "to", "type_as"), linear=True)
@rule(aten("_assert_tensor_metadata"))
def _conversion(site: Site) -> float:
    value = site.node.meta.get("val")
    if isinstance(value, Tensor) and not value.is_floating_point():
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}): it converts to "
            f"{value.dtype}, which is not a Lipschitz function of the input"
        )
    return site.lip(first_tensor(site))


@rule(
    aten(
        "slice",
        "select",
        "narrow",
        "expand",
        "expand_as",
        "repeat",
        "tile",
        "index_select",
        "roll",
        "flip",
        "constant_pad_nd",
        "reflection_pad1d",
        "reflection_pad2d",
        "reflection_pad3d",
        "replication_pad1d",
        "replication_pad2d",
        "replication_pad3d",
        "upsample_nearest1d",
        "upsample_nearest2d",
        "upsample_nearest3d",
        "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d",
        "_upsample_nearest_exact3d",
        "_unsafe_index",
        "index",
    ),
    linear=True,
)
def copy_rule(site: Site) -> float:
    """Each output entry is a copy of one input entry (or a constant): sqrt(max copies of an entry)."""
    argument = first_tensor(site)
    factor = monomial_norm(site, argument)
    if factor > 1 + 2 * SAFETY_MARGIN:
        site.record(
            site.node.target.__name__.split(".")[0],
            factor,
            f"exact (an entry is copied at most {round(factor**2)} times)",
        )
    return factor * site.lip(argument)


@rule(aten("copy"), linear=True)
def _copy_into(site: Site) -> float:
    """copy(self, src) is src broadcast to self's shape (self's values are overwritten): sqrt(copies)."""
    return broadcast_copies(site, "src") * site.lip("src")


@rule(aten("slice_scatter", "select_scatter", "diagonal_scatter"), linear=True)
def _scatter(site: Site) -> float:
    """self with a part replaced by src: the two parts are disjoint, so sqrt(L_self^2 + L_src^2)."""
    return math.hypot(site.lip("self"), site.lip("src"))


@rule(aten("pad"), linear=True)
def _pad(site: Site) -> float:
    if site.value("mode") == "circular" and all(absorbs_circular_pad(user) for user in site.node.users):
        return site.lip("self")  # unused: every user is a convolution bounded exactly through the pad
    return copy_rule(site)


@rule(aten("cat", "concat", "concatenate", "stack", "hstack", "vstack"), linear=True)
def _concatenation(site: Site) -> float:
    """[f(x), g(x)] has ||difference||^2 = ||f difference||^2 + ||g difference||^2: sqrt(sum L^2)."""
    return site.lip("tensors")


@rule(aten("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split"), linear=True)
def _split(site: Site) -> tuple[float, ...]:
    """Each piece is a restriction of the input: its bound is at most the input's."""
    return like_value(site.node, site.lip(first_tensor(site)))


@rule(operator.getitem)
def _getitem(site: Site) -> float:
    source, index = site.node.args
    bound = site.walker.bounds[source]
    return bound[index] if isinstance(bound, tuple) else bound
