"""The one exception family of lipcheck.

Low-level code raises these with short facts; the public entry points add the context (the file, the
flag, the samples) the user needs, once, with `raise error.with_context(...) from error`. The command
line maps them to exit codes in one place (`cli.ExitStatus`): `AuditFailedError` is 3 (the audit
itself failed), every other one 2 (a usage or input error).
"""

from __future__ import annotations

from typing import Any


class LipcheckError(Exception):
    """Base class of every error lipcheck raises on purpose.

    `shared` is True for the failure of a sharded audit that every rank raises alike (rank 0 says it).
    """

    shared: bool = False

    def with_context(self, context: str) -> LipcheckError:
        """The same error (class and attributes) with `context: ` before its message.

        Built without calling the constructor, so a subclass with another signature keeps working;
        raise it `from` the original.
        """
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        error.args = (f"{context}: {self}",)
        return error


class InputError(LipcheckError, ValueError):
    """An argument, a tensor or a file is not what lipcheck can work with."""


class ModelOutputError(LipcheckError):
    """The model returned something that is not a usable batch of outputs."""


class BatchCouplingError(LipcheckError):
    """The model mixes samples of a batch, so per-sample Jacobians are not defined by one batch."""


class AuditFailedError(LipcheckError):
    """The computation itself failed (no sample converged, the model produced NaN, out of memory).

    `report` is the report of the figures measured anyway (no sample converged), else None.
    """

    report: Any = None


class DisconnectedOutputError(AuditFailedError):
    """The model's output has no autograd path to its input (a detach, torch.no_grad, integer values),
    so its Jacobian cannot be measured: a sigma of 0 would claim a constant model."""


class InconsistentDerivativesError(AuditFailedError):
    """The model's two derivatives are not products of one Jacobian: <J u, w> and <u, J^T w> differ by
    a relative `gap` above `tolerance` at batch position `sample` (the adjoint test). No spectral norm
    is defined from such products; `suggestion` names a product that agrees with finite differences."""

    def __init__(
        self,
        gap: float,
        tolerance: float,
        sample: int,
        dtype: str,
        product: str,
        suggestion: str | None = None,
    ) -> None:
        self.gap, self.tolerance, self.sample = gap, tolerance, sample
        self.dtype, self.product, self.suggestion = dtype, product, suggestion
        how = "forward-mode AD" if product == "forward" else "double backward"
        fix = (
            f"audit it with --product {suggestion} (product='{suggestion}'), whose products pass this test "
            "and agree with finite differences"
            if suggestion is not None
            else "no other product of lipcheck passes this test and agrees with finite differences here: "
            "check the backward (and jvp) of the model's custom autograd Functions, and report a wrong "
            "derivative of a torch operation"
        )
        super().__init__(
            f"the model's forward-mode and reverse-mode derivatives disagree: J u (by {how}) and J^T w "
            f"(reverse mode) give <J u, w> and <u, J^T w> a relative {gap:.3g} apart at sample {sample} "
            f"of the batch (the adjoint test allows {tolerance:.2g} in {dtype}), so they are not products "
            f"of one Jacobian and no spectral norm is defined from them; {fix}"
        )

    def with_suggestion(self, suggestion: str) -> InconsistentDerivativesError:
        """The same failure, with the product to try named in its message."""
        return InconsistentDerivativesError(
            self.gap, self.tolerance, self.sample, self.dtype, self.product, suggestion
        )


class UnsupportedOperationError(LipcheckError):
    """A model cannot be bounded: it holds an operation without a Lipschitz rule, or has no graph to walk."""


class LipcheckWarning(UserWarning):
    """Something the user chose to accept, e.g. comparing reports of other data (--allow-mismatch)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, for a one-line report of an exception lipcheck did not raise."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def describe(error: BaseException) -> str:
    """'TypeName: first line of the message', how messages quote an exception they wrap."""
    return f"{type(error).__name__}: {first_line(error)}"
