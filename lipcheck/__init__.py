"""lipcheck: per-sample Jacobian spectral norms and Lipschitz audits of PyTorch models."""

from __future__ import annotations

from lipcheck.engine import JacobianOperator, SpectralNormResult, spectral_norm
from lipcheck.errors import (
    AuditFailedError,
    BatchCouplingError,
    InputError,
    LipcheckError,
    ModelOutputError,
)
from lipcheck.regularisers import FNEJacobianSpectralNorm, JacobianSpectralNorm

__version__ = "0.1.0"

__all__ = [
    "AuditFailedError",
    "BatchCouplingError",
    "FNEJacobianSpectralNorm",
    "InputError",
    "JacobianOperator",
    "JacobianSpectralNorm",
    "LipcheckError",
    "ModelOutputError",
    "SpectralNormResult",
    "__version__",
    "spectral_norm",
]
