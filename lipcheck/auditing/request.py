"""What an audit is asked to do, as one frozen value checked before anything is loaded.

`AuditRequest` gathers the model source, the data source, the `Settings`, the gate's rules, the bound
and the outputs. The command line builds one from its flags, `lipcheck.audit` from its arguments, and
`auditing.run` carries it out. Building one validates it (every choice and range, the flags that go
together), so a usage error costs no model load. Torch-free: the CLI imports it at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipcheck.errors import InputError
from lipcheck.io.file_formats import MAX_READ_BYTES
from lipcheck.options.choices import WORKER_TIMEOUT_SECONDS, BoundMethod, Format
from lipcheck.options.limits import check_worker_timeout
from lipcheck.report import Settings
from lipcheck.report.gate import RuleOptions


@dataclass(frozen=True)
class ModelSource:
    """The model: a file path (with `arch`, `arch_kwargs` and `trust_pickle` as for `load_model`), a
    module or callable already in memory, or None with `arch`: the module that factory returns."""

    model: Any
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    trust_pickle: bool = False

    @property
    def is_path(self) -> bool:
        return isinstance(self.model, (str, Path))

    @property
    def is_factory(self) -> bool:
        """An --arch factory alone, without a weights file."""
        return self.model is None and self.arch is not None

    def validate(self) -> None:
        if self.is_factory:
            if self.trust_pickle:
                raise InputError("--trust-pickle goes with a pickled model file: drop it with --arch alone")
            return
        if self.model is None:
            raise InputError(
                "no model given: give a model file (MODEL), or --arch package.module:factory to audit the "
                "module that factory returns"
            )
        if not self.is_path and not callable(self.model):
            raise InputError(
                f"model must be a path, an nn.Module or a callable, got {type(self.model).__name__}"
            )
        if not self.is_path and (self.arch is not None or self.arch_kwargs or self.trust_pickle):
            raise InputError("arch, arch_kwargs and trust_pickle go with a model file, not a module")


@dataclass(frozen=True)
class DataSource:
    """The data: a path (`key`, `limit` as for `open_dataset`), a tensor (B, ...), an iterable of
    batches (a DataLoader; `key` picks the entry of a tuple or dict batch), or, with `random_shape`
    and `num_samples`, standard normal samples seeded by the settings' seed."""

    data: Any = None
    key: str | None = None
    limit: int | None = None
    random_shape: tuple[int, ...] | None = None
    num_samples: int | None = None
    max_read_bytes: int = MAX_READ_BYTES  # the largest array read whole (an .npz member)

    def validate(self) -> None:
        random = self.random_shape is not None
        if (self.data is None) == (not random):
            raise InputError(
                "give the data with --data PATH, or --random SHAPE --num-samples N (one of them)"
            )
        if random and self.num_samples is None:
            raise InputError("--random needs --num-samples N, the number of samples to draw")
        if not random and self.num_samples is not None:
            raise InputError("--num-samples goes with --random; with --data use --limit N")
        if random and self.limit is not None:
            raise InputError("--limit goes with --data; with --random use --num-samples N")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        if self.max_read_bytes < 1:
            raise InputError(f"--max-read-bytes must be at least 1, got {self.max_read_bytes}")


@dataclass(frozen=True)
class AuditRequest:
    """One audit: what to load, how to measure, what to judge, where the report goes.

    `bound` asks for the certified upper bound (implied by `rules.fail_above_bound`), with `assume`d
    constants for operations without a rule, composed by `bound_method` ("lipsdp", "liplt" or "product").
    `outputs` and `format` are for whoever renders the report (`auditing.run` returns it). With
    `save_directions`, the report keeps the most amplified directions of the `top` samples of largest
    sigma (all when None) for the caller to write there; `pictures` is how many of the worst samples keep
    their input too (the HTML report draws them). `resume` is the folder of the progress journal
    (`--resume`); `worker_timeout` how long a rank of a sharded audit waits for the others
    (`--worker-timeout`). Raises InputError naming the flag when the request is
    inconsistent.
    """

    model: ModelSource
    data: DataSource
    settings: Settings = field(default_factory=Settings)
    rules: RuleOptions = field(default_factory=RuleOptions)
    bound: bool = False
    assume: Mapping[str, float] = field(default_factory=dict)
    bound_method: str = "lipsdp"
    outputs: tuple[Path, ...] = ()
    format: Format | None = None
    resume: Path | None = None
    worker_timeout: float = WORKER_TIMEOUT_SECONDS
    save_directions: Path | None = None
    top: int | None = None
    pictures: int = 0

    def __post_init__(self) -> None:
        self.model.validate()
        self.data.validate()
        self.settings.validate()
        self.rules.validate()
        if self.bound_method not in {choice.value for choice in BoundMethod}:
            raise InputError(
                f"--bound-method {self.bound_method!r} is not one of "
                f"{', '.join(choice.value for choice in BoundMethod)}"
            )
        if self.bound_method != BoundMethod.lipsdp.value and not self.with_bound:
            raise InputError(
                "--bound-method goes with --bound (or --fail-above-bound): it composes the bound"
            )
        if not self.worker_timeout > 0:
            raise InputError(f"--worker-timeout must be a number of seconds > 0, got {self.worker_timeout:g}")
        check_worker_timeout(self.worker_timeout)
        if self.resume is not None and Path(self.resume).is_file():
            raise InputError(
                f"--resume '{self.resume}' is a file: give a folder for the audit's journal (it is created)"
            )
        if self.assume and not self.with_bound:
            raise InputError("--assume goes with --bound (or --fail-above-bound): it is used by the bound")
        if self.resume is not None and (self.save_directions is not None or self.pictures):
            raise InputError(
                "--resume cannot go with --save-directions or an HTML report: the directions of the batches "
                "in the journal are not kept; write those without --resume"
            )
        if self.top is not None and self.save_directions is None:
            raise InputError("--top goes with --save-directions FILE.safetensors: it keeps the K largest")
        if self.top is not None and self.top < 1:
            raise InputError(f"--top must be at least 1, got {self.top}")
        if self.save_directions is not None and Path(self.save_directions).suffix != ".safetensors":
            raise InputError(
                f"--save-directions '{self.save_directions}' is written as safetensors: give a file name "
                "ending in .safetensors"
            )

    @property
    def with_bound(self) -> bool:
        return self.bound or self.rules.fail_above_bound is not None

    def inputs(self) -> dict[str, Path | None]:
        """What this audit reads, by what it is ("the model (MODEL)"): no output may overwrite them."""
        from lipcheck.io.architectures import arch_file  # the audit loads the model next: torch is due anyway

        model, data = self.model, self.data
        return {
            "the model (MODEL)": Path(model.model) if model.is_path else None,
            "the data (--data)": Path(data.data) if isinstance(data.data, (str, Path)) else None,
            "the baseline (--baseline)": self.rules.baseline,
            "the --arch file": arch_file(model.arch),
        }
