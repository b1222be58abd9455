"""A MACE model (mace-torch, 2 interactions: it passes messages) exported by llpr and run by
pair_style llpr, with MACE's own ASE calculator as the oracle: energy, per-atom energies,
forces and virial to 1e-10 on 1, 2 and 3 MPI ranks, orthogonal and triclinic cells, a cell
smaller than the receptive field, a pair_coeff order unlike the model's; sigma_i, LPR_i,
the global sigma and the force sigma against llpr's Python reference; and the element-missing
error. Finite-difference forces and NVE: tests/test_lammps_consistency.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mace", reason="mace-torch is not installed (pip install llpr[mace])")

from lammps_helpers import (  # noqa: E402
    cluster_left_half,
    compare,
    finite_difference_force_error,
    lammps_module_marks,
    lammps_results,
    lammps_script,
    open_lammps_quiet,
    reference,
    run_in_process,
    run_lmp,
    si_diamond,
    sic_triclinic,
    sic_zincblende,
    subprocess_results,
    write_data,
)
from test_mace import mace_calculator  # noqa: E402

pytestmark = lammps_module_marks(mpi=True)


@pytest.fixture(scope="module")
def models(mace_lammps_models):
    return mace_lammps_models


def oracle(pickled, atoms, e0):
    """MACE's own results in the layout of tests/lammps_helpers.compare (per-atom energies with
    the element energies, the virial from the stress)."""
    from ase.stress import voigt_6_to_full_3x3_stress

    res = mace_calculator(pickled, atoms)
    out = {"energy": res["energy"], "energies": res["node_energy"] + e0, "forces": res["forces"]}
    if res["stress"] is not None:
        out["virial"] = -atoms.get_volume() * voigt_6_to_full_3x3_stress(res["stress"])
    return out


def _e0(pickled, atoms):
    import torch

    own = torch.load(pickled, weights_only=False)
    energies = own.atomic_energies_fn.atomic_energies.detach().numpy().reshape(-1)
    species = own.atomic_numbers.tolist()
    return energies[[species.index(z) for z in atoms.numbers]]


CASES = {
    # 8 atoms, a 5.43 A cube: smaller than the receptive field (7 A) and its ghost shell
    "si_cubic_8": ("si", lambda: si_diamond(rattle=0.1, seed=51), ["Si"]),
    "sic_orthogonal_16": ("sic", lambda: sic_zincblende((2, 1, 1), rattle=0.1, seed=52), ["C", "Si"]),
    # types Si = 1, C = 2: the order opposite to the model's species [6, 14]
    "sic_triclinic_14_shuffled": ("sic", lambda: sic_triclinic(seed=53), ["Si", "C"]),
    # a non-periodic cluster in the left half of its box: on 2 ranks (2 x 1 x 1) one owns no atom
    "rank_without_atoms": ("sic", cluster_left_half, ["Si", "C"]),
}
# 3 ranks on the cell smaller than the receptive field (each rank's two x neighbours different
# ranks); 2 ranks prove the decomposition of the other cells
RUNS = [("si_cubic_8", 1), ("si_cubic_8", 2), ("si_cubic_8", 3), ("sic_triclinic_14_shuffled", 1),
        ("sic_triclinic_14_shuffled", 2), ("sic_orthogonal_16", 2), ("rank_without_atoms", 2)]


def _run(models, name, atoms, elements, tmp_path, nprocs):
    boundary = "p p p" if atoms.pbc.all() else "f f f"
    if nprocs == 1:
        return run_in_process(tmp_path, models[name]["file"], atoms, elements, boundary=boundary, post="run 0")
    data = write_data(atoms, tmp_path / "data.lmp", elements)
    pre = "" if atoms.pbc.all() else "processors 2 1 1"
    res = subprocess_results(lammps_script(models[name]["file"], data, elements, boundary=boundary, pre=pre),
                             tmp_path, nprocs)
    if not atoms.pbc.all():
        nlocal = [ln.split() for ln in res["stdout"].splitlines() if ln.startswith("Nlocal:")][-1]
        assert nlocal[-2:] == ["0", "min"]
    return res


@pytest.mark.parametrize("case, nprocs", RUNS)
def test_lammps_equals_mace_calculator(models, tmp_path, case, nprocs):
    name, make, elements = CASES[case]
    atoms = make()
    res = _run(models, name, atoms, elements, tmp_path, nprocs)
    want = oracle(models[name]["pickle"], atoms, _e0(models[name]["pickle"], atoms))
    got = {"energy": res["energy"], "energies": res["energies"], "forces": res["forces"],
           "virial": np.asarray(res["virial"])}
    if "virial" in want:
        v = want["virial"]
        want["virial"] = np.array([v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]])
    for key in want:
        dev = float(np.abs(np.asarray(got[key]) - want[key]).max())
        print(case, nprocs, key, f"{dev:.1e}")
        assert dev <= 1e-10 * max(1.0, float(np.abs(want[key]).max())), key
    # and everything, uncertainties included, against llpr's Python reference
    compare(res, reference(models[name]["file"], atoms), tol=1e-10)


def test_force_sigma_and_group_sigma_on_two_ranks(models, tmp_path):
    import torch

    from llpr.modelfile import load_exported
    from test_lammps_ensemble import ensemble_reference

    atoms = sic_triclinic(seed=54)
    ref = ensemble_reference(models["sic"]["file"], atoms)
    head = load_exported(models["sic"]["file"]).head
    ids = np.arange(1, len(atoms) + 1, 3)
    want = float(torch.sqrt(head.energy_variance(torch.tensor(ref["features"])[ids - 1].sum(0))))
    data = write_data(atoms, tmp_path / "data.lmp", ["Si", "C"])
    dump = tmp_path / "f.dump"
    script = lammps_script(models["sic"]["file"], data, ["Si", "C"]) + f"""
compute uf all llpr/atom forces yes
group part id {' '.join(map(str, ids))}
compute gp part llpr
dump d all custom 1 {dump} id c_uf[3]
dump_modify d sort id format float %.17g
run 0
print "GROUP $(c_gp[1]:%.17g)"
"""
    proc = run_lmp(script, tmp_path, nprocs=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dump.read_text().splitlines()
    start = [k for k, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS")][0] + 1
    force_sigma = np.array([float(ln.split()[1]) for ln in lines[start:]])
    np.testing.assert_allclose(force_sigma, ref["force_sigma"], rtol=1e-10)
    group = float([ln for ln in proc.stdout.splitlines() if ln.startswith("GROUP")][-1].split()[1])
    assert abs(group - want) <= 1e-10 * want


def test_element_missing_from_the_mace_model(models, tmp_path):
    atoms = sic_zincblende(seed=57)
    data = write_data(atoms, tmp_path / "data.lmp", ["C", "Si"])
    proc = run_lmp(lammps_script(models["si"]["file"], data, ["C", "Si"]), tmp_path)
    assert proc.returncode != 0
    assert "pair_coeff for llpr: element C (Z = 6, atom type 1) is not known to the model, which was trained for: Si" in proc.stdout, proc.stdout[-2000:]


def test_fix_llpr_bias_with_a_mace_model(models, tmp_path):
    """fix llpr/bias on a message-passing model: the biased forces are minus the gradient of
    pe + E_bias (finite differences, one rank), and 1 and 2 ranks give the same biased
    forces, bias energy and sigma."""
    atoms = sic_triclinic(seed=58)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si", "C"])
    bias = "fix b all llpr/bias tau 0.5\nfix_modify b energy yes\n"
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(models["sic"]["file"], data, ["Si", "C"], post=bias + "run 0"))
        e_bias = lmp.extract_fix("b", 0, 0)
        assert e_bias < 0.0
        one = lammps_results(lmp)
        worst = finite_difference_force_error(lmp, (3, 10), 1e-4)
        print(f"biased forces: max |F - (-d(pe)/dx)_FD| = {worst:.2e} eV/A, E_bias {e_bias:.4f} eV")
        assert worst < 1e-6
    finally:
        lmp.close()
    dump = tmp_path / "f.dump"
    script = lammps_script(models["sic"]["file"], data, ["Si", "C"]) + bias + f"""
dump d all custom 1 {dump} id fx fy fz
dump_modify d sort id format float %.17g
run 0
print "BIAS $(f_b:%.17g) $(f_b[1]:%.17g)"
"""
    proc = run_lmp(script, tmp_path, nprocs=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from lammps_helpers import dump_table, printed_values

    forces = dump_table(dump)[:, 1:4]
    np.testing.assert_allclose(forces, one["forces"], rtol=0, atol=1e-10)
    assert abs(printed_values(proc, "BIAS")[0] - e_bias) <= 1e-10 * abs(e_bias)
