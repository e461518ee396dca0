"""Data sources: bounded memory, lazy reads, batch-independent random data, clear errors; and through
`lipcheck audit`, every data kind against dense Jacobians and each bad data set named."""

from __future__ import annotations

import hashlib
import io
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import (
    ARCH,
    EXACT,
    MLP,
    SmallConv,
    assert_one_line_error,
    audit_json,
    mlp_inputs,
    reference,
    run,
    sigmas,
)
from safetensors.numpy import save_file as save_numpy_safetensors
from safetensors.torch import save_file

import lipcheck
from lipcheck.errors import InputError
from lipcheck.io.datasets import open_dataset, parse_shape, random_dataset


def test_npy_is_memory_mapped_and_read_per_batch(tmp_path: Path) -> None:
    data = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(2000, 5000))
    data[:] = 1.0
    data.flush()
    del data  # 40 MB on disk
    tracemalloc.start()
    dataset = open_dataset(tmp_path / "big.npy")
    batches = list(dataset.batches(range(100, 104), 2))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000
    assert [list(r) for r, _ in batches] == [[100, 101], [102, 103]]
    assert batches[0][1].shape == (2, 5000) and batches[0][1].dtype == torch.float32


def test_read_casts_and_limit_keeps_the_first_samples(tmp_path: Path) -> None:
    np.save(tmp_path / "ints.npy", np.arange(12, dtype=np.int16).reshape(4, 3))
    dataset = open_dataset(tmp_path / "ints.npy", limit=3)
    assert len(dataset) == 3 and dataset.info.total == 4 and dataset.info.dtype == "int16"
    x = dataset.read(0, 3, torch.float64)
    assert x.dtype == torch.float64 and x.tolist() == np.arange(9.0).reshape(3, 3).tolist()


def test_random_samples_do_not_depend_on_the_batch() -> None:
    dataset = random_dataset((3, 2), 10, seed=5)
    whole = dataset.read(0, 10, torch.float64)
    assert torch.equal(dataset.read(4, 7, torch.float64), whole[4:7])
    assert not torch.equal(random_dataset((3, 2), 10, seed=6).read(0, 10, torch.float64), whole)
    assert abs(float(random_dataset((1000,), 4).read(0, 4, torch.float64).std()) - 1) < 0.05


def test_first_non_finite_sample_is_named(tmp_path: Path) -> None:
    x = np.zeros((10, 2), np.float32)
    x[6, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    dataset = open_dataset(tmp_path / "x.npy")
    dataset.read(0, 6)
    with pytest.raises(InputError, match=r"'.*x\.npy' has NaN or Inf at sample 6.*--limit 6"):
        dataset.read(4, 10)


def test_several_arrays_need_a_key(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(2, 3), "b": torch.ones(2, 3), "note": "text"}, tmp_path / "d.pt")
    with pytest.raises(InputError, match=r"arrays 'a', 'b': choose one with --data-key"):
        open_dataset(tmp_path / "d.pt")
    assert open_dataset(tmp_path / "d.pt", key="b").read(0, 2).sum() == 6
    np.save(tmp_path / "one.npy", np.zeros((2, 3)))
    with pytest.raises(InputError, match="drop --data-key"):
        open_dataset(tmp_path / "one.npy", key="a")


@pytest.mark.parametrize(("text", "shape"), [("20", (20,)), ("3x32x32", (3, 32, 32)), ("1X4", (1, 4))])
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "3x", "0", "a", "-1x2"])
def test_parse_shape_refuses(text: str) -> None:
    with pytest.raises(InputError, match="--random"):
        parse_shape(text)


def test_sha256_is_the_hash_of_the_audited_samples_as_stored(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.int16).reshape(10, 2, 2)
    np.save(tmp_path / "x.npy", x)
    expected = hashlib.sha256(x[:7].tobytes()).hexdigest()
    streamed = open_dataset(tmp_path / "x.npy", limit=7)
    for _ in streamed.batches(range(7), 3, torch.float64):  # an audit's reads feed the hash
        pass
    assert streamed.sha256() == expected
    assert open_dataset(tmp_path / "x.npy", limit=7).sha256() == expected  # asked first: read here
    shuffled = open_dataset(tmp_path / "x.npy", limit=7)
    shuffled.read(4, 7)
    shuffled.read(0, 2)
    assert shuffled.sha256() == expected
    assert open_dataset(tmp_path / "x.npy").sha256() != expected  # other samples, another hash
    torch.save({"x": torch.from_numpy(x[:7])}, tmp_path / "x.pt")
    assert open_dataset(tmp_path / "x.pt").sha256() == expected  # the same content in another format


def test_sha256_after_an_audit_reads_nothing_more_and_covers_bfloat16() -> None:
    from lipcheck.io.datasets import DataInfo, Dataset

    x = torch.arange(6, dtype=torch.bfloat16).reshape(3, 2)
    reads: list[tuple[int, int]] = []

    def reader(start: int, stop: int) -> torch.Tensor:
        reads.append((start, stop))
        return x[start:stop]

    dataset = Dataset(DataInfo(None, "pt", None, (), 3, 3, (2,), "bfloat16"), reader)
    list(dataset.batches(range(3), 2))
    assert dataset.sha256() == hashlib.sha256(x.view(torch.int16).numpy().tobytes()).hexdigest()
    assert reads == [(0, 2), (2, 3)]


def _images(folder: Path, count: int = 5) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image")

    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (count, 5, 4, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, "RGB").save(folder / f"img_{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    return pixels.transpose(0, 3, 1, 2).astype(np.float64) / 255


# Through the command line: every data kind against dense Jacobians, and each bad data set named.


def test_every_data_kind_matches_dense_jacobians(files: dict[str, Path], tmp_path: Path) -> None:
    x = mlp_inputs()
    expected = reference(MLP(), x)
    np.savez(tmp_path / "d.npz", inputs=x, labels=np.arange(10))
    torch.save(torch.from_numpy(x), tmp_path / "tensor.pt")
    torch.save({"inputs": torch.from_numpy(x), "labels": torch.arange(10)}, tmp_path / "dict.pt")
    save_numpy_safetensors({"inputs": x}, str(tmp_path / "d.safetensors"))
    cases = [
        ("npy", [files["data"]]),
        ("npz", [tmp_path / "d.npz", "--data-key", "inputs"]),
        ("pt", [tmp_path / "tensor.pt"]),
        ("pt", [tmp_path / "dict.pt", "--data-key", "inputs"]),
        ("safetensors", [tmp_path / "d.safetensors"]),
    ]
    for kind, data in cases:
        report = audit_json(files["export"], "--data", *data, *EXACT)
        assert report["data"]["kind"] == kind
        assert report["data"]["count"] == 10
        np.testing.assert_allclose(sigmas(report), expected, rtol=1e-4, err_msg=kind)


def test_image_folder_matches_dense_jacobians(tmp_path: Path) -> None:
    pixels = _images(tmp_path / "images")
    save_file(SmallConv().state_dict(), tmp_path / "conv.safetensors")
    report = audit_json(
        tmp_path / "conv.safetensors", "--arch", f"{ARCH}:make_conv", "--data", tmp_path / "images", *EXACT
    )
    assert report["data"]["kind"] == "images"
    assert report["data"]["sample_shape"] == [3, 5, 4]
    np.testing.assert_allclose(sigmas(report), reference(SmallConv(), pixels), rtol=1e-4)


def test_random_data_is_seeded_and_matches_dense_jacobians(files: dict[str, Path]) -> None:
    args = (files["export"], "--random", str(6), "--num-samples", "7", "--seed", "3", *EXACT)
    report = audit_json(*args)
    samples = random_dataset((6,), 7, seed=3).read(0, 7, torch.float64)
    np.testing.assert_allclose(sigmas(report), reference(MLP(), samples), rtol=1e-4)
    assert report["data"] == {
        "path": None, "kind": "random", "key": None, "count": 7, "total": 7,
        "sample_shape": [6], "dtype": "float64", "seed": 3,
        "sha256": hashlib.sha256(samples.numpy().tobytes()).hexdigest(),
    }  # fmt: skip
    assert sigmas(audit_json(*args)).tolist() == sigmas(report).tolist()
    assert sigmas(audit_json(*args[:-6], "--seed", "4", *EXACT)).tolist() != sigmas(report).tolist()


def test_bad_data(files: dict[str, Path], tmp_path: Path) -> None:
    x = mlp_inputs()
    x[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "nan.npy"), "nan.npy", "sample 7"
    )
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "empty.npy"), "empty.npy", "empty"
    )
    np.savez(tmp_path / "two.npz", images=x, labels=np.arange(10))
    result = run("audit", files["export"], "--data", tmp_path / "two.npz")
    assert_one_line_error(result, "two.npz", "'images'", "'labels'", "--data-key")
    result = run("audit", files["export"], "--data", tmp_path / "two.npz", "--data-key", "nope")
    assert_one_line_error(result, "two.npz", "'nope'")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "data.csv"), "data.csv", "not a data format"
    )
    (tmp_path / "no_images").mkdir()
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "no_images"), "no_images", "empty"
    )


def test_images_without_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "img_00.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    result = run("audit", files["export"], "--data", tmp_path / "images")
    assert_one_line_error(result, "images", 'pip install "lipcheck[images]"')


def _zip_bomb(path: Path, values: int) -> Path:
    """An .npz whose one array of `values` float32 zeros compresses to almost nothing."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (values // 4, 4)}
    )
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        member.write(header.getvalue())
        zeros = bytes(2**20)
        for _ in range(values * 4 // len(zeros)):
            member.write(zeros)
    return path


def test_an_npz_array_larger_than_the_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = _zip_bomb(tmp_path / "bomb.npz", 2**24)  # 64 MiB of zeros in about 64 KiB
    assert bomb.stat().st_size < 2**20

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the array was read")

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", never)
    with pytest.raises(
        InputError, match=r"array 'x' expands to 67,108,992 bytes .* --max-read-bytes 1,048,576"
    ):
        open_dataset(bomb, max_read_bytes=2**20)
    monkeypatch.undo()
    assert len(open_dataset(bomb, max_read_bytes=2**27, limit=2)) == 2


def test_max_read_bytes_is_a_flag_of_audit_and_an_argument_of_lipcheck_audit(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=mlp_inputs(4))
    save_file(MLP().state_dict(), tmp_path / "m.safetensors")
    model = ("audit", tmp_path / "m.safetensors", "--arch", f"{ARCH}:make_mlp")
    result = run(*model, "--data", tmp_path / "x.npz", "--max-read-bytes", "64")
    assert_one_line_error(result, "array 'x' expands to", "--max-read-bytes 64", "raise --max-read-bytes")
    with pytest.raises(InputError, match="--max-read-bytes 64"):
        lipcheck.audit(MLP(), tmp_path / "x.npz", max_read_bytes=64)
    assert lipcheck.audit(MLP(), tmp_path / "x.npz", max_read_bytes=2**20).summary.count == 4
