"""OVITO reads what LAMMPS writes: a real `lmp` run of pair_style llpr with compute llpr/atom
writes a `dump custom` whose sigma and LPR columns OVITO must load as named particle
properties with the right values for every atom ID (checked against the Python reference and
the dump text); then examples/silicon/render.py renders the last frame (OVITO's offscreen
Tachyon renderer when Vulkan works here, and the matplotlib fallback in any case)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from lammps_helpers import lammps_module_marks, make_model, reference, run_lmp, si_diamond, write_data

pytestmark = lammps_module_marks()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RENDER = os.path.join(ROOT, "examples", "silicon", "render.py")

SCRIPT = """
units metal
atom_style atomic
boundary p p p
read_data data.lmp
pair_style llpr {model}
pair_coeff * * Si
compute unc all llpr/atom
compute usum all llpr
thermo_style custom step pe c_usum[1] c_usum[2] c_usum[3]
thermo 10
velocity all create 600 4928 mom yes rot yes dist gaussian
fix nve all nve
timestep 0.001
dump named all custom 10 dump.llpr id type x y z c_unc[1] c_unc[2]
dump_modify named colname c_unc[1] sigma colname c_unc[2] lpr
dump plain all custom 10 dump.plain id type x y z c_unc[1] c_unc[2]
run 20
"""


def _load_render():
    spec = importlib.util.spec_from_file_location("llpr_example_render", RENDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lammps_dump(tmp_path_factory):
    """A Si slab (two free surfaces, 16 A of vacuum) of 64 atoms, 20 NVE steps, frames at 0, 10, 20."""
    d = tmp_path_factory.mktemp("ovito")
    model = make_model(d / "model.pt", species=(14,), seed=3)
    atoms = si_diamond((2, 2, 2), rattle=0.1, seed=5)
    atoms.cell[2, 2] += 16.0  # vacuum above and below the slab (periodic images 16 A apart)
    atoms.positions[:, 2] += 8.0
    write_data(atoms, d / "data.lmp", ["Si"])
    proc = run_lmp(SCRIPT.format(model=model), d)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    thermo = [ln.split() for ln in proc.stdout.splitlines() if ln.split()[:1] == ["20"]]
    return {"dir": d, "model": model, "atoms": atoms, "thermo20": [float(x) for x in thermo[-1]]}


def _dump_table(path, frame):
    render = _load_render()
    return render.read_frame(str(path), frame)


def test_ovito_reads_sigma_and_lpr_as_named_properties(lammps_dump):
    try:
        import ovito.io as ovito_io
    except ImportError as exc:  # ovito is in the `test` extra: pip install --no-build-isolation ".[test]"
        pytest.fail(f"OVITO is not installed ({exc}); it is part of llpr's test extra: pip install ovito")
    d = lammps_dump["dir"]
    pipeline = ovito_io.import_file(str(d / "dump.llpr"))
    assert pipeline.source.num_frames == 3

    # frame 0: the data file's structure, known exactly -> the Python reference, atom by atom
    data = pipeline.compute(0)
    particles = data.particles
    assert "sigma" in particles and "lpr" in particles, list(particles.keys())
    ids = np.asarray(particles.identifiers)
    ref = reference(lammps_dump["model"], lammps_dump["atoms"])
    order = np.argsort(ids)
    assert list(ids[order]) == list(range(1, len(lammps_dump["atoms"]) + 1))
    sigma = np.asarray(particles["sigma"])[order]
    lpr = np.asarray(particles["lpr"])[order]
    # the dump's default %g format keeps 6 significant digits
    np.testing.assert_allclose(sigma, ref["sigma"], rtol=1e-5)
    np.testing.assert_allclose(lpr, ref["lpr"], rtol=1e-5)
    # known atoms: the most and the least uncertain ones of the reference
    for atom_id in (int(np.argmax(ref["sigma"])) + 1, int(np.argmin(ref["sigma"])) + 1):
        k = int(np.nonzero(ids == atom_id)[0][0])
        assert abs(particles["sigma"][k] - ref["sigma"][atom_id - 1]) <= 1e-5 * ref["sigma"][atom_id - 1]
    assert np.max(ref["sigma"]) > 1.2 * np.min(ref["sigma"])  # the atoms do differ

    # last frame (after 20 MD steps): OVITO's values are the dump's, atom by atom, and the most
    # uncertain atom is the one compute llpr reports ([2] max sigma_i, [3] its atom ID)
    last = pipeline.compute(2)
    table = _dump_table(d / "dump.llpr", -1)
    assert table["step"] == 20
    ov = {int(i): (s, q) for i, s, q in zip(last.particles.identifiers, last.particles["sigma"], last.particles["lpr"])}
    for i, s, q in zip(table["id"].astype(int), table["sigma"], table["lpr"]):
        assert ov[i] == (s, q)
    step, pe, sigma_total, sigma_max, max_id = lammps_dump["thermo20"]
    k = int(np.argmax(table["sigma"]))
    assert int(table["id"][k]) == int(max_id)
    assert abs(table["sigma"][k] - sigma_max) <= 1e-5 * sigma_max
    # without dump_modify colname the columns keep LAMMPS' names
    plain = ovito_io.import_file(str(d / "dump.plain")).compute(0)
    assert "c_unc[1]" in plain.particles and "c_unc[2]" in plain.particles
    np.testing.assert_array_equal(np.asarray(plain.particles["c_unc[1]"]), np.asarray(particles["sigma"]))


def _png_colours(path):
    import matplotlib.image as mpimg

    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(str(path))
    rgb = (image[..., :3] * 255).astype(int).reshape(-1, 3)
    return image.shape, len(np.unique(rgb, axis=0))


def _render(*args):
    """render.py as a user runs it: in its own process (OVITO's renderer is not meant to share
    a process with LAMMPS and a test runner)."""
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, RENDER, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_render_matplotlib(lammps_dump, tmp_path):
    out = tmp_path / "sigma.png"
    proc = _render(lammps_dump["dir"] / "dump.llpr", "-o", out, "--renderer", "matplotlib", "--size", 400, 300)
    assert proc.returncode == 0 and "(matplotlib)" in proc.stdout, proc.stderr
    shape, colours = _png_colours(out)
    assert shape[:2] == (300, 400) and colours > 50


def test_render_ovito_offscreen(lammps_dump, tmp_path):
    render = _load_render()
    ok, why = render.ovito_can_render()
    if not ok:
        pytest.skip(why)
    out = tmp_path / "sigma.png"
    proc = _render(lammps_dump["dir"] / "dump.llpr", "-o", out, "--renderer", "ovito", "--size", 400, 300,
                   "--frame", -1, "--slab", "x", 0, 6)
    assert proc.returncode == 0 and "(ovito)" in proc.stdout, proc.stderr
    shape, colours = _png_colours(out)
    assert shape[:2] == (300, 400) and colours > 50


def test_render_errors_are_clear(lammps_dump, tmp_path):
    proc = _render(tmp_path / "nope.dump", "-o", tmp_path / "x.png", "--renderer", "matplotlib")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = _render(lammps_dump["dir"] / "dump.plain", "-o", tmp_path / "x.png", "--renderer", "matplotlib")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no column 'sigma'" in proc.stderr and "colname c_unc[1] sigma" in proc.stderr
    assert "c_unc[1]" in proc.stderr
