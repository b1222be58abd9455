"""`llpr evaluate` reports: the binned error-vs-sigma curve and plot, coverage, the text
summary, and the force-uncertainty metrics of files with a last-layer ensemble."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llpr.evaluate import binned_error_vs_sigma, evaluate_model, format_summary, write_plots
from llpr.export import export_model

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

PNG = b"\x89PNG\r\n\x1a\n"
FORCE_KEYS = ("force_sigma_mean", "force_sigma_rms", "force_spearman_abs_error_sigma", "force_nll",
              "force_coverage_68", "force_coverage_95", "force_miscalibration_area", "force_mean_z2",
              "force_binned", "ensemble_energy_sigma_ratio")


@pytest.fixture(scope="module")
def paths(small_llpr, tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    return {
        "ensemble": export_model(small_llpr, str(d / "ens.pt"), ensemble=16, seed=0),
        "plain": export_model(small_llpr, str(d / "plain.pt")),
    }


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


def test_evaluate_with_ensemble_reports_force_uncertainty(paths, si_splits, tmp_path):
    test = si_splits[2]
    result = evaluate_model(paths["ensemble"], test)
    m = result["metrics"]
    assert m["ensemble_size"] == 16
    for key in FORCE_KEYS:
        assert key in m, key
    n_atoms = sum(len(a) for a in test)
    assert result["arrays"]["force_sigma"].shape == (n_atoms,)
    assert np.all(result["arrays"]["force_sigma"] > 0)
    for key in ("coverage_68", "coverage_95", "force_coverage_68", "force_coverage_95"):
        assert 0.0 <= m[key] <= 1.0
    assert m["force_coverage_68"] <= m["force_coverage_95"]
    assert sum(m["force_binned"]["count"]) == 3 * n_atoms
    assert sum(m["energy_binned"]["count"]) == len(test)
    # the ensemble's energy spread is the analytic sigma up to Monte-Carlo noise (K = 16)
    assert 0.5 < m["ensemble_energy_sigma_ratio"] < 1.5
    json.dumps(m)  # everything is JSON-serialisable
    text = format_summary(m)
    assert "force uncertainty (last-layer ensemble, K = 16" in text and "coverage 68% / 95%" in text
    assert len(text.splitlines()) <= 24  # one screen
    plots = write_plots(result["arrays"], str(tmp_path / "plots"))
    assert set(plots) == {"parity", "calibration", "error_vs_sigma"}
    for path in plots.values():
        data = open(path, "rb").read()
        assert data[:8] == PNG and len(data) > 5000


def test_evaluate_without_ensemble(paths, si_splits, tmp_path):
    result = evaluate_model(paths["plain"], si_splits[2])
    m = result["metrics"]
    assert m["ensemble_size"] == 0 and not any(key in m for key in FORCE_KEYS)
    assert "none: export with `llpr export --ensemble K`" in format_summary(m)
    path = write_plots(result["arrays"], str(tmp_path / "p"))["error_vs_sigma"]
    assert open(path, "rb").read()[:8] == PNG
    with pytest.raises(ValueError, match="no last-layer ensemble"):
        evaluate_model(paths["plain"], si_splits[2], ensemble=True)
    # the ensemble can be skipped
    assert evaluate_model(paths["ensemble"], si_splits[2][:2], ensemble=False)["metrics"]["ensemble_size"] == 0


def test_cli_evaluate_summary_json_and_plots(paths, si_splits, tmp_path, capsys):
    from llpr.cli import main
    from llpr.data import write_dataset

    write_dataset(si_splits[2], str(tmp_path / "test.xyz"))
    assert main(["-q", "evaluate", paths["ensemble"], "--data", str(tmp_path / "test.xyz"),
                 "--plots", str(tmp_path / "plots"), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    for piece in ("energy RMSE", "RMSE vs RMS sigma", "coverage 68% / 95%", "force uncertainty", "error_vs_sigma.png"):
        assert piece in out, piece
    metrics = json.load(open(tmp_path / "m.json"))
    for key in FORCE_KEYS:
        assert key in metrics
    assert (tmp_path / "plots" / "error_vs_sigma.png").read_bytes()[:8] == PNG
