"""The LAMMPS plugin in-process (the `lammps` Python module, one rank) against the Python
reference, plus the LAMMPS features built on it (fix pair, dump thresholds, fix halt, units)
and its error messages (in-process too: each a LAMMPS error, raised as a Python exception).
Finite-difference forces and NVE: tests/test_lammps_consistency.py."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from lammps_helpers import (
    assert_lammps_error_in_process,
    compare,
    lammps_module_marks,
    lammps_results,
    lammps_script,
    make_model,
    METAL2REAL,
    open_lammps_quiet,
    reference,
    run_in_process,
    SERIAL_CASES,
    si_diamond,
    sic_triclinic,
    sic_zincblende,
    write_data,
)

pytestmark = lammps_module_marks()


@pytest.fixture(scope="module")
def models(native_lammps_models):
    return native_lammps_models


def _isolated_atoms():
    """A small SiC cluster plus one Si atom far from everything, in a 24 A non-periodic box."""
    from ase import Atoms

    cluster = sic_zincblende(rattle=0.1, seed=4)[:6]
    atoms = Atoms(numbers=list(cluster.numbers) + [14],
                  positions=np.vstack([cluster.positions + 3.0, [[18.0, 18.0, 18.0]]]),
                  cell=[24.0, 24.0, 24.0], pbc=False)
    return atoms


CASES = {
    # name: (model, structure, element order of the LAMMPS types, boundary)
    **SERIAL_CASES,
    "sic_triclinic_sorted_types": ("sic", lambda: sic_triclinic(seed=5), ["C", "Si"], "p p p"),
    "isolated_atom_nonperiodic": ("sic", _isolated_atoms, ["Si", "C"], "f f f"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lammps_matches_python_reference(models, tmp_path, case):
    name, make, elements, boundary = CASES[case]
    atoms = make()
    ref = reference(models[name], atoms)
    res = run_in_process(tmp_path, models[name], atoms, elements, boundary=boundary, post="run 0")
    dev = compare(res, ref, tol=1e-10)
    print(case, {k: f"{v:.1e}" for k, v in dev.items()})
    if case == "isolated_atom_nonperiodic":
        # the lone atom has no neighbours: zero force, its own energy and uncertainty
        assert np.all(res["forces"][-1] == 0.0) and res["sigma"][-1] > 0


def test_units_real_are_converted(models, tmp_path):
    atoms = sic_triclinic(seed=3)
    ref = reference(models["sic"], atoms)
    res = run_in_process(tmp_path, models["sic"], atoms, ["C", "Si"], units="real", post="run 0")
    # energies, forces, virials and sigma in kcal/mol (lengths are Angstrom in both), LPR unitless
    compare(res, ref, tol=1e-10, scale=METAL2REAL)


def test_hybrid_with_null_type(models, tmp_path):
    """`pair_coeff * * llpr Si NULL` under hybrid: C atoms are invisible to the model."""
    atoms = sic_triclinic(seed=6)
    si_only = atoms[atoms.numbers == 14]
    ref = reference(models["sic"], si_only)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si", "C"])
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(f"""
units metal
atom_style atomic
read_data {data}
pair_style hybrid llpr {models['sic']} device cpu zero 4.0
pair_coeff * * llpr Si NULL
pair_coeff 1 2 zero
pair_coeff 2 2 zero
compute u all llpr/atom
compute g all llpr
run 0
""")
        from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR

        n = lmp.extract_global("nlocal")
        ids = lmp.numpy.extract_atom("id")[:n]
        types = lmp.numpy.extract_atom("type")[:n]
        order = np.argsort(ids)
        si = types[order] == 1
        f = lmp.numpy.extract_atom("f")[:n][order]
        u = lmp.numpy.extract_compute("u", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:n][order]
        g = lmp.numpy.extract_compute("g", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
        assert abs(lmp.get_thermo("pe") - ref["energy"]) < 1e-10
        np.testing.assert_allclose(f[si], ref["forces"], atol=1e-10)
        assert np.all(f[~si] == 0.0) and np.all(u[~si] == 0.0)
        np.testing.assert_allclose(u[si, 0], ref["sigma"], atol=1e-10)
        assert abs(g[0] - ref["energy_sigma"]) < 1e-10
    finally:
        lmp.close()


def test_float32_model_in_lammps(models, tmp_path):
    """positions go to the model in its dtype (float32 here) and results come back as double"""
    path = make_model(tmp_path / "sic32.pt", species=(6, 14), seed=1, dtype=torch.float32)
    atoms = sic_triclinic(seed=8)
    ref = reference(path, atoms)
    res = run_in_process(tmp_path, path, atoms, ["C", "Si"], post="run 0")
    assert abs(res["energy"] - ref["energy"]) < 1e-4
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-5 * max(1.0, np.abs(ref["forces"]).max()))
    np.testing.assert_allclose(res["sigma"], ref["sigma"], rtol=1e-5)


def test_npt_and_pressure(models, tmp_path):
    """thermo press (virial from the model) equals the reference pressure, and drives fix npt:
    the run completes and the box responds."""
    atoms = si_diamond((2, 2, 2), rattle=0.05, seed=12)
    ref = reference(models["si"], atoms)
    pressure0 = np.trace(ref["virial"]) / 3 / atoms.get_volume() * 1.6021765e6  # bar, zero velocities
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(models["si"], data, ["Si"], post="run 0"))
        assert abs(lmp.get_thermo("press") - pressure0) < 1e-8 * max(1.0, abs(pressure0))
        volume0 = lmp.get_thermo("vol")
        lmp.commands_string("""
velocity all create 300 12345 mom yes rot yes
timestep 0.001
fix npt all npt temp 300 300 0.1 iso 0 0 0.5
thermo_style custom step temp pe press vol c_g[1]
run 200
""")
        volume = lmp.get_thermo("vol")
        assert np.isfinite(volume) and abs(volume - volume0) > 1e-3 * volume0
        assert np.isfinite(lmp.get_thermo("press")) and np.isfinite(lmp.get_thermo("pe"))
    finally:
        lmp.close()


# ------------------------------------------------------------------ computes and fixes
def test_fix_pair_dump_thresh_reduce_and_thermo(models, tmp_path):
    atoms = si_diamond((2, 2, 2), rattle=0.15, seed=8)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    ref = reference(models["si"], atoms)
    threshold = float(np.median(ref["sigma"]))
    dump = tmp_path / "high.dump"
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(models["si"], data, ["Si"], post=f"""
fix fp all pair 1 llpr sigma 1 lpr 1
compute mx all reduce max c_u[1]
variable s equal c_g[1]
thermo_style custom step pe c_g[1] c_g[2] c_g[3] c_mx v_s
dump hi all custom 1 {dump} id c_u[1] c_u[2] f_fp[1]
dump_modify hi sort id thresh c_u[1] > {threshold!r} format float %.17g
run 0
"""))
        from lammps import LMP_STYLE_ATOM, LMP_TYPE_ARRAY

        res = lammps_results(lmp)
        n = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        fp = np.array(lmp.numpy.extract_fix("fp", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:n][order])
        # fix pair stores the pair style's per-atom sigma and LPR (the same numbers as the compute)
        np.testing.assert_array_equal(fp[:, 0], res["sigma"])
        np.testing.assert_array_equal(fp[:, 1], res["lpr"])
        np.testing.assert_allclose(fp[:, 0], ref["sigma"], atol=1e-10)
        # compute reduce max of c_u[1] == the global compute's max sigma_i
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR

        assert lmp.numpy.extract_compute("mx", LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR) == res["global"][1]
        assert lmp.extract_variable("s") == res["global"][0]
        # dump_modify thresh keeps exactly the atoms above the threshold
        lines = dump.read_text().splitlines()
        start = lines.index([ln for ln in lines if ln.startswith("ITEM: ATOMS")][0]) + 1
        dumped = np.array([[float(x) for x in ln.split()] for ln in lines[start:]])
        expected_ids = np.nonzero(ref["sigma"] > threshold)[0] + 1
        assert list(dumped[:, 0].astype(int)) == list(expected_ids)
        np.testing.assert_allclose(dumped[:, 1], ref["sigma"][expected_ids - 1], atol=1e-10)
        assert res["global"][2] == float(np.argmax(ref["sigma"]) + 1)
    finally:
        lmp.close()


def _halt_run(model, data, threshold, nsteps=200):
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(lammps_script(model, data, ["Si"], post=f"""
velocity all create 2000 87287 mom yes rot yes
timestep 0.002
fix nve all nve
variable s equal c_g[1]
fix stop all halt 10 v_s > {threshold!r} error soft message no
thermo 10
run {nsteps}
"""))
        return lmp.extract_global("ntimestep"), lmp.extract_variable("s")
    finally:
        lmp.close()


def test_fix_halt_on_global_sigma(models, tmp_path):
    atoms = si_diamond((2, 2, 2), rattle=0.05, seed=9)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    ref = reference(models["si"], atoms)
    # a threshold below the uncertainty of the starting structure: halts at the first check
    step, sigma = _halt_run(models["si"], data, 0.5 * ref["energy_sigma"])
    assert step == 10 and sigma > 0.5 * ref["energy_sigma"]
    # a threshold never reached: the run completes
    step, sigma = _halt_run(models["si"], data, 1e6)
    assert step == 200


def test_compute_without_current_features_is_an_error(models, tmp_path):
    atoms = si_diamond(seed=10)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    lmp = open_lammps_quiet()
    try:
        with pytest.raises(Exception, match="pair_style llpr has not evaluated forces yet"):
            lmp.commands_string(lammps_script(models["si"], data, ["Si"], post="pair_modify compute no\nrun 0"))
    finally:
        lmp.close()


def test_missing_model_raises_python_exception(tmp_path):
    atoms = si_diamond(seed=11)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    lmp = open_lammps_quiet()
    try:
        with pytest.raises(Exception, match="model file '.*nope.pt' does not exist"):
            lmp.commands_string(lammps_script(str(tmp_path / "nope.pt"), data, ["Si"]))
    finally:
        lmp.close()


def _python(code, **env):
    """Run ``code`` in a fresh interpreter of this environment, without LD_LIBRARY_PATH (so
    that the loader finds libmpi.so.12 only if llpr loaded it); the libmpi it mapped is
    printed on the last line."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LLPR_PRELOAD_MPI")}
    environ.update(env)
    code += "\nprint([ln.split()[-1] for ln in open('/proc/self/maps') if 'libmpi.so' in ln][:1])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ)


def test_libmpi_is_loaded_where_lammps_is_opened():
    """The wheel's liblammps.so needs MPICH's libmpi.so.12 from the environment's lib folder,
    which is not on the loader path: `import lammps` loads it (the wheel calls llpr's plugin
    entry point), and so does llpr.open_lammps; `import llpr` alone loads neither MPICH nor torch.
    LLPR_PRELOAD_MPI=0 leaves it out of the entry point, and open_lammps still loads it."""
    import os
    import sys

    opened = "L = lammps(cmdargs=['-screen', 'none', '-log', 'none', '-nocite']); print(L.version()); L.close()"
    for code in ("import llpr\nfrom lammps import lammps\n" + opened, "from lammps import lammps\n" + opened):
        proc = _python(code)
        assert proc.returncode == 0, proc.stderr[-2000:]
        version, mapped = proc.stdout.strip().splitlines()[-2:]
        assert int(version) >= 20250722
        assert os.path.dirname(eval(mapped)[0]).startswith(sys.prefix), mapped
    proc = _python("import sys, llpr\nprint('torch' in sys.modules, llpr.__version__)")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines() == ["False 0.1.0", "[]"], proc.stdout + proc.stderr
    proc = _python("import lammps", LLPR_PRELOAD_MPI="0")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    proc = _python("import llpr\nllpr.open_lammps().close()", LLPR_PRELOAD_MPI="0")
    assert proc.returncode == 0 and "libmpi.so.12" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------ errors (in-process)
@pytest.fixture(scope="module")
def bad_files(models, tmp_path_factory):
    """The files the bad inputs name (with the two good models, "si" and "sic")."""
    from llpr.models.potential import LocalPotential

    d = tmp_path_factory.mktemp("bad_files")
    corrupt = d / "corrupt.pt"
    raw = open(models["si"], "rb").read()
    corrupt.write_bytes(raw[: len(raw) // 3])
    bare = d / "bare.pt"
    torch.jit.save(torch.jit.script(LocalPotential([14], hidden=(8,))), str(bare))
    data = write_data(si_diamond(seed=12), d / "si.data", ["Si"])
    two = si_diamond(seed=13)
    two.numbers[:4] = 6
    data2 = write_data(two, d / "two.data", ["Si", "C"])
    return {"corrupt": str(corrupt), "bare": str(bare), "data": data, "data2": data2,
            "missing": str(d / "missing.pt"), **models}


BAD_INPUT = """
units {units}
newton {newton}
atom_style atomic
read_data {data}
pair_style llpr {model} device {device}
pair_coeff * * {elements}
run 0
"""
GOOD_SETTINGS = dict(model="{si}", data="{data}", elements="Si", units="metal", newton="on", device="cpu")

# kind: (the settings that differ from GOOD_SETTINGS, what the first ERROR line must say);
# "{name}" stands for bad_files[name]
ERROR_CASES = {
    "missing file": ({"model": "{missing}"}, "does not exist"),
    "corrupt file": ({"model": "{corrupt}"}, "is damaged (no zip end record: the file is truncated"),
    "TorchScript without LLPR data": ({"model": "{bare}"}, "not a valid llpr model: missing llpr_format_version"),
    "element unknown to the model": ({"elements": "O"}, "element O (Z = 8, atom type 1) is not known to the model"),
    "not an element": ({"elements": "Xx"}, "'Xx' (atom type 1) is not an element symbol"),
    "type left unmapped": ({"data": "{data2}", "elements": "Si"}, "2 atom type(s) but 1 symbol(s) given"),
    "NULL type without hybrid": ({"data": "{data2}", "model": "{sic}", "elements": "Si NULL"},
                                 "atom type 2 is NULL (left unmapped)"),
    "units lj": ({"units": "lj"}, "`units lj` is not supported"),
    "device cuda without GPU": ({"device": "cuda"}, "device cuda requested but no CUDA GPU is usable"),
    "newton off": ({"newton": "off"}, "requires newton pair on"),
}


@pytest.mark.parametrize("kind", list(ERROR_CASES))
def test_bad_input_is_a_lammps_error(bad_files, tmp_path, kind):
    from llpr import _core

    if kind == "device cuda without GPU" and _core.cuda_available():
        pytest.skip("a CUDA device is available")
    changes, want = ERROR_CASES[kind]
    settings = {key: value.format(**bad_files) for key, value in {**GOOD_SETTINGS, **changes}.items()}
    assert_lammps_error_in_process(BAD_INPUT.format(**settings), tmp_path, want)

