"""The one exception family of lipcheck.

Low-level code raises these with short facts; the public entry points add the context (the file, the
flag) the user needs. The command line turns any of them into one line on stderr and exit code 2,
except `AuditFailedError`, which is exit code 3.
"""

from __future__ import annotations


class LipcheckError(Exception):
    """Base class of every error lipcheck raises on purpose."""


class InputError(LipcheckError, ValueError):
    """An argument, a tensor or a file is not what lipcheck can work with."""


class ModelOutputError(LipcheckError):
    """The model returned something that is not a usable batch of outputs."""


class BatchCouplingError(LipcheckError):
    """The model mixes samples of a batch, so per-sample Jacobians are not defined by one batch."""


class AuditFailedError(LipcheckError):
    """The computation itself failed (every sample diverged, the model produced NaN)."""


class UnsupportedOperationError(LipcheckError):
    """A model cannot be bounded: it holds an operation without a Lipschitz rule, or has no graph to walk."""
