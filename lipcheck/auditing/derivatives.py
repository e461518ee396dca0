"""What an audit records of its Jacobian products: the product used and each batch's adjoint test.

`DerivativesRecord.add` takes every batch's engine result (it is the audit loop's result sink, beside
the directions). The first batch audited decides the product when `--product auto` asked for it
(`pinned`): later batches use that product by name, so the model is not tried twice per batch and
every batch is measured alike. `section` is the report's `Derivatives`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from lipcheck.engine import SpectralNormResult
from lipcheck.engine.products import adjoint_tolerance
from lipcheck.options.choices import Product
from lipcheck.report import AdjointBatch, Derivatives, Settings


class DerivativesRecord:
    """The product of an audit's batches, the decompositions they used, and their adjoint tests."""

    def __init__(self) -> None:
        self.product: str | None = None
        self.decompositions: set[str] = set()
        self.calls = 0
        self.batches: list[AdjointBatch] = []

    def add(self, indices: Sequence[int], result: SpectralNormResult, x: Tensor) -> None:
        """Record one batch's (data `indices`) engine result; x, its samples, is not needed."""
        if self.product is None:
            self.product, self.calls = result.product, result.model_calls_per_product
        self.decompositions.update(result.decompositions)
        if result.adjoint_gap is not None and len(indices):
            gap = float(result.adjoint_gap.max())
            self.batches.append(AdjointBatch(int(min(indices)), int(max(indices)), gap, True))

    def pinned(self, settings: Settings) -> Settings:
        """The settings of the next batch: `auto` replaced by the product the first batch chose."""
        if self.product is None or settings.product != Product.auto.value:
            return settings
        return replace(settings, product=self.product)

    def merge(self, others: Sequence[DerivativesRecord]) -> None:
        """Add the records of the other ranks of a sharded audit (their batches in data order)."""
        for other in others:
            if other is self:
                continue
            if self.product is None:
                self.product, self.calls = other.product, other.calls
            self.decompositions |= other.decompositions
            self.batches.extend(other.batches)
        self.batches.sort(key=lambda batch: batch.first)

    def section(self, settings: Settings) -> Derivatives | None:
        """The report's section; None when no batch was audited here (all read back from a journal)."""
        if self.product is None:
            return None
        dtype: torch.dtype = getattr(torch, settings.dtype)
        return Derivatives(
            product=self.product,
            decompositions=tuple(sorted(self.decompositions)),
            model_calls_per_product=self.calls,
            adjoint_tolerance=adjoint_tolerance(dtype),
            adjoint=tuple(self.batches),
        )
