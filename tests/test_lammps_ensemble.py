"""Force uncertainties from the last-layer ensemble in C++: the core (llpr._core) and
`compute llpr/atom forces yes` in LAMMPS, on one rank (in-process) and two MPI ranks
(subprocesses), against the Python reference (the exported file's ensemble_forward run in
Python with vesin neighbour lists); files without an ensemble and bad keywords."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from lammps_helpers import (
    assert_lammps_error_in_process,
    atom_array,
    lammps_module_marks,
    lammps_script,
    make_model,
    MPI_CASES,
    MPIRUN,
    run_in_process,
    run_lmp,
    SERIAL_CASES,
    si_diamond,
    sic_cluster,
    sic_triclinic,
    write_data,
)

core = pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
pytestmark = lammps_module_marks()

TOL = 1e-10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ensemble_models")
    return {
        # K = 8 < F = 16: one backward pass per member
        "si": make_model(d / "si.pt", species=(14,), seed=0, ensemble=8, ensemble_seed=1),
        # K = 20 > F = 16: feature Jacobian, then the members
        "sic": make_model(d / "sic.pt", species=(6, 14), seed=1, ensemble=20, ensemble_seed=2),
        "plain": make_model(d / "plain.pt", species=(14,), seed=0),
        "dir": d,
    }


def ensemble_reference(model_path, atoms):
    """Python: the exported file's ensemble on the whole structure (vesin neighbour list), by
    the one Python path for exported files."""
    from llpr.modelfile import load_exported, run_exported

    return run_exported(load_exported(model_path), atoms, forces=True, virial=True, ensemble=True)


# ----------------------------------------------------------------------------------- core
@pytest.mark.parametrize("name, make", [("si", lambda: si_diamond(rattle=0.1, seed=1)),
                                        ("sic", sic_triclinic), ("sic", sic_cluster)])
def test_core_ensemble_matches_python(models, name, make):
    atoms = make()
    ref = ensemble_reference(models[name], atoms)
    g = ref["graph"]
    model = core.Model(models[name])
    assert model.metadata["ensemble_size"] == ref["energy_deviations"].shape[0]
    out = model.compute_ensemble(g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"],
                                 virial=True)
    for key in ("energy_deviations", "force_deviations", "force_sigma", "virial_deviations"):
        np.testing.assert_allclose(out[key], ref[key], rtol=0, atol=TOL * max(1.0, np.abs(ref[key]).max()),
                                   err_msg=key)


@pytest.mark.parametrize("name, chunk", [("si", 3), ("sic", 1), ("sic", 7)])
def test_ensemble_in_blocks_of_centres(models, tmp_path, name, chunk):
    """ensemble_forward runs the centres in blocks of `chunk_centers` like evaluate() (4096 on a
    CPU: 1.8x faster and a third of the memory at 32768 atoms); blocks of a few centres give the
    members' energy, force and virial deviations of one block, per member and through the feature
    Jacobian (K > F), from Python (unsorted edges) and C++ (centre-sorted edges)."""
    atoms = sic_triclinic() if name == "sic" else si_diamond(rattle=0.1, seed=3)
    ref = ensemble_reference(models[name], atoms)
    module = torch.jit.load(models[name])
    assert len(atoms) > chunk and module.chunk_centers >= len(atoms)  # the reference: one block
    module.chunk_centers = chunk
    path = str(tmp_path / f"chunk{chunk}.pt")
    torch.jit.save(module, path)
    python = ensemble_reference(path, atoms)
    g = ref["graph"]
    order = np.argsort(g["edge_index"][0], kind="stable")
    core_out = core.Model(path).compute_ensemble(g["positions"], g["atomic_numbers"], g["edge_index"][:, order],
                                                 g["edge_shifts"][order], virial=True)
    for out in (python, core_out):
        for key in ("energy_deviations", "force_deviations", "force_sigma", "virial_deviations"):
            np.testing.assert_allclose(out[key], ref[key], rtol=0, atol=1e-12 * max(1.0, np.abs(ref[key]).max()),
                                       err_msg=key)


def test_core_without_ensemble(models):
    from llpr.lammps.plugin import check_model

    assert check_model(models["plain"])["ensemble_size"] == 0
    model = core.Model(models["plain"])
    atoms = si_diamond(seed=2)
    ref = ensemble_reference(models["si"], atoms)
    g = ref["graph"]
    with pytest.raises(ValueError, match="has no last-layer ensemble.*--ensemble"):
        model.compute_ensemble(g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"])


def test_bad_ensemble_buffer_is_named(models):
    from test_core import _export_modified

    n = torch.jit.load(models["sic"]).n_features
    path = _export_modified(models["sic"], str(models["dir"] / "badens.pt"),
                            {"ensemble_deviations": torch.ones(4, n + 1, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"head.ensemble_deviations has dtype Double and shape \[4, %d\], "
                                         r"expected float64 \(K, %d\)" % (n + 1, n)):
        core.check(path)


# ----------------------------------------------------------------------------------- LAMMPS
def _lammps_force_sigma(tmp_path, model, atoms, elements, post="run 0", **script_kwargs):
    """`compute llpr/atom forces yes` in-process: sigma_i, LPR_i and force sigma_i by atom ID."""
    return run_in_process(tmp_path, model, atoms, elements, collect=lambda lmp: atom_array(lmp, "uf"),
                          post="compute uf all llpr/atom forces yes\n" + post, **script_kwargs)


@pytest.mark.parametrize("case", list(SERIAL_CASES))
def test_lammps_force_sigma_matches_python(models, tmp_path, case):
    name, make, elements, boundary = SERIAL_CASES[case]
    atoms = make()
    ref = ensemble_reference(models[name], atoms)
    u = _lammps_force_sigma(tmp_path, models[name], atoms, elements, boundary=boundary)
    assert u.shape == (len(atoms), 3)
    dev = np.abs(u[:, 2] - ref["force_sigma"]).max()
    print(case, f"max |force sigma LAMMPS - Python| = {dev:.1e} eV/A")
    assert dev < TOL * max(1.0, ref["force_sigma"].max())
    np.testing.assert_allclose(u[:, 0], ref["sigma"], rtol=0, atol=TOL)
    np.testing.assert_allclose(u[:, 1], ref["lpr"], rtol=TOL)
    assert np.all(u[:, 2] > 0)


def test_lammps_force_sigma_in_md_and_units_real(models, tmp_path):
    """During NVE (atoms move and are re-neighboured), the force sigma of the last step equals
    the Python reference on the dumped positions; in `units real` it is in kcal/mol/A."""
    from lammps_helpers import METAL2REAL

    atoms = si_diamond((2, 2, 2), rattle=0.05, seed=4)
    dump = tmp_path / "f.dump"
    u = _lammps_force_sigma(tmp_path, models["si"], atoms, ["Si"], post=f"""
velocity all create 1500 4928 mom yes rot yes
timestep 0.002
fix nve all nve
neighbor 0.3 bin
neigh_modify every 1 delay 0 check yes
dump d all custom 10 {dump} id x y z c_uf[3]
dump_modify d sort id format float %.17g
run 20
""")
    lines = dump.read_text().splitlines()
    start = [k for k, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS")][-1] + 1
    table = np.array([[float(x) for x in ln.split()] for ln in lines[start:]])
    moved = atoms.copy()
    moved.positions = table[:, 1:4]
    ref = ensemble_reference(models["si"], moved)
    np.testing.assert_allclose(table[:, 4], ref["force_sigma"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(u[:, 2], ref["force_sigma"], rtol=0, atol=1e-9)
    # 3 dumped frames (steps 0, 10, 20)
    assert sum(ln.startswith("ITEM: TIMESTEP") for ln in lines) == 3

    still = si_diamond((2, 2, 2), rattle=0.08, seed=1)
    fs = _lammps_force_sigma(tmp_path, models["si"], still, ["Si"], units="real")[:, 2]
    np.testing.assert_allclose(fs, METAL2REAL * ensemble_reference(models["si"], still)["force_sigma"], rtol=1e-10)


def _last_frame(path):
    lines = path.read_text().splitlines()
    start = [k for k, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS")][-1] + 1
    return np.array([[float(x) for x in ln.split()] for ln in lines[start:]])


def test_several_outputs_on_one_step_and_a_repeated_timestep(models, tmp_path):
    """Two dumps and a thermo reduction read column [3] on the same step (the compute reuses the
    force sigma of that force evaluation); after displace_atoms, `run 0` at the same timestep
    number re-evaluates, and the force sigma follows the new positions, not the cached ones."""
    atoms = si_diamond((2, 2, 2), rattle=0.05, seed=6)
    dumps = [tmp_path / f"d{k}.dump" for k in range(4)]
    fmt = "dump_modify {} sort id format float %.17g"
    u = _lammps_force_sigma(tmp_path, models["si"], atoms, ["Si"], post=f"""
compute fmax all reduce max c_uf[3]
thermo_style custom step pe c_fmax
dump a all custom 1 {dumps[0]} id x y z c_uf[3]
dump b all custom 1 {dumps[1]} id c_uf[3]
{fmt.format("a")}
{fmt.format("b")}
run 0
undump a
undump b
displace_atoms all random 0.08 0.08 0.08 1234 units box
dump c all custom 1 {dumps[2]} id x y z c_uf[3]
dump d all custom 1 {dumps[3]} id c_uf[3]
{fmt.format("c")}
{fmt.format("d")}
run 0
""")
    first, second = _last_frame(dumps[0]), _last_frame(dumps[2])
    np.testing.assert_array_equal(_last_frame(dumps[1])[:, 1], first[:, 4])
    np.testing.assert_array_equal(_last_frame(dumps[3])[:, 1], second[:, 4])
    before = ensemble_reference(models["si"], atoms)["force_sigma"]
    moved = atoms.copy()
    moved.positions = second[:, 1:4]
    after = ensemble_reference(models["si"], moved)["force_sigma"]
    assert np.abs(after - before).max() > 1e-4  # the displacement changes the force sigma
    np.testing.assert_allclose(first[:, 4], before, rtol=0, atol=1e-9)
    np.testing.assert_allclose(second[:, 4], after, rtol=0, atol=1e-9)
    np.testing.assert_allclose(u[:, 2], after, rtol=0, atol=1e-9)


# the MPI cases of tests/test_lammps_mpi.py but the small periodic box
TWO_RANK_CASES = ["si_orthogonal_64", "sic_triclinic_shuffled_types", "rank_without_atoms_and_isolated_atom"]


@pytest.mark.mpi
@pytest.mark.skipif(not os.path.exists(MPIRUN) and shutil.which("mpirun") is None, reason="no mpirun")
@pytest.mark.parametrize("case", TWO_RANK_CASES)
def test_lammps_force_sigma_two_mpi_ranks(models, tmp_path, case):
    """Ghost atoms' member forces are summed onto their owners across ranks (reverse
    communication) before the spread is taken."""
    name, make, elements, boundary, pre = MPI_CASES[case]
    atoms = make()
    ref = ensemble_reference(models[name], atoms)
    data = write_data(atoms, tmp_path / "data.lmp", elements)
    dump = tmp_path / "f.dump"
    script = lammps_script(models[name], data, elements, boundary=boundary, pre=pre) + f"""
compute uf all llpr/atom forces yes
dump d all custom 1 {dump} id c_uf[1] c_uf[3]
dump_modify d sort id format float %.17g
run 0
"""
    proc = run_lmp(script, tmp_path, nprocs=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dump.read_text().splitlines()
    start = [k for k, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS")][0] + 1
    table = np.array([[float(x) for x in ln.split()] for ln in lines[start:]])
    assert list(table[:, 0].astype(int)) == list(range(1, len(atoms) + 1))
    dev = np.abs(table[:, 2] - ref["force_sigma"]).max()
    print(case, f"2 ranks: max |force sigma LAMMPS - Python| = {dev:.1e} eV/A")
    assert dev < TOL * max(1.0, ref["force_sigma"].max())
    np.testing.assert_allclose(table[:, 1], ref["sigma"], rtol=0, atol=TOL)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["no ensemble in the file", "unknown keyword", "forces without value",
                                  "forces not a boolean"])
def test_bad_force_sigma_input_is_a_lammps_error(models, tmp_path, kind):
    model, args = models["si"], "forces yes"
    if kind == "no ensemble in the file":
        model, want = models["plain"], "compute llpr/atom forces yes: the model file"
        want2 = "has no last-layer ensemble, which force uncertainties need; export it with `llpr export"
    elif kind == "unknown keyword":
        args, want = "force yes", "Illegal compute llpr/atom command: unknown keyword force"
        want2 = "compute ID group llpr/atom [forces yes|no]"
    elif kind == "forces without value":
        args, want, want2 = "forces", "Illegal compute llpr/atom command: forces needs yes or no", ""
    else:
        args, want, want2 = "forces maybe", "Expected boolean parameter instead of 'maybe'", ""
    data = write_data(si_diamond(seed=3), tmp_path / "si.data", ["Si"])
    script = f"""
units metal
atom_style atomic
read_data {data}
pair_style llpr {model} device cpu
pair_coeff * * Si
compute uf all llpr/atom {args}
dump d all custom 1 dump.out id c_uf[1]
run 0
"""
    assert_lammps_error_in_process(script, tmp_path, want, want2)


def test_plain_compute_needs_no_ensemble(models, tmp_path):
    """Without `forces yes` the compute has its two columns and works on files without an
    ensemble (nothing extra is computed)."""
    u = run_in_process(tmp_path, models["plain"], si_diamond(seed=5), ["Si"], collect=lambda lmp: atom_array(lmp, "u2"),
                       post="compute u2 all llpr/atom forces no\nrun 0")
    assert u.shape[1] == 2
