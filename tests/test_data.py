"""Dataset files and splits, on small synthetic labelled structures (no LAMMPS): the label
convention survives an extended-XYZ round trip, splits are deterministic, disjoint and sized
as asked, and bad files are named."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from llpr.data import read_dataset, split_dataset, stress_label, write_dataset


def _labelled(k: int):
    """Structure k with random labels in llpr's convention; every third one a slab (no stress)."""
    rng = np.random.default_rng(k)
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    if k % 3 == 2:
        atoms.center(vacuum=5.0, axis=2)
        atoms.pbc = (True, True, False)
    else:
        atoms.info["stress"] = rng.normal(scale=1e-3, size=6)
    atoms.rattle(0.05, seed=k)
    atoms.info.update(energy=float(rng.normal(-300.0, 10.0)), config_type="crystal", potential="sw",
                      temperature=300.0 + k)
    atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
    return atoms


@pytest.fixture(scope="module")
def structures():
    return [_labelled(k) for k in range(6)]


def test_extxyz_round_trip(structures, tmp_path):
    path = str(tmp_path / "d.xyz")
    write_dataset(structures, path)
    back = read_dataset(path)
    assert len(back) == len(structures)
    for a, b in zip(structures, back):
        assert b.calc is None  # labels moved off ASE's single-point calculator
        assert set(b.info) == set(a.info) and set(b.arrays) == set(a.arrays)  # same convention
        assert isinstance(b.info["energy"], float)
        assert b.info["temperature"] == a.info["temperature"] and b.info["potential"] == "sw"
        assert b.info["energy"] == pytest.approx(a.info["energy"], abs=1e-12)
        # extxyz stores per-atom columns with 8 decimals
        np.testing.assert_allclose(b.arrays["forces"], a.arrays["forces"], atol=1e-8)
        if "stress" in a.info:
            assert b.info["stress"].shape == (6,)
            np.testing.assert_allclose(b.info["stress"], a.info["stress"], atol=1e-14)
        assert b.info["config_type"] == a.info["config_type"]
        np.testing.assert_array_equal(b.pbc, a.pbc)
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)


def test_full_stress_tensor_is_read_as_voigt(tmp_path):
    atoms = _labelled(0)
    voigt = atoms.info["stress"]
    xx, yy, zz, yz, xz, xy = voigt
    atoms.info["stress"] = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    write_dataset([atoms], str(tmp_path / "full.xyz"))
    np.testing.assert_allclose(read_dataset(str(tmp_path / "full.xyz"))[0].info["stress"], voigt, atol=1e-14)


def test_virial_key_is_read_as_stress(tmp_path):
    """A file that gives `virial` (eV, virial = -stress * volume, the MACE/GAP convention)
    instead of `stress`; a file with both keeps its stress."""
    atoms = _labelled(0)
    voigt = atoms.info.pop("stress")
    xx, yy, zz, yz, xz, xy = voigt
    full = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    atoms.info["virial"] = -full * atoms.get_volume()
    write_dataset([atoms], str(tmp_path / "virial.xyz"))
    back = read_dataset(str(tmp_path / "virial.xyz"))[0]
    np.testing.assert_allclose(back.info["stress"], voigt, rtol=1e-12, atol=1e-16)
    atoms.info["stress"] = 2 * voigt
    write_dataset([atoms], str(tmp_path / "both.xyz"))
    np.testing.assert_allclose(read_dataset(str(tmp_path / "both.xyz"))[0].info["stress"], 2 * voigt, atol=1e-14)


def test_stress_labels_that_cannot_be_a_stress_are_named():
    atoms = _labelled(0)
    np.testing.assert_array_equal(stress_label(atoms), atoms.info["stress"])
    assert stress_label(_labelled(2)) is None  # the slab has none
    slab = _labelled(2)
    slab.info["stress"] = np.zeros(6)
    with pytest.raises(ValueError, match=r"structure 4 has a stress label but is periodic only along \[True, True, "
                                         r"False\].*del atoms.info\['stress'\]"):
        stress_label(slab, 4)
    bad = _labelled(0)
    bad.info["stress"][2] = np.nan
    with pytest.raises(ValueError, match="structure 1 has a non-finite"):
        stress_label(bad, 1)
    bad.info["stress"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        stress_label(bad)
    # a dataset of graphs refuses them with the same message
    from llpr.graphs import AtomisticDataset

    with pytest.raises(ValueError, match="structure 1 has a stress label but is periodic only"):
        AtomisticDataset([_labelled(0), slab], cutoff=4.0)


def test_split_is_deterministic_disjoint_and_sized(structures):
    many = structures * 5  # 30 entries (the same objects repeated: indices tell them apart)
    tr, va, te = split_dataset(many, (0.6, 0.2, 0.2), seed=1)
    assert (len(tr), len(va), len(te)) == (18, 6, 6)
    index = {id(a): k for k, a in enumerate(structures)}
    assert sorted(index[id(a)] for a in tr + va + te) == sorted(index[id(a)] for a in many)
    again = split_dataset(many, (0.6, 0.2, 0.2), seed=1)
    assert [[id(a) for a in part] for part in again] == [[id(a) for a in part] for part in (tr, va, te)]
    ordered = list(range(30))
    parts = split_dataset(ordered, (0.6, 0.2, 0.2), seed=1)
    assert sorted(sum(parts, [])) == ordered  # each entry in exactly one part
    assert parts != split_dataset(ordered, (0.6, 0.2, 0.2), seed=2)
    # fractions are normalised, and every part asked for gets at least one structure
    assert [len(p) for p in split_dataset(ordered, (3, 1, 1))] == [18, 6, 6]
    assert [len(p) for p in split_dataset(ordered[:3], (0.98, 0.01, 0.01))] == [1, 1, 1]
    assert [len(p) for p in split_dataset(ordered[:10], (1, 0, 0))] == [10, 0, 0]


@pytest.mark.parametrize("content, message", [(None, "'.*d.xyz' does not exist"), ("", "'.*d.xyz' is empty"),
                                              ("not an xyz file\n", "could not read '.*d.xyz' as extended XYZ")])
def test_unreadable_file_is_named(tmp_path, content, message):
    path = tmp_path / "d.xyz"
    if content is not None:
        path.write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        read_dataset(str(path))


def test_bad_inputs(tmp_path):
    bare = tmp_path / "bare.xyz"
    write_dataset([bulk("Si", "diamond", 5.431, cubic=True)], str(bare))
    with pytest.raises(ValueError, match="no energy/forces labels.*llpr.lammps.labelling.label_structures"):
        read_dataset(str(bare))
    assert len(read_dataset(str(bare), require_labels=False)) == 1
    with pytest.raises(ValueError, match="structure list is empty"):
        write_dataset([], str(tmp_path / "none.xyz"))
    with pytest.raises(ValueError, match="three non-negative"):
        split_dataset([1, 2, 3], (0.5, 0.5))
