"""Reference data from LAMMPS potentials: determinism, labels, units and conventions."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from llpr.data import (
    CONFIG_TYPES,
    POTENTIALS,
    generate_dataset,
    label_structures,
    read_dataset,
    split_dataset,
    write_dataset,
)

from lammps_helpers import strained


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


def _rattled(seed=0, shear=False):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.1, seed=seed)
    if shear:
        cell = atoms.cell.array.copy()
        cell[1, 0] += 0.6
        cell[2, 1] -= 0.4
        atoms.set_cell(cell, scale_atoms=True)
    return atoms


def test_forces_are_minus_energy_gradient():
    atoms = label_structures([_rattled(1)])[0]
    h = 1e-4
    for i, c in [(0, 0), (5, 1), (7, 2)]:
        moved = []
        for sign in (1, -1):
            m = atoms.copy()
            m.positions[i, c] += sign * h
            moved.append(m)
        ep, em = (a.info["energy"] for a in label_structures(moved))
        # central differences: O(h^2) ~ 1e-8 truncation, thermo printed to full precision
        assert atoms.arrays["forces"][i, c] == pytest.approx(-(ep - em) / (2 * h), abs=1e-5)


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
    from ase.stress import voigt_6_to_full_3x3_stress

    sa = voigt_6_to_full_3x3_stress(a.info["stress"])
    sb = voigt_6_to_full_3x3_stress(b.info["stress"])
    np.testing.assert_allclose(R.T @ sa @ R, sb, atol=1e-9)
    # the caller's positions are kept exactly
    np.testing.assert_array_equal(b.positions, rotated.positions)


def test_extxyz_round_trip(small_set, tmp_path):
    path = str(tmp_path / "d.xyz")
    write_dataset(small_set, path)
    back = read_dataset(path)
    assert len(back) == len(small_set)
    for a, b in zip(small_set, back):
        assert b.calc is None
        assert set(b.info) == set(a.info) and set(b.arrays) == set(a.arrays)  # same convention
        assert isinstance(b.info["energy"], float) and b.info["stress"].shape == (6,)
        assert b.info["temperature"] == a.info["temperature"] and b.info["potential"] == "sw"
        assert b.info["energy"] == pytest.approx(a.info["energy"], abs=1e-12)
        # extxyz stores per-atom columns with 8 decimals
        np.testing.assert_allclose(b.arrays["forces"], a.arrays["forces"], atol=1e-8)
        np.testing.assert_allclose(b.info["stress"], a.info["stress"], atol=1e-14)
        assert b.info["config_type"] == a.info["config_type"]
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)


def test_split_is_deterministic_and_disjoint(small_set):
    tr, va, te = split_dataset(small_set, (0.6, 0.2, 0.2), seed=1)
    assert len(tr) + len(va) + len(te) == len(small_set)
    ids = [id(a) for a in tr + va + te]
    assert len(set(ids)) == len(ids)
    tr2, _, _ = split_dataset(small_set, (0.6, 0.2, 0.2), seed=1)
    assert [id(a) for a in tr] == [id(a) for a in tr2]


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


def test_snap_labels():
    # SNAP MD is ~50x slower than SW, so only single points here (generation uses the same path)
    crystal = bulk("Si", "diamond", 5.431, cubic=True) * (2, 2, 2)
    crystal.rattle(0.05, seed=4)
    vacancy = crystal.copy()
    del vacancy[10]
    a, b = label_structures([crystal, vacancy], "snap")
    for s in (a, b):
        assert s.info["potential"] == "snap" and s.arrays["forces"].shape == (len(s), 3)
        assert -5.6 < s.info["energy"] / len(s) < -5.0  # Zuo SNAP Si: about -5.4 eV/atom
        np.testing.assert_allclose(s.arrays["forces"].sum(axis=0), 0.0, atol=1e-9)
    h = 1e-4
    moved = []
    for sign in (1, -1):
        m = crystal.copy()
        m.positions[3, 1] += sign * h
        moved.append(m)
    ep, em = (x.info["energy"] for x in label_structures(moved, "snap"))
    assert a.arrays["forces"][3, 1] == pytest.approx(-(ep - em) / (2 * h), abs=1e-5)


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


def test_non_periodic_structures():
    from ase.build import diamond100

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


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="sw, tersoff, snap, sic"):
        generate_dataset("eam")
    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        read_dataset(str(tmp_path / "missing.xyz"))
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_dataset(str(empty))
    bare = tmp_path / "bare.xyz"
    write_dataset([bulk("Si", "diamond", 5.431, cubic=True)], str(bare))
    with pytest.raises(ValueError, match="no energy/forces labels"):
        read_dataset(str(bare))
    with pytest.raises(ValueError, match="element"):
        label_structures([bulk("Cu", "fcc", 3.6, cubic=True)], "sw")
    with pytest.raises(ValueError, match="configuration type"):
        generate_dataset("sw", config_types=("gas",))
    with pytest.raises(ValueError, match="configuration type 'gas'"):
        generate_dataset("sw", n_per_type={"gas": 1})
    periodic_without_cell = bulk("Si", "diamond", 5.431, cubic=True)
    periodic_without_cell.cell[2] = 0.0
    with pytest.raises(ValueError, match="periodic direction"):
        label_structures([periodic_without_cell])


def test_potentials_table():
    assert list(POTENTIALS) == ["sw", "tersoff", "snap", "sic"]
    assert all(isinstance(v, str) and v for v in POTENTIALS.values())
    assert "Si.sw" in POTENTIALS["sw"] and "SiC.tersoff" in POTENTIALS["sic"]
