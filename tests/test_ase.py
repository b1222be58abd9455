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


def test_plumbing_calculator_and_evaluate_give_the_same_predictions(exported_path):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.1, seed=3)
    atoms.pbc = (True, True, False)  # not fully periodic: no stress, as in evaluate
    out = run_exported(load_exported(exported_path), atoms)
    atoms.calc = LLPRCalculator(exported_path)
    assert atoms.get_potential_energy() == pytest.approx(float(out["energy"]), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), out["forces"].detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.calc.results["sigma"], out["sigma"].numpy(), rtol=1e-12)
    assert atoms.calc.results["energy_sigma"] == pytest.approx(float(out["energy_sigma"]), rel=1e-12)


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
