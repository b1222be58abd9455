"""Property test of `fix llpr/record` + `llpr reweight`: random LAMMPS sessions (1-3 runs, the
ensemble's K changed between runs or not, thermo_modify norm on or off per run and reset by a
later thermo_style, reset_timestep, units metal or real, an averaged value offered to the fix
or not) either reweight to exactly what the member energies computed directly in Python give,
or end in an error. Never a third outcome.

"Directly": every recorded step is also dumped; the Python reference (the exported file run
with vesin neighbour lists) gives the members' energy deviations dE_k and the mean model's
energy of each dumped frame, and llpr.lammps.reweight.reweight_observable reweights those arrays."""

from __future__ import annotations

import numpy as np
import pytest

from lammps_helpers import (
    METAL2REAL,
    assert_lammps_error_in_process,
    lammps_module_marks,
    make_model,
    open_lammps_quiet,
    reference,
    si_diamond,
    write_data,
)
from test_lammps_ensemble import ensemble_reference

pytestmark = lammps_module_marks()

K_FIRST, K_OTHER = 4, 7


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    d = tmp_path_factory.mktemp("record_property")
    atoms = si_diamond((1, 1, 1), rattle=0.1, seed=3)
    return {
        "models": {K_FIRST: make_model(d / "k4.pt", seed=2, ensemble=K_FIRST, ensemble_seed=1),
                   K_OTHER: make_model(d / "k7.pt", seed=2, ensemble=K_OTHER, ensemble_seed=2)},
        "atoms": atoms,
        "data": write_data(atoms, d / "data.lmp", ["Si"]),
    }


def _scenario(seed):
    rng = np.random.default_rng(seed)
    runs = []
    for r in range(int(rng.integers(1, 4))):
        runs.append({
            "K": K_FIRST if r == 0 or rng.random() < 0.6 else K_OTHER,
            "norm": bool(rng.random() < 0.5),
            "thermo_style_after_norm": bool(rng.random() < 0.3),
            "reset": bool(r > 0 and rng.random() < 0.25),
            "steps": int(rng.choice([9, 12])),
        })
    # the model runs as long as K is unchanged: a change of K is a new pair_style and compute
    for r in range(1, len(runs)):
        if runs[r]["K"] != runs[r - 1]["K"]:
            runs[r]["new_model"] = True
    return {"units": "real" if rng.random() < 0.4 else "metal", "every": int(rng.choice([2, 3])),
            "temperature": float(rng.uniform(700, 1300)), "averaged": bool(rng.random() < 0.2), "runs": runs}


def _read_dump(path):
    """Frames of a dump custom id type x y z file, sorted by id: [(step, positions (N, 3))]."""
    frames, lines = [], open(path).read().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("ITEM: TIMESTEP"):
            step = int(lines[k + 1])
            n = int(lines[k + 3])
            rows = np.array([[float(x) for x in line.split()] for line in lines[k + 9:k + 9 + n]])
            rows = rows[np.argsort(rows[:, 0])]
            frames.append((step, rows[:, 2:5]))
            k += 9 + n
        else:
            k += 1
    return frames


def _run_session(s, setting, folder):
    """Run the scenario in LAMMPS; returns the expected recorded (run, step) sequence with the
    frames' positions, or raises the LAMMPS error."""
    units, every = s["units"], s["every"]
    lmp = open_lammps_quiet()
    expected = []
    try:
        lmp.commands_string(f"""
units {units}
atom_style atomic
atom_modify map array
read_data {setting['data']}
pair_style llpr {setting['models'][s['runs'][0]['K']]}
pair_coeff * * Si
compute ens all llpr ensemble yes max no
variable rho equal density
velocity all create {s['temperature']} 4928 mom yes rot yes
fix nvt all nvt temp {s['temperature']} {s['temperature']} {0.05 if units == 'metal' else 50.0}
timestep {0.001 if units == 'metal' else 1.0}
""")
        extra = ""
        if s["averaged"]:
            lmp.command(f"fix avg all ave/time 1 {every} {every} c_thermo_pe")
            extra = " f_avg"
        lmp.command(f"fix rec all llpr/record {every} {folder}/md.rec ens v_rho{extra}")
        step, last = 0, None
        for r, run in enumerate(s["runs"]):
            if run.get("new_model"):
                lmp.commands_string(f"pair_style llpr {setting['models'][run['K']]}\npair_coeff * * Si\n"
                                    "uncompute ens\ncompute ens all llpr ensemble yes max no")
            if run["reset"]:
                lmp.command("reset_timestep 0")
                step, last = 0, None
            lmp.command(f"thermo_modify norm {'yes' if run['norm'] else 'no'}")
            if run["thermo_style_after_norm"]:
                lmp.command("thermo_style custom step temp pe")  # resets norm (LAMMPS warns)
            lmp.command(f"dump d{r} all custom {every} {folder}/dump{r}.txt id type x y z")
            lmp.command(f"dump_modify d{r} sort id format float %.20g")
            lmp.command(f"run {run['steps']}")
            lmp.command(f"undump d{r}")
            frames = dict(_read_dump(f"{folder}/dump{r}.txt"))
            for t in range(step, step + run["steps"] + 1):
                if t % every == 0 and t != last:
                    expected.append((r, t, frames[t]))
                    last = t
            step += run["steps"]
    finally:
        lmp.close()
    return expected


def _direct(s, setting, expected, runs):
    """dE (T, K) and the energy pe (T,) of the expected frames of the runs `runs`, from the
    Python reference, in the session's units."""
    atoms = setting["atoms"].copy()
    factor = METAL2REAL if s["units"] == "real" else 1.0
    dE, pe = [], []
    for r, _, positions in expected:
        if r in runs:
            atoms.positions = positions
            model = setting["models"][s["runs"][r]["K"]]
            dE.append(ensemble_reference(model, atoms)["energy_deviations"] * factor)
            pe.append(reference(model, atoms)["energy"] * factor)
    return np.array(dE), np.array(pe)


# seeds that cover: an averaged value, K changed (and changed back), reset_timestep, units real
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 8])
def test_record_reweights_exactly_or_refuses(setting, tmp_path, seed):
    from llpr.lammps.reweight import read_record, reweight_observable, reweight_record

    s = _scenario(seed)
    try:
        expected = _run_session(s, setting, tmp_path)
    except Exception as err:  # LAMMPS refused the session: only an averaged value may cause that
        assert s["averaged"], err
        assert "which averages over time; reweighting needs instantaneous values" in str(err)
        return
    assert not s["averaged"], "an averaged value was recorded without an error"
    segments = read_record(tmp_path / "md.rec")
    steps = np.concatenate([seg.steps for seg in segments])
    assert list(steps) == [t for _, t, _ in expected]
    T = s["temperature"]
    Ks = {run["K"] for run in s["runs"]}

    def check(result, runs):
        """The record's reweighting of v_rho (a configuration observable) and pe (with the members'
        own energies) equals that of the directly computed member energies."""
        dE, pe = _direct(s, setting, expected, runs)
        rho = np.concatenate([seg.column("v_rho") for seg in segments if seg.index - 1 in runs])
        rec_dE = np.concatenate([seg.column("dE") for seg in segments if seg.index - 1 in runs])
        rec_pe = np.concatenate([seg.column("pe") for seg in segments if seg.index - 1 in runs])
        np.testing.assert_allclose(rec_dE, dE, rtol=0, atol=1e-10 * max(1.0, np.abs(dE).max()))
        np.testing.assert_allclose(rec_pe, pe, rtol=0, atol=1e-10 * max(1.0, np.abs(pe).max()))
        assert result.units == s["units"] and result.members == dE.shape[1]
        for name, values, members in (("v_rho", rho, None), ("pe", pe, dE)):
            ref = reweight_observable(dE, values, T, s["units"], member_deviations=members)
            got = result.observables[name]
            for est in ("direct", "cea"):
                np.testing.assert_allclose(got.members[est], ref.members[est], rtol=1e-9, atol=1e-9, err_msg=name)

    # a run records one segment
    assert len(segments) == len(s["runs"])
    for seg, run in zip(segments, s["runs"]):
        assert seg.header["members"] == run["K"] and seg.header["units"] == s["units"]
    frames = len(expected)
    if frames < 4:
        return
    try:
        result = reweight_record(T, tmp_path / "md.rec", observables=["v_rho", "pe"], warn=False)
    except ValueError as err:
        assert len(Ks) > 1, f"refused a consistent record: {err}"
        assert "cannot be reweighted together" in str(err) or "different models" in str(err)
        for r in range(len(s["runs"])):
            if segments[r].data.shape[0] >= 4:
                check(reweight_record(T, tmp_path / "md.rec", run=r + 1, observables=["v_rho", "pe"], warn=False),
                      {r})
        return
    assert len(Ks) == 1, "mixed ensembles were reweighted together"
    check(result, set(range(len(s["runs"]))))


RESTART = """
units metal
atom_style atomic
atom_modify map array
{read}
pair_style llpr {model}
pair_coeff * * Si
compute ens all llpr ensemble yes max no
fix nvt all nvt temp 900 900 0.05
timestep 0.001
fix rec all llpr/record 2 {rec} ens append {append}
"""


def test_record_continues_through_a_restart_file(setting, tmp_path):
    """run 20 against run 10 + write_restart, then read_restart in a new LAMMPS with the fix
    appending to the same record: the same steps, each recorded once, the same values, and
    llpr reweight reads the two runs as one trajectory."""
    from llpr.lammps.reweight import read_record, reweight_record

    model = setting["models"][K_FIRST]

    def session(read, append, commands):
        lmp = open_lammps_quiet()
        try:
            lmp.commands_string(RESTART.format(read=read, model=model, rec=tmp_path / f"{append}.rec",
                                               append="yes" if append == "restarted" else "no") + commands)
        finally:
            lmp.close()

    start = f"read_data {setting['data']}\nvelocity all create 900 4928 mom yes rot yes"
    session(start, "whole", "run 20")
    session(start, "restarted", f"run 10\nwrite_restart {tmp_path}/md.restart")
    session(f"read_restart {tmp_path}/md.restart", "restarted", "run 10")
    (whole,) = read_record(tmp_path / "whole.rec")
    parts = read_record(tmp_path / "restarted.rec")
    assert [list(p.steps) for p in parts] == [[0, 2, 4, 6, 8, 10], [12, 14, 16, 18, 20]]
    assert not parts[0].header["continues"] and parts[1].header["continues"] and parts[1].header["segment"] == 2
    joined = np.concatenate([p.data for p in parts])
    np.testing.assert_allclose(joined, whole.data, rtol=1e-9, atol=1e-9)
    # a restarted run that would overwrite its own record without append yes is refused
    with pytest.raises(Exception, match="this run continues one recorded .1 run.s. up to step 10. before the restart "
                                        "file was written, and .*restarted.rec exists: add append yes"):
        lmp = open_lammps_quiet()
        try:
            lmp.commands_string(RESTART.format(read=f"read_restart {tmp_path}/md.restart", model=model,
                                               rec=tmp_path / "restarted.rec", append="no") + "run 10")
        finally:
            lmp.close()
    assert read_record(tmp_path / "restarted.rec")[0].steps[0] == 0  # untouched
    a = reweight_record(900, tmp_path / "whole.rec", observables=["pe"], warn=False).observables["pe"]
    b = reweight_record(900, tmp_path / "restarted.rec", observables=["pe"], warn=False).observables["pe"]
    np.testing.assert_allclose(b.members["cea"], a.members["cea"], rtol=1e-8)


@pytest.mark.parametrize("fix, wants", [
    ("fix rec few llpr/record 2 r.rec ens", ["records whole-system values", "use group all, not few"]),
    ("fix rec all llpr/record 0 r.rec ens", ["N must be a positive number of steps, not 0"]),
    ("fix rec all llpr/record 2 r.rec nothing", ["compute nothing does not exist",
                                                 "compute nothing all llpr ensemble yes"]),
    ("fix rec all llpr/record 2 r.rec plain", ["compute plain is a compute llpr, not a compute llpr with ensemble yes"]),
    ("fix rec all llpr/record 2 r.rec part", ["compute part gives the energy deviations of group few",
                                              "need those of the whole system"]),
    ("fix rec all llpr/record 2 r.rec ens pe", ["pe is not a value", "pe, press, vol and the pressure tensor are "
                                                                      "always recorded"]),
    ("fix rec all llpr/record 2 r.rec ens c_rdf[*]", ["wildcards are not expanded"]),
    ("fix rec all llpr/record 2 r.rec ens c_rdf[9]", ["c_rdf[9]: compute rdf has 3 columns"]),
    ("fix rec all llpr/record 2 r.rec ens v_nothing", ["variable nothing of v_nothing does not exist"]),
    ("fix avg all ave/time 1 2 2 c_thermo_pe\nfix rec all llpr/record 2 r.rec ens f_avg",
     ["f_avg comes from fix avg (style ave/time), which averages over time", "needs instantaneous values"]),
    ("fix b all llpr/bias tau 0.2\nfix rec all llpr/record 2 r.rec ens",
     ["fix b (llpr/bias) biases the dynamics", "cannot be reweighted to its members; unfix b"]),
    ("fix sp all ave/time 3 1 3 c_thermo_pe\nfix rec all llpr/record 3 r.rec ens f_sp",
     ["f_sp comes from fix sp (style ave/time)", "record the compute or variable it averages instead"]),
])
def test_fix_refusals_are_clear(setting, tmp_path, fix, wants):
    assert_lammps_error_in_process(f"""units metal
atom_style atomic
read_data {setting['data']}
pair_style llpr {setting['models'][K_FIRST]}
pair_coeff * * Si
group few id 1 2 3
compute ens all llpr ensemble yes
compute plain all llpr
compute part few llpr ensemble yes
compute rdf all rdf 10
{fix}
run 2
""", tmp_path, "ERROR", *wants)
