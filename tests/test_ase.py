"""The ASE calculator and the model inputs it shares with `llpr evaluate`: one conversion of
a structure (graph_tensors), and the receptive field an exported file declares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from llpr.ase import LLPRCalculator
from llpr.evaluate import run_exported
from llpr.modelfile import load_exported
from llpr.graphs import graph_tensors, neighbor_list

from lammps_helpers import make_model


@pytest.fixture(scope="module")
def exported_path(tmp_path_factory):
    """A small model fitted and calibrated on random labels (no LAMMPS)."""
    return make_model(tmp_path_factory.mktemp("ase") / "model.pt")


def _cluster(seed=5):
    atoms = bulk("Si", "diamond", 5.431, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=seed)
    atoms.pbc = False
    return atoms


def test_graph_tensors_dtype_names_and_device():
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.05, seed=0)
    edge_index, edge_shifts = neighbor_list(atoms, 3.0)
    for dtype in ("float32", torch.float32, "float64"):
        g = graph_tensors(atoms, 3.0, dtype, device="cpu")
        want = torch.float32 if dtype in ("float32", torch.float32) else torch.float64
        assert list(g) == ["positions", "atomic_numbers", "edge_index", "edge_shifts"]  # the exported model's order
        assert g["positions"].dtype == want and g["edge_shifts"].dtype == want
        assert g["atomic_numbers"].dtype == torch.long and g["edge_index"].dtype == torch.long
        assert all(t.device == torch.device("cpu") for t in g.values())
        np.testing.assert_array_equal(g["edge_index"].numpy(), edge_index)
        np.testing.assert_allclose(g["edge_shifts"].numpy(), edge_shifts, rtol=1e-7 if want == torch.float32 else 0)
        np.testing.assert_array_equal(g["atomic_numbers"].numpy(), atoms.numbers)


def test_one_path_for_exported_files(exported_path, monkeypatch):
    """The calculator and `llpr evaluate` run a file through llpr.modelfile.run_exported (the
    tests' LAMMPS reference too), whose numbers are the module's own outputs and the LLPR
    sigma alpha sqrt(s^T C^-1 s) of the summed features."""
    import llpr.ase
    import llpr.modelfile

    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.1, seed=3)
    atoms.pbc = (True, True, False)  # not fully periodic: no stress, as in evaluate
    module = load_exported(exported_path)
    g = graph_tensors(atoms, module.cutoff, module.dtype)
    direct = module(*g.values(), len(atoms), True, False)
    s = direct["features"].to(torch.float64).sum(0)
    L = module.head.cholesky
    sigma = float(module.head.alpha) * float(torch.linalg.solve_triangular(L, s[:, None], upper=False).norm())

    assert llpr.ase.run_exported is llpr.modelfile.run_exported
    runs = []
    real = llpr.modelfile.run_exported
    monkeypatch.setattr(llpr.modelfile, "run_exported", lambda *a, **k: runs.append(real(*a, **k)) or runs[-1])
    out = run_exported(module, atoms)  # evaluate's
    assert len(runs) == 1
    atoms.calc = LLPRCalculator(exported_path)
    energy = atoms.get_potential_energy()
    # (TorchScript's profiling runs may differ from later ones in the last bits)
    assert energy == pytest.approx(float(direct["energy"]), abs=1e-12)
    assert out["energy"] == pytest.approx(float(direct["energy"]), abs=1e-12)
    for forces in (atoms.get_forces(), out["forces"]):
        np.testing.assert_allclose(forces, direct["forces"].detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.calc.results["sigma"], direct["sigma"].numpy(), rtol=1e-12)
    assert atoms.calc.results["energy_sigma"] == pytest.approx(sigma, rel=1e-12)
    assert out["energy_sigma"] == pytest.approx(sigma, rel=1e-12)
    assert "stress" not in atoms.calc.results and "stress" not in out


def test_receptive_field_bounds_what_an_atom_feels(exported_path):
    """Moving atom 0 leaves the energy of every atom farther than the file's receptive field
    from it (before and after the move) as it was, and changes those nearer."""
    module = load_exported(exported_path)
    atoms = _cluster()
    moved = atoms.copy()
    moved.positions[0] += [0.2, -0.1, 0.15]
    energies = []
    for a in (atoms, moved):
        a.calc = LLPRCalculator(module)
        energies.append(a.get_potential_energies())
    everyone = range(len(atoms))
    far = np.minimum(atoms.get_distances(0, everyone), moved.get_distances(0, everyone)) > module.receptive_field
    changed = np.abs(energies[1] - energies[0]) > 1e-9
    assert far.sum() > len(atoms) // 2 and not changed[far].any()
    assert changed[0] and changed[~far].sum() > 1
