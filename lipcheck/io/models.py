"""Load a model checkpoint as a callable, and describe what was loaded.

Model files are untrusted input. The format is detected from the file's content, never from its
suffix alone, through a small table of formats (`FORMATS`): each has a name and a `detect(path,
head)` that looks at the file's first bytes (and, for zip archives, at the member names). Loading
never executes code from the file unless the user asked for it by name with `trust_pickle=True`:

- ``torch.export``: a ``.pt2`` archive made by ``torch.export.save`` (the recommended format),
- ``torchscript``: an archive made by ``torch.jit.save``,
- ``safetensors``: weights only, the module comes from an architecture factory (``--arch``),
- ``state-dict``: a ``torch.save``'d dict of tensors, loaded with ``weights_only=True``, plus ``--arch``,
- ``pickle``: a whole pickled module, loaded only with ``trust_pickle=True``,
- ``onnx``: an ONNX file, converted to a torch module with onnx2torch (`lipcheck.io.onnx`, the extra
  ``lipcheck[onnx]``).

With no file, ``--arch`` alone audits the module its factory returns (``factory``, `load_factory`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipcheck.errors import AuditFailedError, InputError, describe, first_line
from lipcheck.io.architectures import load_arch
from lipcheck.io.datasets import converts_to_float
from lipcheck.io.file_formats import ZIP_MAGIC, is_safetensors, is_torch_save, read_head, zip_members
from lipcheck.io.onnx import is_onnx, load_onnx

_STATE_DICT_KEYS = ("state_dict", "model_state_dict")
_FIX_FORMAT = "save it with torch.export.save (recommended), torch.jit.save or safetensors"


@dataclass(frozen=True)
class InputSpec:
    """One input of a model as its file records it; `shape` uses names for dynamic dimensions."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to call, and where it came from.

    Attributes:
        module: the callable, in eval mode where the format allows it (an exported program's module
            keeps the mode it was exported in).
        path: the model file as the user gave it.
        format: one of `FORMATS`' names, "factory" (an --arch factory alone) or "module" (in memory).
        sha256: hex digest of the model file's bytes; without a file, of the module's parameters and
            buffers (names and bytes).
        size_bytes: size of the model file.
        parameters: number of scalar parameters.
        trusted: whether loading executed code from the file (only a pickle with trust_pickle=True).
        arch: the architecture factory (``file.py:factory``) for weight-only formats, else None.
        arch_kwargs: the keyword arguments given to the factory.
        input_spec: the inputs the file records (torch.export, ONNX), else empty.
        notes: what a reader of the figures must know about the loading (an ONNX opset brought down).
        graph: what the file says of its graph, for `inspect` (ONNX: outputs, opset, operators).
    """

    module: Callable[..., Any]
    path: str
    format: str
    sha256: str
    size_bytes: int
    parameters: int
    trusted: bool
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_spec: tuple[InputSpec, ...] = ()
    notes: tuple[str, ...] = ()
    graph: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Loaded:
    module: Any
    trusted: bool = False
    input_spec: tuple[InputSpec, ...] = ()
    notes: tuple[str, ...] = ()
    graph: Mapping[str, Any] = field(default_factory=dict)


def _is_export(path: Path, head: bytes) -> bool:
    return bool({"archive_format", "models/model.json"} & zip_members(path, head))


def _is_torchscript(path: Path, head: bytes) -> bool:
    return "constants.pkl" in zip_members(path, head)


def _load_export(path: Path) -> _Loaded:
    program = torch.export.load(str(path))
    return _Loaded(program.module(), input_spec=_export_input_spec(program))


def _export_input_spec(program: Any) -> tuple[InputSpec, ...]:
    values = {node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder"}
    specs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        name = getattr(spec.arg, "name", str(spec.arg))
        value = values.get(name)
        if isinstance(value, torch.Tensor):
            shape = tuple(_dimension(d, program) for d in value.shape)
            specs.append(InputSpec(name, shape, str(value.dtype).removeprefix("torch.")))
    return tuple(specs)


def _dimension(size: Any, program: Any) -> int | str:
    """A static size as an int; a dynamic one as its allowed range: '1..65536' for a Dim with a max,
    '0..inf' for one without (`Dim("batch")`, `Dim.AUTO`, `Dim.DYNAMIC`), and a derived dim with its
    expression, '2*s1 in 4..inf'. torch.export records an unbounded range with sympy's infinity."""
    if isinstance(size, int):
        return size
    expr = getattr(getattr(size, "node", None), "expr", None)
    if expr is None:
        return "dynamic"
    ranges = getattr(program, "range_constraints", {})
    bounds = ranges.get(expr)
    if bounds is None:
        bounds = _derived_range(expr, ranges)
    if bounds is None:
        return str(expr)
    shown = f"{_range_end(bounds.lower, '-inf')}..{_range_end(bounds.upper, 'inf')}"
    return shown if getattr(expr, "is_Symbol", False) else f"{expr} in {shown}"


def _range_end(value: Any, unbounded: str) -> str:
    """An end of a value range as digits, or `unbounded` for sympy's (or torch's int_oo) infinity."""
    if isinstance(value, int) or getattr(value, "is_Integer", False):
        return str(int(value))
    return unbounded


def _derived_range(expr: Any, ranges: Mapping[Any, Any]) -> Any:
    """The range of a derived dim's expression (2*n) from the ranges of its symbols, or None."""
    try:
        from torch.utils._sympy.value_ranges import bound_sympy

        return bound_sympy(expr, dict(ranges))
    except Exception:  # a private torch helper: without it the dim is shown by its expression alone
        return None


def _load_onnx(path: Path) -> _Loaded:
    converted = load_onnx(path)
    return _Loaded(
        converted.module,
        input_spec=tuple(InputSpec(*value) for value in converted.inputs),
        notes=converted.notes,
        graph={
            "outputs": [
                {"name": name, "shape": list(shape), "dtype": dtype}
                for name, shape, dtype in converted.outputs
            ],
            "opset": converted.opset,
            "converted_opset": converted.converted_opset,
            "operators": converted.operators,
            "producer": converted.producer,
        },
    )


def _load_torchscript(path: Path) -> _Loaded:
    return _Loaded(torch.jit.load(str(path), map_location="cpu"))


def _load_safetensors(path: Path) -> _Loaded:
    from safetensors.torch import load_file

    return _Loaded(load_file(str(path), device="cpu"))


def _load_pickle(path: Path, trust_pickle: bool) -> _Loaded:
    if trust_pickle:
        try:
            return _Loaded(torch.load(str(path), map_location="cpu", weights_only=False), trusted=True)
        except ModuleNotFoundError as error:
            raise InputError(
                f"model file '{path}' is a pickle whose code is in module '{error.name or error}', which "
                "cannot be imported here: make it importable (add the folder that holds it to PYTHONPATH, "
                f"or install its package), or {_FIX_FORMAT}"
            ) from error
        except AttributeError as error:
            if not str(error).startswith("Can't get attribute"):
                raise
            raise InputError(
                f"model file '{path}' is a pickle that needs a class its module does not have "
                f"({first_line(error)}): use the version of that code the model was saved with, or "
                f"{_FIX_FORMAT}"
            ) from error
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        needs = f" ({found.group(1)})" if found else ""
        raise InputError(
            f"model file '{path}' is a pickle that needs code to load{needs}; nothing from it was run: "
            "pass --trust-pickle only if you trust its source (loading executes code from the file), "
            f"or {_FIX_FORMAT}"
        ) from error
    return _Loaded(content)


@dataclass(frozen=True)
class ModelFormat:
    """One model file format: `detect` looks at the file, `load` reads it without running it."""

    name: str
    detect: Callable[[Path, bytes], bool]
    load: Callable[[Path, bool], _Loaded]


# Order matters: archives are told apart by their members before the generic pickle check.
FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat("torch.export", _is_export, lambda path, trust: _load_export(path)),
    ModelFormat("torchscript", _is_torchscript, lambda path, trust: _load_torchscript(path)),
    ModelFormat("safetensors", is_safetensors, lambda path, trust: _load_safetensors(path)),
    ModelFormat("onnx", is_onnx, lambda path, trust: _load_onnx(path)),
    ModelFormat("pickle", is_torch_save, _load_pickle),
)


def detect_format(path: Path) -> ModelFormat:
    """The format of the model file at `path`, from its content; InputError when none fits."""
    head = read_head(path)
    for model_format in FORMATS:
        if model_format.detect(path, head):
            return model_format
    if not head:
        raise InputError(f"model file '{path}' is empty: {_FIX_FORMAT}")
    if head.startswith(ZIP_MAGIC):
        raise InputError(
            f"model file '{path}' is a truncated or corrupt zip archive: save or copy the model again"
        )
    raise InputError(
        f"model file '{path}' is not a format lipcheck reads (torch.export .pt2, TorchScript, "
        f"safetensors, torch.save, ONNX): {_FIX_FORMAT}"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_dict(content: Any) -> dict[str, torch.Tensor] | None:
    """The tensors of a state dict, also when nested under "state_dict" as training checkpoints do."""
    if isinstance(content, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
        if content and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
            return dict(content)
    return None


def _check_weights(weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """InputError naming the first tensor of a weights file that holds no real values lipcheck can load:
    a complex one (copied into a real parameter, it would lose its imaginary part, and every sigma
    with it), one on the meta device (no values), or a quantized one."""
    for key, tensor in weights.items():
        found = None
        if tensor.is_complex():
            found = f"complex values ({str(tensor.dtype).removeprefix('torch.')})"
        elif not converts_to_float(tensor.dtype):
            found = f"{str(tensor.dtype).removeprefix('torch.')} values (torch cannot convert them to float)"
        elif tensor.device.type != "cpu":
            found = f"no values (a tensor on the {tensor.device.type} device)"
        elif tensor.is_quantized:
            found = "quantized values"
        if found is not None:
            raise InputError(
                f"weights in '{path}': tensor {key!r} holds {found}, and lipcheck audits real-valued "
                "weights only: save them as float (a complex layer as its real and imaginary parts, a "
                "quantized one dequantized)"
            )


def _fill(module: nn.Module, weights: Mapping[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load `weights` into `module` strictly, naming every key that does not fit."""
    _check_weights(weights, path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{key} {tuple(weights[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(weights))
        if weights[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shapes (file vs model) {_listing(mismatched)}")
    if problems:
        raise InputError(
            f"weights in '{path}' do not fit --arch {arch}: {'; '.join(problems)}; "
            "check --arch and --arch-kwargs"
        )
    module.load_state_dict(weights, strict=True)


def _listing(items: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(item) for item in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def wrap_model(model: Callable[..., Any]) -> LoadedModel:
    """A module or callable already in memory, described like a loaded file (`lipcheck.audit`).

    An nn.Module is put in eval mode (in place); its sha256 covers the names and bytes of its
    parameters and buffers, so two reports of the same weights carry the same hash.
    """
    name = getattr(model, "__name__", type(model).__name__)
    return LoadedModel(
        module=model,
        path=f"<{name}>",
        format="module",
        sha256=_weights_sha256(model),
        size_bytes=0,
        parameters=_count_parameters(model),
        trusted=False,
    )


def _weights_sha256(model: Any) -> str:
    """The sha256 of an in-memory model's state: the names and bytes of its parameters and buffers
    (of nothing for a plain callable). Puts an nn.Module in eval mode first (in place)."""
    digest = hashlib.sha256()
    if isinstance(model, nn.Module):
        with contextlib.suppress(NotImplementedError):  # an exported program's module refuses eval()
            model.eval()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_factory(arch: str, arch_kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    """The module an architecture factory returns, as it returns it (its own weights: random, or
    read by the factory from wherever it reads them), in eval mode.

    Running the factory is running code the user chose, as with --arch beside a weights file. With no
    file, the report records the factory and its arguments, and as `sha256` the hash of the module's
    parameters and buffers (`format` "factory"), so two audits of the same weights carry the same hash.
    """
    kwargs = dict(arch_kwargs or {})
    module = load_arch(arch, kwargs)
    return LoadedModel(
        module=module,
        path=arch,
        format="factory",
        sha256=_weights_sha256(module),
        size_bytes=0,
        parameters=_count_parameters(module),
        trusted=False,
        arch=arch,
        arch_kwargs=kwargs,
    )


def check_model_args(module: Any, kwargs: Mapping[str, Any]) -> None:
    """InputError naming --arg when the keywords cannot be passed to the module's forward with one
    input (an unknown name, or the name of the input itself), for every format alike: a TorchScript
    method has no Python signature, so its own schema gives one."""
    if not kwargs:
        return
    signature = forward_signature(module)
    if signature is None:  # a builtin or a compiled callable: the call itself will tell
        return
    try:
        signature.bind(None, **kwargs)
    except TypeError as error:
        given = " ".join(f"--arg {k}={json.dumps(v)}" for k, v in kwargs.items())
        raise InputError(
            f"{given} does not fit the model's forward{signature} ({error}): pass only its keyword "
            "parameters other than the input"
        ) from None


def forward_signature(module: Any) -> inspect.Signature | None:
    """The signature of a module's forward (without self), from Python or from a TorchScript schema."""
    forward = getattr(module, "forward", module)
    schema = getattr(forward, "schema", None)
    if schema is not None:  # a TorchScript method
        kind = inspect.Parameter
        parameters = [
            kind(
                argument.name,
                kind.KEYWORD_ONLY if argument.kwarg_only else kind.POSITIONAL_OR_KEYWORD,
                default=argument.default_value if argument.has_default_value() else kind.empty,
            )
            for argument in list(schema.arguments)[1:]  # the first is self
        ]
        return inspect.Signature(parameters)
    try:
        return inspect.signature(forward)
    except (TypeError, ValueError):
        return None


def _count_parameters(module: Any) -> int:
    parameters = getattr(module, "parameters", None)
    return sum(p.numel() for p in parameters()) if callable(parameters) else 0


def load_model(
    path: str | Path | None,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load the model at `path` (format detected from its content) and put it in eval mode; with no
    `path`, the module the factory `arch` returns (`load_factory`).

    Raises InputError naming the file or the flag to fix: missing or unreadable file, unknown or
    corrupt format, a pickle that needs code without `trust_pickle`, weights without `arch`, or
    weights that do not fit the architecture.
    """
    if path is None:
        if arch is None:
            raise InputError(
                "no model given: give a model file (MODEL), or --arch package.module:factory (or "
                "path/to/file.py:factory) to audit the module that factory returns"
            )
        if trust_pickle:
            raise InputError("--trust-pickle goes with a pickled model file: drop it with --arch alone")
        return load_factory(arch, arch_kwargs)
    file = Path(path)
    if not file.exists():
        raise InputError(f"model file '{file}' does not exist: check the path")
    if not file.is_file():
        raise InputError(f"model path '{file}' is not a file: give a checkpoint file")
    arch_kwargs = dict(arch_kwargs or {})
    model_format = detect_format(file)
    try:
        loaded = model_format.load(file, trust_pickle)
    except InputError:
        raise
    except SystemExit as error:  # a trusted pickle runs code, which cannot end lipcheck
        raise AuditFailedError(
            f"model file '{file}' raised SystemExit({error.code!r}) while loading: model code cannot end "
            "lipcheck; save the model without the exit"
        ) from error
    except Exception as error:
        raise InputError(
            f"model file '{file}' looks like {model_format.name} but cannot be read, it is truncated or "
            f"corrupt ({describe(error)}): save or copy the model again"
        ) from error

    module = loaded.module
    weights = _state_dict(module) if not callable(module) else None
    if weights is not None or model_format.name == "safetensors":
        if arch is None:
            raise InputError(
                f"model file '{file}' holds only weights ({model_format.name}): give the architecture "
                "with --arch path/to/file.py:factory (and --arch-kwargs '{...}' for its arguments)"
            )
        module = load_arch(arch, arch_kwargs)
        _fill(module, weights if weights is not None else loaded.module, file, arch)
        name = "safetensors" if model_format.name == "safetensors" else "state-dict"
    elif callable(module):
        if arch is not None:
            raise InputError(
                f"model file '{file}' holds a whole model ({model_format.name}), so --arch is not used: "
                "drop --arch (it is for weight-only files)"
            )
        name = model_format.name
    else:
        raise InputError(
            f"model file '{file}' holds a {type(module).__name__}, not a module or a dict of tensors: "
            f"{_FIX_FORMAT}"
        )
    if isinstance(module, nn.Module):
        # An exported program's module refuses eval(): it keeps the mode it was exported in.
        with contextlib.suppress(NotImplementedError):
            module.eval()
    return LoadedModel(
        module=module,
        path=str(path),
        format=name,
        sha256=file_sha256(file),
        size_bytes=file.stat().st_size,
        parameters=_count_parameters(module),
        trusted=loaded.trusted,
        arch=arch,
        arch_kwargs=arch_kwargs if arch is not None else {},
        input_spec=loaded.input_spec,
        notes=loaded.notes,
        graph=loaded.graph,
    )
