"""fix llpr/bias, the `tau relative` controller across runs: a run split in two (`run N; run M`),
split by `reset_timestep`, or split by write_restart / read_restart in a new LAMMPS instance
follows the uninterrupted run; and minimize, which sees the bias through pe only."""

from __future__ import annotations

import numpy as np
import pytest

from lammps_helpers import (
    lammps_module_marks,
    lammps_script,
    make_model,
    open_lammps_quiet,
    printed_values,
    run_lmp,
    si_diamond,
    write_data,
)

pytestmark = lammps_module_marks()

# measured every 5 steps, averaged over about 20, switched on 20 steps after the first
# measurement; the split is on a measuring step after that, where the new tau is not yet used
CONTROLLER = "fix b all llpr/bias tau relative 0.3 every 5 hist 20 delay 20"
NSTEPS, SPLIT = 80, 50
MD = """
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
timestep 0.001
fix nve all nve
{fix}
fix_modify b energy yes
thermo_style custom step pe etotal f_b f_b[2]
thermo 10
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("bias_controller")
    model = make_model(d / "si.pt", species=(14,), seed=0)
    data = write_data(si_diamond((2, 2, 2), rattle=0.1, seed=37), d / "data.lmp", ["Si"])
    return model, data


def _state(lmp, fix):
    """Positions, velocities, forces (sorted by ID), pe, and the fix's scalar and vector."""
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR, LMP_TYPE_VECTOR

    n = lmp.extract_global("nlocal")
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    out = {key: np.array(lmp.numpy.extract_atom(key)[:n][order]) for key in ("x", "v", "f")}
    lo, hi = lmp.extract_box()[:2]
    out["box"] = np.array(hi) - np.array(lo)
    out["pe"] = lmp.get_thermo("pe")
    out["e_bias"] = lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR)
    # sigma_E, tau, s(sigma_E) (and <|F|>, <|g|> with tau relative)
    size = 5 if "relative" in fix else 3
    out["vector"] = np.array([lmp.extract_fix("b", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR, i) for i in range(size)])
    return out


def _run(setup, commands, fix=CONTROLLER):
    """Hot NVE from the test structure with fix b, then `commands`; the final state."""
    model, data = setup
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, data, ["Si"], post="velocity all create 1500 4711 mom yes rot yes\n"
                                          + MD.format(fix=fix)))
        lmp.commands_string(commands)
        return _state(lmp, fix)
    finally:
        lmp.close()


@pytest.fixture(scope="module")
def uninterrupted(setup):
    return {"relative": _run(setup, f"run {NSTEPS}"),
            "midway": _run(setup, f"run {SPLIT}"),
            "fixed": _run(setup, f"run {NSTEPS}", fix="fix b all llpr/bias tau 0.4")}


def _assert_same(got, want, tol=1e-9):
    # positions up to periodic images (a restart file holds them wrapped into the box)
    shift = got["x"] - want["x"]
    shift -= want["box"] * np.round(shift / want["box"])
    assert np.abs(shift).max() < tol * np.abs(want["x"]).max(), np.abs(shift).max()
    for key in ("v", "f"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=tol * np.abs(want[key]).max(), err_msg=key)
    for key in ("pe", "e_bias"):
        assert abs(got[key] - want[key]) <= tol * max(1.0, abs(want[key])), (key, got[key], want[key])
    np.testing.assert_allclose(got["vector"], want["vector"], rtol=tol, atol=0, err_msg="sigma, tau, s, <|F|>, <|g|>")


def test_controller_is_on_and_moving_at_the_split(uninterrupted):
    """The cases below test something: tau is set at the split and changes after it."""
    midway, end = uninterrupted["midway"]["vector"][1], uninterrupted["relative"]["vector"][1]
    print("tau at the split", midway, "at the end", end)
    assert midway > 0.0 and abs(end - midway) > 1e-3 * midway


def test_two_runs_follow_one(setup, uninterrupted):
    """`run 50; run 30` is `run 80`: the setup of the second run re-evaluates step 50 with the tau
    of step 50 and does not measure it again."""
    got = _run(setup, f"run {SPLIT}\nrun {NSTEPS - SPLIT}")
    print("tau", got["vector"][1], "against", uninterrupted["relative"]["vector"][1])
    _assert_same(got, uninterrupted["relative"])


def test_run_zero_between_runs_changes_nothing(setup, uninterrupted):
    """`run 0` between the parts (a setup, no MD step) neither measures nor moves the schedule."""
    _assert_same(_run(setup, f"run {SPLIT}\nrun 0\nrun 0\nrun {NSTEPS - SPLIT}"), uninterrupted["relative"])


def test_reset_timestep_keeps_the_controller_going(setup, uninterrupted):
    """`run 50; reset_timestep 0; run 30` is `run 80`: the controller counts the steps it has
    seen, so a timestep that goes back neither freezes tau nor shifts its measurements."""
    got = _run(setup, f"run {SPLIT}\nreset_timestep 0\nrun {NSTEPS - SPLIT}")
    print("tau", got["vector"][1], "against", uninterrupted["relative"]["vector"][1])
    _assert_same(got, uninterrupted["relative"])


def _restarted(model, restart, fix, commands):
    """The state after `read_restart`, the same pair style, MD and `fix`, then `commands`, in a new
    LAMMPS instance."""
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(f"""
read_restart {restart}
pair_style llpr {model} device cpu
pair_coeff * * Si
""" + MD.format(fix=fix) + commands)
        return _state(lmp, fix)
    finally:
        lmp.close()


@pytest.mark.parametrize("kind", ["relative", "fixed"])
def test_restart_continues_the_run(setup, uninterrupted, tmp_path, kind):
    """`run 50; write_restart` then, in a new LAMMPS instance, `read_restart`, the same pair
    style and fixes, `run 30`: the run 80 steps long, with tau and the running averages of tau
    relative from the restart file."""
    model, data = setup
    fix = CONTROLLER if kind == "relative" else "fix b all llpr/bias tau 0.4"
    restart = tmp_path / "half.restart"
    _run(setup, f"run {SPLIT}\nwrite_restart {restart}", fix=fix)
    got = _restarted(model, restart, fix, f"run {NSTEPS - SPLIT}")
    print("tau", got["vector"][1], "against", uninterrupted[kind]["vector"][1])
    _assert_same(got, uninterrupted[kind])


def test_restart_of_a_fixed_tau_into_tau_relative_starts_afresh(setup, tmp_path):
    """A restart file written with a fixed tau has no controller state: tau relative starts
    afresh, from tau 0 (not from the fixed tau)."""
    model, _ = setup
    restart = tmp_path / "fixed.restart"
    _run(setup, f"run 10\nwrite_restart {restart}", fix="fix b all llpr/bias tau 0.4")
    got = _restarted(model, restart, CONTROLLER, "run 5")
    assert got["vector"][1] == 0.0


def test_restart_of_tau_relative_into_a_fixed_tau_warns(setup, tmp_path):
    """A fixed tau has no use for the controller's state in the file: its own tau holds, and a
    warning says the state is not used."""
    model, _ = setup
    _run(setup, f"run 10\nwrite_restart {tmp_path / 'relative.restart'}")
    proc = run_lmp(f"""
read_restart relative.restart
pair_style llpr {model} device cpu
pair_coeff * * Si
fix b all llpr/bias tau 0.4
run 0
print "TAU $(f_b[2]:%.17g)"
""", tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "the restart file holds the state of a tau relative controller, which a fixed tau does not use" in out
    assert printed_values(proc, "TAU") == [0.4]


# ------------------------------------------------------------------ minimize
def test_minimize_with_the_bias_energy_lowers_the_biased_energy(setup):
    """With fix_modify energy yes the minimizer's energy is E + E_bias, whose gradient the biased
    forces are: CG runs its iterations (no stop at the first step) and lowers E + E_bias."""
    model, data = setup
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, data, ["Si"], post="""
fix b all llpr/bias tau 0.5
fix_modify b energy yes
run 0
"""))
        before = lmp.get_thermo("pe")
        lmp.command("minimize 0 1e-8 50 500")
        after = lmp.get_thermo("pe")
        iterations = lmp.extract_global("ntimestep")
    finally:
        lmp.close()
    print(f"pe (E + E_bias) {before:.6f} -> {after:.6f} eV in {iterations} iterations")
    assert iterations > 3 and after < before - 1e-3
