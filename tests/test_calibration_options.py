"""Calibration options: the joint energy + force NLL, the power-law sigma and extra
calibration structures (Python API, CLI, and what the exported file records)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from llpr.uncertainty.calibrate import SpectralQuadraticForm, calibrate_hyperparameters


def _synthetic(n_struct, n_atoms, alpha, varsigma, seed=0, n_features=6):
    """Training covariance with a spread of eigenvalues (so that varsigma matters), validation
    features and force Jacobians, and errors drawn with the LLPR variances at (alpha, varsigma)."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-2, 1, n_features)
    train = rng.normal(size=(200, n_features)) * scales
    cov = torch.tensor(train.T @ train)
    # each row mostly along one training direction: rows along well-explored directions fix
    # alpha, rows along barely explored ones (eigenvalue ~ varsigma^2) fix varsigma
    def rows(shape):
        out = rng.normal(size=shape + (n_features,)) * 0.05
        axis = rng.integers(0, n_features, size=shape)
        np.put_along_axis(out, axis[..., None], rng.normal(size=shape + (1,)) * 3.0, axis=-1)
        return torch.tensor(out)

    feats = rows((n_struct,))
    jac = rows((n_atoms, 3))
    qf = SpectralQuadraticForm(cov, feats)
    q = qf(varsigma)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    reg_inv = torch.linalg.inv(cov + varsigma**2 * torch.eye(n_features, dtype=torch.float64))
    qbar = torch.einsum("mcf,fg,mcg->m", jac, reg_inv, jac).numpy() / 3.0
    e = rng.normal(size=n_struct) * alpha * np.sqrt(q)
    fe = rng.normal(size=(n_atoms, 3)) * alpha * np.sqrt(qbar)[:, None]
    return cov, feats, torch.tensor(e), jac, torch.tensor(fe), q


def test_joint_nll_recovers_alpha_and_varsigma():
    alpha, varsigma = 0.3, 0.5
    cov, feats, e, jac, fe, _ = _synthetic(300, 3000, alpha, varsigma)
    joint = calibrate_hyperparameters(cov, feats, e, force_jacobian=jac, force_errors=fe, force_weight=1.0)
    assert joint.method == "energy+forces" and joint.n_force_components == 9000
    assert joint.alpha == pytest.approx(alpha, rel=0.05)
    assert math.log(joint.varsigma) == pytest.approx(math.log(varsigma), abs=0.15)
    # five energies alone cannot pin varsigma down: forces are what makes it identifiable
    assert joint.force_nll is not None and math.isfinite(joint.force_nll)
    # the closed-form alpha is the minimum of the joint objective at that varsigma
    from llpr.uncertainty.calibrate import _ForceQuadraticForm
    _, vecs = torch.linalg.eigh(cov)
    qf = SpectralQuadraticForm(cov, feats)
    q, qbar = qf(joint.varsigma), _ForceQuadraticForm(qf, vecs, jac)(joint.varsigma)

    def objective(a):
        ne = np.mean(0.5 * np.log(2 * np.pi * a**2 * q) + 0.5 * e.numpy() ** 2 / (a**2 * q))
        nf = np.mean(0.5 * np.log(2 * np.pi * a**2 * qbar) + 0.5 * fe.numpy().ravel() ** 2 / (a**2 * qbar))
        return ne + nf

    best = objective(joint.alpha)
    assert best < objective(joint.alpha * 1.01) and best < objective(joint.alpha * 0.99)


def test_force_weight_moves_alpha_towards_the_force_scale():
    # energies made with alpha 0.1, forces with alpha 1: the joint alpha lies between and
    # approaches the force scale as the weight grows
    cov, feats, e, jac, fe, _ = _synthetic(400, 400, 0.1, 0.5, seed=1)
    fe = fe * 10.0
    a0 = calibrate_hyperparameters(cov, feats, e).alpha
    a1 = calibrate_hyperparameters(cov, feats, e, force_jacobian=jac, force_errors=fe, force_weight=1.0).alpha
    a100 = calibrate_hyperparameters(cov, feats, e, force_jacobian=jac, force_errors=fe, force_weight=100.0).alpha
    assert a0 == pytest.approx(0.1, rel=0.15)
    assert a0 < a1 < a100
    assert a100 == pytest.approx(1.0, rel=0.15)


def test_power_law_recovers_its_exponent():
    rng = np.random.default_rng(3)
    cov, feats, _, _, _, _ = _synthetic(3000, 1, 1.0, 0.5, seed=2)
    feats = feats * torch.tensor(np.exp(rng.normal(size=(feats.shape[0], 1))))  # q over decades
    q = SpectralQuadraticForm(cov, feats)(0.5)
    s, b = 0.2, 1.6
    e = torch.tensor(rng.normal(size=q.shape) * s * q ** (b / 2))
    res = calibrate_hyperparameters(cov, feats, e, fit_power=True)
    assert res.method == "power-law"
    assert res.sigma_power == pytest.approx(b, abs=0.1)
    # the energy-only NLL is no better than the power law's (b = 1 is one of its choices)
    plain = calibrate_hyperparameters(cov, feats, e)
    assert res.nll < plain.nll - 0.05
    assert plain.sigma_power == 1.0 and plain.energy_scale == plain.alpha


@pytest.mark.parametrize("kwargs, message", [
    ({"force_weight": 1.0}, "needs force_jacobian"),
    ({"force_weight": -1.0}, "force_weight must be"),
    ({"force_weight": float("nan")}, "force_weight must be"),
    ({"force_weight": 1.0, "fit_power": True, "force_jacobian": torch.zeros(1, 3, 6),
      "force_errors": torch.zeros(1, 3)}, "energies only"),
    ({"force_weight": 1.0, "force_jacobian": torch.zeros(2, 3, 6), "force_errors": torch.zeros(1, 3)},
     "must be (M, 3, F)"),
    ({"force_weight": 1.0, "force_jacobian": torch.full((1, 3, 6), float("nan")), "force_errors": torch.zeros(1, 3)},
     "non-finite force"),
])
def test_calibration_options_refuse_bad_input(kwargs, message):
    cov, feats, e, _, _, _ = _synthetic(10, 1, 0.3, 0.5)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calibrate_hyperparameters(cov, feats, e, **kwargs)


def _loader(structures, model):
    from llpr.graphs import AtomisticDataset, make_loader

    return make_loader(AtomisticDataset(structures, model.cutoff, torch.float64), 8)


def test_force_jacobian_is_the_ensemble_propagation(small_llpr, si_splits):
    """collect_forces' Jacobian turns any read-out deviations into the member force deviations
    that predict() computes, and the joint calibration's force sigma is the ensemble's limit."""
    _, val, _ = si_splits
    got = small_llpr.collect_forces(_loader(val[:2], small_llpr.model))
    n = small_llpr.covariance_.shape[0]
    dw = torch.randn(5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = next(iter(_loader(val[:2], small_llpr.model)))
    direct = small_llpr._ensemble_forces(batch, dw)["force_deviations"]
    via_jacobian = torch.einsum("mcf,kf->kmc", got["jacobian"], dw)
    assert torch.allclose(direct, via_jacobian, rtol=1e-10, atol=1e-12)
    forces = small_llpr.predict(batch, forces=True)["forces"]
    assert torch.allclose(got["errors"], forces - batch["forces"].to(torch.float64), atol=1e-12)


def test_llpr_calibrate_options_and_export_record(small_model, si_splits, tmp_path):
    from llpr.modelfile import export_model
    from llpr.uncertainty.estimator import LLPR, load_llpr, save_llpr

    train, val, test = si_splits
    llpr = LLPR(small_model).fit(_loader(train, small_model))
    llpr.calibrate(_loader(val, small_model), force_weight=2.0, extra=_loader(test[:3], small_model),
                   extra_source="some.xyz")
    s = llpr.calibration_summary()
    assert s["method"] == "energy+forces" and s["force_weight"] == 2.0 and s["n_extra"] == 3
    assert s["n_validation"] == len(val) + 3 and s["extra_source"] == "some.xyz"
    assert s["n_force_components"] == 3 * sum(len(a) for a in val + test[:3])
    # the calibrated alpha sets the last-layer ensemble's force sigma: with many members its mean
    # square over the calibration atoms is alpha^2 mean(qbar)
    got = llpr.collect_forces(_loader(val, small_model))
    C = llpr.covariance_ + llpr.varsigma**2 * torch.eye(llpr.covariance_.shape[0], dtype=torch.float64)
    qbar = torch.einsum("mcf,fg,mcg->m", got["jacobian"], torch.linalg.inv(C), got["jacobian"]) / 3
    batch = next(iter(_loader(val[:1], small_model)))
    out = llpr.predict(batch, ensemble=llpr.sample_ensemble(2000, seed=1), forces=True)
    m = batch["positions"].shape[0]
    ratio = float((out["force_sigma"] ** 2).mean() / (llpr.alpha**2 * qbar[:m].mean()))
    assert ratio == pytest.approx(1.0, abs=0.1)
    # power law: the exported file carries it and computes the same sigma as Python
    llpr.calibrate(_loader(val, small_model), sigma_power=True)
    assert llpr.calibration_.method == "power-law" and llpr.calibration_.sigma_power != 1.0
    ckpt = tmp_path / "llpr.ckpt"
    save_llpr(llpr, str(ckpt))
    again = load_llpr(str(ckpt))
    assert again.calibration_.sigma_power == llpr.calibration_.sigma_power
    path = tmp_path / "model.pt"
    export_model(again, str(path))
    exported = torch.jit.load(str(path))
    record = json.loads(exported.calibration)
    assert record["method"] == "power-law" and record["sigma_power"] == llpr.calibration_.sigma_power
    pred = llpr.predict(batch)
    f = llpr._outputs(batch)["features"]
    assert torch.allclose(exported.energy_variance(f), pred["variance"], rtol=1e-12)
    q = llpr.quadratic_form(f)
    expected = llpr.calibration_.sigma_scale**2 * q ** llpr.calibration_.sigma_power
    assert torch.allclose(pred["variance"], expected, rtol=1e-12)
    sigma_i, _ = llpr.local_uncertainty(llpr._outputs(batch)["atom_features"])
    sigma_x, _ = exported.local_uncertainty(llpr._outputs(batch)["atom_features"])
    assert torch.allclose(sigma_i, sigma_x, rtol=1e-12)


def test_cli_calibration_options(small_model, si_splits, tmp_path, capsys):
    from llpr.models.checkpoint import save_model
    from llpr.cli import main
    from llpr.data import write_dataset

    train, val, test = si_splits
    for name, part in (("train", train), ("val", val), ("extra", test[:2])):
        write_dataset(part, str(tmp_path / f"{name}.xyz"))
    d = str(tmp_path)
    save_model(small_model, f"{d}/m.ckpt")
    assert main(["-q", "calibrate", "--model", f"{d}/m.ckpt", "--train", f"{d}/train.xyz", "--val", f"{d}/val.xyz",
                 "--force-calibration", "1", "--calibration-extra", f"{d}/extra.xyz", "-o", f"{d}/f.ckpt"]) == 0
    assert "energy+forces" in capsys.readouterr().out
    assert main(["-q", "export", f"{d}/f.ckpt", "-o", f"{d}/f.pt"]) == 0
    record = json.loads(torch.jit.load(f"{d}/f.pt").calibration)
    assert record["method"] == "energy+forces" and record["force_weight"] == 1.0
    assert record["n_extra"] == 2 and record["extra_source"].endswith("extra.xyz")
    assert main(["-q", "calibrate", "--model", f"{d}/m.ckpt", "--train", f"{d}/train.xyz", "--val", f"{d}/val.xyz",
                 "--sigma-power", "-o", f"{d}/p.ckpt"]) == 0
    assert main(["-q", "export", f"{d}/p.ckpt", "-o", f"{d}/p.pt"]) == 0
    record = json.loads(torch.jit.load(f"{d}/p.pt").calibration)
    assert record["method"] == "power-law" and record["n_extra"] == 0
    capsys.readouterr()
    assert main(["-q", "calibrate", "--model", f"{d}/m.ckpt", "--train", f"{d}/train.xyz", "--val", f"{d}/val.xyz",
                 "--sigma-power", "--force-calibration", "1", "-o", f"{d}/x.ckpt"]) == 2
    assert "energies only" in capsys.readouterr().err
