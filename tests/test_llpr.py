"""LLPR core: linear-regression limit, invariances, calibration, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from llpr.uncertainty.calibrate import calibrate_hyperparameters
from llpr.graphs import AtomisticDataset, collate, make_loader
from llpr.models.tabular import MLPRegressor
from llpr.uncertainty.estimator import LLPR, atomistic_outputs


class IdentityFeatures(torch.nn.Module):
    """A 'network' whose last-layer features are its inputs: LLPR must be exactly
    Bayesian linear regression."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.readout = torch.nn.Linear(n, 1, bias=False)

    def features(self, x):
        return x


def test_llpr_equals_bayesian_linear_regression():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    w_true = rng.normal(size=5)
    y = X @ w_true + 0.3 * rng.normal(size=200)
    Xv = rng.normal(size=(80, 5))
    yv = Xv @ w_true + 0.3 * rng.normal(size=80)
    model = IdentityFeatures(5).double()
    # the read-out is the ridge solution, as training would give
    with torch.no_grad():
        model.readout.weight.copy_(torch.tensor(np.linalg.solve(X.T @ X + 1e-3 * np.eye(5), X.T @ y)))
    llpr = LLPR(model).fit([(torch.tensor(X), torch.tensor(y))])
    llpr.calibrate([(torch.tensor(Xv), torch.tensor(yv))])
    a, s = llpr.alpha, llpr.varsigma
    # BLR: noise variance sn2, prior w ~ N(0, sp2 I); posterior covariance
    # (X^T X / sn2 + I / sp2)^-1 -> with sn2 = alpha^2 and sp2 = alpha^2 / varsigma^2
    sn2, sp2 = a**2, a**2 / s**2
    posterior_cov = np.linalg.inv(X.T @ X / sn2 + np.eye(5) / sp2)
    Xt = rng.normal(size=(30, 5))
    expected = np.einsum("bi,ij,bj->b", Xt, posterior_cov, Xt)
    got = llpr.predict(torch.tensor(Xt))["variance"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0)


def test_calibrated_mean_z2_is_one(small_llpr, si_splits):
    _, val, _ = si_splits
    loader = make_loader(AtomisticDataset(val, small_llpr.model.cutoff, torch.float64), 8)
    z2 = []
    for batch in loader:
        out = small_llpr.predict(batch)
        z2.append(((out["prediction"] - out["target"]) ** 2 / out["variance"]).numpy())
    assert np.mean(np.concatenate(z2)) == pytest.approx(1.0, abs=1e-10)


def test_calibration_lowers_nll_and_is_at_minimum(small_llpr, si_splits):
    cal = small_llpr.calibration_
    assert cal.nll < cal.nll_before
    # the refined optimum is not worse than any grid point
    assert cal.nll <= min(cal.grid_nll) + 1e-12


def test_rank_deficient_covariance_warns_and_is_regularised():
    rng = np.random.default_rng(1)
    F = rng.normal(size=(3, 6))  # 3 samples, 6 features: rank 3
    cov = torch.tensor(F.T @ F)
    feats = torch.tensor(rng.normal(size=(20, 6)))
    errors = torch.tensor(rng.normal(size=20))
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        result = calibrate_hyperparameters(cov, feats, errors)
    assert result.numerical_rank == 3
    assert result.varsigma > 0 and np.isfinite(result.nll)


def _structure_outputs(llpr, atoms):
    batch = collate([AtomisticDataset([atoms], llpr.model.cutoff, torch.float64, require_labels=False)[0]])
    return llpr.predict(batch), atomistic_outputs(llpr.model, batch)


def test_structure_feature_is_sum_of_atom_features(small_llpr, si_splits):
    atoms = si_splits[2][0]
    _, raw = _structure_outputs(small_llpr, atoms)
    np.testing.assert_allclose(
        raw["features"][0].detach().numpy(), raw["atom_features"].detach().sum(0).numpy(), rtol=1e-12, atol=1e-12
    )


def test_sigma_and_lpr_invariances(small_llpr):
    # Features of a permuted/moved/rotated structure agree to round-off (~1e-16 relative);
    # the quadratic form f^T C^-1 f amplifies that by up to cond(C) (the small fixture's
    # covariance is rank-deficient, so varsigma^2 alone bounds the smallest eigenvalue).
    L = small_llpr.cholesky_factor()
    eig = torch.linalg.eigvalsh(L @ L.T)
    rtol = max(1e-12, 1e-15 * float(eig.max() / eig.min()))
    assert rtol < 1e-5
    atoms = bulk("Si", "diamond", 5.431, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=3)
    del atoms[[5, 17]]  # a defect so that atoms differ
    ref, _ = _structure_outputs(small_llpr, atoms)

    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[perm]
    out, _ = _structure_outputs(small_llpr, permuted)
    np.testing.assert_allclose(out["atom_sigma"].numpy(), ref["atom_sigma"].numpy()[perm], rtol=rtol)
    np.testing.assert_allclose(out["lpr"].numpy(), ref["lpr"].numpy()[perm], rtol=rtol)
    np.testing.assert_allclose(out["sigma"].numpy(), ref["sigma"].numpy(), rtol=rtol)

    moved = atoms.copy()
    moved.translate([0.37, -1.2, 2.9])
    moved.wrap()
    out, _ = _structure_outputs(small_llpr, moved)
    np.testing.assert_allclose(out["atom_sigma"].numpy(), ref["atom_sigma"].numpy(), rtol=rtol)

    rotated = atoms.copy()
    rotated.rotate(37.0, (1.0, 2.0, -0.5), rotate_cell=True)
    out, _ = _structure_outputs(small_llpr, rotated)
    np.testing.assert_allclose(out["atom_sigma"].numpy(), ref["atom_sigma"].numpy(), rtol=rtol)
    np.testing.assert_allclose(out["lpr"].numpy(), ref["lpr"].numpy(), rtol=rtol)
    np.testing.assert_allclose(out["sigma"].numpy(), ref["sigma"].numpy(), rtol=rtol)


def test_calibrate_before_fit_is_an_error(small_model):
    llpr = LLPR(small_model)
    with pytest.raises(RuntimeError, match="fit"):
        llpr.calibrate([])
    with pytest.raises(RuntimeError, match="fit"):
        llpr.predict({})


def test_predict_before_calibrate_is_an_error(small_model, si_splits):
    llpr = LLPR(small_model).fit(make_loader(AtomisticDataset(si_splits[0][:2], small_model.cutoff, torch.float64)))
    with pytest.raises(RuntimeError, match="calibrate"):
        llpr.predict({})


def test_empty_dataset_is_an_error(small_model):
    with pytest.raises(ValueError, match="empty"):
        AtomisticDataset([], small_model.cutoff)
    with pytest.raises(ValueError, match="empty"):
        LLPR(small_model).fit([])


def test_empty_validation_set_is_an_error(small_llpr):
    llpr = LLPR(small_llpr.model).load_state_dict(small_llpr.state_dict())
    with pytest.raises(ValueError, match="empty"):
        llpr.calibrate([])


def test_nan_positions_are_an_error(small_llpr):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        AtomisticDataset([atoms], small_llpr.model.cutoff, require_labels=False)


def test_unknown_element_is_an_error(small_llpr):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.numbers[0] = 6
    batch = collate([AtomisticDataset([atoms], small_llpr.model.cutoff, torch.float64, require_labels=False)[0]])
    with pytest.raises(ValueError, match=r"atomic number.*\[6\].*\[14\]"):
        small_llpr.predict(batch)


def test_tabular_mlp_regressor_llpr():
    """LLPR on a plain tabular network (features = last hidden layer + constant)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(300, 4)))
    y = torch.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.05 * torch.tensor(rng.normal(size=300))
    model = MLPRegressor(4, (16,)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = ((model(X[:200]) - y[:200]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    llpr = LLPR(model).fit([(X[:200], y[:200])]).calibrate([(X[200:250], y[200:250])])
    out = llpr.predict(X[200:250])
    z2 = ((out["prediction"] - y[200:250]) ** 2 / out["variance"]).mean()
    assert float(z2) == pytest.approx(1.0, abs=1e-10)
    far = llpr.predict(10.0 * X[250:])["sigma"]  # far outside the training inputs
    near = llpr.predict(X[250:])["sigma"]
    assert float(far.median()) > 3.0 * float(near.median())


def test_fitted_state_is_set_by_fit_and_calibrate_and_its_head_built_once(small_llpr, si_splits, monkeypatch):
    """Fitted attributes are read-only (set by fit / calibrate / load_state_dict); the head and
    its O(F^3) inverse factor are built once per fitted state, not by predict(ensemble=...), and
    rebuilt when fit or calibrate changes the state."""
    import llpr.uncertainty.estimator as estimator

    train, val, _ = si_splits
    llpr = LLPR(small_llpr.model).load_state_dict(small_llpr.state_dict())
    with pytest.raises(AttributeError, match=r"covariance_ is a fitted attribute, set by fit\(\)"):
        llpr.covariance_ = small_llpr.covariance_
    with pytest.raises(AttributeError, match=r"LLPR.calibration is now LLPR.calibration_"):
        llpr.calibration
    built = []
    real = estimator.LLPRHead
    monkeypatch.setattr(estimator, "LLPRHead", lambda *a, **k: built.append(1) or real(*a, **k))
    batch = collate([AtomisticDataset(val[:2], llpr.model.cutoff, torch.float64)[k] for k in range(2)])
    W = llpr.sample_ensemble(4, seed=0)
    first = llpr.predict(batch, ensemble=W)
    second = llpr.predict(batch, ensemble=W, forces=True)
    assert len(built) == 1 and llpr.head() is llpr.head()
    torch.testing.assert_close(first["ensemble_sigma"], second["ensemble_sigma"], rtol=0, atol=0)
    # the members' spread by the one formula, on features @ (w_k - w)
    dev = (first["ensemble_prediction"] - first["prediction"].unsqueeze(1)).t()
    torch.testing.assert_close(first["ensemble_sigma"], torch.sqrt((dev**2).sum(0) / 3), rtol=1e-12, atol=0)
    head = llpr.head()
    varsigma = llpr.varsigma
    with pytest.warns(RuntimeWarning, match="max_train_q_"):
        llpr.calibrate(make_loader(AtomisticDataset(val[:-2] + train[:2], llpr.model.cutoff, torch.float64), 8))
    assert llpr.head() is not head and float(llpr.head().varsigma) == llpr.varsigma != varsigma
    head = llpr.head()
    llpr.fit(make_loader(AtomisticDataset(train[:-3], llpr.model.cutoff, torch.float64), 8))
    assert llpr.calibration_ is None and llpr.n_train_samples_ == len(train) - 3
    with pytest.raises(RuntimeError, match="calibrate"):
        llpr.head()


def test_checkpoints_written_before_load(small_llpr, tmp_path):
    """Checkpoints keep their keys (covariance, n_train, calibration, max_train_q, ...): one
    written before the fitted attributes' names, and one from before the grade's reference,
    load into covariance_, calibration_, max_train_q_ and give the same sigmas."""
    from llpr.models.checkpoint import save_llpr_payload
    from llpr.uncertainty.estimator import load_llpr

    old = {"covariance": small_llpr.covariance_.clone(), "n_train": small_llpr.n_train_samples_,
           "calibration": dict(small_llpr.calibration_.__dict__), "max_train_q": small_llpr.max_train_q_,
           "n_train_atoms": small_llpr.n_train_atoms_}
    save_llpr_payload(str(tmp_path / "old.ckpt"), small_llpr.model, old)
    again = load_llpr(str(tmp_path / "old.ckpt"))
    assert again.n_train_samples_ == small_llpr.n_train_samples_ and again.max_train_q_ == small_llpr.max_train_q_
    f = torch.randn(5, small_llpr.covariance_.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.variance(f), small_llpr.variance(f), rtol=0, atol=0)
    before_gamma = {k: v for k, v in old.items() if k not in ("max_train_q", "n_train_atoms")}
    save_llpr_payload(str(tmp_path / "before_gamma.ckpt"), small_llpr.model, before_gamma)
    again = load_llpr(str(tmp_path / "before_gamma.ckpt"))
    assert again.max_train_q_ is None and again.n_train_atoms_ is None and again.alpha == small_llpr.alpha
