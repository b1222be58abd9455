"""Datasets: the label convention of llpr's reference structures, extended-XYZ files of them
and deterministic train / validation / test splits.

Structures come from :func:`llpr.lammps.sampling.generate_dataset` (molecular dynamics in LAMMPS),
from :func:`llpr.lammps.labelling.label_structures` (any structure, labelled with a LAMMPS
potential) or from the user's own extended-XYZ file. Label convention (read by every other
part of llpr):

* ``atoms.info["energy"]``: total potential energy (eV);
* ``atoms.arrays["forces"]``: forces (eV/A);
* ``atoms.info["stress"]``: stress, Voigt order xx, yy, zz, yz, xz, xy (eV/A^3), ASE sign
  convention (``-virial / volume``); only for fully periodic cells (optional: training and
  evaluation use it where present, see :func:`stress_label`). A file that gives the virial
  instead (extended-XYZ key ``virial``, 3x3, eV, the convention ``virial = -stress * volume``)
  is read as that stress;
* ``atoms.info["config_type"]``: one of :data:`llpr.lammps.sampling.CONFIG_TYPES` or ``"user"``;
* ``atoms.info["potential"]`` (a key of :data:`llpr.lammps.labelling.POTENTIALS`) and, for MD
  snapshots, ``atoms.info["temperature"]`` (K).

Labels that are present must be finite, and a structure needs atoms and, along each periodic
direction, a cell vector: :func:`check_structure` refuses anything else, naming the structure
and its file (every reader of structures calls it).
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.io import read, write
from ase.stress import full_3x3_to_voigt_6_stress


def write_dataset(atoms_list, path: str) -> None:
    """Write labelled structures to an extended-XYZ file."""
    atoms_list = list(atoms_list)
    if not atoms_list:
        raise ValueError(f"nothing to write to {path}: the structure list is empty")
    write(path, atoms_list, format="extxyz")


def _normalise(atoms: Atoms) -> Atoms:
    """Move labels that ASE's reader put on a SinglePointCalculator back to info/arrays."""
    calc = atoms.calc
    if calc is not None:
        results = getattr(calc, "results", {})
        if "energy" in results:
            atoms.info["energy"] = float(results["energy"])
        if "forces" in results:
            atoms.arrays["forces"] = np.array(results["forces"], dtype=float)
        if "stress" in results:
            stress = np.asarray(results["stress"], dtype=float)
            atoms.info["stress"] = full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress
        atoms.calc = None
    if "stress" not in atoms.info and "virial" in atoms.info and np.all(atoms.pbc):
        # only a virial that can be a stress is turned into one; any other stays as it is,
        # for stress_label to refuse with the structure's name
        virial = np.asarray(atoms.info["virial"], dtype=float)
        volume = abs(float(np.linalg.det(atoms.cell.array)))
        if virial.size == 9 and np.all(np.isfinite(virial)) and volume > 0:
            atoms.info["stress"] = -virial.reshape(3, 3) / volume
    if "stress" in atoms.info:
        stress = np.asarray(atoms.info["stress"], dtype=float)
        atoms.info["stress"] = full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress
    return atoms


def rename_labels(atoms: Atoms, energy_key: str = "energy", forces_key: str = "forces",
                  stress_key: str = "stress") -> Atoms:
    """Move labels stored under other keys (e.g. MACE's ``REF_energy``, ``REF_forces``,
    ``REF_stress``) to llpr's ``energy`` / ``forces`` / ``stress``; missing ones are left out."""
    for key, name, where in ((energy_key, "energy", atoms.info), (stress_key, "stress", atoms.info),
                             (forces_key, "forces", atoms.arrays)):
        if key != name and key in where:
            value = where.pop(key)
            if name == "forces":
                atoms.arrays["forces"] = np.asarray(value, dtype=float)
            else:
                atoms.info[name] = value
    return _normalise(atoms)


def structure_name(index: int | None = None, source: str | None = None) -> str:
    """How messages name a structure: "structure 3 in 'train.xyz'", "structure 3 of the
    validation set" (``source`` not a file name: no quotes) or "structure"."""
    where = "structure" if index is None else f"structure {index}"
    if source:
        where += f" in '{source}'" if not source.startswith("the ") else f" of {source}"
    return where


def stress_label(atoms: Atoms, index: int | None = None, source: str | None = None) -> np.ndarray | None:
    """The stress label of ``atoms`` (Voigt, eV/A^3, float64), or None when it has none.

    The label is ``atoms.info["stress"]`` or, without one, ``atoms.info["virial"]`` (3x3 eV,
    ``stress = -virial / volume``). A label that cannot be a stress raises ValueError naming
    structure ``index`` (of file ``source``): one on a cell that is not periodic along all
    three directions (the stress of an isolated or slab structure depends on an arbitrary
    volume), one with another shape than 6 or 3x3 values (9 for a virial), or one with NaN or
    inf."""
    key = "stress" if "stress" in atoms.info else "virial" if "virial" in atoms.info else None
    if key is None:
        return None
    where = structure_name(index, source)
    value = np.asarray(atoms.info[key], dtype=np.float64)
    if key == "virial":
        if value.size != 9:
            raise ValueError(f"{where} has a virial label of shape {value.shape}; a virial is a 3x3 matrix (9 values), in eV")
        value = value.reshape(3, 3)
    elif value.shape == (3, 3):
        value = full_3x3_to_voigt_6_stress(value)
    if key == "stress" and value.shape != (6,):
        raise ValueError(
            f"{where} has a stress label of shape {value.shape}; a stress is 6 Voigt values "
            "(xx, yy, zz, yz, xz, xy) or a 3x3 matrix, in eV/A^3"
        )
    if not np.all(atoms.pbc):
        raise ValueError(
            f"{where} has a {key} label but is periodic only along {np.asarray(atoms.pbc).tolist()}; a "
            f"{key} is defined for fully periodic cells: remove the label (del atoms.info['{key}']) or "
            "make the cell periodic (atoms.pbc = True)"
        )
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{where} has a non-finite (NaN or inf) {key} label; fix or remove it")
    if key == "virial":
        volume = abs(float(np.linalg.det(atoms.cell.array)))
        if not volume > 0:
            raise ValueError(f"{where} has a virial label but its cell has no volume; give the cell (Lattice=)")
        value = full_3x3_to_voigt_6_stress(-value / volume)
    return value


def check_structure(atoms: Atoms, index: int | None = None, source: str | None = None) -> None:
    """Refuse, with a ValueError naming structure ``index`` (of ``source``, a file name or
    e.g. "the training set"), a structure no model can be trained or evaluated on: one without
    atoms, with non-finite positions, with a periodic direction whose cell vector has zero
    length (or a fully periodic cell of zero volume), or with a label that is present but
    non-finite or misshapen (energy, forces, stress or virial; missing labels are not checked
    here)."""
    where = structure_name(index, source)
    if len(atoms) == 0:
        raise ValueError(
            f"{where} has no atoms (its atom-count line reads 0); remove that frame from the file "
            "(or the empty Atoms from the list)"
        )
    positions = np.asarray(atoms.positions, dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
        raise ValueError(f"{where} has non-finite (NaN or inf) positions for atom(s) {bad[:10].tolist()}; "
                         "fix the structure")
    pbc = [bool(p) for p in atoms.pbc]
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    for axis in (k for k in range(3) if pbc[k]):
        length = float(np.linalg.norm(cell[axis]))
        if not (np.isfinite(length) and length > 0):
            flags = " ".join("F" if k == axis or not p else "T" for k, p in enumerate(pbc))
            raise ValueError(
                f"{where} is periodic along cell vector {'abc'[axis]} (pbc {pbc}) but that vector has "
                f"length {length:g} (cell {cell.tolist()}); give the vector its length (Lattice= in the "
                f"extended-XYZ comment line), or, if the structure is not periodic that way, say so (pbc=\"{flags}\") "
                "and give a vector longer than the structure along it"
            )
    if all(pbc) and abs(float(np.linalg.det(cell))) < 1e-12:
        raise ValueError(
            f"{where} is periodic but its cell vectors are linearly dependent (volume 0, cell {cell.tolist()}); "
            "give three independent cell vectors (Lattice=)"
        )
    if "energy" in atoms.info:
        try:
            energy = float(np.asarray(atoms.info["energy"], dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(f"{where} has an energy label that is not one number: {atoms.info['energy']!r}") from None
        if not np.isfinite(energy):
            raise ValueError(f"{where} has a non-finite energy label ({energy}); fix or remove the structure")
    if "forces" in atoms.arrays:
        forces = np.asarray(atoms.arrays["forces"], dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"{where} has a forces label of shape {forces.shape}; it needs ({len(atoms)}, 3), in eV/A")
        if not np.all(np.isfinite(forces)):
            bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
            raise ValueError(
                f"{where} has non-finite (NaN or inf) force labels on {bad.size} atom(s), indices "
                f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}; fix or remove the structure"
            )
    stress_label(atoms, index, source)


def read_dataset(path: str, require_labels: bool = True, energy_key: str = "energy",
                 forces_key: str = "forces", stress_key: str = "stress") -> list[Atoms]:
    """Read an extended-XYZ file of labelled structures (see the module's label convention).

    ``energy_key``, ``forces_key``, ``stress_key``: where the file keeps the labels, if not
    under llpr's names (e.g. ``REF_energy`` in files written for MACE). Every structure is
    checked (:func:`check_structure`): a NaN label or a frame without atoms stops the reading
    with a ValueError naming the structure's index and the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file '{path}' does not exist; check the path (or run `llpr data`)")
    if os.path.getsize(path) == 0:
        raise ValueError(f"dataset file '{path}' is empty")
    try:
        frames = read(path, ":", format="extxyz")
    except Exception as exc:
        raise ValueError(f"could not read '{path}' as extended XYZ: {exc}") from exc
    frames = [rename_labels(_normalise(a), energy_key, forces_key, stress_key) for a in frames]
    if not frames:
        raise ValueError(f"dataset file '{path}' holds no structures")
    for k, atoms in enumerate(frames):
        check_structure(atoms, k, path)
    if require_labels:
        for k, atoms in enumerate(frames):
            if "energy" not in atoms.info or "forces" not in atoms.arrays:
                found = sorted(set(atoms.info) | (set(atoms.arrays) - {"numbers", "positions"}))
                raise ValueError(
                    f"structure {k} in '{path}' has no energy/forces labels; the file must carry "
                    "energy= in the comment line and a forces column (found keys: "
                    f"{', '.join(found) or 'none'}; name yours with --energy-key / --forces-key "
                    "(energy_key= / forces_key=), or label the structures with "
                    "llpr.lammps.labelling.label_structures)"
                )
    return frames


def split_dataset(atoms_list, fractions=(0.8, 0.1, 0.1), seed: int = 0):
    """Deterministic random split into train / validation / test lists."""
    atoms_list = list(atoms_list)
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError("fractions must be three non-negative numbers (train, val, test)")
    fractions = fractions / fractions.sum()
    n = len(atoms_list)
    order = np.random.default_rng(seed).permutation(n)
    sizes = [int(round(f * n)) for f in fractions]
    sizes[0] = n - sizes[1] - sizes[2]
    # with enough structures, every part asked for gets at least one (taken from the largest)
    if n >= 3:
        for k in range(3):
            if fractions[k] > 0 and sizes[k] == 0:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[k] = 1
    n_train, n_val = sizes[0], sizes[1]
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return tuple([atoms_list[i] for i in part] for part in parts)
