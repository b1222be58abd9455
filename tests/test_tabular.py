"""The tabular path: LLPR of llpr.models.tabular.MLPRegressor against Bayesian linear regression on
its features, target scaling (units), input conversion, checkpoints and the exported file."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from llpr.uncertainty.calibrate import gaussian_nll
from llpr.models.checkpoint import read_checkpoint
from lammps_helpers import make_model
from llpr.modelfile import export_model, load_exported, verify_integrity
from llpr.models.tabular import MLPRegressor, load_tabular
from llpr.uncertainty.estimator import LLPR, load_llpr, save_llpr

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")

SHIFT, SCALE = 120.0, 35.0  # the user's units: y = SHIFT + SCALE * t


def _data(n, rng, lo=-1.5, hi=1.5):
    x = rng.uniform(lo, hi, size=(n, 4))
    t = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + (0.05 + 0.05 * np.abs(x[:, 3])) * rng.normal(size=n)
    return x, SHIFT + SCALE * t


@pytest.fixture(scope="module")
def problem():
    """A float32 MLPRegressor trained on the standardised target; float64 data in the user's units."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    data = {"train": _data(400, rng), "val": _data(150, rng), "test": _data(100, rng),
            "far": _data(100, rng, 2.0, 4.0)}
    model = MLPRegressor(4, hidden=(24,))
    x = torch.tensor(data["train"][0], dtype=torch.float32)
    t = torch.tensor((data["train"][1] - SHIFT) / SCALE, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = ((model(x) - t) ** 2).mean()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, data


def _batches(x, y, size=64):
    return [(x[k : k + size], y[k : k + size]) for k in range(0, len(x), size)]


@pytest.fixture(scope="module")
def scaled(problem):
    model, data = problem
    return LLPR(model, target_scale=SCALE, target_shift=SHIFT).fit(_batches(*data["train"])).calibrate(
        _batches(*data["val"]))


def _features(model, x):
    with torch.no_grad():
        return model.features(torch.tensor(x, dtype=torch.float32)).double().numpy()


def _network(model, x):
    """The float32 network's prediction in the user's units."""
    with torch.no_grad():
        return SHIFT + SCALE * model(torch.tensor(x, dtype=torch.float32)).double().numpy()


def _nll(F_train, F_val, errors, alpha, varsigma):
    q = np.einsum("bi,ij,bj->b", F_val, np.linalg.inv(F_train.T @ F_train + varsigma**2 * np.eye(F_train.shape[1])),
                  F_val)
    return gaussian_nll(errors, alpha**2 * q)


def test_llpr_is_bayesian_linear_regression_on_the_features(problem, scaled):
    """With noise variance alpha^2 and prior w ~ N(0, alpha^2 / varsigma^2 I), Bayesian linear
    regression on the network's features has predictive variance f^T S f with S = (F^T F /
    alpha^2 + varsigma^2 / alpha^2 I)^-1: LLPR's variance, in the user's units; alpha^2 is the
    mean of e^2 / q at the calibrated varsigma, which minimises the validation NLL."""
    model, data = problem
    F = _features(model, data["train"][0])
    Fv = _features(model, data["val"][0])
    errors = _network(model, data["val"][0]) - data["val"][1]
    a, s = scaled.alpha, scaled.varsigma
    q = np.einsum("bi,ij,bj->b", Fv, np.linalg.inv(F.T @ F + s**2 * np.eye(F.shape[1])), Fv)
    assert a**2 == pytest.approx(np.mean(errors**2 / q), rel=1e-6)
    nll = _nll(F, Fv, errors, a, s)
    assert scaled.calibration_summary()["nll"] == pytest.approx(nll, rel=1e-6)
    for factor in (0.8, 1.25):  # a minimum in varsigma (alpha re-fitted in closed form)
        qs = np.einsum("bi,ij,bj->b", Fv, np.linalg.inv(F.T @ F + (factor * s) ** 2 * np.eye(F.shape[1])), Fv)
        assert _nll(F, Fv, errors, math.sqrt(np.mean(errors**2 / qs)), factor * s) >= nll - 1e-12
    S = np.linalg.inv(F.T @ F / a**2 + (s**2 / a**2) * np.eye(F.shape[1]))
    x_test = data["test"][0]
    Ft = _features(model, x_test)
    out = scaled.predict(x_test)
    np.testing.assert_allclose(out["variance"].numpy(), np.einsum("bi,ij,bj->b", Ft, S, Ft), rtol=1e-9)
    np.testing.assert_allclose(out["prediction"].numpy(), _network(model, x_test), rtol=1e-15)
    # the uncertainty grows outside the training inputs
    assert np.median(scaled.predict(data["far"][0])["sigma"].numpy()) > 3 * np.median(out["sigma"].numpy())


def test_target_scaling_gives_the_users_units(problem, scaled):
    """Against LLPR of the same model calibrated on the standardised target: the same
    varsigma, alpha and sigma times the scale, the NLL plus log(scale), predictions mapped back."""
    model, data = problem
    standard = LLPR(model).fit(_batches(data["train"][0], (data["train"][1] - SHIFT) / SCALE)).calibrate(
        _batches(data["val"][0], (data["val"][1] - SHIFT) / SCALE))
    assert scaled.varsigma == pytest.approx(standard.varsigma, rel=1e-6)
    assert scaled.alpha == pytest.approx(SCALE * standard.alpha, rel=1e-6)
    s, u = scaled.calibration_summary(), standard.calibration_summary()
    assert s["nll"] == pytest.approx(u["nll"] + math.log(SCALE), rel=1e-9)
    assert s["feature_reduction"] == "none" and s["target_scale"] == SCALE and s["target_shift"] == SHIFT
    x = data["test"][0]
    a, b = scaled.predict(x), standard.predict(x)
    np.testing.assert_allclose(a["prediction"].numpy(), SHIFT + SCALE * b["prediction"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(a["sigma"].numpy(), SCALE * b["sigma"].numpy(), rtol=1e-6)
    # the ensemble is in the same units: its spread tends to sigma
    out = scaled.predict(x, ensemble=scaled.sample_ensemble(4000, seed=1))
    ratio = out["ensemble_sigma"].numpy() / out["sigma"].numpy()
    assert abs(np.median(ratio) - 1) < 0.05
    with pytest.raises(ValueError, match="target_scale must be a positive number"):
        LLPR(model, target_scale=-1.0)


def test_inputs_are_converted_and_wrong_shapes_refused(problem, scaled):
    _, data = problem
    x = data["test"][0]
    reference = scaled.predict(torch.tensor(x, dtype=torch.float32))
    for given in (x, torch.tensor(x), x.astype(np.float32)):
        torch.testing.assert_close(scaled.predict(given)["sigma"], reference["sigma"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"MLPRegressor expects inputs of shape \(batch, 4\), got \(100, 3\)"):
        scaled.predict(x[:, :3])
    with pytest.raises(ValueError, match=r"got \(4,\) \(one sample: x.reshape\(1, -1\)"):
        scaled.predict(x[0])
    with pytest.raises(ValueError, match="64 inputs but 10 targets"):
        scaled.calibrate([(x[:64], data["test"][1][:10])])


def test_checkpoint_round_trip(scaled, problem, tmp_path):
    _, data = problem
    path = str(tmp_path / "tab.ckpt")
    save_llpr(scaled, path)
    assert read_checkpoint(path)["model"]["class"] == "MLPRegressor"
    again = load_llpr(path)
    assert type(again.model) is MLPRegressor and next(again.model.parameters()).dtype == torch.float32
    assert (again.target_scale, again.target_shift) == (SCALE, SHIFT)
    assert again.calibration_summary() == scaled.calibration_summary()
    x = data["test"][0]
    for key in ("prediction", "sigma"):
        torch.testing.assert_close(again.predict(x)[key], scaled.predict(x)[key], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_export_round_trip(scaled, problem, tmp_path, dtype):
    pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
    _, data = problem
    path = export_model(scaled, str(tmp_path / "tab.pt"), dtype=dtype, ensemble=8, seed=3)
    assert verify_integrity(path)["sealed"]
    module = load_tabular(path)
    assert module.llpr_kind == "tabular" and module.n_inputs == 4 and module.n_features == 25
    assert module.dtype == ("float64" if dtype == torch.float64 else "float32")
    assert (module.target_scale, module.target_shift) == (SCALE, SHIFT)
    x = data["test"][0]
    prediction, sigma = module(torch.tensor(x))  # float64 in, converted by the file
    same = scaled
    if dtype is not None:  # the estimator of the converted model
        same = LLPR(copy.deepcopy(scaled.model).to(dtype), target_scale=SCALE, target_shift=SHIFT).load_state_dict(
            scaled.state_dict())
    want = same.predict(x)
    for got, key in ((prediction, "prediction"), (sigma, "sigma")):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want[key].numpy(), rtol=1e-12, atol=0, err_msg=key)
    members = same.predict(x, ensemble=same.sample_ensemble(8, seed=3))["ensemble_prediction"]
    np.testing.assert_allclose(module.ensemble_predictions(torch.tensor(x)).numpy(), members.numpy(), rtol=1e-12)
    with pytest.raises(Exception, match=r"expected inputs of shape \(batch, 4\)"):
        module(torch.tensor(x[:, :2]))


def test_each_loader_refuses_the_other_kind(scaled, tmp_path):
    pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
    path = export_model(scaled, str(tmp_path / "tab.pt"))
    with pytest.raises(ValueError, match="not a valid llpr model"):
        load_exported(path)
    with pytest.raises(ValueError, match="not a tabular llpr file"):
        load_tabular(make_model(tmp_path / "si.pt", n_structures=6, hidden=(8,)))
