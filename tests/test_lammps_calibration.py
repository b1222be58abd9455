"""A power-law calibrated model in LAMMPS: per-atom and global sigma follow ``s q^(b/2)``,
equal to the Python estimator's to 1e-10."""

from __future__ import annotations

import numpy as np
import torch

from lammps_helpers import compare, lammps_module_marks, reference, run_in_process, si_diamond

pytestmark = lammps_module_marks()


def test_power_law_sigma_in_lammps(small_model, si_splits, tmp_path):
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.modelfile import export_model
    from llpr.uncertainty.estimator import LLPR

    train, val, _ = si_splits
    loader = lambda s: make_loader(AtomisticDataset(s, small_model.cutoff, torch.float64), 8)  # noqa: E731
    llpr = LLPR(small_model).fit(loader(train)).calibrate(loader(val), sigma_power=True)
    b = llpr.calibration_.sigma_power
    assert abs(b - 1.0) > 1e-3
    path = str(tmp_path / "power.pt")
    export_model(llpr, path)
    atoms = si_diamond(rattle=0.15, seed=3)
    ref = reference(path, atoms)
    res = run_in_process(tmp_path, path, atoms, ["Si"], post="run 0")
    compare(res, ref, tol=1e-10)
    # the Python estimator, independently of the exported file
    batch = next(iter(make_loader(AtomisticDataset([atoms], small_model.cutoff, torch.float64,
                                                   require_labels=False), 1)))
    out = llpr.predict(batch)
    s = llpr.calibration_.sigma_scale
    q = llpr.quadratic_form(llpr._outputs(batch)["features"])
    np.testing.assert_allclose(out["sigma"].numpy(), s * q.numpy() ** (b / 2), rtol=1e-12)
    np.testing.assert_allclose(res["global"][0], float(out["sigma"][0]), rtol=1e-10)
    np.testing.assert_allclose(res["sigma"], out["atom_sigma"].numpy(), rtol=1e-10, atol=1e-14)
