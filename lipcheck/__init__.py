"""lipcheck: per-sample Jacobian spectral norms and Lipschitz audits of PyTorch models."""

from __future__ import annotations

from lipcheck.bounds import BoundReport, LayerBound, upper_bound
from lipcheck.engine import JacobianOperator, SpectralNormResult, spectral_norm
from lipcheck.errors import (
    AuditFailedError,
    BatchCouplingError,
    InputError,
    LipcheckError,
    ModelOutputError,
    UnsupportedOperationError,
)
from lipcheck.regularisers import FNEJacobianSpectralNorm, JacobianSpectralNorm
from lipcheck.search import SearchResult, worst_case_search

__version__ = "0.1.0"

__all__ = [
    "AuditFailedError",
    "BatchCouplingError",
    "BoundReport",
    "FNEJacobianSpectralNorm",
    "InputError",
    "JacobianOperator",
    "JacobianSpectralNorm",
    "LayerBound",
    "LipcheckError",
    "ModelOutputError",
    "SearchResult",
    "SpectralNormResult",
    "UnsupportedOperationError",
    "__version__",
    "spectral_norm",
    "upper_bound",
    "worst_case_search",
]
