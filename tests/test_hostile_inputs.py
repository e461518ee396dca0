"""Hostile inputs: files and flags built to crash, stall or fool lipcheck. Each is exit 2 with one line
naming the file or flag (or a correct result), never a traceback, an allocation the input asked for,
or a figure that was silently dropped or trusted. Every file is generated here; none is committed.

The factories here are --arch targets (this file is imported by path)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_fixtures import ARCH, MLP, assert_one_line_error, mlp_inputs, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import Tensor, nn

import lipcheck
from lipcheck.auditing.journal import _HEAD, MAGIC, Journal, journal_name
from lipcheck.errors import InputError, LipcheckWarning
from lipcheck.io.datasets import open_dataset
from lipcheck.io.models import load_model
from lipcheck.options import limits
from lipcheck.report.columns import ROW
from lipcheck.report.gate import FailAboveBound, judge

HERE = Path(__file__).resolve()
ERFC = f"{HERE.with_name('test_cli_bound.py')}:make_erfc"  # a linear layer, then erfc, which has no rule
quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- data files: declared sizes, odd tensors


def test_an_expanded_pt_tensor_is_refused_before_it_is_materialised(tmp_path: Path) -> None:
    path = tmp_path / "expanded.pt"
    torch.save(torch.zeros(1, 1).expand(4, 2**30), path)  # 1.5 KB on disk, 16 GiB when read
    assert path.stat().st_size < 4096
    with pytest.raises(InputError, match=r"expanded\.pt.*strides \(0, 0\).*--max-read-bytes"):
        open_dataset(path)
    # the budget is --max-read-bytes: a small expanded tensor within it is read, as its values
    small = tmp_path / "small.pt"
    torch.save(torch.arange(6.0).reshape(1, 6).expand(3, 6), small)
    with pytest.raises(InputError, match="--max-read-bytes 50"):
        open_dataset(small, max_read_bytes=50)
    assert open_dataset(small, max_read_bytes=72).read(0, 3).tolist() == [list(range(6))] * 3


def test_a_legacy_pt_file_is_read_whole_only_within_max_read_bytes(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(torch.ones(8, 6), path, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match=r"legacy.*--max-read-bytes 100\b"):
        open_dataset(path, max_read_bytes=100)
    assert open_dataset(path).read(0, 8).sum() == 48


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: torch.quantize_per_tensor(torch.rand(6, 6), 0.1, 0, torch.quint8), "quantized"),
        (lambda: torch.empty(6, 6, device="meta"), "meta device"),
    ],
    ids=["quantized", "meta"],
)
def test_a_pt_tensor_without_plain_values_is_exit_2(tmp_path: Path, make: Any, said: str) -> None:
    path = tmp_path / "odd.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated: they are still in files
        torch.save(make(), path)
    model = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(MLP().eval(), (torch.zeros(2, 6),)), model)
    assert_one_line_error(run("audit", model, "--data", path), "odd.pt", said)


def _safetensors(path: Path, header: dict[str, Any], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(("dtype", "nbytes"), [("F4", 12), ("F6_E2M3", 18), ("C64", 192), ("BOOL", 24)])
def test_a_safetensors_dtype_lipcheck_cannot_read_is_refused_when_opened(
    tmp_path: Path, dtype: str, nbytes: int
) -> None:
    header = {"x": {"dtype": dtype, "shape": [6, 4], "data_offsets": [0, nbytes]}}
    path = _safetensors(tmp_path / "x.safetensors", header, b"\0" * nbytes)
    with pytest.raises(InputError, match=f"x.safetensors.*holds {dtype} values"):
        open_dataset(path)


_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F4", "F6_E2M3", "F8_E4M3", "C64", "X"]


@quick
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(-2, 2**40), max_size=4),
    offsets=st.lists(st.integers(-1, 2**40), min_size=0, max_size=3),
    stored=st.integers(0, 256),
    extra=st.dictionaries(
        st.sampled_from(["__metadata__", "y", "dtype"]), st.integers() | st.text(max_size=3)
    ),
)
def test_fuzzed_safetensors_headers_open_or_are_refused(
    tmp_path: Path, dtype: str, shape: list[int], offsets: list[int], stored: int, extra: dict[str, Any]
) -> None:
    """A safetensors header of any dtype, shape and offsets: a data set that reads, or one InputError."""
    header: dict[str, Any] = {"x": {"dtype": dtype, "shape": shape, "data_offsets": offsets}, **extra}
    path = _safetensors(tmp_path / "fuzz.safetensors", header, b"\x01" * stored)
    try:
        data = open_dataset(path, key="x")
    except InputError:
        return
    x = data.read(0, len(data), torch.float64)  # whatever opened reads, at its declared shape
    assert tuple(x.shape) == (len(data), *data.info.sample_shape)


@quick
@given(flip=st.integers(8, 200), value=st.integers(0, 255))
def test_a_safetensors_file_with_one_byte_changed_loads_or_is_refused(
    tmp_path: Path, flip: int, value: int
) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(6, 4)}, path)
    content = bytearray(path.read_bytes())
    content[flip % len(content)] = value
    path.write_bytes(bytes(content))
    for load in (lambda: open_dataset(path), lambda: load_model(path, arch=f"{ARCH}:make_mlp")):
        with contextlib.suppress(InputError):
            load()


def test_declared_counts_and_shapes_past_their_limits_are_exit_2(tmp_path: Path) -> None:
    model = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(MLP().eval(), (torch.zeros(2, 6),)), model)
    result = run("bound", model, "--input-shape", "4x99999999999")
    assert_one_line_error(result, "--input-shape 4x99999999999", "MAX_SAMPLE_VALUES")
    result = run("audit", model, "--random", "6", "--num-samples", str(2**40))
    assert_one_line_error(result, "--num-samples", "MAX_SAMPLES")
    result = run("audit", model, "--random", "6", "--num-samples", "4", "--batch-size", str(2**63))
    assert_one_line_error(result, "--batch-size", "MAX_SAMPLES")
    with pytest.raises(InputError, match="MAX_SAMPLE_VALUES"):
        lipcheck.upper_bound(nn.Linear(3, 3), (4, 99_999_999_999))
    with pytest.raises(InputError, match="MAX_WORKERS"):
        limits.check_workers(99999999999999999999)
    big = tmp_path / "tall.pt"
    torch.save(torch.zeros(1, 1).expand(2**33, 1), big)  # 8 bytes of storage
    with pytest.raises(InputError, match="MAX_SAMPLES"):
        open_dataset(big, max_read_bytes=2**40)


def test_workers_past_the_limit_is_exit_2_before_a_process_starts(tmp_path: Path) -> None:
    model = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(MLP().eval(), (torch.zeros(2, 6),)), model)
    result = run("audit", model, "--random", "6", "--num-samples", "2", "--workers", "99999999999999999999")
    assert_one_line_error(result, "--workers", "MAX_WORKERS")


# ---------------------------------------------------------------- images


def _png(path: Path, pixels: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def test_16_bit_png_images_are_read_at_full_range_and_reported_as_uint16(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = tmp_path / "grey16"
    folder.mkdir()
    values = np.array([[1000, 30000], [65535, 0]])
    _png(folder / "a.png", values, color_type=0)
    data = open_dataset(folder)
    assert data.info.dtype == "uint16"
    assert data.read(0, 1, torch.float64)[0, 0].numpy() == pytest.approx(values / 65535.0, abs=1e-7)
    colour = tmp_path / "rgb16"
    colour.mkdir()
    _png(colour / "a.png", np.stack([values] * 3, axis=-1), color_type=2)
    with pytest.raises(InputError, match="16-bit colour PNG"):
        open_dataset(colour)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda w: {**w, "first.weight": w["first.weight"].to(torch.complex64) * (1 + 1j)}, "complex"),
        (lambda w: {k: torch.empty_like(v, device="meta") for k, v in w.items()}, "meta device"),
    ],
    ids=["complex", "meta"],
)
def test_weights_without_real_values_are_exit_2(tmp_path: Path, change: Any, said: str) -> None:
    weights = change(MLP().state_dict())
    path = tmp_path / "weights.pt"
    torch.save(weights, path)
    np.save(tmp_path / "x.npy", mlp_inputs(4))
    result = run("audit", path, "--arch", f"{ARCH}:make_mlp", "--data", tmp_path / "x.npy")
    assert_one_line_error(result, "weights.pt", said)


# ---------------------------------------------------------------- --assume and the bound's contradiction


def test_assume_for_an_operation_with_a_rule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"aten\.linear\.default=0 .* own rule"):
        lipcheck.upper_bound(nn.Linear(6, 3), (6,), assume={"aten.linear.default": 0.0})
    model = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), model)
    arch = ("--arch", f"{ARCH}:make_mlp")
    bound = ("bound", model, *arch, "--input-shape", "6")
    audit = ("audit", model, *arch, "--random", "6", "--num-samples", "2", "--bound")
    for command in (bound, audit):
        result = run(*command, "--assume", "aten.linear.default=0")
        assert_one_line_error(result, "--assume aten.linear.default=0", "own rule")


def test_a_bound_below_a_measured_sigma_fails_every_gate(tmp_path: Path) -> None:
    from test_cli_bound import make_erfc

    weights = tmp_path / "erfc.safetensors"
    save_file(make_erfc().state_dict(), weights)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))
    out = tmp_path / "r.json"
    args = (weights, "--arch", ERFC, "--data", tmp_path / "x.npy", "--bound", "-o", out)
    result = run("audit", *args, "--assume", "aten.special_erfc.default=1e-9", "--fail-above-bound", "1")
    assert result.exit_code == 1, result.stderr
    report = json.loads(out.read_text())
    verdicts = {rule["name"]: rule for rule in report["gate"]["rules"]}
    assert verdicts["fail_above_bound"]["passed"] is True  # the bound itself is tiny ...
    assert verdicts["bound_contradiction"]["passed"] is False  # ... and contradicted by a measured sigma
    assert verdicts["bound_contradiction"]["value"] == report["summary"]["max"] > report["upper_bound"]
    assert report["gate"]["passed"] is False
    again = run("gate", out, "--fail-above-bound", "1")
    assert again.exit_code == 1 and "contradiction" in again.stdout + again.stderr


def test_a_bound_above_the_measured_sigmas_by_rounding_only_is_no_contradiction() -> None:
    from cli_fixtures import make_report

    from lipcheck.report import BoundReport

    report = make_report([1.0, 2.0])
    tight = BoundReport(upper_bound=2.0 / (1 + 1e-6), layers=(), input_shape=(6,))
    assert judge([], _with_bound(report, tight)).passed is None
    loose = BoundReport(upper_bound=1.0, layers=(), input_shape=(6,))
    gate = judge([FailAboveBound(5.0, 1.0)], _with_bound(report, loose))
    assert gate.passed is False and [v.name for v in gate.rules] == [
        "fail_above_bound",
        "bound_contradiction",
    ]


def _with_bound(report: Any, bound: Any) -> Any:
    from dataclasses import replace

    return replace(report, bound=bound)


# ---------------------------------------------------------------- journals: every record read back is checked


SAMPLES, BATCH = 7, 2  # batches 0..3, the last of one sample
IDENTITY = {
    "model_sha256": "a" * 64,
    "settings": {"batch_size": BATCH},
    "world_size": 1,
    "data_count": SAMPLES,
}


def _rows(indices: list[int], sigma: float = 1.0) -> np.ndarray:
    rows = np.zeros(len(indices), dtype=ROW)
    rows["index"] = indices
    rows["sigma"] = sigma
    rows["iterations"] = 3
    rows["converged"] = 1
    rows["residual"] = math.nan
    rows["sigma_upper"] = math.nan
    rows["search_sigma"] = math.nan
    rows["search_distance"] = math.nan
    return rows


def _journal(folder: Path, records: list[tuple[int, np.ndarray]]) -> Path:
    """A journal of `records` (batch, rows), each with a valid CRC, as a forger would write it."""
    Journal.open(folder, IDENTITY, 0).close()
    path = folder / journal_name(0)
    with path.open("ab") as stream:
        for batch, rows in records:
            payload = np.ascontiguousarray(rows, dtype=ROW).tobytes()
            stream.write(MAGIC + _HEAD.pack(batch, len(rows), zlib.crc32(payload)) + payload)
    return path


@pytest.mark.parametrize(
    ("records", "said"),
    [
        ([(0, _rows([0, 1], math.nan))], "sigma nan"),
        ([(0, _rows([0, 1], -1.0))], "sigma -1.0"),
        ([(0, _rows([0, 1], math.inf))], "sigma inf"),
        ([(0, _rows([0]))], "holds 1 rows, but its batch is samples 0..1"),
        ([(0, _rows([0, 1])), (0, _rows([0, 1]))], "record 1 (batch 0) repeats batch 0"),
        ([(1, _rows([2, 99]))], "sample 99, outside the data's 7 samples"),
        ([(1, _rows([3, 2]))], "row 0 is of sample 3, but its batch's row 0 is sample 2"),
        ([(9, _rows([18, 19]))], "batch 9) is of no batch"),
    ],
    ids=["nan", "negative", "infinite", "short", "duplicate", "out-of-range", "shuffled", "no-such-batch"],
)
def test_a_journal_record_with_a_valid_crc_is_still_checked(
    tmp_path: Path, records: list[tuple[int, np.ndarray]], said: str
) -> None:
    path = _journal(tmp_path, records)
    with pytest.raises(InputError) as raised:
        Journal.open(tmp_path, IDENTITY, 0)
    assert f"journal '{path}' record" in str(raised.value) and said in str(raised.value)


@quick
@given(
    batch=st.integers(-3, 6),
    indices=st.lists(st.integers(-(2**62), 2**62) | st.integers(0, 8), max_size=4),
    sigma=st.floats(allow_nan=True, allow_infinity=True),
    iterations=st.integers(-5, 5),
    residual=st.floats(allow_nan=True, allow_infinity=True),
)
def test_fuzzed_journal_records_are_read_as_written_or_refused(
    tmp_path: Path, batch: int, indices: list[int], sigma: float, iterations: int, residual: float
) -> None:
    """Whatever a record holds, the journal either gives back exactly a valid batch's rows, or refuses
    it naming the file and the record; it never keeps some of them or a figure an audit cannot write."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: tmp_path is shared by them
    rows = _rows(indices, sigma)
    rows["iterations"] = iterations
    rows["residual"] = residual
    _journal(folder, [(batch, rows)])
    try:
        journal = Journal.open(folder, IDENTITY, 0)
    except InputError as error:
        assert "record 0" in str(error) and journal_name(0) in str(error)
        return
    try:
        assert list(journal.done) == [batch]
        read = journal.read(batch)
        assert read["index"].tolist() == list(range(batch * BATCH, min(batch * BATCH + BATCH, SAMPLES)))
        assert (
            np.isfinite(read["sigma"]).all()
            and (read["sigma"] >= 0).all()
            and (read["iterations"] >= 1).all()
        )
    finally:
        journal.close()


def test_a_resumed_audit_refuses_a_forged_journal_record_with_exit_2(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", mlp_inputs(6))
    weights = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), weights)
    args = ("audit", weights, "--arch", f"{ARCH}:make_mlp", "--data", tmp_path / "x.npy", "--batch-size", "2")
    resume = tmp_path / "journal"
    assert run(*args, "--resume", resume, "--device", "cpu").exit_code == 0
    path = resume / journal_name(0)
    content = bytearray(path.read_bytes())
    start = content.index(MAGIC)  # the first record: its first row's sigma becomes NaN, its CRC made valid
    head = len(MAGIC) + _HEAD.size
    batch, count, _ = _HEAD.unpack(content[start + len(MAGIC) : start + head])
    rows = np.frombuffer(bytes(content[start + head : start + head + count * ROW.itemsize]), dtype=ROW).copy()
    rows["sigma"][0] = math.nan
    payload = rows.tobytes()
    content[start : start + head + len(payload)] = (
        MAGIC + _HEAD.pack(batch, count, zlib.crc32(payload)) + payload
    )
    path.write_bytes(bytes(content))
    result = run(*args, "--resume", resume, "--device", "cpu")
    assert_one_line_error(result, str(path), "record 0", "sigma nan")
    assert os.path.getsize(path) == len(content)  # refused, not cut or rewritten


# ---------------------------------------------------------------- reports and baselines read back


def _saved(path: Path, sigma: list[float], change: Any = None) -> Path:
    from cli_fixtures import make_report

    document = json.loads(make_report(sigma).to_json())
    if change is not None:
        change(document)
    path.write_text(json.dumps(document))
    return path


def _duplicate(document: dict[str, Any]) -> None:
    document["samples"][1]["index"] = document["samples"][0]["index"]


def _huge_index(document: dict[str, Any]) -> None:
    document["samples"][0]["index"] = 10**30


def _short(document: dict[str, Any]) -> None:
    document["data"]["count"] += 1


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_duplicate, "sample 10 appears more than once"),
        (_huge_index, "index 1000000000000000000000000000000"),
        (_short, "holds 3 samples, but its data section says 4"),
    ],
    ids=["duplicate-index", "index-1e30", "missing-sample"],
)
def test_a_report_with_rows_no_audit_writes_is_exit_2_in_gate_compare_and_baseline(
    tmp_path: Path, change: Any, said: str
) -> None:
    good = _saved(tmp_path / "good.json", [1.0, 2.0, 3.0])
    bad = _saved(tmp_path / "bad.json", [1.0, 2.0, 3.0], change)
    assert_one_line_error(run("gate", bad, "--fail-above", "5"), "bad.json", said)
    assert_one_line_error(run("compare", good, bad), "bad.json", said)
    assert_one_line_error(run("compare", bad, good), "bad.json", said)
    baseline = run("gate", good, "--baseline", bad, "--max-increase", "5")
    assert_one_line_error(baseline, "--baseline", "bad.json", said)


def test_a_change_past_float64_is_valid_json_without_infinity(tmp_path: Path) -> None:
    base = _saved(tmp_path / "base.json", [1e-300, 1.0])
    new = _saved(tmp_path / "new.json", [1e300, 1.0])
    result = run("compare", base, new, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    comparison = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    top = comparison["top"][0]
    assert top["index"] == 10 and top["change_percent"] is None and top["change"] == pytest.approx(1e300)


def test_docs_list_every_limit_with_its_value() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "limits.md").read_text()
    names = [name for name in vars(limits) if name.startswith("MAX_")]
    assert names and all(f"`{name}`" in page for name in names), names
    with pytest.raises(InputError, match="--max-iter 10000000 .*MAX_STEPS"):
        lipcheck.Settings(max_iter=10**7).validate()
    with pytest.raises(InputError, match="--search-steps .*MAX_STEPS"):
        lipcheck.Settings(search_steps=10**7, search_radius=1.0).validate()


# ---------------------------------------------------------------- models that draw random numbers


class Noisy(MLP):
    """An MLP whose forward adds torch.rand noise and draws from numpy: a different output per call."""

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        noise = torch.rand(x.shape[-1]) + float(np.random.rand())  # noqa: NPY002
        return super().forward(x * noise, scale)


def make_noisy() -> nn.Module:
    return Noisy()


def test_a_model_that_draws_random_numbers_is_seeded_per_call_and_reported(tmp_path: Path) -> None:
    weights = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), weights)
    np.save(tmp_path / "x.npy", mlp_inputs(6))
    args = (
        "audit",
        weights,
        "--arch",
        f"{HERE}:make_noisy",
        "--data",
        tmp_path / "x.npy",
        "--batch-size",
        "2",
    )
    reports = []
    for name in ("a.json", "b.json"):
        result = run(*args, "-o", tmp_path / name)
        assert result.exit_code == 0, result.stderr
        assert "draws random numbers in its forward (numpy.random, torch)" in result.stderr
        reports.append(json.loads((tmp_path / name).read_text()))
    assert [s["sigma"] for s in reports[0]["samples"]] == [s["sigma"] for s in reports[1]["samples"]]
    assert all(s["sigma"] > 0 for s in reports[0]["samples"])
    assert any("draws random numbers" in note for note in reports[0]["notes"])
    model, x = Noisy(), torch.from_numpy(mlp_inputs(2))
    state = torch.get_rng_state()
    with pytest.warns(LipcheckWarning, match="draws random numbers in its forward"):
        lipcheck.audit(model, x, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is as it was


def test_torchscript_dropout_in_training_mode_repeats_with_the_seed(tmp_path: Path) -> None:
    class Dropping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 4)

        def forward(self, x: Tensor) -> Tensor:
            return torch.nn.functional.dropout(self.linear(x), 0.5, True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = tmp_path / "drop.ts"
        torch.jit.save(torch.jit.script(Dropping()), model)
    np.save(tmp_path / "x.npy", mlp_inputs(6))
    first = run("audit", model, "--data", tmp_path / "x.npy", "-f", "json")
    second = run("audit", model, "--data", tmp_path / "x.npy", "-f", "json")
    assert first.exit_code == 0 and "draws random numbers in its forward (torch)" in first.stderr
    sigmas = [[s["sigma"] for s in json.loads(r.stdout)["samples"]] for r in (first, second)]
    assert sigmas[0] == sigmas[1]


def test_arg_on_a_torchscript_model_is_exit_2_like_other_formats(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = tmp_path / "lin.ts"
        torch.jit.save(torch.jit.script(nn.Linear(6, 3)), model)
    np.save(tmp_path / "x.npy", mlp_inputs(6))
    result = run("audit", model, "--data", tmp_path / "x.npy", "--arg", "x=1")
    assert_one_line_error(result, "--arg x=1", "forward(input)")


def test_packed_sub_byte_floats_in_pt_data_and_weights_are_exit_2(tmp_path: Path) -> None:
    packed = torch.zeros(8, 6, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    torch.save(packed, tmp_path / "f4.pt")
    with pytest.raises(InputError, match="f4.pt.*float4_e2m1fn_x2"):
        open_dataset(tmp_path / "f4.pt")
    weights = {**MLP().state_dict(), "first.weight": packed}
    torch.save(weights, tmp_path / "w.pt")
    with pytest.raises(InputError, match="'first.weight' holds float4_e2m1fn_x2 values"):
        load_model(tmp_path / "w.pt", arch=f"{ARCH}:make_mlp")


@quick
@given(tail=st.binary(max_size=300))
def test_any_bytes_after_a_journal_header_open_or_are_refused(tmp_path: Path, tail: bytes) -> None:
    """Garbage after the header is a torn write (cut, its batches done again) or a refused record."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    Journal.open(folder, IDENTITY, 0).close()
    with (folder / journal_name(0)).open("ab") as stream:
        stream.write(MAGIC + tail if tail[:1] == b"\x00" else tail)
    try:
        journal = Journal.open(folder, IDENTITY, 0)
    except InputError as error:
        assert "record 0" in str(error)
        return
    journal.close()


def test_a_worker_timeout_past_a_week_is_exit_2(tmp_path: Path) -> None:
    model = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), model)
    args = ("audit", model, "--arch", f"{ARCH}:make_mlp", "--random", "6", "--num-samples", "2")
    for timeout in ("1e300", "inf"):
        result = run(*args, "--worker-timeout", timeout)
        assert_one_line_error(result, "--worker-timeout", "MAX_WORKER_TIMEOUT")
