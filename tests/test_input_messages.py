"""Messages that point the right way: a truncated .npy or .npz says it is truncated (not that it holds
Python objects), a folder of broken symlinks names a link, and an --arch file imports modules beside it
as `python file.py` would."""

from __future__ import annotations

import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import MLP, assert_one_line_error, mlp_inputs, run
from safetensors.torch import save_file

from lipcheck.errors import InputError
from lipcheck.io.datasets import open_dataset


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


SAMPLES = np.arange(80, dtype=np.float32).reshape(20, 4)
GOOD = _npy_bytes(SAMPLES)
HEADER = len(GOOD) - SAMPLES.nbytes


def _npz(name: str, member: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        with zipfile.ZipFile(folder / name, "w") as archive:
            archive.writestr("x.npy", member)
        return folder / name

    return write


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return write


def _cut_npz(folder: Path) -> Path:
    np.savez(folder / "whole.npz", x=SAMPLES)
    whole = (folder / "whole.npz").read_bytes()
    (folder / "cut.npz").write_bytes(whole[: len(whole) - 30])
    return folder / "cut.npz"


# name -> (how the file is made, what the message says)
BROKEN: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated npy": (
        _file("t.npy", GOOD[:-40]),
        "is truncated: its header declares an array of shape (20, 4)",
    ),
    "header bigger than the file": (
        _file("big.npy", GOOD.replace(b"(20, 4)", b"(90, 4)")),
        "(1,440 bytes) but 320 bytes follow the header",
    ),
    "header cut short": (_file("h.npy", GOOD[: HEADER // 2]), "has an .npy header that cannot be read"),
    "truncated npz member": (_npz("m.npz", GOOD[:-40]), "array 'x' is truncated"),
    "npz member header bigger": (
        _npz("b.npz", GOOD.replace(b"(20, 4)", b"(90, 4)")),
        "array 'x' is truncated",
    ),
    "truncated npz archive": (_cut_npz, "is a truncated or corrupt zip archive"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_truncated_arrays_say_so(tmp_path: Path, name: str) -> None:
    make, message = BROKEN[name]
    path = make(tmp_path)
    with pytest.raises(InputError) as raised:
        open_dataset(path)
    assert message in str(raised.value) and "Python objects" not in str(raised.value)
    assert str(path) in str(raised.value)


def test_object_arrays_still_say_python_objects(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="holds Python objects, not numbers"):
        open_dataset(tmp_path / "objects.npy")
    np.save(tmp_path / "whole.npy", SAMPLES)
    assert len(open_dataset(tmp_path / "whole.npy")) == 20  # the check does not refuse good files


def test_a_folder_of_broken_symlinks_names_one(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").symlink_to(tmp_path / "gone" / "a.png")
    (folder / "notes.txt").symlink_to(tmp_path / "gone" / "notes.txt")  # not an image: not counted
    with pytest.raises(InputError) as raised:
        open_dataset(folder)
    message = str(raised.value)
    assert "1 broken symlink(s)" in message and "'a.png' points to" in message and "empty" not in message


def test_an_arch_file_imports_modules_beside_it(tmp_path: Path) -> None:
    nets = tmp_path / "nets"
    nets.mkdir()
    (nets / "blocks_beside_nets.py").write_text(
        "from cli_fixtures import MLP\n\ndef build():\n    return MLP()\n"
    )  # fmt: skip
    (nets / "nets.py").write_text(
        "import blocks_beside_nets\n\ndef make():\n    return blocks_beside_nets.build()\n"
    )
    weights = tmp_path / "w.safetensors"
    save_file(MLP().state_dict(), weights)
    np.save(tmp_path / "x.npy", mlp_inputs(3))
    path_before = list(sys.path)
    result = run("audit", weights, "--arch", f"{nets / 'nets.py'}:make", "--data", tmp_path / "x.npy", "-q")
    assert result.exit_code == 0, result.stderr
    assert sys.path == path_before  # restored after the import and the factory


def test_an_arch_file_that_fails_to_import_is_still_one_line(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text("import no_such_module_beside\n")
    save_file(MLP().state_dict(), tmp_path / "w.safetensors")
    result = run("inspect", tmp_path / "w.safetensors", "--arch", f"{tmp_path / 'nets.py'}:make")
    assert_one_line_error(result, "--arch", "no_such_module_beside")


def test_the_readme_says_that_arch_runs_code_and_how_imports_resolve() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "**`--arch` runs code**" in text and "its folder is first on the import path" in text


def test_an_arch_file_in_a_package_imports_relatively(tmp_path: Path) -> None:
    package = tmp_path / "src" / "lipcheck_test_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "blocks.py").write_text("from cli_fixtures import MLP\n\ndef build():\n    return MLP()\n")
    (package / "models" / "net.py").write_text(
        "from ..blocks import build\n\ndef make():\n    return build()\n"
    )
    save_file(MLP().state_dict(), tmp_path / "w.safetensors")
    result = run("inspect", tmp_path / "w.safetensors", "--arch", f"{package / 'models' / 'net.py'}:make")
    assert result.exit_code == 0, result.stderr


def test_a_trusted_pickle_whose_code_cannot_be_imported_names_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "lipcheck_test_net.py").write_text(
        "from cli_fixtures import MLP\n\nclass Net(MLP):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    import lipcheck_test_net  # type: ignore[import-not-found]

    torch.save(lipcheck_test_net.Net(), tmp_path / "m.pt")
    monkeypatch.delattr(lipcheck_test_net, "Net")
    result = run("inspect", tmp_path / "m.pt", "--trust-pickle")
    assert_one_line_error(result, "needs a class its module does not have", "'Net'", "version of that code")
    assert "truncated" not in result.stderr

    monkeypatch.delitem(sys.modules, "lipcheck_test_net")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "code")])
    result = run("inspect", tmp_path / "m.pt", "--trust-pickle")
    assert_one_line_error(result, "module 'lipcheck_test_net', which cannot be imported", "PYTHONPATH")
    assert "truncated" not in result.stderr
