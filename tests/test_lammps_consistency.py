"""The proofs every kind of model must pass in LAMMPS, one parametrised test each over the model
kinds: "native" (llpr's LocalPotential, strictly local), "message_passing"
(tests/pairwise_model.py with message_passing=True: receptive field 2 x cutoff) and "mace"
(mace-torch, 2 interactions). Forces are minus the gradient of the LAMMPS energy (central
differences); NVE conserves energy the way velocity Verlet must; MD on N MPI ranks follows MD on
one rank. Each kind keeps its own structure, steps and bounds (set from what was measured for
that model). The model files are the session fixtures of tests/conftest.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lammps_helpers import (
    finite_difference_force_error,
    hot_md_finals,
    lammps_module_marks,
    lammps_results,
    lammps_script,
    nve_drift_and_oscillations,
    open_lammps_quiet,
    si_diamond,
    sic_triclinic,
    write_data,
)

pytestmark = lammps_module_marks()

FIXTURES = {"native": "native_lammps_models", "message_passing": "message_passing_models",
            "mace": "mace_lammps_models"}


def model_file(request, kind, name):
    """The exported file `name` ("si" or "sic") of model kind `kind`."""
    models = request.getfixturevalue(FIXTURES[kind])
    return models[name]["file"] if kind == "mace" else models[name]


# kind: (seed of sic_triclinic, the atom IDs differentiated, the smallest largest |force| that
# makes the check worth doing (None: not asserted))
FINITE_DIFFERENCES = {
    "native": (7, (1, 6, 11), None),
    # a triclinic cell smaller than the receptive field: a force left on a ghost image, or a
    # missing second-shell edge, shows here
    "message_passing": (45, (1, 8), 0.1),
    "mace": (55, (2, 9), 0.05),
}


@pytest.mark.parametrize("kind", list(FINITE_DIFFERENCES))
def test_forces_are_minus_energy_gradient(request, tmp_path, kind):
    seed, atom_ids, least_force = FINITE_DIFFERENCES[kind]
    if kind == "mace":
        pytest.importorskip("mace", reason="mace-torch is not installed (pip install llpr[mace])")
    atoms = sic_triclinic(seed=seed)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si", "C"])
    lmp = open_lammps_quiet()
    h = 1e-4
    try:
        lmp.commands_string(lammps_script(model_file(request, kind, "sic"), data, ["Si", "C"], post="run 0"))
        if least_force is not None:
            assert np.abs(lammps_results(lmp)["forces"]).max() > least_force  # forces worth differentiating
        worst = finite_difference_force_error(lmp, atom_ids, h)
        print(f"{kind}: max |F - (-dE/dx)_FD| = {worst:.2e} eV/A (h = {h} A)")
        # central differences: O(h^2) truncation (~1e-9 here) + rounding 1e-16 * |E| / h
        assert worst < 1e-6
    finally:
        lmp.close()


# kind: (structure, steps of 1 fs, bound on the drift, bound on the 1 fs oscillation, eV/atom;
# math.inf: only the dt^2 criterion)
NVE = {
    # 64 Si atoms, 1 ps; the bounds are ~20x the values measured for this model
    "native": (lambda: si_diamond((2, 2, 2), rattle=0.05, seed=3), 1000, 1e-6, 1e-6),
    # 64 Si atoms, 0.5 ps, with neighbour-list rebuilds (ghost lists included); ~20x the measured values
    "message_passing": (lambda: si_diamond((2, 2, 2), rattle=0.05, seed=3), 500, 2e-5, 3e-3),
    # 8 Si atoms, 0.1 ps
    "mace": (lambda: si_diamond(rattle=0.05, seed=56), 100, math.inf, math.inf),
}


@pytest.mark.parametrize("kind", list(NVE))
def test_nve_energy_conservation(request, tmp_path, kind):
    """NVE at 300 K, velocity Verlet: the run in 1 fs steps and the same time again in 0.5 fs
    steps (see lammps_helpers.nve_drift_and_oscillations): the oscillation drops ~4x with dt^2
    (a force that is not the energy's gradient gives an error that does not shrink with dt),
    the drift stays below it, and both stay below the kind's absolute bounds."""
    make, nsteps, max_drift, max_oscillation = NVE[kind]
    if kind == "mace":
        pytest.importorskip("mace", reason="mace-torch is not installed (pip install llpr[mace])")
    atoms = make()
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    drift, amp1, amp2 = nve_drift_and_oscillations(model_file(request, kind, "si"), data, len(atoms), nsteps)
    assert 3.0 < amp1 / amp2 < 5.0
    assert drift < amp1
    assert drift < max_drift and amp1 < max_oscillation


# kind: (structure, steps, the rank counts compared, the ghost atom cutoff LAMMPS must report
# (None: not asserted))
N_RANKS = {
    # 200 steps of hot NVE, 2 ranks
    "native": (lambda: si_diamond((2, 2, 2), rattle=0.1, seed=26), 200, (1, 2), None),
    # 3 ranks: ghosts made through several ranks and periodic images, each rank with two
    # different neighbours along x; receptive field 8 A + skin 0.5 A
    "message_passing": (lambda: si_diamond((2, 2, 2), rattle=0.1, seed=46), 100, (1, 3), "8.5"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("kind", list(N_RANKS))
def test_md_on_n_ranks_follows_one_rank(request, tmp_path, kind):
    """Hot NVE with neighbour lists rebuilt whenever needed and atoms migrating between ranks
    (lammps_helpers.hot_md_finals): the N-rank trajectory's final energies and global sigma
    match the 1-rank ones (up to summation-order round-off)."""
    import os
    import shutil

    from lammps_helpers import MPIRUN

    if not os.path.exists(MPIRUN) and shutil.which("mpirun") is None:
        pytest.skip("no mpirun")
    make, nsteps, ranks, ghost_cutoff = N_RANKS[kind]
    data = write_data(make(), tmp_path / "data.lmp", ["Si"])
    finals, outputs = hot_md_finals(model_file(request, kind, "si"), data, nsteps, tmp_path, ranks)
    if ghost_cutoff is not None:
        assert all(f"ghost atom cutoff = {ghost_cutoff}\n" in out for out in outputs)
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-8, atol=1e-8)
