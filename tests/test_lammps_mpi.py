"""The LAMMPS plugin under MPI: `mpirun -np 2 lmp` (and `lmp` on one rank) as subprocesses,
against the Python reference; including a rank that owns no atoms and the group energy
uncertainty, whose features must be summed over ranks before the quadratic form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lammps_helpers import (
    compare,
    lammps_module_marks,
    lammps_script,
    MPI_CASES,
    reference,
    run_lmp,
    si_diamond,
    subprocess_results,
    write_data,
)

pytestmark = lammps_module_marks(mpi=True)


@pytest.fixture(scope="module")
def models(native_lammps_models):
    return native_lammps_models


@pytest.mark.parametrize("nprocs", [2, 1])
@pytest.mark.parametrize("case", list(MPI_CASES))
def test_mpi_matches_python_reference(models, tmp_path, case, nprocs):
    name, make, elements, boundary, pre = MPI_CASES[case]
    if nprocs == 1:
        pre = ""
    atoms = make()
    ref = reference(models[name], atoms)
    data = write_data(atoms, tmp_path / "data.lmp", elements)
    script = lammps_script(models[name], data, elements, boundary=boundary, pre=pre)
    res = subprocess_results(script, tmp_path, nprocs)
    dev = compare(res, ref, tol=1e-10)
    print(case, nprocs, {k: f"{v:.1e}" for k, v in dev.items()})
    if case.startswith("rank_without_atoms") and nprocs == 2:
        assert "2 by 1 by 1 MPI processor grid" in res["stdout"]
        nlocal = [ln.split() for ln in res["stdout"].splitlines() if ln.startswith("Nlocal:")][-1]
        assert nlocal[-2:] == ["0", "min"] and float(nlocal[-4]) == len(atoms)  # max on one rank, none on the other


def test_group_energy_sigma_sums_features_over_ranks(models, tmp_path):
    """compute llpr on a group split over two ranks: sigma of the group's energy is
    alpha sqrt(s^T C^-1 s) with s the group's summed features, not a sum of per-rank sigmas."""
    from llpr.modelfile import load_exported

    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=24)
    ref = reference(models["si"], atoms)
    module = load_exported(models["si"])
    # a group of atoms on both sides of the processor boundary (x = L/2)
    in_group = (atoms.positions[:, 0] < 8.0) & (atoms.positions[:, 1] < 8.0)
    ids = np.nonzero(in_group)[0] + 1
    left = atoms.positions[in_group, 0] < atoms.cell[0, 0] / 2
    assert left.any() and (~left).any()
    s = ref["features"][in_group].sum(0)
    want = float(torch.sqrt(module.energy_variance(torch.tensor(s))))
    s_left = ref["features"][in_group][left].sum(0)
    s_right = ref["features"][in_group][~left].sum(0)
    wrong = float(torch.sqrt(module.energy_variance(torch.tensor(s_left))) + torch.sqrt(module.energy_variance(torch.tensor(s_right))))
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    script = lammps_script(models["si"], data, ["Si"], pre="processors 2 1 1") + f"""
group part id {' '.join(str(i) for i in ids)}
compute gp part llpr
run 0
print "GROUP $(c_gp[1]:%.17g) $(c_gp[2]:%.17g) $(c_gp[3]:%.17g)"
"""
    proc = run_lmp(script, tmp_path, nprocs=2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    vals = [float(x) for x in [ln for ln in proc.stdout.splitlines() if ln.startswith("GROUP")][-1].split()[1:]]
    print(f"group sigma {vals[0]:.6f} (reference {want:.6f}; per-rank sum would be {wrong:.6f})")
    assert abs(vals[0] - want) < 1e-10 * max(1.0, want)
    assert abs(want - wrong) > 1e-3 * want  # the distinction the test is about is real
    group_sigma = ref["sigma"][in_group]
    assert abs(vals[1] - group_sigma.max()) < 1e-10
    assert vals[2] == ids[np.argmax(group_sigma)]


def test_fix_halt_and_dump_thresh_under_mpi(models, tmp_path):
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=25)
    ref = reference(models["si"], atoms)
    threshold = float(np.quantile(ref["sigma"], 0.75))
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    script = lammps_script(models["si"], data, ["Si"]) + f"""
dump hi all custom 1000 high.dump id c_u[1]
dump_modify hi sort id thresh c_u[1] > {threshold!r} format float %.17g
fix fp all pair 1 llpr sigma 1
compute mx all reduce max f_fp
velocity all create 1000 4711 mom yes rot yes
timestep 0.001
fix nve all nve
variable s equal c_g[1]
fix stop all halt 5 v_s > {0.5 * ref['energy_sigma']!r} error soft
thermo_style custom step pe c_g[1] c_g[2] c_mx
thermo 5
run 100
print "STEP $(step)"
"""
    proc = run_lmp(script, tmp_path, nprocs=2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Fix halt condition for fix-id stop met on step 5" in proc.stdout
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("STEP")][-1].split()[1] == "5"
    lines = (tmp_path / "high.dump").read_text().splitlines()
    start = lines.index([ln for ln in lines if ln.startswith("ITEM: ATOMS")][0]) + 1
    dumped = np.array([[float(x) for x in ln.split()] for ln in lines[start:]])
    expected = np.nonzero(ref["sigma"] > threshold)[0] + 1
    assert list(dumped[:, 0].astype(int)) == list(expected)
    np.testing.assert_allclose(dumped[:, 1], ref["sigma"][expected - 1], atol=1e-10)
