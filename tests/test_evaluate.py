"""`llpr evaluate`: the uncertainty metrics against their exact expectations on synthetic
Gaussian errors, the binned error-vs-sigma curve, the metrics of an exported file recomputed
from its own predictions, the text summary and plots, and the force-uncertainty metrics of
files with a last-layer ensemble."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import erf, erfinv

from llpr.ase import LLPRCalculator
from llpr.cli import main
from llpr.data import read_dataset, write_dataset
from llpr.evaluate import (
    Z95, binned_error_vs_sigma, calibration_verdict, coverage, evaluate_model, format_summary, miscalibration_area, uncertainty_metrics,
    write_plots,
)

from lammps_helpers import label_randomly, make_model, si_diamond

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

PNG = b"\x89PNG\r\n\x1a\n"
FORCE_KEYS = ("force_sigma_mean", "force_sigma_rms", "force_spearman_abs_error_sigma", "force_nll",
              "force_coverage_68", "force_coverage_95", "force_miscalibration_area", "force_mean_z2",
              "force_binned", "ensemble_energy_sigma_ratio")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """One small model (fitted and calibrated on random labels, no LAMMPS), exported with and
    without a 16-member last-layer ensemble."""
    d = tmp_path_factory.mktemp("evaluate")
    return {"ensemble": make_model(d / "ens.pt", ensemble=16), "plain": make_model(d / "plain.pt")}


@pytest.fixture(scope="module")
def test_set():
    """Eight rattled silicon cells with random energy and force labels."""
    rng = np.random.default_rng(42)
    structures = []
    for k in range(8):
        atoms = si_diamond(rattle=0.15, seed=100 + k)
        label_randomly(atoms, rng)
        structures.append(atoms)
    return structures


N_SYNTHETIC = 40000


def _gaussian_errors(scale, n=N_SYNTHETIC, seed=0):
    """Predicted sigmas spread over two decades and errors drawn from N(0, (scale * sigma)^2):
    scale 1 is calibrated, 2 an overconfident model, 0.5 an underconfident one."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(-3, 1, size=n))
    return rng.normal(size=n) * scale * sigma, sigma


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5])
def test_metrics_of_gaussian_errors_match_their_expectations(scale):
    errors, sigma = _gaussian_errors(scale)
    n = errors.size
    m = uncertainty_metrics(errors, sigma)
    # a k-sigma interval holds a fraction erf(k / (scale sqrt 2)) of the errors; an observed
    # proportion has a standard deviation of at most 0.5 / sqrt(n): 4 of those as tolerance
    tol = 4 * 0.5 / math.sqrt(n)
    for key, k in (("coverage_68", 1.0), ("coverage_95", Z95)):
        assert m[key] == pytest.approx(erf(k / (scale * math.sqrt(2))), abs=tol), key
    assert coverage(errors, sigma, 3.0) == pytest.approx(erf(3.0 / (scale * math.sqrt(2))), abs=tol)
    # the area averages |observed - expected| over the levels p = 1 %, ..., 99 %, each observed
    # proportion within the same tolerance of erf(erfinv(p) / scale)
    p = np.linspace(0.0, 1.0, 101)[1:-1]
    expected_area = float(np.mean(np.abs(erf(erfinv(p) / scale) - p)))
    assert m["miscalibration_area"] == pytest.approx(expected_area, abs=tol)
    # z^2 = (error / sigma)^2 is scale^2 chi^2_1: mean scale^2, standard deviation scale^2 sqrt(2)
    z2_tol = 4 * scale**2 * math.sqrt(2.0 / n)
    assert m["mean_z2"] == pytest.approx(scale**2, abs=z2_tol)
    expected_nll = float(np.mean(0.5 * np.log(2 * np.pi * sigma**2))) + 0.5 * scale**2
    assert m["nll"] == pytest.approx(expected_nll, abs=0.5 * z2_tol)
    # larger sigmas go with larger errors; sigmas shuffled against the errors carry no rank
    # information (rank correlation of independent samples: standard deviation 1 / sqrt(n))
    assert m["spearman_abs_error_sigma"] > 0.5
    shuffled = np.random.default_rng(1).permutation(sigma)
    assert abs(uncertainty_metrics(errors, shuffled)["spearman_abs_error_sigma"]) < 4 / math.sqrt(n)


def test_miscalibration_area_extremes():
    sigma = np.ones(1000)
    # every error far outside every interval: observed 0 at every level, area = mean(p) = 0.5
    assert miscalibration_area(np.full(1000, 1e6), sigma) == pytest.approx(0.5)
    # every error zero: observed 1 at every level, area = mean(1 - p) = 0.5
    assert miscalibration_area(np.zeros(1000), sigma) == pytest.approx(0.5)


def test_binned_error_vs_sigma_on_calibrated_data():
    rng = np.random.default_rng(0)
    sigma = np.exp(rng.uniform(-3, 1, size=20000))
    errors = rng.normal(size=sigma.size) * sigma
    b = binned_error_vs_sigma(errors, sigma, n_bins=10)
    assert sum(b["count"]) == sigma.size and len(b["count"]) == 10
    assert max(b["count"]) - min(b["count"]) <= 1  # quantile bins: equal counts
    assert np.all(np.diff(b["rms_sigma"]) > 0)
    # calibrated Gaussian errors: RMS error = RMS sigma in every bin (2000 points: ~1.6 % noise)
    np.testing.assert_allclose(b["rms_error"], b["rms_sigma"], rtol=0.08)
    # an overconfident model (sigma 3x too small) lies a factor 3 above y = x
    b3 = binned_error_vs_sigma(errors, sigma / 3, n_bins=5)
    np.testing.assert_allclose(np.array(b3["rms_error"]) / np.array(b3["rms_sigma"]), 3.0, rtol=0.1)
    assert len(binned_error_vs_sigma(errors[:3], sigma[:3], n_bins=10)["count"]) == 3


def test_evaluate_with_ensemble_reports_force_uncertainty(paths, test_set, tmp_path):
    test = test_set
    result = evaluate_model(paths["ensemble"], test)
    m = result["metrics"]
    assert m["ensemble_size"] == 16
    for key in FORCE_KEYS:
        assert key in m, key
    n_atoms = sum(len(a) for a in test)
    arrays = result["arrays"]
    assert arrays["force_sigma"].shape == (n_atoms,)
    assert np.all(arrays["force_sigma"] > 0)
    # the arrays are the file's own predictions, in the order of the structures and atoms
    last = test[-1].copy()
    last.calc = LLPRCalculator(paths["ensemble"], ensemble=True)
    assert arrays["energy_predicted"][-1] == pytest.approx(last.get_potential_energy(), abs=1e-10)
    assert arrays["energy_sigma"][-1] == pytest.approx(last.calc.results["energy_sigma"], rel=1e-10)
    np.testing.assert_allclose(arrays["force_sigma"][-len(last):], last.calc.results["force_sigma"], rtol=1e-10)
    np.testing.assert_array_equal(arrays["forces_reference"][-len(last):], last.arrays["forces"])
    # the metrics are those of these predictions: energies per structure, force components
    # each against its atom's sigma
    err = arrays["energy_predicted"] - arrays["energy_reference"]
    assert m["coverage_68"] == np.mean(np.abs(err) <= arrays["energy_sigma"])
    assert m["mean_z2"] == pytest.approx(np.mean((err / arrays["energy_sigma"]) ** 2), rel=1e-12)
    f_err = arrays["forces_predicted"] - arrays["forces_reference"]
    z = f_err / arrays["force_sigma"][:, None]
    assert m["force_coverage_68"] == np.mean(np.abs(z) <= 1.0)
    assert m["force_coverage_95"] == np.mean(np.abs(z) <= Z95)
    assert m["force_mean_z2"] == pytest.approx(np.mean(z**2), rel=1e-12)
    assert m["force_rmse"] == pytest.approx(np.sqrt(np.mean(f_err**2)), rel=1e-12)
    assert sum(m["force_binned"]["count"]) == 3 * n_atoms
    assert sum(m["energy_binned"]["count"]) == len(test)
    # the ensemble's energy spread is the analytic sigma up to Monte-Carlo noise (K = 16)
    assert 0.5 < m["ensemble_energy_sigma_ratio"] < 1.5
    json.dumps(m)  # everything is JSON-serialisable
    text = format_summary(m)
    assert "force uncertainty (last-layer ensemble, K = 16" in text and "coverage 68% / 95%" in text
    assert len(text.splitlines()) <= 24  # one screen
    plots = write_plots(result["arrays"], str(tmp_path / "plots"))
    assert set(plots) == {"parity", "calibration", "error_vs_sigma", "gamma"}
    for path in plots.values():
        data = open(path, "rb").read()
        assert data[:8] == PNG and len(data) > 5000


def test_plumbing_evaluate_without_ensemble(paths, test_set, tmp_path):
    result = evaluate_model(paths["plain"], test_set)
    m = result["metrics"]
    assert m["ensemble_size"] == 0 and not any(key in m for key in FORCE_KEYS)
    assert "none: export with `llpr export --ensemble K`" in format_summary(m)
    path = write_plots(result["arrays"], str(tmp_path / "p"))["error_vs_sigma"]
    assert open(path, "rb").read()[:8] == PNG
    with pytest.raises(ValueError, match="no last-layer ensemble"):
        evaluate_model(paths["plain"], test_set, ensemble=True)
    # the ensemble can be skipped
    assert evaluate_model(paths["ensemble"], test_set[:2], ensemble=False)["metrics"]["ensemble_size"] == 0


def test_plumbing_cli_evaluate_summary_json_and_plots(paths, test_set, tmp_path, capsys):
    write_dataset(test_set, str(tmp_path / "test.xyz"))
    assert main(["-q", "evaluate", paths["ensemble"], "--data", str(tmp_path / "test.xyz"),
                 "--plots", str(tmp_path / "plots"), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    for piece in ("energy RMSE", "RMSE vs RMS sigma", "coverage 68% / 95%", "force uncertainty", "error_vs_sigma.png"):
        assert piece in out, piece
    metrics = json.load(open(tmp_path / "m.json"))
    # the metrics of the structures as the file holds them (positions with 8 decimals)
    expected = evaluate_model(paths["ensemble"], read_dataset(str(tmp_path / "test.xyz")))["metrics"]
    assert metrics == json.loads(json.dumps(expected))
    assert (tmp_path / "plots" / "error_vs_sigma.png").read_bytes()[:8] == PNG


def test_evaluate_reports_the_stress_rmse_of_labelled_structures(paths, test_set, tmp_path):
    """Structures with a stress label (here 5 of 8, random labels) get their stress from the
    file's virial; the RMSE over their Voigt components is the calculator's; without labels
    the summary says there are none."""
    labelled = [a.copy() for a in test_set]
    rng = np.random.default_rng(7)
    for atoms in labelled[:5]:
        atoms.info["stress"] = rng.normal(scale=0.01, size=6)
    result = evaluate_model(paths["plain"], labelled)
    m, arrays = result["metrics"], result["arrays"]
    assert m["n_stress_structures"] == 5 and arrays["stress_predicted"].shape == (5, 6)
    predicted = []
    for atoms in labelled[:5]:
        atoms = atoms.copy()
        atoms.calc = LLPRCalculator(paths["plain"])
        predicted.append(atoms.get_stress())
    np.testing.assert_allclose(arrays["stress_predicted"], predicted, rtol=1e-10, atol=1e-14)
    errors = np.array(predicted) - np.array([a.info["stress"] for a in labelled[:5]])
    assert m["stress_rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-10)
    assert m["stress_mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-10)
    text = format_summary(m)
    assert f"stress RMSE              {m['stress_rmse']:.5f} eV/A^3 ({m['stress_rmse'] * 160.21766208:.3f} GPa; " \
           "5 structures with a stress label)" in text
    parity = write_plots(arrays, str(tmp_path / "plots"))["parity"]
    assert open(parity, "rb").read()[:8] == PNG
    m0 = evaluate_model(paths["plain"], test_set)["metrics"]
    assert m0["n_stress_structures"] == 0 and m0["stress_rmse"] is None
    assert "stress RMSE              none: no structure has a stress label" in format_summary(m0)


@pytest.mark.parametrize("ratio, n, verdict", [
    (1.05, 100, "ratio 1.05: consistent with calibrated, 1 +- 0.14 for 100 values"),
    (8.0, 100, "ratio 8.00: errors larger than sigma, overconfident"),
    (1.3, 100, "ratio 1.30: errors larger than sigma, overconfident"),
    (1.3, 10, "ratio 1.30: consistent with calibrated, 1 +- 0.45 for 10 values"),
    (0.2, 10, "ratio 0.20: errors smaller than sigma, underconfident"),
    (0.95, 10**6, "ratio 0.95: consistent with calibrated, 1 +- 0.10 for 1000000 values"),
])
def test_calibration_verdict_follows_the_numbers(ratio, n, verdict):
    assert calibration_verdict(0.25 * ratio, 0.25, n) == verdict


def test_summary_verdict_is_computed(paths, test_set):
    """The line RMSE vs RMS sigma ends with the verdict of its own numbers: the fixture's
    random labels lie far from its sigmas, and a metrics dict made calibrated says so."""
    m = evaluate_model(paths["ensemble"], test_set)["metrics"]
    text = format_summary(m)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("RMSE vs RMS sigma") and "eV " in ln)
    assert calibration_verdict(m["energy_rmse"], m["energy_sigma_rms"], m["n_structures"]) in line
    assert m["energy_error_sigma_ratio"] == pytest.approx(m["energy_rmse"] / m["energy_sigma_rms"], rel=1e-12)
    force_line = next(ln for ln in text.splitlines() if "RMSE vs RMS sigma" in ln and "eV/A" in ln)
    assert calibration_verdict(m["force_rmse"], m["force_sigma_rms"], m["n_atoms"]) in force_line
    assert "calibrated: equal" not in text
    calibrated = dict(m, energy_sigma_rms=m["energy_rmse"] * 1.02)
    assert "ratio 0.98: consistent with calibrated" in format_summary(calibrated)
    assert "ratio 8.00: errors larger than sigma, overconfident" in format_summary(
        dict(m, energy_sigma_rms=m["energy_rmse"] / 8))


def _overlaps(labels):
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


@pytest.mark.parametrize("decades", [0.3, 0.7, 3.0])
def test_error_vs_sigma_tick_labels_do_not_overlap(decades):
    """The energy panel over a fraction of a decade up to several decades of sigma (with the
    force panel beside it): no two tick labels of an axis overlap, and each axis has two."""
    import matplotlib.pyplot as plt

    from llpr.evaluate import error_vs_sigma_figure

    rng = np.random.default_rng(0)
    sigma = 0.02 * 10 ** rng.uniform(0, decades, 30)
    arrays = {"energy_predicted": rng.normal(size=30) * sigma, "energy_reference": np.zeros(30),
              "energy_sigma": sigma, "forces_predicted": rng.normal(size=(64, 3)) * 0.05,
              "forces_reference": np.zeros((64, 3)), "force_sigma": 0.05 * 10 ** rng.uniform(0, decades, 64)}
    fig = error_vs_sigma_figure(arrays)
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                lo, hi = axis.get_view_interval()
                labels = [t for t, v in zip(axis.get_ticklabels(which="both"),
                                            list(axis.get_majorticklocs()) + list(axis.get_minorticklocs()))
                          if lo <= v <= hi]
                assert not _overlaps(labels), [t.get_text() for t in labels]
                assert sum(1 for t in labels if t.get_text()) >= 2, [t.get_text() for t in labels]
    finally:
        plt.close(fig)
