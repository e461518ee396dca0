"""`--operator fne|residual`: the norms of 2J - I and I - J, equal to the exact dense Jacobians' for both
solvers, from the engine, the search, `lipcheck.audit` and the command line; the refusal of a model
whose output shape is not its input's; the gate, the bound, the baseline and the outputs of the operator;
and the one-line explanation for a model that frees its own graph inside forward."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from cli_fixtures import assert_one_line_error, audit_json, export, run, sigmas
from conftest import make_model
from torch import Tensor, nn

import lipcheck
from lipcheck import worst_case_search
from lipcheck.errors import AuditFailedError, InputError, ModelOutputError
from lipcheck.report import Report, Settings, bound_schema

HERE = Path(__file__).resolve()  # the factories below, for --arch
ROOT = HERE.parents[1]
SAMPLE_MODEL = ROOT / "sample_models" / "denoiser.pt2"
SAMPLE_DATA = ROOT / "sample_models" / "denoiser_inputs.npy"
PRECISE = {"tol": 1e-9, "max_iter": 300}


def exact_operator_sigma(f: Callable[[Tensor], Tensor], x: Tensor, operator: str) -> np.ndarray:
    """||2J - I||_2 (fne), ||I - J||_2 (residual) or ||J||_2 per sample, from dense float64 Jacobians.

    Row k of every sample's Jacobian is the gradient of the batch's k-th outputs summed (f treats the
    samples independently): n backward passes on the batch, for models that autograd.grad inside forward
    too, which torch.func.jacrev cannot trace."""
    z = x.detach().double().requires_grad_()
    with torch.enable_grad():
        y = f(z).reshape(len(z), -1)
        rows = [torch.autograd.grad(y[:, k].sum(), z, retain_graph=True)[0] for k in range(y.shape[1])]
    jacobian = torch.stack([row.reshape(len(z), -1) for row in rows], 1)
    identity = torch.eye(jacobian.shape[1], dtype=torch.float64)
    matrix = {"model": jacobian, "fne": 2 * jacobian - identity, "residual": identity - jacobian}[operator]
    return torch.linalg.matrix_norm(matrix, ord=2).numpy()


class Averaged(nn.Module):
    """x -> (x + tanh(W x)) / 2 with ||W|| = 0.9: an average of the identity and a nonexpansive map, so
    firmly nonexpansive: 2J - I = diag(tanh') W has norm at most 0.9 everywhere."""

    def __init__(self, n: int = 6) -> None:
        super().__init__()
        weight = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        self.register_buffer("weight", 0.9 * weight / torch.linalg.matrix_norm(weight, ord=2))

    def forward(self, x: Tensor) -> Tensor:
        return (x + torch.tanh(x @ self.weight.to(x.dtype).T)) / 2


class InnerGradient(nn.Module):
    """A gradient-step denoiser x -> x - grad g(x), g(x) = ||x - N(x)||^2 / 2, computed as deepinv's
    GSPnP does: with `detach` set, the inner autograd.grad frees N's graph, so the output is not
    differentiable as called."""

    def __init__(self, detach: bool = True, how: str = "grad") -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 6))
        self.detach = detach
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.requires_grad_()
            n = self.net(x)
            if self.how == "backward":
                (x - n).pow(2).sum().backward(inputs=[x])
                inner = x.grad
            else:
                (inner,) = torch.autograd.grad(n, x, grad_outputs=x - n, create_graph=not self.detach)
        if self.detach:
            x, inner = x.detach(), inner.detach()
        return n + inner


def make_averaged() -> nn.Module:
    return Averaged()


def make_inner_gradient(detach: bool = True, how: str = "grad") -> nn.Module:
    return InnerGradient(detach, how)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("operator", ["fne", "residual"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_engine_gives_the_exact_norm_of_the_operator(name: str, operator: str, method: str) -> None:
    model, x = make_model(name)
    result = lipcheck.spectral_norm(model, x, operator=operator, method=method, **PRECISE)
    expected = exact_operator_sigma(model, x, operator)
    rtol = 1e-7 if method == "lanczos" else 1e-3  # power: the change between iterations stops it
    np.testing.assert_allclose(result.sigma.numpy(), expected, rtol=rtol)
    assert method == "power" or bool(result.converged.all())  # power may run out at so strict a tol
    assert bool((result.sigma_upper >= result.sigma).all())
    # the operator differs from the model: the test would catch an operator that was ignored
    assert not np.allclose(expected, exact_operator_sigma(model, x, "model"), rtol=1e-3)


def test_operator_costs_no_further_model_call() -> None:
    model, x = make_model("mlp")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    for operator in ("model", "fne", "residual"):
        lipcheck.spectral_norm(model, x, operator=operator, **PRECISE)
    assert len(calls) == 3


@pytest.mark.parametrize("operator", ["fne", "residual"])
def test_shape_changing_model_is_refused_naming_both_shapes(operator: str) -> None:
    model, x = make_model("classifier")
    with pytest.raises(ModelOutputError, match=r"\(3, 2, 6, 6\).*\(3, 5\)"):
        lipcheck.spectral_norm(model, x, operator=operator)
    with pytest.raises(InputError, match="operator"):
        lipcheck.spectral_norm(model, x, operator="2f-id")


def test_search_ascends_the_operator_and_is_exact_at_its_point() -> None:
    model, x = make_model("mlp")
    found = worst_case_search(model, x, radius=0.5, steps=4, operator="fne", **PRECISE)
    start = lipcheck.spectral_norm(model, x, operator="fne", **PRECISE)
    np.testing.assert_allclose(found.start.sigma.numpy(), start.sigma.numpy(), rtol=1e-12)
    assert bool((found.sigma >= start.sigma).all()) and bool((found.sigma > start.sigma).any())
    np.testing.assert_allclose(
        found.sigma.numpy(), exact_operator_sigma(model, found.point, "fne"), rtol=1e-7
    )
    report = lipcheck.audit(
        model, x, operator="fne", dtype="float64", search_steps=4, search_radius=0.5, **PRECISE
    )
    np.testing.assert_allclose([row.search_sigma for row in report.samples], found.sigma.numpy(), rtol=1e-12)


def test_python_audit_takes_the_operator() -> None:
    model, x = make_model("cnn")
    report = lipcheck.audit(model, x, operator="residual", dtype="float64", **PRECISE)
    assert report.settings.operator == "residual"
    expected = lipcheck.spectral_norm(model, x, operator="residual", **PRECISE).sigma.numpy()
    np.testing.assert_allclose([row.sigma for row in report.samples], expected, rtol=1e-12)


@pytest.fixture(scope="module")
def sample_exact() -> dict[str, np.ndarray]:
    """The exact norms of J, 2J - I and I - J of the shipped sample model at its first 8 images."""
    module = torch.export.load(SAMPLE_MODEL).module()
    x = torch.from_numpy(np.load(SAMPLE_DATA)[:8])

    def f(z: Tensor) -> Tensor:
        return module(z.float()).double()

    return {operator: exact_operator_sigma(f, x, operator) for operator in ("model", "fne", "residual")}


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("operator", ["fne", "residual"])
def test_cli_on_the_sample_model_gives_the_exact_norm_of_the_operator(
    operator: str, method: str, sample_exact: dict[str, np.ndarray]
) -> None:
    # Lanczos at its defaults is accurate to tol 1e-4; the power method stops on a small relative
    # change, which a small spectral gap reaches early, so it runs at a stricter tol.
    settings = () if method == "lanczos" else ("--tol", "1e-6", "--max-iter", "2000")
    report = audit_json(
        SAMPLE_MODEL, "-d", SAMPLE_DATA, "--limit", "8", "--operator", operator, "--method", method, *settings
    )
    assert report["settings"]["operator"] == operator
    np.testing.assert_allclose(sigmas(report), sample_exact[operator], rtol=1e-4)


def test_fail_above_one_gates_firm_nonexpansiveness(tmp_path: Path) -> None:
    sample = run(
        "audit", SAMPLE_MODEL, "-d", SAMPLE_DATA, "--limit", "8", "--operator", "fne", "--fail-above", "1"
    )
    assert sample.exit_code == 1, sample.stderr
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((5, 6)))
    report = tmp_path / "report.json"
    averaged = run(
        "audit", export(Averaged().float(), tmp_path / "averaged.pt2", torch.zeros(2, 6)),
        "-d", tmp_path / "x.npy", "--operator", "fne", "--fail-above", "1", "-o", report,
    )  # fmt: skip
    assert averaged.exit_code == 0, averaged.stderr
    assert json.loads(report.read_text())["gate"]["passed"] is True


def test_bound_certifies_the_operator_audited(tmp_path: Path) -> None:
    """The bound of 2f - Id (or Id - f) is never below the exact norm of 2J - I anywhere, and it is the
    bound of that operator's graph, not the model's."""
    model, _ = make_model("residual", dtype=torch.float32)
    points = torch.randn(40, 4, 5, 5, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "x.npy", points[:3].numpy())
    path = export(model, tmp_path / "block.pt2", points[:2])
    double = model.double()
    for operator in ("fne", "residual"):
        report = audit_json(path, "-d", tmp_path / "x.npy", "--operator", operator, "--bound")
        exact = exact_operator_sigma(double, points, operator)
        assert report["upper_bound"] >= exact.max()
        assert report["bracket"] == [report["summary"]["max"], report["upper_bound"]]
        plain = audit_json(path, "-d", tmp_path / "x.npy", "--bound")
        assert report["upper_bound"] != plain["upper_bound"]


def test_the_bound_command_certifies_the_operator_as_audit_bound_does(tmp_path: Path) -> None:
    """`lipcheck bound --operator` bounds the same graph as `audit --operator ... --bound`: the same
    number, recorded as that operator's in a report the schema accepts, and never below the exact norm."""
    model, _ = make_model("residual", dtype=torch.float32)
    points = torch.randn(40, 4, 5, 5, generator=torch.Generator().manual_seed(6))
    np.save(tmp_path / "x.npy", points[:3].numpy())
    path = export(model, tmp_path / "block.pt2", points[:2])
    bounds = {}
    for operator in ("model", "fne", "residual"):
        result = run("bound", path, "--input-shape", "4x5x5", "--operator", operator, "-f", "json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        jsonschema.validate(report, bound_schema())
        assert report["bound"]["operator"] == operator
        audited = audit_json(path, "-d", tmp_path / "x.npy", "--operator", operator, "--bound")
        assert audited["bound"]["operator"] == operator
        assert report["upper_bound"] == audited["upper_bound"]
        if operator != "model":
            assert report["upper_bound"] >= exact_operator_sigma(model.double(), points, operator).max()
        bounds[operator] = report["upper_bound"]
    assert len(set(bounds.values())) == 3
    table = run("bound", path, "--input-shape", "4x5x5", "--operator", "fne", "-f", "table")
    assert "fne: 2f - Id" in table.stdout
    markdown = run("bound", path, "--input-shape", "4x5x5", "--operator", "residual", "-f", "markdown")
    assert "Lipschitz constant of Id - f (--operator residual)" in markdown.stdout


def test_bound_refuses_a_shape_changing_model_naming_both_shapes(tmp_path: Path) -> None:
    model, x = make_model("classifier", dtype=torch.float32)
    np.save(tmp_path / "x.npy", x.numpy())
    path = export(model, tmp_path / "classifier.pt2", x[:2])
    for extra in ((), ("--bound",)):
        result = run("audit", path, "-d", tmp_path / "x.npy", "--operator", "residual", *extra)
        assert_one_line_error(result, "--operator residual", "Id - f", "(1, 5)" if extra else "(3, 5)")
    result = run("bound", path, "--input-shape", "2x6x6", "--operator", "fne")
    assert_one_line_error(result, "--operator fne", "2f - Id", "(1, 5)")


def test_a_baseline_of_another_operator_is_a_mismatch(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    arguments = ("audit", SAMPLE_MODEL, "-d", SAMPLE_DATA, "--limit", "4")
    assert run(*arguments, "-o", base).exit_code == 0
    result = run(*arguments, "--operator", "fne", "--baseline", base, "--max-increase", "5")
    assert_one_line_error(result, "--operator model vs fne", "--allow-mismatch")
    assert run(*arguments, "--baseline", base, "--max-increase", "5").exit_code == 0


def test_outputs_name_the_operator(tmp_path: Path) -> None:
    outputs = [tmp_path / name for name in ("r.json", "r.md", "r.xml", "r.txt", "r.html")]
    result = run(
        "audit", SAMPLE_MODEL, "-d", SAMPLE_DATA, "--limit", "4", "--operator", "fne", "--quiet",
        *(item for path in outputs for item in ("-o", path)),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report, markdown, junit, table, page = (path.read_text() for path in outputs)
    assert json.loads(report)["settings"]["operator"] == "fne"
    # Markdown escapes every pipe of a text (it renders as "||2J - I||"), in a paragraph as in a table
    assert "operator fne (sigma = \\|\\|2J - I\\|\\|)" in markdown and "sigma \\|\\|2J - I\\|\\|" in markdown
    assert '<property name="operator" value="fne (sigma = ||2J - I||)" />' in junit
    assert "operator fne (sigma = ||2J - I||)" in table and "sigma ||2J - I||" in table
    assert "operator fne (sigma = ||2J - I||)" in page and "sigma ||2J - I||" in page


def test_reports_without_an_operator_measured_the_model() -> None:
    report = json.loads((ROOT / "tests" / "golden" / "report.json").read_text())
    del report["settings"]["operator"]
    assert Report.from_dict(report).settings.operator == "model"
    with pytest.raises(InputError, match="--operator"):
        Settings(operator="jacobian").validate()


@pytest.mark.parametrize("how", ["grad", "backward"])
def test_a_model_that_frees_its_own_graph_gets_one_line(how: str, tmp_path: Path) -> None:
    torch.save(InnerGradient().state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32))

    def audit(**kwargs: object) -> object:
        return run(
            "audit", tmp_path / "w.pt", "-d", tmp_path / "x.npy", "--arch", f"{HERE}:make_inner_gradient",
            "--arch-kwargs", json.dumps(kwargs),
        )  # fmt: skip

    result = audit(how=how)
    assert_one_line_error(
        result,
        "freed part of its own autograd graph",
        "not differentiable as called",
        "detach = False",
        code=3,
    )
    assert "retain_graph" not in result.stderr
    if how == "grad":  # the fix the message names
        fixed = audit(how=how, detach=False)
        assert fixed.exit_code == 0, fixed.stderr


def test_the_engine_explains_a_freed_graph_from_python() -> None:
    model = InnerGradient().double()
    with pytest.raises(AuditFailedError, match="not differentiable as called") as raised:
        lipcheck.spectral_norm(model, torch.randn(2, 6, dtype=torch.float64))
    assert "retain_graph" not in str(raised.value)
    model.detach = False
    x = torch.randn(2, 6, dtype=torch.float64)
    np.testing.assert_allclose(
        lipcheck.spectral_norm(model, x, **PRECISE).sigma.numpy(),
        exact_operator_sigma(model, x, "model"),
        rtol=1e-7,
    )


def test_the_fne_section_of_docs_deepinv_runs_as_printed(tmp_path: Path) -> None:
    """docs/deepinv.md, "Is my denoiser firmly nonexpansive?": its command on the sample model, run as
    printed from the repository's root, fails the gate at the figures the page quotes."""
    page = (ROOT / "docs" / "deepinv.md").read_text(encoding="utf-8")
    section = page[page.index("## Is my denoiser firmly nonexpansive?") :]
    (script,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    (printed,) = re.findall(r"```text\n(.*?)```", section, re.S)
    shim = tmp_path / "lipcheck"  # the installed entry point, for this checkout's lipcheck
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lipcheck "$@"\n')
    shim.chmod(0o755)
    environment = {
        **os.environ,
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("exit 1")
    assert "lipcheck: gate failed: max sigma 2.71314 > 1" in done.stderr
    for figure in (
        "2.71314 (sample 9)",
        "(histogram, max bin 5)",
        "[2.71314, 19.6075], ratio 7.227",
        "operator fne (sigma = ||2J - I||)",
    ):
        assert figure in done.stdout and figure in printed, figure
