"""Last-layer ensembles (Laplace sampling of the read-out weights) in Python: sampling,
agreement with the analytic LLPR sigma, propagation to forces and stresses, the exported
file's ensemble (and files without one), and `llpr export --ensemble`.

Monte-Carlo tolerances: for K independent Gaussian samples the relative standard error of a
standard-deviation estimate is 1/sqrt(2(K-1)) (0.5 % for K = 20000). For a per-atom force
sigma, the variance is a sum over three correlated components, whose relative standard error
is at most sqrt(2/(K-1)), i.e. at most 1/sqrt(2(K-1)) again for the sigma. The tests allow 5
standard errors (2.5 %) on every structure / atom; a wrong propagation (a missing factor,
a transposed factor L^-1 instead of L^-T, forces of the wrong sign) is off by far more."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llpr.ase import LLPRCalculator
from llpr.export import ExportedLLPRModel
from llpr.modelfile import ensemble_size, export_model, load_exported
from llpr.graphs import AtomisticDataset, collate, make_loader
from llpr.models.potential import edge_vectors_from_positions

from lammps_helpers import strained

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

K_MC = 20000
MC_TOL = 5.0 / math.sqrt(2 * (K_MC - 1))


def _batch(llpr, atoms_list):
    return collate([AtomisticDataset([a], llpr.model.cutoff, torch.float64, require_labels=False)[0]
                    for a in atoms_list])


@pytest.fixture(scope="module")
def ens_paths(small_llpr, tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    return {
        "k8": export_model(small_llpr, str(d / "k8.pt"), ensemble=8, seed=3),
        "k40": export_model(small_llpr, str(d / "k40.pt"), ensemble=40, seed=4),  # K > F: Jacobian path
        "none": export_model(small_llpr, str(d / "none.pt")),
        "dir": d,
    }


# ------------------------------------------------------------------------------ sampling
def test_sample_ensemble_is_recentred_and_reproducible(small_llpr):
    w = small_llpr.readout_weights()
    W = small_llpr.sample_ensemble(16, seed=7)
    assert W.shape == (16, w.shape[0]) and W.dtype == torch.float64
    # the ensemble mean is the model's own weights (up to float64 rounding)
    assert float((W.mean(0) - w).abs().max()) < 1e-14 * max(1.0, float(w.abs().max()))
    assert torch.equal(W, small_llpr.sample_ensemble(16, seed=7))
    assert not torch.allclose(W, small_llpr.sample_ensemble(16, seed=8))
    dev = small_llpr.ensemble_deviations(16, seed=7)
    assert float(dev.sum(0).abs().max()) < 1e-13 * float(dev.abs().max())
    torch.testing.assert_close(W, w + dev, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="at least 2 members"):
        small_llpr.sample_ensemble(1)


def test_ensemble_energy_sigma_equals_analytic_sigma(small_llpr, si_splits):
    """K = 20000 members: the spread of the members' energies equals alpha sqrt(s^T C^-1 s)
    on every test structure, within 5 Monte-Carlo standard errors (2.5 %)."""
    structures = si_splits[2] + si_splits[1]
    batch = _batch(small_llpr, structures)
    W = small_llpr.sample_ensemble(K_MC, seed=11)
    pred = small_llpr.predict(batch, ensemble=W)
    ratio = (pred["ensemble_sigma"] / pred["sigma"]).numpy()
    print(f"ensemble/analytic energy sigma over {len(structures)} structures: "
          f"{ratio.min():.4f} .. {ratio.max():.4f} (tolerance {MC_TOL:.4f})")
    assert np.all(np.abs(ratio - 1.0) < MC_TOL)
    # the ensemble mean is the model's prediction
    mean = pred["ensemble_prediction"].mean(dim=1)
    np.testing.assert_allclose(mean.numpy(), pred["prediction"].numpy(), rtol=0, atol=1e-10)
    # and a small ensemble (K = 8) is not mistaken for the analytic value
    small = small_llpr.predict(batch, ensemble=small_llpr.sample_ensemble(8, seed=1))
    assert not np.allclose(small["ensemble_sigma"].numpy(), pred["sigma"].numpy(), rtol=1e-3)


def _feature_jacobians(llpr, batch):
    """J_i = d(sum of the batch's features)/d r_i, (N, F, 3), by F backward passes."""
    pos = batch["positions"].clone().requires_grad_(True)
    vectors = edge_vectors_from_positions(pos, batch["edge_index"], batch["edge_shifts"])
    _, feats = llpr.model(batch["atomic_numbers"], batch["edge_index"], vectors, pos.shape[0])
    s = feats.sum(0)
    rows = [torch.autograd.grad(s[a], pos, retain_graph=True)[0] for a in range(s.shape[0])]
    return torch.stack(rows, dim=1)  # (N, F, 3)


def test_force_sigma_equals_analytic_force_sigma(small_llpr, si_splits):
    """Per-atom force sigma of a K = 20000 ensemble against the analytic value
    alpha sqrt(tr(J_i^T C^-1 J_i) / 3), J_i = d(sum_j f_j)/d r_i, on every atom of two small
    cells (memory: K x edges x 3 doubles)."""
    from ase.build import bulk

    atoms = []
    for seed in (1, 2):
        a = bulk("Si", "diamond", 5.431, cubic=True)
        a.rattle(0.15, seed=seed)
        atoms.append(a)
    batch = _batch(small_llpr, atoms)
    pred = small_llpr.predict(batch, ensemble=small_llpr.sample_ensemble(K_MC, seed=12), forces=True)
    J = _feature_jacobians(small_llpr, batch)  # (N, F, 3)
    L = small_llpr.cholesky_factor()
    n, F, _ = J.shape
    z = torch.linalg.solve_triangular(L, J.permute(1, 0, 2).reshape(F, n * 3), upper=False)
    analytic = small_llpr.alpha * torch.sqrt((z * z).sum(0).reshape(n, 3).sum(1) / 3.0)
    ratio = (pred["force_sigma"] / analytic).numpy()
    print(f"ensemble/analytic force sigma over {n} atoms: {ratio.min():.4f} .. {ratio.max():.4f}")
    assert np.all(np.abs(ratio - 1.0) < MC_TOL)
    # members' forces average to the model's forces
    np.testing.assert_allclose(pred["ensemble_forces"].mean(0).numpy(), pred["forces"].numpy(), rtol=0, atol=1e-10)


def test_member_forces_are_gradients_of_member_energies(small_llpr, si_splits):
    atoms = si_splits[2][0].copy()
    W = small_llpr.sample_ensemble(5, seed=2)
    pred = small_llpr.predict(_batch(small_llpr, [atoms]), ensemble=W, forces=True)
    h = 1e-5
    for k, i, c in [(0, 0, 0), (3, 2, 1), (4, 5, 2)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, c] += sign * h
            e.append(float(small_llpr.predict(_batch(small_llpr, [moved]), ensemble=W)["ensemble_prediction"][0, k]))
        fd = -(e[0] - e[1]) / (2 * h)
        assert float(pred["ensemble_forces"][k, i, c]) == pytest.approx(fd, abs=1e-7)
    # forces=True without an ensemble gives the model's forces only
    plain = small_llpr.predict(_batch(small_llpr, [atoms]), forces=True)
    assert "force_sigma" not in plain
    np.testing.assert_allclose(plain["forces"].numpy(), pred["forces"].numpy(), rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------ exported file
@pytest.mark.parametrize("name, k, seed", [("k8", 8, 3), ("k40", 40, 4)])
def test_exported_ensemble_equals_llpr(small_llpr, ens_paths, si_splits, name, k, seed):
    module = load_exported(ens_paths[name])
    assert ensemble_size(module) == k and module.ensemble_size() == k
    torch.testing.assert_close(module.head.ensemble_deviations, small_llpr.ensemble_deviations(k, seed),
                               rtol=0, atol=0)
    atoms = si_splits[2][1]
    W = small_llpr.sample_ensemble(k, seed)
    pred = small_llpr.predict(_batch(small_llpr, [atoms]), ensemble=W, forces=True)
    calc = LLPRCalculator(ens_paths[name], ensemble=True)
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    np.testing.assert_allclose(calc.results["energy_ensemble"], pred["ensemble_prediction"][0].numpy(),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(calc.results["force_sigma"], pred["force_sigma"].numpy(), rtol=1e-10, atol=1e-13)


def test_member_stress_is_strain_derivative(ens_paths):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.05, seed=5)
    atoms.calc = LLPRCalculator(ens_paths["k8"], ensemble=True)
    atoms.get_potential_energy()
    stress_k = atoms.calc.results["stress_ensemble"]  # (K, 6)
    assert stress_k.shape == (8, 6)
    np.testing.assert_allclose(stress_k.mean(0), atoms.get_stress(), rtol=0, atol=1e-12)
    h = 1e-5
    for a, b, voigt in [(0, 0, 0), (1, 2, 3), (0, 1, 5)]:
        e = []
        for sign in (1, -1):
            s = strained(atoms, a, b, sign * h)
            s.calc = LLPRCalculator(ens_paths["k8"], ensemble=True)
            s.get_potential_energy()
            e.append(s.calc.results["energy_ensemble"])
        numeric = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
        np.testing.assert_allclose(stress_k[:, voigt], numeric, atol=1e-7)
    sig = atoms.calc.results["stress_sigma"]
    np.testing.assert_allclose(sig, np.sqrt(((stress_k - stress_k.mean(0)) ** 2).sum(0) / 7), rtol=1e-10)


def test_file_without_ensemble(ens_paths, si_splits):
    module = load_exported(ens_paths["none"])
    assert ensemble_size(module) == 0
    with pytest.raises(ValueError, match="has no last-layer ensemble.*--ensemble"):
        LLPRCalculator(ens_paths["none"], ensemble=True)
    atoms = si_splits[2][0].copy()
    atoms.calc = LLPRCalculator(ens_paths["none"])
    atoms.get_potential_energy()
    assert "force_sigma" not in atoms.calc.results


def test_export_rejects_one_member(small_llpr, tmp_path):
    with pytest.raises(ValueError, match="at least 2 members"):
        export_model(small_llpr, str(tmp_path / "m.pt"), ensemble=1)


def test_cli_export_ensemble(small_llpr, tmp_path, capsys):
    from llpr.cli import main
    from llpr.uncertainty.estimator import save_llpr

    ckpt = str(tmp_path / "llpr.ckpt")
    save_llpr(small_llpr, ckpt)
    out = str(tmp_path / "m.pt")
    assert main(["-q", "export", ckpt, "-o", out, "--ensemble", "6", "--seed", "5"]) == 0
    assert "last-layer ensemble of 6 (seed 5)" in capsys.readouterr().out
    module = load_exported(out)
    torch.testing.assert_close(module.head.ensemble_deviations, small_llpr.ensemble_deviations(6, 5), rtol=0, atol=0)
    assert main(["-q", "export", ckpt, "-o", out, "--ensemble", "1"]) == 2
    assert "at least 2 members" in capsys.readouterr().err


@pytest.mark.parametrize("k, centred", [(5, True), (5, False), (30, True), (30, False)])
def test_edge_gradients_every_path(small_llpr, si_splits, k, centred):
    """The member gradients (one pass per member, K-1 passes for a re-centred ensemble, or the
    feature Jacobian when K > F) equal one autograd call per member."""
    from llpr.uncertainty.propagation import ensemble_edge_gradients

    batch = _batch(small_llpr, [si_splits[2][0]])
    gen = torch.Generator().manual_seed(k)
    dw = torch.randn(k, small_llpr.covariance_.shape[0], generator=gen, dtype=torch.float64)
    if centred:
        dw = dw - dw.mean(0)
    vectors = edge_vectors_from_positions(batch["positions"], batch["edge_index"], batch["edge_shifts"])
    vectors = vectors.detach().requires_grad_(True)
    _, feats = small_llpr.model(batch["atomic_numbers"], batch["edge_index"], vectors, batch["positions"].shape[0])
    s = feats.sum(0)
    got = ensemble_edge_gradients(s, vectors, dw)
    want = torch.stack([torch.autograd.grad((s * dw[j]).sum(), vectors, retain_graph=True)[0] for j in range(k)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))


def test_lean_force_virial_deviations_equal_edge_gradients(small_llpr, si_splits):
    """The memory-lean per-atom reduction (used by the exported file) equals the per-edge
    gradients scattered to atoms, on every path."""
    from llpr.uncertainty.propagation import edge_gradients_to_forces, ensemble_edge_gradients, ensemble_force_virial_deviations

    batch = _batch(small_llpr, [si_splits[2][0]])
    n = batch["positions"].shape[0]
    for k, centred in [(4, True), (4, False), (30, True)]:
        dw = torch.randn(k, small_llpr.covariance_.shape[0], generator=torch.Generator().manual_seed(k),
                         dtype=torch.float64)
        if centred:
            dw = dw - dw.mean(0)
        vectors = edge_vectors_from_positions(batch["positions"], batch["edge_index"], batch["edge_shifts"])
        vectors = vectors.detach().requires_grad_(True)
        _, feats = small_llpr.model(batch["atomic_numbers"], batch["edge_index"], vectors, n)
        G = ensemble_edge_gradients(feats.sum(0), vectors, dw)
        forces, virials = ensemble_force_virial_deviations(feats.sum(0), vectors, batch["edge_index"], n, dw, True, True)
        scale = float(G.abs().max())
        torch.testing.assert_close(forces, edge_gradients_to_forces(G, batch["edge_index"], n), rtol=0, atol=1e-12 * scale)
        want_v = -torch.einsum("ea,keb->kab", vectors.detach(), G)
        torch.testing.assert_close(virials, want_v, rtol=0, atol=1e-12 * float(want_v.abs().max()))


def test_float32_model_with_ensemble(small_llpr, ens_paths, si_splits):
    path = export_model(small_llpr, str(ens_paths["dir"] / "k8_32.pt"), dtype=torch.float32, ensemble=8, seed=3)
    atoms = si_splits[2][1].copy()
    results = []
    for p in (path, ens_paths["k8"]):
        atoms.calc = LLPRCalculator(p, ensemble=True)
        atoms.get_potential_energy()
        results.append(atoms.calc.results["force_sigma"])
    assert results[0].dtype == np.float64
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4)
