"""ONNX model files, converted to a torch module with onnx2torch (the optional extra ``lipcheck[onnx]``).

The converted module is audited like any other, in the forward-once design, so everything depends on
the conversion being faithful. It is trusted only as far as it is checked:

- The file is sniffed from its content (the protobuf fields a ModelProto starts with), parsed with
  `onnx`, and checked with `onnx.checker`. External tensor data is read only from files beside the
  model (a location outside the model's folder is refused), each checked against its file's size.
- onnx2torch lags the newest opsets (its Constant stops at opset 13's definition, so a file exported at
  opset 19 fails). When some node has no converter at the file's opset, the file is brought down with
  `onnx.version_converter` to the highest opset at which every node has one, and only where that is
  exact: the converted graph must hold the same operators in the same order (the adapters changed
  versions and attributes, not the computation). The report says so in its notes.
- An operator that still has no converter, or that has no useful gradient on the data path (ArgMax,
  Round, Floor, a Cast to integers: its Jacobian is zero or undefined, so sigma would be meaningless),
  is refused with exit 2 naming the operator and its node.
- When onnxruntime is installed, the first batch the module sees is also run through onnxruntime on
  the original file; outputs that disagree beyond `RTOL` of the output's scale are refused (exit 2).
  This costs one onnxruntime session (built at load) and one extra forward pass of one batch.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipcheck.errors import InputError, UnsupportedOperationError, describe, first_line

EXTRA_HINT = (
    "install the ONNX extra: pip install 'lipcheck[onnx]' (onnx and onnx2torch; onnxruntime to cross-check)"
)

# The outputs of onnxruntime and the converted module agree when every element differs by at most
# RTOL times the largest magnitude of onnxruntime's output (float32 kernels differ in summation order).
RTOL = 1e-4

# The oldest opset tried when bringing a file down for onnx2torch (its converters start at opset 9).
OLDEST_OPSET = 9

# Operators whose output does not depend smoothly on their input: on the data path their Jacobian is
# zero almost everywhere or undefined, so an audit would report a meaningless sigma.
NO_GRADIENT = frozenset(
    {"ArgMax", "ArgMin", "Round", "Floor", "Ceil", "Sign", "NonZero", "QuantizeLinear",
     "DynamicQuantizeLinear",
     "Hardmax", "Multinomial", "Bernoulli", "Unique", "TopK"}
)  # fmt: skip

# Operators whose output does not depend on their input's values: the data path stops there (a Shape
# feeding a Resize's sizes, a comparison feeding a Where's condition).
VALUE_FREE = frozenset(
    {"Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike", "Equal",
     "Greater",
     "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf"}
)  # fmt: skip

# ModelProto's field numbers and their wire types (0 varint, 2 length-delimited), for sniffing.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
# Attribute values an operator gained in a later opset, which relabelling a file down would misread.
_NEWER_VALUES = {
    ("Pad", "mode", b"wrap"): 19,
    ("Resize", "coordinate_transformation_mode", b"half_pixel_symmetric"): 19,
}
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16 (onnx.TensorProto)
# The numpy type onnxruntime takes for an input type (an audit in float64 feeds a float32 file).
_RUNTIME_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class OnnxGraph:
    """A converted ONNX file and what `inspect` and the report say about it.

    Attributes:
        module: the converted module (an `OnnxModule`), in eval mode.
        inputs, outputs: (name, shape, dtype) per graph input and output; a dynamic dimension is its
            name in the file ("batch"), or "?" when unnamed.
        opset: the default-domain opset of the file.
        converted_opset: the opset the module was converted at (below `opset` when brought down).
        operators: the number of nodes of the main graph.
        producer: the tool that wrote the file ("pytorch 2.13.0"), or "".
        notes: what a reader of the figures must know (the opset conversion, the cross-check).
    """

    module: nn.Module
    inputs: tuple[tuple[str, tuple[int | str, ...], str], ...]
    outputs: tuple[tuple[str, tuple[int | str, ...], str], ...]
    opset: int
    converted_opset: int
    operators: int
    producer: str
    notes: tuple[str, ...]


def is_onnx(path: Path, head: bytes) -> bool:
    """An ONNX ModelProto: protobuf fields of ModelProto in field order, starting with ir_version.

    The head is walked as protobuf wire format: an ir_version varint (field 1) first, then only
    ModelProto's fields with their wire types, until the head ends.
    """
    if len(head) < 4 or head[0] != 0x08:
        return False
    position, last_field = 0, 0
    while position < len(head):
        key, position = _varint(head, position)
        if key is None:
            return True  # the head ended inside a key
        field, wire = key >> 3, key & 7
        if _MODEL_FIELDS.get(field) != wire or field < last_field:
            return False
        last_field = field
        value, position = _varint(head, position)
        if value is None:
            return True
        if field == 1 and not 1 <= value <= 64:
            return False
        if wire == 2:
            position += value
    return last_field >= 1


def _varint(data: bytes, position: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            return None, len(data)
    return None, position


def _import(name: str, path: Path) -> Any:
    try:
        if name == "onnx2torch" and "onnx2torch" not in sys.modules and not _torchvision_works():
            with _torchvision_stand_in():
                return importlib.import_module(name)
        return importlib.import_module(name)
    except ImportError as error:
        raise InputError(f"model file '{path}' is an ONNX file, which needs {name}: {EXTRA_HINT}") from error
    except Exception as error:  # a broken install is not the file's fault
        raise InputError(
            f"model file '{path}' is an ONNX file, and {name} cannot be imported here ({describe(error)}): "
            f"repair the installation ({EXTRA_HINT})"
        ) from error


def _torchvision_works() -> bool:
    """Whether torchvision imports: missing, or built for another torch (a CUDA wheel beside a CPU
    torch), it does not, and leaves nothing half-imported behind."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or OSError/RuntimeError from a build for another torch
        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]
        return False
    return True


def _needs_torchvision(*args: Any, **kwargs: Any) -> Any:
    raise UnsupportedOperationError(
        "this ONNX graph uses NonMaxSuppression or RoiAlign, which onnx2torch runs with torchvision; both "
        "are detection post-processing without a gradient in the input, so they are not audited"
    )


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """onnx2torch imports torchvision at import time, for its NonMaxSuppression and RoiAlign converters
    only. Where torchvision is missing or broken, those two get a stand-in that refuses them while
    onnx2torch is imported; the stand-in is removed from `sys.modules` right after, so no other code
    of the process ever sees it."""
    stand_in = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = ops.batched_nms = _needs_torchvision  # type: ignore[attr-defined]
    stand_in.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    try:
        yield
    finally:
        for module in ("torchvision", "torchvision.ops"):
            if sys.modules.get(module) in (stand_in, ops):
                del sys.modules[module]


def load_onnx(path: Path) -> OnnxGraph:
    """Parse, check, bring down where needed and exactly, convert, and wrap the ONNX file at `path`."""
    onnx = _import("onnx", path)
    _import("onnx2torch", path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise InputError(
            f"model file '{path}' looks like ONNX but cannot be parsed ({describe(error)}): "
            "export or copy it again"
        ) from error
    _load_external_data(onnx, proto, path)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as error:
        raise InputError(
            f"model file '{path}' is not a valid ONNX model ({first_line(error)}): export it again"
        ) from error
    opset = _default_opset(proto)
    _refuse_no_gradient(proto, path)
    converted, notes = _convertible(onnx, proto, opset, path)
    module = _convert(converted, path)
    checker, checked = _runtime_check(proto, path)
    notes.append(checked)
    graph = proto.graph
    return OnnxGraph(
        module=OnnxModule(module, checker),
        inputs=tuple(_value_info(onnx, value) for value in _graph_inputs(graph)),
        outputs=tuple(_value_info(onnx, value) for value in graph.output),
        opset=opset,
        converted_opset=_default_opset(converted),
        operators=len(graph.node),
        producer=" ".join(part for part in (proto.producer_name, proto.producer_version) if part),
        notes=tuple(notes),
    )


def _graph_inputs(graph: Any) -> list[Any]:
    """The graph's real inputs: older exporters list the initializers (weights) among them."""
    weights = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in weights]


def _value_info(onnx: Any, value: Any) -> tuple[str, tuple[int | str, ...], str]:
    tensor = value.type.tensor_type
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim
    )
    try:
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except Exception:  # an element type numpy lacks (bfloat16, float8): its ONNX name
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    return value.name, shape, dtype


def _default_opset(proto: Any) -> int:
    versions = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    return versions[0] if versions else 0


def _load_external_data(onnx: Any, proto: Any, path: Path) -> None:
    """Read the tensors stored outside the file, only from files beside the model, each within its file."""
    folder = path.resolve().parent
    external = [
        tensor
        for tensor in _tensors(proto.graph)
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL
    ]
    for tensor in external:
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        source = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in source.parents:
            raise InputError(
                f"model file '{path}' keeps tensor '{tensor.name}' in {location!r}, outside the model's "
                "folder: external data is read only from files beside the model; put it there"
            )
        if not source.is_file():
            raise InputError(
                f"model file '{path}' keeps tensor '{tensor.name}' in '{location}', which does not exist "
                "beside it: copy the external data file next to the model"
            )
        offset, length = int(entries.get("offset") or 0), entries.get("length")
        size = source.stat().st_size
        if offset > size or (length is not None and offset + int(length) > size):
            raise InputError(
                f"model file '{path}' declares tensor '{tensor.name}' at bytes "
                f"{offset}..{offset + int(length or 0)} "
                f"of '{location}', which has {size}: the external data file is truncated; copy it again"
            )
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(folder))
        except Exception as error:
            raise InputError(
                f"model file '{path}': its external data cannot be read ({describe(error)}): copy it again"
            ) from error


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(sub)


def _node_name(node: Any, index: int) -> str:
    return node.name or f"#{index} ({node.op_type} -> {', '.join(node.output)})"


def _refuse_no_gradient(proto: Any, path: Path) -> None:
    """Refuse an operator without a useful gradient on the data path: from a graph input to an output."""
    graph = proto.graph
    reached = {value.name for value in _graph_inputs(graph)}
    for index, node in enumerate(graph.node):
        if node.op_type in VALUE_FREE or not reached.intersection(node.input):
            continue
        if node.op_type in NO_GRADIENT or node.op_type == "Cast" and not _casts_to_float(node):
            what = "a Cast to a non-float type" if node.op_type == "Cast" else f"operator '{node.op_type}'"
            raise InputError(
                f"model file '{path}' has {what} (node '{_node_name(node, index)}') on the path from its "
                "input, "
                "which has no gradient (its Jacobian is zero or undefined), so sigma would be meaningless: "
                "audit the model without it (export the part before it)"
            )
        reached.update(node.output)


def _casts_to_float(node: Any) -> bool:
    return any(attribute.name == "to" and attribute.i in _FLOAT_TYPES for attribute in node.attribute)


def _missing_converters(proto: Any, opset: int) -> list[tuple[str, str]]:
    """(operator, node) of every node of the main graph that onnx2torch has no converter for at `opset`."""
    from onnx2torch.node_converters import get_converter

    missing = []
    for index, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx"):
            missing.append((f"{node.domain}.{node.op_type}", _node_name(node, index)))
            continue
        try:
            get_converter(node.op_type, opset)
        except NotImplementedError:
            missing.append((node.op_type, _node_name(node, index)))
    return missing


def _convertible(onnx: Any, proto: Any, opset: int, path: Path) -> tuple[Any, list[str]]:
    """The model onnx2torch can convert: the file itself, or the file brought down exactly to the highest
    opset at which every node has a converter; with the notes that say which."""
    missing = _missing_converters(proto, opset)
    if not missing:
        return proto, []
    target = next(
        (lower for lower in range(opset - 1, OLDEST_OPSET - 1, -1) if not _missing_converters(proto, lower)),
        None,
    )
    operator, node = missing[0]
    refusal = (
        f"model file '{path}' has operator '{operator}' (node '{node}') that onnx2torch cannot convert "
        "to torch "
        f"at opset {opset}"
    )
    if target is None:
        more = f" (and {len(missing) - 1} more nodes)" if len(missing) > 1 else ""
        raise InputError(
            f"{refusal}{more}, nor at any older opset: export the model without it, or as torch.export .pt2"
        )
    lowered, how = _brought_down(onnx, proto, target)
    if lowered is None:
        raise InputError(
            f"{refusal}, and bringing it down to opset {target} is not exact ({how}): "
            f"export it at opset {target} or older"
        )
    return lowered, [f"ONNX opset {opset} brought down to {target} for onnx2torch, exactly: {how}"]


def _brought_down(onnx: Any, proto: Any, target: int) -> tuple[Any | None, str]:
    """`proto` at opset `target` and how it was brought there, or None and why that is not exact.

    First onnx.version_converter, accepted when its adapters kept the same operators in the same order
    (they changed versions and attributes, not the computation). Its down adapters are few (none for
    Pad 19 -> 18 or ConstantOfShape 20 -> 19), so next the opset is relabelled, accepted when the file
    checks (onnx.checker with type inference) against the older definitions, so every attribute, input
    and type it uses exists there, and it uses no attribute value added later (`_NEWER_VALUES`).
    """
    from onnx import version_converter

    before = [node.op_type for node in proto.graph.node]
    try:
        lowered = version_converter.convert_version(proto, target)
    except Exception as error:
        failure = f"onnx.version_converter stopped ({first_line(error).rpartition(': ')[2]})"
    else:
        if [node.op_type for node in lowered.graph.node] == before:
            return lowered, f"onnx.version_converter kept the same {len(before)} operators in the same order"
        failure = "onnx.version_converter rewrote operators"
    relabelled = type(proto)()
    relabelled.CopyFrom(proto)
    for entry in relabelled.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    for node in relabelled.graph.node:
        for attribute in node.attribute:
            since = _NEWER_VALUES.get((node.op_type, attribute.name, attribute.s))
            if since is not None and since > target:
                return (
                    None,
                    f"{failure}; node '{node.name}' uses {attribute.name}={attribute.s.decode()!r} "
                    f"of opset {since}",
                )
    try:
        onnx.checker.check_model(relabelled, full_check=True)
    except Exception as error:
        return None, f"{failure}; at opset {target}: {first_line(error)}"
    return relabelled, (
        f"{failure}, so the opset was relabelled: every node checks against the opset-{target} definitions "
        "(the newer ones only add types and options this file does not use)"
    )


def _convert(proto: Any, path: Path) -> nn.Module:
    from onnx2torch import convert

    try:
        module = convert(proto)
    except NotImplementedError as error:
        raise InputError(
            f"model file '{path}' has an operator onnx2torch cannot convert ({first_line(error)}): "
            "export the "
            "model without it, or as torch.export .pt2"
        ) from error
    except Exception as error:
        raise InputError(
            f"model file '{path}' cannot be converted to torch by onnx2torch ({describe(error)}): export it "
            "again, or as torch.export .pt2"
        ) from error
    return module.eval()


class _RuntimeChecker:
    """Runs one batch through onnxruntime on the original file and compares it with the module's output."""

    def __init__(self, session: Any, path: Path) -> None:
        self.session, self.path = session, path

    def compare(self, inputs: Sequence[torch.Tensor], outputs: Any) -> None:
        feed = {}
        for spec, value in zip(self.session.get_inputs(), inputs, strict=False):
            array = value.detach().cpu().numpy()
            dtype = _RUNTIME_TYPES.get(spec.type)
            feed[spec.name] = array.astype(dtype) if dtype is not None else array
        expected = self.session.run(None, feed)
        got = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        for index, (reference, value) in enumerate(zip(expected, got, strict=False)):
            if not isinstance(value, torch.Tensor):
                continue
            actual = value.detach().double().cpu().numpy()
            reference = np.asarray(reference, dtype=np.float64)
            if actual.shape != reference.shape:
                raise InputError(
                    f"model file '{self.path}': the converted module's output {index} has shape "
                    f"{actual.shape}, onnxruntime's {reference.shape}: the conversion is not faithful; "
                    "audit a torch.export .pt2"
                )
            scale = float(np.abs(reference).max(initial=0.0)) or 1.0
            difference = float(np.abs(actual - reference).max(initial=0.0))
            if not difference <= RTOL * scale:
                raise InputError(
                    f"model file '{self.path}': the converted module disagrees with onnxruntime on the first "
                    f"batch (output {index}: largest difference {difference:.3g}, "
                    f"allowed {RTOL:g} x {scale:.3g}): "
                    "the conversion is not faithful; audit a torch.export .pt2 of the model instead"
                )


def _runtime_check(proto: Any, path: Path) -> tuple[_RuntimeChecker | None, str]:
    try:
        runtime = importlib.import_module("onnxruntime")
    except ImportError:
        return None, "onnxruntime is not installed: the ONNX conversion was not cross-checked"
    try:
        options = runtime.SessionOptions()
        options.log_severity_level = 3
        session = runtime.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise InputError(
            f"model file '{path}' cannot be run by onnxruntime to cross-check the conversion "
            f"({first_line(error)}): check the file with onnxruntime, or uninstall onnxruntime to skip "
            "the check"
        ) from error
    return _RuntimeChecker(session, path), (
        f"the first batch was cross-checked against onnxruntime {runtime.__version__} "
        f"(agreement within {RTOL:g} of the output's scale)"
    )


class OnnxModule(nn.Module):
    """The converted module; its first call (outside tracing) is cross-checked against onnxruntime."""

    def __init__(self, converted: nn.Module, checker: _RuntimeChecker | None) -> None:
        super().__init__()
        self.converted = converted
        self._checker = checker

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs = self.converted(*inputs)
        checker = self._checker
        if checker is not None and not _tracing():
            self._checker = None
            checker.compare(inputs, outputs)
        return outputs


def _tracing() -> bool:
    """Whether the call is being traced (torch.export for `lipcheck bound`), where no numbers exist."""
    with contextlib.suppress(Exception):
        return bool(torch.compiler.is_compiling())
    return False
