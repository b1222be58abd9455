"""Deep-ensemble baseline."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# the deep ensemble is a benchmark baseline: it lives in benchmarks/, which is no package
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from deep_ensemble import DeepEnsemble  # noqa: E402
from llpr.models.train import TrainConfig


def test_deep_ensemble_train_predict_calibrate(si_splits):
    train, val, test = si_splits
    config = TrainConfig(max_epochs=2, batch_size=4, model={"hidden": (8,), "n_channels": 2})
    ens = DeepEnsemble.train(train, val, n_members=2, config=config)
    assert len(ens.train_time_s) == 2
    # different seeds give different members
    p = ens.predict(test)
    assert p["member_energies"].shape == (2, len(test))
    assert not np.allclose(p["member_energies"][0], p["member_energies"][1])
    n_atoms = sum(len(a) for a in test)
    assert p["forces"].shape == (n_atoms, 3) and p["force_variance"].shape == (n_atoms, 3)
    np.testing.assert_allclose(p["energy"], p["member_energies"].mean(0))
    ens.calibrate(val)
    pv = ens.predict(val, forces=False)
    ref = np.array([a.info["energy"] for a in val])
    assert np.mean((pv["energy"] - ref) ** 2 / pv["energy_variance"]) == pytest.approx(1.0, rel=1e-10)


def test_deep_ensemble_needs_two_members():
    with pytest.raises(ValueError, match="at least two"):
        DeepEnsemble([object()])
