"""pair_style llpr with a model that passes messages (tests/pairwise_model.py with
message_passing=True: receptive field 2 x cutoff, 8 A and 7 A): ghost atoms out to the receptive field
plus the skin, the graph over local and ghost atoms, energies and features of the local atoms
only. Energies, forces, virials, sigma_i, LPR_i, the global sigma, the force sigma and the
members' energy and pressure deviations against the Python reference (the exported module on
the periodic graph) on 1, 2 and 3 MPI ranks, cells smaller than the receptive field included;
the ghost shell raised and given back; comm_style tiled, neighbor style nsq and pair_style
hybrid. Finite-difference forces, NVE and MD on 3 ranks: tests/test_lammps_consistency.py."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lammps_helpers import (
    cluster_left_half,
    compare,
    lammps_module_marks,
    lammps_script,
    make_model,
    NKTV2P_METAL,
    reference,
    run_in_process,
    run_lmp,
    si_diamond,
    sic_triclinic,
    sic_zincblende,
    subprocess_results,
    write_data,
)
from pairwise_model import PairwiseModel
from test_lammps_ensemble import ensemble_reference

pytestmark = lammps_module_marks(mpi=True)

K = 8  # last-layer ensemble members
# ghost atom cutoff: receptive field (8 A and 7 A) + the default skin 2 A
SHELL = {"si": "10", "sic": "9"}


@pytest.fixture(scope="module")
def models(message_passing_models):
    """tests/conftest.py message_passing_models (K-member ensembles: K above)."""
    return message_passing_models


def sic_slab():
    """Two SiC cells stacked along z with 4 A of vacuum on each side, periodic in x and y only."""
    atoms = sic_zincblende((1, 1, 2), rattle=0.1, seed=44)
    atoms.pbc = (True, True, False)
    atoms.center(vacuum=4.0, axis=2)
    return atoms


# name: (model, structure, element order of the LAMMPS types, boundary); the species order of
# "sic" is C, Si
CASES = {
    "si_cubic_8_smaller_than_receptive_field": ("si", lambda: si_diamond(rattle=0.1, seed=41), ["Si"], "p p p"),
    "si_orthogonal_64": ("si", lambda: si_diamond((2, 2, 2), rattle=0.08, seed=42), ["Si"], "p p p"),
    "sic_triclinic_14_shuffled_types": ("sic", lambda: sic_triclinic(seed=43), ["Si", "C"], "p p p"),
    "sic_slab_non_periodic_z": ("sic", sic_slab, ["C", "Si"], "p p f"),
    "rank_without_atoms": ("sic", cluster_left_half, ["Si", "C"], "f f f"),
}
# 3 ranks (each rank's two x neighbours different ranks, ghosts through several of them) on the
# cell smaller than the receptive field, where that matters most; 1 and 2 ranks on every cell
RUNS = ([(case, n) for case in CASES for n in (1, 2) if case != "rank_without_atoms"]
        + [("si_cubic_8_smaller_than_receptive_field", 3), ("rank_without_atoms", 2)])


def _grid(stdout):
    """The MPI processor grid LAMMPS chose (the last one it printed)."""
    return [int(x) for x in re.findall(r"(\d+) by (\d+) by (\d+) MPI processor grid", stdout)[-1]]


@pytest.mark.parametrize("case, nprocs", RUNS)
def test_matches_python_reference(models, tmp_path, case, nprocs):
    """Energy, per-atom energies, forces, global and per-atom virial, sigma_i, LPR_i and the
    global sigma (and the largest sigma_i with its atom) equal the Python reference on the
    periodic graph; the per-atom virials (ghost parts sent to their owners) add up to the
    global one."""
    name, make, elements, boundary = CASES[case]
    atoms = make()
    ref = reference(models[name], atoms)
    if nprocs == 1:
        res = run_in_process(tmp_path, models[name], atoms, elements, boundary=boundary, post="run 0")
    else:
        pre = "processors 2 1 1" if case == "rank_without_atoms" else ""
        data = write_data(atoms, tmp_path / "data.lmp", elements)
        res = subprocess_results(lammps_script(models[name], data, elements, boundary=boundary, pre=pre), tmp_path,
                                 nprocs)
        assert np.prod(_grid(res["stdout"])) == nprocs
    dev = compare(res, ref, tol=1e-10)
    print(case, nprocs, "ranks", {k: f"{v:.1e}" for k, v in dev.items()})
    if nprocs > 1:
        assert f"ghost atom cutoff = {SHELL[name]}\n" in res["stdout"] and "pair build: full/bin/ghost" in res["stdout"]
    scale = max(1.0, np.abs(res["virial"]).max())
    np.testing.assert_allclose(res["virial_atom"].sum(0), res["virial"], rtol=0, atol=1e-10 * scale)
    if case == "rank_without_atoms":
        nlocal = [ln.split() for ln in res["stdout"].splitlines() if ln.startswith("Nlocal:")][-1]
        assert nlocal[-2:] == ["0", "min"]


def _uncertainty_script(model, data, elements, group_ids, dump):
    e = [f"$(c_e[{k}]:%.17g)" for k in range(4, 4 + 8 * K)]
    return lammps_script(model, data, elements) + f"""
compute uf all llpr/atom forces yes
compute e all llpr ensemble yes virial yes
group part id {' '.join(str(i) for i in group_ids)}
compute gp part llpr
fix fp all pair 1 llpr sigma 1 lpr 1
dump d all custom 1 {dump} id c_uf[1] c_uf[2] c_uf[3] f_fp[1] f_fp[2]
dump_modify d sort id format float %.17g
run 0
print "SIGMA $(c_g[1]:%.17g) $(c_gp[1]:%.17g) $(vol:%.17g)"
print "MEMBERS {' '.join(e)}"
"""


@pytest.mark.parametrize("case, nprocs", [("sic_triclinic_14_shuffled_types", 1), ("sic_triclinic_14_shuffled_types", 2),
                                          ("si_cubic_8_smaller_than_receptive_field", 2)])
def test_uncertainties_match_python(models, tmp_path, case, nprocs):
    """compute llpr/atom forces yes (sigma_i, LPR_i, force sigma: the members' forces on ghost
    atoms summed onto their owners), fix pair (sigma, lpr), compute llpr of all atoms and of a
    group spread over the ranks (features summed over ranks, then the quadratic form) and
    compute llpr ensemble yes virial yes (dE_k, dP_k and the pressure tensor deviations)."""
    from llpr.modelfile import load_exported

    name, make, elements, _ = CASES[case]
    atoms = make()
    ref = ensemble_reference(models[name], atoms)
    head = load_exported(models[name]).head
    ids = np.arange(1, len(atoms) + 1, 2)  # every other atom
    feats = torch.tensor(ref["features"])
    want_sigma = [float(torch.sqrt(head.energy_variance(feats.sum(0)))),
                  float(torch.sqrt(head.energy_variance(feats[ids - 1].sum(0))))]
    data = write_data(atoms, tmp_path / "data.lmp", elements)
    dump = tmp_path / "u.dump"
    proc = run_lmp(_uncertainty_script(models[name], data, elements, ids, dump), tmp_path, nprocs=nprocs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert np.prod(_grid(proc.stdout)) == nprocs
    lines = dump.read_text().splitlines()
    start = [k for k, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS")][0] + 1
    table = np.array([[float(x) for x in ln.split()] for ln in lines[start:]])
    assert list(table[:, 0].astype(int)) == list(range(1, len(atoms) + 1))
    np.testing.assert_allclose(table[:, 1], ref["sigma"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(table[:, 2], ref["lpr"], rtol=1e-10)
    np.testing.assert_allclose(table[:, 3], ref["force_sigma"], rtol=0, atol=1e-10 * max(1.0, ref["force_sigma"].max()))
    np.testing.assert_array_equal(table[:, 4:6], table[:, 1:3])  # fix pair: the same per-atom values
    out = {ln.split()[0]: np.array([float(x) for x in ln.split()[1:]]) for ln in proc.stdout.splitlines()
           if ln.startswith(("SIGMA ", "MEMBERS "))}
    np.testing.assert_allclose(out["SIGMA"][:2], want_sigma, rtol=1e-10)
    assert abs(want_sigma[0] - want_sigma[1]) > 1e-3 * want_sigma[0]  # the group is not everything
    members = out["MEMBERS"]
    dE = ref["energy_deviations"]
    np.testing.assert_allclose(members[:K], dE, rtol=0, atol=1e-10 * max(1.0, np.abs(dE).max()))
    dW = ref["virial_deviations"]
    tensor = NKTV2P_METAL / out["SIGMA"][2] * np.stack(
        [dW[:, 0, 0], dW[:, 1, 1], dW[:, 2, 2], dW[:, 0, 1], dW[:, 0, 2], dW[:, 1, 2]], axis=1)
    scale = max(1.0, np.abs(tensor).max())
    np.testing.assert_allclose(members[2 * K:].reshape(K, 6), tensor, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(members[K:2 * K], tensor[:, :3].mean(axis=1), rtol=0, atol=1e-10 * scale)
    print(case, nprocs, "ranks: max |force sigma - Python|", f"{np.abs(table[:, 3] - ref['force_sigma']).max():.1e}")


def test_ghost_shell_is_raised_and_given_back(models, tmp_path):
    """The message-passing model raises the communication cutoff to receptive field + skin and
    asks for the ghosts' neighbour lists; a strictly local model loaded after it gets today's
    ghosts (the neighbour cutoff) and list; a larger comm_modify cutoff is kept."""
    atoms = si_diamond((2, 2, 2), rattle=0.05, seed=47)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    script = lammps_script(models["si"], data, ["Si"], post=f"""
run 0
pair_style llpr {models['local']} device cpu
pair_coeff * * Si
run 0
comm_modify cutoff 12
pair_style llpr {models['si']} device cpu
pair_coeff * * Si
run 0
""")
    proc = run_lmp(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    assert re.findall(r"ghost atom cutoff = (\S+)", out) == ["10", "5.5", "12"]
    assert [ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("pair build:")] == \
        ["full/bin/ghost", "full/bin/atomonly", "full/bin/ghost"]
    raised = [ln for ln in out.splitlines() if ln.startswith("llpr: ghost atoms out to")]
    assert len(raised) == 1 and "raised to 10 A" in raised[0]


@pytest.mark.parametrize("pre, post, build", [("comm_style tiled", "balance 1.0 rcb\n", "full/bin/ghost"),
                                               ("neighbor 2.0 nsq", "", "full/nsq/ghost")])
def test_comm_style_tiled_and_neighbor_style_nsq(models, tmp_path, pre, post, build):
    """comm_style tiled (rcb) gives the shell in a box wider than it, and neighbor style nsq
    lists the ghosts' neighbours too: results as the reference on 2 ranks (a box narrower than
    the shell under tiled, and neighbor style multi, are refused: tests/test_newcomer_errors.py)."""
    atoms = si_diamond((2, 2, 2), rattle=0.08, seed=48)
    ref = reference(models["si"], atoms)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    res = subprocess_results(lammps_script(models["si"], data, ["Si"], pre=pre, post=post), tmp_path, 2)
    assert "ghost atom cutoff = 10\n" in res["stdout"] and f"pair build: {build}" in res["stdout"]
    dev = compare(res, ref, tol=1e-10)
    print(pre, "2 ranks", {k: f"{v:.1e}" for k, v in dev.items()})

def test_hybrid_with_null_type_on_two_ranks(models, tmp_path):
    """`pair_coeff * * llpr Si NULL` under pair_style hybrid (a skip list of the ghost list):
    the C atoms, local or ghost, are invisible to the model."""
    atoms = sic_triclinic(seed=51)
    si = atoms.numbers == 14
    ref = reference(models["sic"], atoms[si])
    data = write_data(atoms, tmp_path / "data.lmp", ["Si", "C"])
    plain = f"pair_style llpr {models['sic']} device cpu\npair_coeff * * Si C\n"
    script = lammps_script(models["sic"], data, ["Si", "C"])
    assert plain in script
    script = script.replace(plain, f"pair_style hybrid llpr {models['sic']} device cpu zero 4.0\n"
                                   "pair_coeff * * llpr Si NULL\npair_coeff 1 2 zero\npair_coeff 2 2 zero\n")
    res = subprocess_results(script, tmp_path, 2)
    assert "pair build: skip/ghost" in res["stdout"]
    assert abs(res["energy"] - ref["energy"]) < 1e-10 * max(1.0, abs(ref["energy"]))
    np.testing.assert_allclose(res["forces"][si], ref["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(res["sigma"][si], ref["sigma"], rtol=0, atol=1e-10)
    assert np.all(res["forces"][~si] == 0.0) and np.all(res["sigma"][~si] == 0.0)
    assert abs(res["global"][0] - ref["energy_sigma"]) < 1e-10


def _declared_not_strictly_local(species):
    """The pair network without message passing (receptive field == cutoff), declared not
    strictly local: the declaration alone decides the graph."""
    model = PairwiseModel(species)
    model.strictly_local = False
    return model


def test_not_strictly_local_within_the_cutoff(models, tmp_path):
    """A file that says strictly_local false with receptive field == cutoff (a centre's energy
    may use its neighbours' edges) also gets the graph of local and ghost atoms, its ghost
    shell being the neighbour cutoff."""
    path = make_model(tmp_path / "not_local.pt", species=(6, 14), seed=1, n_structures=12,
                      model_class=_declared_not_strictly_local)
    atoms = sic_triclinic(seed=52)
    ref = reference(path, atoms)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si", "C"])
    res = subprocess_results(lammps_script(path, data, ["Si", "C"]), tmp_path, 2)
    assert "pair build: full/bin/ghost" in res["stdout"] and "ghost atom cutoff = 5.5\n" in res["stdout"]
    compare(res, ref, tol=1e-10)
