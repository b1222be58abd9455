"""`compute llpr ensemble yes [virial yes]`: the members' energy deviations of a group and the
members' pressure deviations, against the Python reference and against member files run
directly (llpr.lammps.reweight.export_member); the same numbers on 1 and 2 MPI ranks, with a group
that one rank owns none of and an empty group; the compute's refusals; fix llpr/record and
`llpr reweight` on the record of a real run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lammps_helpers import (
    BIN,
    METAL2REAL,
    MPIRUN,
    NKTV2P_METAL,
    lammps_module_marks,
    lammps_script,
    open_lammps_quiet,
    run_lmp,
    si_diamond,
    write_data,
)
from test_lammps_ensemble import ensemble_reference

pytestmark = lammps_module_marks()

K, SEED, MEMBER = 8, 5, 3
NKTV2P_REAL = 68568.415  # LAMMPS update.cpp, units real


@pytest.fixture(scope="module")
def files(small_llpr, exported_path, tmp_path_factory):
    """The mean model with a K-member ensemble, member MEMBER of it as a file of its own, a
    file without an ensemble, and a 64-atom Si cell."""
    from llpr.modelfile import export_model
    from llpr.lammps.reweight import export_member

    d = tmp_path_factory.mktemp("observables")
    atoms = si_diamond((2, 2, 2), rattle=0.08, seed=11)
    return {
        "mean": export_model(small_llpr, str(d / "mean.pt"), ensemble=K, seed=SEED),
        "member": export_member(small_llpr, str(d / "member.pt"), MEMBER, K, SEED),
        "plain": exported_path,
        "atoms": atoms,
        "data": write_data(atoms, d / "data.lmp", ["Si"]),
        "dir": d,
    }


def _values(lmp, names):
    return np.array([lmp.extract_variable(n) if n.startswith("v_") else lmp.get_thermo(n) for n in names])


def _run0(files, model, units="metal"):
    """run 0 in-process: pe, press and its tensor, and the vectors of the ensemble computes."""
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    region = 0.45 * files["atoms"].cell[2, 2]
    post = f"""
region top block INF INF INF INF {region} INF
group top region top
group nobody empty
compute e all llpr ensemble yes
compute et top llpr ensemble yes
compute en nobody llpr ensemble yes
compute v all llpr ensemble yes virial yes
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz c_e[1] c_v[4]
run 0
""" if model == files["mean"] else "thermo_style custom step pe press pxx pyy pzz pxy pxz pyz\nrun 0\n"
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, files["data"], ["Si"], units=units, post=post))
        out = {"thermo": _values(lmp, ["pe", "press", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]),
               "vol": lmp.get_thermo("vol")}
        if model == files["mean"]:
            for c in ("e", "et", "en", "v"):
                out[c] = np.array(lmp.numpy.extract_compute(c, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR))
        return out
    finally:
        lmp.close()


def test_energy_and_pressure_deviations_match_python(files):
    """dE_k = dw_k . s of the group's summed features (group all, a region, an empty group) and
    the members' pressure deviations nktv2p dW_k / V, in units metal and real."""
    atoms = files["atoms"]
    ref = ensemble_reference(files["mean"], atoms)
    from llpr.modelfile import load_exported

    head = load_exported(files["mean"]).head
    feats = torch.tensor(ref["features"])
    metal = _run0(files, files["mean"])
    top = np.nonzero(atoms.get_positions(wrap=True)[:, 2] >= 0.45 * atoms.cell[2, 2])[0]
    assert 0 < top.size < len(atoms)
    want = {"e": ref["energy_deviations"], "et": head.ensemble_energy_deviations(feats[top].sum(0)).numpy()}
    assert metal["e"].shape == (3 + K,) and metal["v"].shape == (3 + 8 * K,)
    for c in ("e", "et"):
        np.testing.assert_allclose(metal[c][3:], want[c], rtol=0, atol=1e-10 * max(1.0, np.abs(want[c]).max()))
    assert np.all(metal["en"] == 0.0)  # empty group: s = 0, so every dE_k is 0 (and sigma too)
    np.testing.assert_allclose(metal["v"][3:3 + K], metal["e"][3:], rtol=0, atol=1e-12)
    assert np.abs(want["e"]).max() > 1e-3 and np.abs(want["e"] - want["et"]).max() > 1e-4  # the groups differ
    # pressure deviations: scalar then xx yy zz xy xz yz per member
    dW = ref["virial_deviations"]  # (K, 3, 3), eV
    tensor = NKTV2P_METAL / metal["vol"] * np.stack([dW[:, 0, 0], dW[:, 1, 1], dW[:, 2, 2], dW[:, 0, 1], dW[:, 0, 2],
                                                     dW[:, 1, 2]], axis=1)
    got_p = metal["v"][3 + K:3 + 2 * K]
    got_t = metal["v"][3 + 2 * K:].reshape(K, 6)
    scale = max(1.0, np.abs(tensor).max())
    np.testing.assert_allclose(got_t, tensor, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(got_p, tensor[:, :3].mean(axis=1), rtol=0, atol=1e-10 * scale)
    # the core's binding gives the compute's numbers
    from llpr._core import Model

    core = Model(files["mean"]).ensemble_energy_deviations(ref["features"].sum(0))
    np.testing.assert_allclose(core, want["e"], rtol=0, atol=1e-12 * max(1.0, np.abs(want["e"]).max()))

    real = _run0(files, files["mean"], units="real")
    np.testing.assert_allclose(real["e"][3:], METAL2REAL * want["e"], rtol=1e-10, atol=1e-10)
    tensor_real = NKTV2P_REAL / real["vol"] * METAL2REAL * tensor * metal["vol"] / NKTV2P_METAL
    np.testing.assert_allclose(real["v"][3 + 2 * K:].reshape(K, 6), tensor_real, rtol=1e-9, atol=1e-9 * scale)


def test_member_file_equals_mean_plus_deviations(files):
    """Member k exported as a model of its own (read-out w + dw_k) gives, run directly, the
    mean model's potential energy plus dE_k and its pressure (and tensor) plus dP_k."""
    mean = _run0(files, files["mean"])
    member = _run0(files, files["member"])
    k = MEMBER - 1
    dE = mean["e"][3 + k]
    dP = mean["v"][3 + K + k]
    dT = mean["v"][3 + 2 * K + 6 * k: 3 + 2 * K + 6 * k + 6]
    assert abs(dE) > 1e-4 and abs(dP) > 1e-2  # the member differs from the mean model
    np.testing.assert_allclose(member["thermo"][0], mean["thermo"][0] + dE, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(member["thermo"][1], mean["thermo"][1] + dP, rtol=1e-10, atol=1e-6)
    np.testing.assert_allclose(member["thermo"][2:], mean["thermo"][2:] + dT, rtol=1e-10, atol=1e-6)


@pytest.mark.parametrize("kind", ["no ensemble in the file", "virial of a group", "virial without ensemble",
                                  "unknown keyword", "before pair_style", "pair_style changed"])
def test_refusals_are_clear(files, kind):
    before, after, model = "", "", files["mean"]
    if kind == "no ensemble in the file":
        model, after = files["plain"], "compute e all llpr ensemble yes"
        wants = ["compute llpr ensemble yes: the model file", "has no last-layer ensemble, which member energy "
                 "deviations need; export it with `llpr export llpr.ckpt --ensemble 32"]
    elif kind == "virial of a group":
        after = "group few id 1 2 3\ncompute v few llpr ensemble yes virial yes"
        wants = ["compute llpr virial yes: the members' virial is that of the whole system", "not of group few",
                 "use group all"]
    elif kind == "virial without ensemble":
        after = "compute v all llpr virial yes"
        wants = ["virial yes adds the ensemble members' pressures", "use ensemble yes virial yes"]
    elif kind == "unknown keyword":
        after = "compute v all llpr members yes"
        wants = ["Illegal compute llpr command: unknown keyword members",
                 "compute ID group llpr [ensemble yes|no] [virial yes|no]"]
    elif kind == "before pair_style":
        before = "compute e all llpr ensemble yes"
        wants = ["compute llpr ensemble yes needs pair_style llpr defined first", "put the compute after pair_style"]
    else:
        after = (f"compute e all llpr ensemble yes\nthermo_style custom step c_e[4]\npair_style llpr "
                 f"{files['plain']} device cpu\npair_coeff * * Si\nrun 0")
        wants = ["compute e llpr ensemble yes: its vector was laid out for the 8 members of", "now runs",
                 "with 0 members; define the compute again after pair_style"]
    lmp = open_lammps_quiet()
    try:
        with pytest.raises(Exception) as err:
            lmp.commands_string(f"""units metal
atom_style atomic
read_data {files['data']}
{before}
pair_style llpr {model} device cpu
pair_coeff * * Si
{after}
""")
    finally:
        lmp.close()
    message = str(err.value)
    assert message.startswith("ERROR") and all(w in message for w in wants), message


# ------------------------------------------------------------------------------ MPI and MD
MD = """
region left block INF {left} INF INF INF INF
group left region left
group nobody empty
compute e all llpr ensemble yes
compute el left llpr ensemble yes
compute en nobody llpr ensemble yes
compute v all llpr ensemble yes virial yes
compute rdf all rdf 40
velocity all create 900 4928 mom yes rot yes
fix nvt all nvt temp 900 900 0.05
timestep 0.001
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
thermo_style custom step pe press vol c_e[*] c_el[*] c_en[*] c_v[*]
thermo_modify format float %.17g
thermo 1
fix all all ave/time 1 1 1 c_e[*] c_el[*] c_en[*] c_v[*] file all.dat format " %.17g"
fix rec all llpr/record 2 md.rec v c_rdf[1] c_rdf[2]
run 60
"""


@pytest.fixture(scope="module")
def md_runs(files):
    """60 steps of NVT at 900 K on 1 and on 2 ranks (processors 2 1 1) from one data file."""
    if not os.path.exists(MPIRUN) and shutil.which("mpirun") is None:
        pytest.skip("no mpirun")
    left = 0.2 * files["atoms"].cell[0, 0]  # rank 0's half only: rank 1 owns none of group left
    runs = {}
    for nprocs in (1, 2):
        d = files["dir"] / f"md{nprocs}"
        d.mkdir(exist_ok=True)
        pre = "processors 2 1 1" if nprocs == 2 else ""
        script = lammps_script(files["mean"], files["data"], ["Si"], pre=pre) + MD.format(left=left)
        proc = run_lmp(script, d, nprocs=nprocs)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[nprocs] = d
    return runs


def _columns(path):
    """The columns of a fix ave/time file in scalar mode: {name: values}."""
    with open(path) as fh:
        names = [line[1:].split() for line in fh if line.startswith("#")][-1]
    data = np.loadtxt(path, ndmin=2)
    return {name: data[:, k] for k, name in enumerate(names)}


@pytest.mark.mpi
def test_member_deviations_one_and_two_ranks(md_runs, files):
    """Every step of the MD, the members' energy deviations (group all, a group on one rank
    only, an empty group) and pressure deviations agree between 1 and 2 ranks to 1e-10, and
    so do the records of fix llpr/record."""
    from llpr.lammps.reweight import read_record

    one, two = (_columns(md_runs[n] / "all.dat") for n in (1, 2))
    assert list(one["TimeStep"]) == list(range(61)) and list(two["TimeStep"]) == list(range(61))
    log2 = (md_runs[2] / "log.lammps").read_text()
    assert "2 by 1 by 1 MPI processor grid" in log2
    compared = 0
    for name, col in one.items():
        if name.startswith(("c_e[", "c_el[", "c_en[", "c_v[")):
            scale = max(1.0, np.abs(col).max())
            np.testing.assert_allclose(two[name], col, rtol=0, atol=1e-10 * scale, err_msg=name)
            compared += 1
    assert compared == 3 * (3 + K) + 3 + 8 * K
    for k in range(4, 4 + K):
        assert np.all(two[f"c_en[{k}]"] == 0.0)  # the empty group, on both ranks
        assert np.abs(two[f"c_el[{k}]"]).max() > 1e-4  # group left is not empty
    # group left sits on rank 0 (x < L/4 at the start; atoms move < 0.3 A in 60 steps)
    positions = files["atoms"].positions
    in_left = positions[:, 0] < 0.2 * files["atoms"].cell[0, 0]
    assert in_left.any() and positions[in_left, 0].max() < 0.5 * files["atoms"].cell[0, 0] - 1.0
    # the record: every second step, the compute's own values, the same on both rank counts
    (rec1,), (rec2,) = (read_record(md_runs[n] / "md.rec") for n in (1, 2))
    assert rec2.header["members"] == K and rec2.header["virial"] and rec2.header["units"] == "metal"
    assert rec2.header["seal"].startswith("llpr-integrity crc64-xz=")
    assert list(rec2.steps) == list(range(0, 61, 2))
    np.testing.assert_array_equal(rec2.column("dE"), np.stack([two[f"c_v[{4 + k}]"][::2] for k in range(K)], 1))
    np.testing.assert_array_equal(rec2.column("dP"), np.stack([two[f"c_v[{4 + K + k}]"][::2] for k in range(K)], 1))
    scale = np.abs(rec1.data).max(axis=0)
    np.testing.assert_allclose(rec2.data, rec1.data, rtol=0, atol=1e-10 * max(1.0, scale.max()))


@pytest.mark.mpi
def test_reweight_cli_on_lammps_output(md_runs, files, tmp_path):
    """`llpr reweight` on the 2-rank run's record: pe and press with the members' own values,
    the RDF (a vector value, its axis c_rdf[1]), a JSON (the plot is checked by
    tests/test_examples.py); the model file is checked against the recorded seal."""
    from llpr.lammps.reweight import reweight_record

    d = md_runs[2]
    out_json = tmp_path / "rw.json"
    proc = subprocess.run(
        [os.path.join(BIN, "llpr"), "reweight", "md.rec", "--temperature", "900", "--observable", "pe",
         "--observable", "press", "--observable", "c_rdf[2]", "--start", "10", "--model", files["mean"],
         "--json", str(out_json)],
        cwd=str(d), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "reweighting to 8 ensemble members at T = 900 K" in out
    assert "member values (pe + dE_k)" in out and "member values (press + dP_k)" in out
    assert "c_rdf[2]" in out and "mean model (a configuration observable)" in out
    result = json.loads(out_json.read_text())
    assert result["members"] == K and result["frames"] == 26
    rdf = result["observables"]["c_rdf[2]"]
    assert rdf["axis_name"] == "c_rdf[1]" and len(rdf["axis"]) == 40 and rdf["frames"] <= 26
    # the record of another model file is refused by its seal
    with pytest.raises(ValueError, match=r"was written with .*mean.pt \(llpr-integrity .*\), not with .*member.pt"):
        reweight_record(900, d / "md.rec", model=files["member"], warn=False)
    # a log is not read
    proc = subprocess.run([os.path.join(BIN, "llpr"), "reweight", "log.lammps", "--temperature", "900"], cwd=str(d),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "reweighting reads the record of fix llpr/record" in proc.stderr
