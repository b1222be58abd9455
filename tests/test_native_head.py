"""The C++ core's native per-step uncertainty (cpp/src/native_head.*) against its reference,
the file's LLPR head: the quadratic-form kernel on its own, the whole per-atom / group path
through llpr._core.Model, the load-time check that falls back to the head, and the switch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lammps_helpers import make_model
from llpr.uncertainty.llpr_head import LLPRHead

core = pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
NATIVE = core.native_kernels_unsupported_reason() == ""
needs_native = pytest.mark.skipif(not NATIVE, reason=f"no native kernels here: {core.native_kernels_unsupported_reason()}")
TOL = 1e-12


def _covariance(n_features: int, condition: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_features, n_features, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, float(np.log10(condition)), n_features, dtype=torch.float64)
    return (q * eig) @ q.t()


@needs_native
@pytest.mark.parametrize("condition", [1e2, 1e12])
@pytest.mark.parametrize("n_features", [1, 3, 8, 9, 33, 64, 100, 128])
def test_kernel_matches_head_quadratic_form(n_features, condition):
    """Every feature width (tiles of 8 columns, partial ones) and row count (tiles of 6 rows,
    partial ones), on a well- and an ill-conditioned covariance."""
    head = LLPRHead(torch.linalg.cholesky(_covariance(n_features, condition)), 1.0, 0.0)
    u = head.inverse_factor_t.numpy()
    rng = np.random.default_rng(n_features)
    for n in (1, 5, 6, 7, 13, 1001):
        f = rng.normal(size=(n, n_features)) * rng.choice([1e-3, 1.0, 1e3], size=(n, 1))
        ref = head.quadratic_form(torch.from_numpy(f)).numpy()
        got = core.native_quadratic_form(u, f)
        np.testing.assert_allclose(got, ref, rtol=TOL, atol=0, err_msg=f"n={n}")
        # and against |L^-1 f|^2 by a triangular solve (no inverse at all)
        z = torch.linalg.solve_triangular(head.cholesky, torch.from_numpy(f).t(), upper=False)
        np.testing.assert_allclose(got, (z * z).sum(0).numpy(), rtol=1e-11, atol=0)


@needs_native
def test_kernel_refuses_a_factor_that_is_not_upper_triangular():
    head = LLPRHead(torch.linalg.cholesky(_covariance(10, 10.0)), 1.0, 0.0)
    u = head.inverse_factor_t.numpy().copy()
    u[5, 2] = 1e-9  # below the diagonal: the kernel would skip it
    with pytest.raises(ValueError, match="not upper triangular"):
        core.native_quadratic_form(u, np.ones((3, 10)))
    with pytest.raises(ValueError, match="shape"):
        core.native_quadratic_form(head.inverse_factor_t.numpy(), np.ones((3, 9)))


def test_no_native_kernels_reason_is_a_sentence():
    reason = core.native_kernels_unsupported_reason()
    assert reason == "" or len(reason.split()) > 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    return {
        "f64": make_model(d / "f64.pt", species=(6, 14), seed=3),
        "f32": make_model(d / "f32.pt", species=(6, 14), seed=4, dtype=torch.float32),
        "dir": d,
    }


def _per_step(model, f):
    sigma, lpr = model.local_uncertainty(f)
    return {
        "q": model.quadratic_form(f),
        "sigma": sigma,
        "lpr": lpr,
        "variance": np.array([model.energy_variance(f.sum(0))]),
    }


@needs_native
@pytest.mark.parametrize("kind", ["f64", "f32"])
def test_model_native_path_matches_the_head(files, kind, monkeypatch):
    """Model.* on the native path against the same file on the head's path (the switch) and
    against the head in Python, up to 9000 rows (split between threads)."""
    from llpr.modelfile import load_exported

    path = files[kind]
    native = core.Model(path)
    assert native.metadata["uncertainty_evaluation"].startswith("native")
    monkeypatch.setenv("LLPR_NATIVE_UNCERTAINTY", "0")
    head_path = core.Model(path)
    assert head_path.metadata["uncertainty_evaluation"].startswith("LLPR head") and "LLPR_NATIVE_UNCERTAINTY=0" in \
        head_path.metadata["uncertainty_evaluation"]
    module = load_exported(path)
    F = native.metadata["n_features"]
    rng = np.random.default_rng(1)
    threads = core.get_num_threads()
    try:
        for n, t in ((7, 1), (9000, 1), (9000, 2)):
            core.set_num_threads(t)
            f = np.abs(rng.normal(size=(n, F)))
            a, b = _per_step(native, f), _per_step(head_path, f)
            for key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=TOL, atol=0, err_msg=f"{key} n={n} threads={t}")
            s, r = module.local_uncertainty(torch.from_numpy(f))
            np.testing.assert_allclose(a["sigma"], s.numpy(), rtol=TOL)
            np.testing.assert_allclose(a["lpr"], r.numpy(), rtol=TOL)
    finally:
        core.set_num_threads(threads)


@needs_native
def test_power_law_and_extrapolation_grade_follow_the_head(files):
    """A power-law sigma and gamma: the native formulas take the file's law and max_train_q."""
    from test_core import _export_modified

    class RecordedHead(LLPRHead):
        def __init__(self, cholesky, alpha, varsigma, ensemble_deviations=None):
            super().__init__(cholesky, alpha, varsigma, ensemble_deviations, max_train_q=3.5, sigma_scale=0.02,
                             sigma_power=1.7)

    path = _export_modified(files["f64"], str(files["dir"] / "power.pt"), head_class=RecordedHead)
    model = core.Model(path)
    assert model.metadata["uncertainty_evaluation"].startswith("native")
    module = torch.jit.load(path)
    f = np.abs(np.random.default_rng(2).normal(size=(50, model.metadata["n_features"])))
    t = torch.from_numpy(f)
    sigma, lpr = model.local_uncertainty(f)
    ref_sigma, ref_lpr = module.head.local_uncertainty(t)
    np.testing.assert_allclose(sigma, ref_sigma.numpy(), rtol=TOL)
    np.testing.assert_allclose(lpr, ref_lpr.numpy(), rtol=TOL)
    np.testing.assert_allclose(model.extrapolation_grade(f), module.head.extrapolation_grade(t).numpy(), rtol=TOL)
    assert model.energy_variance(f.sum(0)) == pytest.approx(float(module.head.energy_variance(t.sum(0))), rel=TOL)


def test_a_head_with_other_formulas_is_run_as_it_is(files):
    """A file whose head computes sigma differently from LLPRHead's law: the load-time check
    sees it and the core runs that head's own methods, so the numbers stay the file's."""
    from test_core import _export_modified

    class OtherHead(LLPRHead):
        @torch.jit.export
        def local_uncertainty(self, features: torch.Tensor):
            q = self.quadratic_form(features)
            return 1.5 * self.alpha * torch.sqrt(q), 1.0 / q

    path = _export_modified(files["f64"], str(files["dir"] / "other.pt"), head_class=OtherHead)
    model = core.Model(path)
    assert model.metadata["uncertainty_evaluation"].startswith("LLPR head")
    if NATIVE:
        assert "differed" in model.metadata["uncertainty_evaluation"]
    module = torch.jit.load(path)
    f = np.abs(np.random.default_rng(3).normal(size=(20, model.metadata["n_features"])))
    sigma, _ = model.local_uncertainty(f)
    np.testing.assert_allclose(sigma, module.head.local_uncertainty(torch.from_numpy(f))[0].numpy(), rtol=TOL)


def test_llpr_check_reports_the_path(files):
    out = subprocess.run([sys.executable, "-m", "llpr.cli", "check", str(files["f64"])], capture_output=True,
                         text=True, env=dict(os.environ, LLPR_NATIVE_UNCERTAINTY="0"))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("uncertainty_evaluation"))
    assert "LLPR head's TorchScript methods (LLPR_NATIVE_UNCERTAINTY=0)" in line


def test_lammps_sigma_and_gamma_follow_each_step(files, tmp_path):
    """sigma_i and gamma_i share one quadratic form per evaluation: in MD, every dumped frame
    matches the Python reference of that frame's positions (a q left over from an earlier
    step would not)."""
    from ase import Atoms

    from lammps_helpers import dump_table, lammps_script, reference, run_lmp, si_diamond, write_data

    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=5)
    data = write_data(atoms, tmp_path / "data.lmp", ["C", "Si"])
    script = lammps_script(files["f64"], data, ["C", "Si"], post=f"""
compute ug all llpr/atom gamma yes
velocity all create 900 4 mom yes rot yes
fix 1 all nve
dump d all custom 10 {tmp_path}/frame.*.out id x y z c_ug[1] c_ug[3]
dump_modify d sort id format float %.17g
run 20
""")
    proc = run_lmp(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "evaluated by the native" in proc.stdout or not NATIVE
    gammas = []
    for step in (10, 20):
        table = dump_table(tmp_path / f"frame.{step}.out")
        frame = Atoms(numbers=atoms.numbers, positions=table[:, 1:4], cell=atoms.cell, pbc=True)
        ref = reference(files["f64"], frame)
        np.testing.assert_allclose(table[:, 4], ref["sigma"], rtol=1e-10, err_msg=f"step {step}")
        np.testing.assert_allclose(table[:, 5], ref["gamma"], rtol=1e-10, err_msg=f"step {step}")
        gammas.append(table[:, 5])
    assert np.abs(gammas[1] - gammas[0]).max() > 1e-6 * np.abs(gammas[0]).max()  # the frames differ


def test_a_head_giving_nan_or_failing_keeps_its_own_behaviour(files):
    """The load-time check must not let finite native numbers stand in for a head's NaN, nor
    fail the load when the head's methods fail: both files run their head's methods."""
    from test_core import _export_modified

    class NaNHead(LLPRHead):
        @torch.jit.export
        def local_uncertainty(self, features: torch.Tensor):
            q = self.quadratic_form(features)
            return self.alpha * torch.sqrt(q) * float("nan"), 1.0 / q

    class FailingHead(LLPRHead):
        @torch.jit.export
        def quadratic_form(self, features: torch.Tensor) -> torch.Tensor:
            if features.shape[0] < 100:
                raise RuntimeError("this head refuses fewer than 100 rows")
            z = features.to(torch.float64) @ self.inverse_factor_t
            return (z * z).sum(dim=1)

    f = np.abs(np.random.default_rng(4).normal(size=(120, core.Model(files["f64"]).metadata["n_features"])))
    nan_model = core.Model(_export_modified(files["f64"], str(files["dir"] / "nan.pt"), head_class=NaNHead))
    assert nan_model.metadata["uncertainty_evaluation"].startswith("LLPR head")
    assert np.isnan(nan_model.local_uncertainty(f)[0]).all()
    failing = core.Model(_export_modified(files["f64"], str(files["dir"] / "fail.pt"), head_class=FailingHead))
    path = failing.metadata["uncertainty_evaluation"]
    assert path.startswith("LLPR head")
    if NATIVE:
        assert "failed on probe rows" in path and "refuses fewer than 100 rows" in path
    module = torch.jit.load(str(files["dir"] / "fail.pt"))
    np.testing.assert_allclose(failing.quadratic_form(f), module.head.quadratic_form(torch.from_numpy(f)).numpy(),
                               rtol=TOL)


@needs_native
def test_a_factor_with_a_lower_entry_runs_the_head(files):
    """A U with a non-zero below the diagonal (small enough for the loader's inverse check):
    the kernel would skip it, so the core runs the head, and the numbers are the head's."""
    from test_core import _export_modified

    src = torch.jit.load(files["f64"])
    u = src.head.inverse_factor_t.clone()
    u[3, 1] = 1e-13 * float(u.abs().max())
    path = _export_modified(files["f64"], str(files["dir"] / "lower.pt"), head_changes={"inverse_factor_t": u})
    model = core.Model(path)
    assert model.metadata["uncertainty_evaluation"] == \
        "LLPR head's TorchScript methods (head.inverse_factor_t is not upper triangular)"
    f = np.abs(np.random.default_rng(6).normal(size=(30, model.metadata["n_features"])))
    ref = torch.jit.load(path).head.quadratic_form(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(model.quadratic_form(f), ref, rtol=TOL)
