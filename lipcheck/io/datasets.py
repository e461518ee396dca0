"""Open a data set as a source of batches, with memory bounded by the batch.

A data set is an indexed collection of samples of one shape. `open_dataset` detects the kind from the
path's content through a small table (`DATA_KINDS`, each with `detect` and `open`) and returns a
`Dataset` that reads any index range on demand: `.npy` files are memory-mapped and never read whole,
`.pt` files are memory-mapped where torch can, `.safetensors` tensors are sliced lazily, image folders
decode one file per sample, and random data is generated per sample from the seed (so a sample does
not depend on which batch it is read in). Only `.npz` arrays are read whole, once, because numpy
cannot map a member of a zip archive.

`Dataset.sha256` fingerprints the audited samples (what a baseline comparison needs to know the data
is the same). It is streamed from the reads an audit makes anyway, so it costs no extra pass over the
data unless it is asked for before the samples were read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import mmap
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from lipcheck.errors import InputError, describe
from lipcheck.io.file_formats import (
    MAX_READ_BYTES,
    ZIP_MAGIC,
    is_npy,
    is_npz,
    is_safetensors,
    is_torch_save,
    read_head,
    zip_names,
)
from lipcheck.io.images import open_image_folder
from lipcheck.options.limits import (
    check_read_bytes,
    check_sample_shape,
    check_samples,
    check_seed,
)

# Reads samples [start, stop) as a numpy array or a tensor of the stored dtype.
Reader = Callable[[int, int], "np.ndarray | Tensor"]

_HASH_CHUNK_BYTES = 1 << 25  # samples hashed per read when the hash is asked for before the audit


@dataclass(frozen=True)
class DataInfo:
    """What was opened: `count` samples of `sample_shape` are audited out of `total` in the source."""

    path: str | None
    kind: str
    key: str | None
    keys: tuple[str, ...]
    count: int
    total: int
    sample_shape: tuple[int, ...]
    dtype: str
    seed: int | None = None


@dataclass(frozen=True)
class _Array:
    """One array of a source before the limit is applied."""

    key: str | None
    keys: tuple[str, ...]
    total: int
    sample_shape: tuple[int, ...]
    dtype: str
    reader: Reader


class Dataset:
    """Samples read on demand: `read(start, stop)` returns (stop - start, *sample_shape) floats."""

    def __init__(self, info: DataInfo, reader: Reader) -> None:
        self.info = info
        self._reader = reader
        self._digest = hashlib.sha256()
        self._digested = 0  # samples [0, _digested) are in _digest

    def __len__(self) -> int:
        return self.info.count

    @property
    def name(self) -> str:
        if self.info.path is not None:
            return f"data file '{self.info.path}'"
        return "random data" if self.info.kind == "random" else f"in-memory {self.info.kind}"

    def read(self, start: int, stop: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Samples [start, stop) as a new tensor of `dtype`; InputError naming the first non-finite one."""
        if not 0 <= start < stop <= self.info.count:
            raise IndexError(f"samples [{start}, {stop}) are outside [0, {self.info.count})")
        chunk = self._reader(start, stop)
        if start == self._digested:
            self._digest_chunk(chunk, stop)
        if isinstance(chunk, np.ndarray):
            owned = chunk.flags.owndata and chunk.flags.writeable
            numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))  # float32 -> float32: the same names
            x = torch.from_numpy(np.array(chunk, dtype=numpy_dtype, copy=None if owned else True))
        else:
            x = chunk.to(dtype=dtype, copy=True)
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if not bool(finite.all()):
            bad = start + int((~finite).nonzero()[0, 0])
            fix = f"fix or remove it, or audit the samples before it with --limit {bad}" if bad else "fix it"
            raise InputError(f"{self.name} has NaN or Inf at sample {bad} (the first, 0-based): {fix}")
        return x

    def sha256(self) -> str:
        """The sha256 of the audited samples' bytes: samples [0, count) as stored, in C order.

        The dtype and the sample shape as stored are in `info`, beside it. Reads in order from sample 0
        (an audit's) feed the hash as they go; whatever was not read that way is read here.
        """
        per_sample = 8 * math.prod(self.info.sample_shape)
        step = max(1, _HASH_CHUNK_BYTES // max(per_sample, 1))
        for start in range(self._digested, self.info.count, step):
            stop = min(start + step, self.info.count)
            self._digest_chunk(self._reader(start, stop), stop)
        return self._digest.hexdigest()

    def _digest_chunk(self, chunk: np.ndarray | Tensor, stop: int) -> None:
        if isinstance(chunk, np.ndarray):
            self._digest.update(np.ascontiguousarray(chunk).data)
        else:  # a flat byte view also covers dtypes numpy lacks (bfloat16)
            self._digest.update(chunk.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._digested = stop

    def batches(
        self, indices: range, batch_size: int, dtype: torch.dtype = torch.float32
    ) -> Iterator[tuple[range, Tensor]]:
        """Consecutive batches (index range, x) covering `indices` (a range of step 1)."""
        for start in range(indices.start, indices.stop, batch_size):
            stop = min(start + batch_size, indices.stop)
            yield range(start, stop), self.read(start, stop, dtype)


def _check_numeric(dtype: Any, where: str) -> None:
    kind = np.dtype(dtype).kind if not isinstance(dtype, torch.dtype) else None
    if isinstance(dtype, torch.dtype):
        ok = dtype.is_floating_point or not (dtype.is_complex or dtype == torch.bool)
        ok = ok and converts_to_float(dtype)
    else:
        ok = kind in "fiu"
    if not ok:
        raise InputError(f"{where} holds {dtype} values, expected real numbers (float or integer)")


@functools.cache
def converts_to_float(dtype: torch.dtype) -> bool:
    """Whether torch converts values of `dtype` to float32: not the packed sub-byte floats
    (float4_e2m1fn_x2) or the raw bits dtypes, which a file can hold but nothing can compute with."""
    try:
        torch.zeros(16, dtype=torch.uint8).view(dtype).to(torch.float32)  # 16 bytes: any itemsize
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _check_dense(tensor: Tensor, where: str) -> None:
    """InputError for a sparse (or other non-strided) tensor: samples are read by slicing rows."""
    if tensor.layout != torch.strided:
        layout = str(tensor.layout).removeprefix("torch.")
        raise InputError(f"{where} holds a {layout} tensor, expected a dense one: save tensor.to_dense()")


def _choose(keys: Sequence[str], key: str | None, where: str) -> str:
    if not keys:
        raise InputError(f"{where} holds no arrays: give a file with at least one array of samples")
    if key is not None:
        if key not in keys:
            raise InputError(
                f"{where} has no array {key!r}; it has {_names(keys)}: choose one with --data-key"
            )
        return key
    if len(keys) > 1:
        raise InputError(f"{where} has arrays {_names(keys)}: choose one with --data-key")
    return keys[0]


def _names(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def _no_key(key: str | None, where: str) -> None:
    if key is not None:
        raise InputError(
            f"{where} holds one array, so --data-key {key!r} does not apply: drop --data-key "
            "(it chooses an array in .npz, .pt and .safetensors files)"
        )


_NPY_HEADERS: dict[tuple[int, int], Callable[[BinaryIO], tuple[tuple[int, ...], bool, np.dtype]]] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npy_layout(stream: BinaryIO, size: int, where: str) -> None:
    """InputError when the .npy content of `stream` (`size` bytes) is not an array of numbers that its
    header promises: a header cut short, Python objects, or fewer bytes of data than the header's shape
    and dtype need (a truncated file). np.load would call each of these an object array."""
    try:
        read = _NPY_HEADERS.get(np.lib.format.read_magic(stream))
        if read is None:
            return  # a format version this check does not know: np.load judges it
        shape, _, dtype = read(stream)
    except ValueError as error:
        raise InputError(
            f"{where} has an .npy header that cannot be read ({error}): it is truncated or "
            "corrupt; write it again (numpy.save)"
        ) from None
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects, not numbers: save a numeric array")
    declared = math.prod(shape) * dtype.itemsize
    held = size - stream.tell()
    if held < declared:
        raise InputError(
            f"{where} is truncated: its header declares an array of shape {shape} and dtype {dtype} "
            f"({declared:,} bytes) but {held:,} bytes follow the header; write it again (numpy.save)"
        )


def _open_npy(path: Path, key: str | None, max_read_bytes: int) -> _Array:
    where = f"data file '{path}'"
    _no_key(key, where)
    with path.open("rb") as stream:
        _check_npy_layout(stream, path.stat().st_size, where)
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    _check_numeric(array.dtype, where)
    if array.ndim == 0:
        raise InputError(f"{where} holds a scalar, expected an array of samples (N, ...)")
    return _Array(None, (), array.shape[0], tuple(array.shape[1:]), str(array.dtype), _mapped_reader(array))


def _mapped_reader(array: np.ndarray) -> Reader:
    """Copy rows [start, stop) out of a memory map, then drop the mapped pages from this process.

    Pages of a mapped file that were read count in the process's resident memory until unmapped, so
    without the drop, reading a file once through would grow the RSS to the file's size.
    """
    mapping = getattr(array, "_mmap", None)
    offset = getattr(array, "offset", 0)
    base = offset - offset % mmap.ALLOCATIONGRANULARITY  # where numpy's mapping starts in the file
    row = array.strides[0] if array.ndim and array.flags.c_contiguous else 0

    def reader(start: int, stop: int) -> np.ndarray:
        rows = np.array(array[start:stop])
        if mapping is not None and row and hasattr(mmap, "MADV_DONTNEED"):
            begin = offset - base + start * row
            begin -= begin % mmap.PAGESIZE
            end = min(offset - base + stop * row, len(mapping))
            with contextlib.suppress(OSError, ValueError):
                mapping.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        return rows

    return reader


def _open_npz(path: Path, key: str | None, max_read_bytes: int) -> _Array:
    where = f"data file '{path}'"
    with np.load(path, allow_pickle=False) as archive:
        keys = tuple(archive.files)
        chosen = _choose(keys, key, where)
        member = f"{chosen}.npy" if f"{chosen}.npy" in archive.zip.namelist() else chosen
        # Read whole (a zip member cannot be mapped): its size, as the zip directory declares it, is
        # checked before a byte is expanded; zipfile never expands more than it declares, and the
        # .npy header's array must fit in it (_check_npy_layout), so a zip bomb is refused here.
        size = archive.zip.getinfo(member).file_size
        if size > max_read_bytes:
            compressed = archive.zip.getinfo(member).compress_size
            raise InputError(
                f"{where} array {chosen!r} expands to {size:,} bytes ({compressed:,} compressed), more "
                f"than --max-read-bytes {max_read_bytes:,}: an .npz array is read whole into memory; "
                "save it as .npy (memory-mapped) or raise --max-read-bytes"
            )
        with archive.zip.open(member) as stream:
            _check_npy_layout(stream, size, f"{where} array {chosen!r}")
        array = archive[chosen]
    _check_numeric(array.dtype, f"{where} array {chosen!r}")
    if array.ndim == 0:
        raise InputError(f"{where} array {chosen!r} is a scalar, expected an array of samples (N, ...)")
    return _Array(
        chosen, keys, array.shape[0], tuple(array.shape[1:]), str(array.dtype), lambda a, b: array[a:b]
    )


def _open_pt(path: Path, key: str | None, max_read_bytes: int) -> _Array:
    where = f"data file '{path}'"
    try:
        with warnings.catch_warnings():  # torch's own deprecations, met rebuilding a quantized tensor
            warnings.filterwarnings("ignore", "TypedStorage is deprecated")
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor")
            content = _load_pt(path, where, max_read_bytes)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"{where} is a pickle that needs code to load, and data is never loaded with code: save a "
            "tensor or a dict of tensors with torch.save, or a .npy file"
        ) from error
    if isinstance(content, Tensor):
        _no_key(key, where)
        tensor: Tensor = content
        chosen, keys = None, ()
    elif isinstance(content, Mapping):
        tensors = {k: v for k, v in content.items() if isinstance(k, str) and isinstance(v, Tensor)}
        keys = tuple(tensors)
        chosen = _choose(keys, key, where)
        tensor = tensors[chosen]
    else:
        raise InputError(f"{where} holds a {type(content).__name__}, expected a tensor or a dict of tensors")
    _check_dense(tensor, where)
    _check_plain(tensor, where)
    _check_numeric(tensor.dtype, where)
    if tensor.dim() == 0:
        raise InputError(f"{where} holds a scalar tensor, expected samples (N, ...)")
    _check_stored(tensor, where, max_read_bytes)
    dtype = str(tensor.dtype).removeprefix("torch.")
    return _Array(chosen, keys, tensor.shape[0], tuple(tensor.shape[1:]), dtype, lambda a, b: tensor[a:b])


def _load_pt(path: Path, where: str, max_read_bytes: int) -> Any:
    """The content of a torch.save file, memory-mapped; a legacy one (which cannot be) read whole."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files in torch's legacy format cannot be memory-mapped: read whole
        check_read_bytes(
            path.stat().st_size, max_read_bytes, f"{where} (a legacy torch.save file, read whole)",
            "save it again with torch.save (memory-mapped) or as .npy",
        )  # fmt: skip
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _check_plain(tensor: Tensor, where: str) -> None:
    """InputError for a tensor that holds no plain values on the CPU: a quantized one (its integers
    mean scale * (q - zero point)) or one on the meta device (no values at all) or another device."""
    if tensor.is_quantized:
        raise InputError(
            f"{where} holds a quantized tensor ({str(tensor.dtype).removeprefix('torch.')}), expected plain "
            "numbers: save tensor.dequantize()"
        )
    if tensor.device.type != "cpu":
        raise InputError(
            f"{where} holds a tensor on the {tensor.device.type} device, which has no values here: save a "
            "tensor with its values (on the CPU)"
        )


def _check_stored(tensor: Tensor, where: str, max_read_bytes: int) -> None:
    """InputError when a tensor's strides make it declare more bytes than its storage holds (an expanded
    tensor: zeros(1, 1).expand(4, 2**30) is 1.5 KB on disk and 16 GiB when read) and that declared size
    is over `max_read_bytes`: every byte of it is materialised when its samples are read."""
    declared = tensor.numel() * tensor.element_size()
    stored = tensor.untyped_storage().nbytes()
    if declared > stored:
        check_read_bytes(
            declared, max_read_bytes,
            f"{where} declares a tensor of shape {tuple(tensor.shape)} with strides {tensor.stride()} over "
            f"{stored:,} stored bytes, so it",
            "save the tensor itself (tensor.contiguous())",
        )  # fmt: skip


# The safetensors dtypes read as samples (a report names them in lower case). Others (BOOL, the complex
# C64, the sub-byte F4 and F6_*, whatever a newer file names) are refused when opened, not when read.
SAFETENSORS_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8")


def _open_safetensors(path: Path, key: str | None, max_read_bytes: int) -> _Array:
    from safetensors import safe_open

    where = f"data file '{path}'"
    handle = safe_open(str(path), framework="pt", device="cpu")
    keys = tuple(handle.keys())
    chosen = _choose(keys, key, where)
    lazy = handle.get_slice(chosen)
    shape = tuple(lazy.get_shape())
    if not shape:
        raise InputError(f"{where} tensor {chosen!r} is a scalar, expected samples (N, ...)")
    dtype = lazy.get_dtype()
    if dtype not in SAFETENSORS_DTYPES:
        known = ", ".join(SAFETENSORS_DTYPES)
        raise InputError(
            f"{where} tensor {chosen!r} holds {dtype} values, which lipcheck does not read as samples; it "
            f"reads {known}: save the tensor as float32"
        )
    dtype = dtype.lower()

    def reader(start: int, stop: int) -> Tensor:
        return lazy[start:stop]

    return _Array(chosen, keys, shape[0], shape[1:], dtype, reader)


def _open_images(path: Path, key: str | None, max_read_bytes: int) -> _Array:
    _no_key(key, f"image folder '{path}'")
    folder = open_image_folder(path)
    return _Array(None, (), folder.count, folder.sample_shape, folder.dtype, folder.read)


@dataclass(frozen=True)
class DataKind:
    """One kind of data source: `detect` looks at the path, `open` maps it without reading it whole."""

    name: str
    detect: Callable[[Path, bytes], bool]
    open: Callable[[Path, str | None, int], _Array]  # (path, key, max_read_bytes)


DATA_KINDS: tuple[DataKind, ...] = (
    DataKind("npy", is_npy, _open_npy),
    DataKind("npz", is_npz, _open_npz),
    DataKind("safetensors", is_safetensors, _open_safetensors),
    DataKind("pt", is_torch_save, _open_pt),
    DataKind("images", lambda path, head: path.is_dir(), _open_images),
)


def _limited(array: _Array, limit: int | None, where: str) -> int:
    if array.total == 0:
        raise InputError(f"{where} is empty (0 samples): give a data set with at least one sample")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    return array.total if limit is None else min(limit, array.total)


def open_dataset(
    path: str | Path,
    *,
    key: str | None = None,
    limit: int | None = None,
    max_read_bytes: int = MAX_READ_BYTES,
) -> Dataset:
    """Open the data at `path` (a file or an image folder) for batched reading.

    `key` chooses the array in a file that holds several; `limit` keeps the first that many samples;
    an array that must be read whole (an .npz member) larger than `max_read_bytes`, as its file
    declares it, is refused before it is read.
    Raises InputError naming the path and the fix: missing path, unknown format, several arrays and
    no key, an empty data set, non-numeric data, a truncated file.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(f"data path '{source}' does not exist: check the path given to --data")
    head = read_head(source)
    where = f"data file '{source}'" if source.is_file() else f"image folder '{source}'"
    for kind in DATA_KINDS:
        if kind.detect(source, head):
            try:
                array = kind.open(source, key, max_read_bytes)
            except InputError:
                raise
            except Exception as error:
                raise InputError(
                    f"{where} looks like {kind.name} but cannot be read ({describe(error)}): it may be "
                    "truncated or corrupt, write it again"
                ) from error
            count = _limited(array, limit, where)
            check_samples(count, where)
            check_sample_shape(array.sample_shape, where)
            info = DataInfo(
                str(path),
                kind.name,
                array.key,
                array.keys,
                count,
                array.total,
                array.sample_shape,
                array.dtype,
            )
            return Dataset(info, array.reader)
    if head.startswith(ZIP_MAGIC) and not zip_names(source, head):
        raise InputError(f"{where} is a truncated or corrupt zip archive (.npz or .pt): write it again")
    raise InputError(
        f"{where} is not a data format lipcheck reads (.npy, .npz, .pt, .safetensors or a folder of "
        "PNG/JPEG images): convert it, e.g. with numpy.save"
    )


def tensor_dataset(x: Tensor | np.ndarray, *, kind: str = "tensor", limit: int | None = None) -> Dataset:
    """The samples of a tensor or array (N, ...) in memory (`lipcheck.audit(model, x)`)."""
    where = f"in-memory {kind}"
    tensor = torch.as_tensor(x).detach().cpu()
    _check_dense(tensor, where)
    _check_numeric(tensor.dtype, where)
    if tensor.dim() == 0:
        raise InputError(f"{where} is a scalar, expected samples (N, ...)")
    dtype = str(tensor.dtype).removeprefix("torch.")
    array = _Array(None, (), tensor.shape[0], tuple(tensor.shape[1:]), dtype, lambda a, b: tensor[a:b])
    count = _limited(array, limit, where)
    check_sample_shape(array.sample_shape, where)
    info = DataInfo(None, kind, None, (), count, array.total, array.sample_shape, array.dtype)
    return Dataset(info, array.reader)


def batches_dataset(batches: Iterable[Any], *, key: str | None = None, limit: int | None = None) -> Dataset:
    """The samples of an iterable of batches (a DataLoader), read once into memory.

    A batch is a tensor (B, ...), or a tuple or dict of them (e.g. (inputs, labels)): `key` picks the
    entry, an index or a key; the first entry of a tuple by default.
    """
    chunks = [_batch_inputs(batch, key) for batch in batches]
    if not chunks:
        raise InputError("the batches given are empty (0 samples): give at least one batch")
    try:
        x = torch.cat(chunks)
    except RuntimeError as error:
        raise InputError(f"the batches given do not stack into one data set ({describe(error)})") from error
    return tensor_dataset(x, kind="batches", limit=limit)


def _batch_inputs(batch: Any, key: str | None) -> Tensor:
    if isinstance(batch, Mapping):
        if key is None or key not in batch:
            keys = _names(list(batch))
            raise InputError(f"the batches are dicts with keys {keys}: choose one with data_key")
        batch = batch[key]
    elif isinstance(batch, (tuple, list)):
        batch = batch[int(key)] if key is not None and key.isdigit() else batch[0]
    if not isinstance(batch, (Tensor, np.ndarray)):
        found = type(batch).__name__
        raise InputError(f"a batch is a {found}, expected a tensor (B, ...) or a tuple of them")
    return torch.as_tensor(batch).detach().cpu()


def parse_shape(text: str, flag: str = "--random") -> tuple[int, ...]:
    """'3x32x32' or '3,32,32' -> (3, 32, 32); InputError naming `flag` when it is not positive integers."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise InputError(f"{flag} {text!r} is not a shape: give sizes without the batch, e.g. 20 or 3x32x32")
    check_sample_shape(shape, f"{flag} {text}")
    return shape


def random_dataset(shape: Sequence[int], count: int, *, seed: int = 0) -> Dataset:
    """`count` standard normal samples of `shape`; sample i is drawn from its own stream (seed, i)."""
    if count < 1:
        raise InputError(f"--num-samples must be at least 1, got {count}")
    check_samples(count, f"--num-samples {count}")
    check_seed(seed)
    sample_shape = tuple(int(d) for d in shape)
    check_sample_shape(sample_shape, "--random")

    def reader(start: int, stop: int) -> np.ndarray:
        # numpy's SeedSequence mixes (seed, index) into independent streams.
        rows = [
            np.random.default_rng([seed, index]).standard_normal(sample_shape) for index in range(start, stop)
        ]
        return np.stack(rows)

    info = DataInfo(None, "random", None, (), count, count, sample_shape, "float64", seed)
    return Dataset(info, reader)
