"""lipcheck: per-sample Jacobian spectral norms and Lipschitz audits of PyTorch models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lipcheck.errors import (
    AuditFailedError,
    BatchCouplingError,
    DisconnectedOutputError,
    InconsistentDerivativesError,
    InputError,
    LipcheckError,
    LipcheckWarning,
    ModelOutputError,
    UnsupportedOperationError,
)
from lipcheck.options.version import __version__

if TYPE_CHECKING:
    from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
    from lipcheck.auditing.run import audit
    from lipcheck.auditing.search import SearchResult, worst_case_search
    from lipcheck.bounds import BoundReport, LayerBound, upper_bound
    from lipcheck.engine import JacobianOperator, SpectralNormResult, spectral_norm
    from lipcheck.engine.regularisers import FNEJacobianSpectralNorm, JacobianSpectralNorm
    from lipcheck.report import Report, Settings

# Exports that need torch, imported on first use: `lipcheck gate` and `lipcheck compare` read saved
# reports and start in a fraction of a second without it.
_LAZY = {
    "audit": "lipcheck.auditing.run",
    "AuditRequest": "lipcheck.auditing.request",
    "DataSource": "lipcheck.auditing.request",
    "ModelSource": "lipcheck.auditing.request",
    "Report": "lipcheck.report",
    "Settings": "lipcheck.report",
    "BoundReport": "lipcheck.bounds",
    "LayerBound": "lipcheck.bounds",
    "upper_bound": "lipcheck.bounds",
    "JacobianOperator": "lipcheck.engine",
    "SpectralNormResult": "lipcheck.engine",
    "spectral_norm": "lipcheck.engine",
    "FNEJacobianSpectralNorm": "lipcheck.engine.regularisers",
    "JacobianSpectralNorm": "lipcheck.engine.regularisers",
    "SearchResult": "lipcheck.auditing.search",
    "worst_case_search": "lipcheck.auditing.search",
}

__all__ = [
    "AuditFailedError",
    "AuditRequest",
    "BatchCouplingError",
    "DisconnectedOutputError",
    "InconsistentDerivativesError",
    "BoundReport",
    "FNEJacobianSpectralNorm",
    "InputError",
    "JacobianOperator",
    "JacobianSpectralNorm",
    "LayerBound",
    "DataSource",
    "LipcheckError",
    "LipcheckWarning",
    "ModelOutputError",
    "ModelSource",
    "Report",
    "SearchResult",
    "Settings",
    "SpectralNormResult",
    "UnsupportedOperationError",
    "__version__",
    "audit",
    "spectral_norm",
    "upper_bound",
    "worst_case_search",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lipcheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
