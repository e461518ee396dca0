"""The certified bound of a loaded model, for `audit --bound` and `lipcheck bound`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from lipcheck.auditing.batches import (
    select_output,
)
from lipcheck.auditing.provenance import environment, model_section
from lipcheck.bounds import upper_bound
from lipcheck.engine import operator_output
from lipcheck.errors import (
    LipcheckError,
    ModelOutputError,
)
from lipcheck.io.models import LoadedModel
from lipcheck.options.choices import Operator
from lipcheck.options.version import __version__
from lipcheck.report import (
    BoundReport,
    BoundTiming,
    ModelBoundReport,
    Settings,
)


class _AuditedFunction(torch.nn.Module):
    """x -> the audited output of module(x, **model_kwargs): what an audit measures, as one module.

    With an `operator` other than "model", the output is that operator's (2 f(x) - x or x - f(x),
    `engine.operator_output`), so its exported graph, and the bound composed over it, are of the
    operator the audit measures.
    """

    def __init__(
        self,
        module: Any,
        model_kwargs: Mapping[str, Any],
        output_key: str | None,
        operator: str = Operator.model.value,
    ) -> None:
        super().__init__()
        self.module = module
        self.model_kwargs = dict(model_kwargs)
        self.output_key = output_key
        self.operator = operator

    def forward(self, x: Tensor) -> Any:
        output = select_output(self.module(x, **self.model_kwargs), self.output_key)
        if self.operator == Operator.model:
            return output
        if not isinstance(output, Tensor):
            raise ModelOutputError(
                f"--operator {self.operator} needs one output tensor of the input's shape, and the model "
                f"returned {type(output).__name__}: pick one with --output-key"
            )
        return operator_output(output, x, self.operator)


def bound_model(
    model: LoadedModel,
    input_shape: Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    settings: Settings | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    method: str = "liplt",
    operator: str = Operator.model.value,
) -> BoundReport:
    """The certified upper bound of a loaded model (`lipcheck.upper_bound`); errors name the model file.

    With audit `settings`, the bound is of the function the audit measures: the model called with the
    settings' `model_kwargs` (`--arg`), only the output `output_key` picks (`--output-key`), and the
    settings' `operator` (2f - Id or Id - f exported as one graph and bounded through it), so the
    bracket compares like with like. Without, it is of the model called with `model_kwargs` (`lipcheck
    bound --arg`), all outputs together, as the `operator` (`lipcheck bound --operator`).
    """
    module: Any = model.module
    kwargs = settings.model_kwargs if settings is not None else (model_kwargs or {})
    output_key = settings.output_key if settings is not None else None
    operator = Operator(settings.operator if settings is not None else operator).value
    if kwargs or output_key is not None or operator != Operator.model:
        module = _AuditedFunction(module, kwargs, output_key, operator)
    try:
        bound = upper_bound(module, tuple(input_shape), assume=assume, method=method)
        return replace(bound, operator=operator)
    except LipcheckError as error:
        refused = _operator_refusal(error)
        if refused is not None:  # torch.export wraps the shape refusal of the operator: say it plainly
            raise refused.with_context(f"model '{model.path}'") from error
        raise error.with_context(f"model '{model.path}'") from error


def _operator_refusal(error: BaseException) -> ModelOutputError | None:
    """The ModelOutputError of `_AuditedFunction` (an output the operator cannot take) among the causes
    of an error of the bound, where torch.export's tracing wrapped it; None when there is none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ModelOutputError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def run_bound(
    model: LoadedModel,
    input_shape: Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    load_seconds: float = 0.0,
    method: str = "liplt",
    operator: str = Operator.model.value,
) -> ModelBoundReport:
    """`lipcheck bound`: the certified bound of a model file at one input shape, with provenance; the
    model is called with `model_kwargs` (`--arg`) besides the input, and the bound is of the
    `operator` (`--operator`: f, 2f - Id or Id - f)."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    begin = time.perf_counter()
    bound = bound_model(
        model, input_shape, assume=assume, model_kwargs=model_kwargs, method=method, operator=operator
    )
    seconds = time.perf_counter() - begin
    return ModelBoundReport(
        model=model_section(model),
        environment=environment(torch.device("cpu")),
        timing=BoundTiming(started=started, load_seconds=load_seconds, bound_seconds=seconds),
        bound=bound,
        lipcheck_version=__version__,
    )
