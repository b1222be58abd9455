"""The LAMMPS plugin on a CUDA GPU (`pytest -m cuda`; skipped, with the reason, where this
libtorch sees no GPU): `device cuda` against `device cpu` in float64 to 1e-10 (energy, per-atom
energies, forces, virial, sigma_i, LPR_i, global sigma and force sigma) on one rank (in-process)
and on two MPI ranks sharing one GPU; a float32 model on the GPU against the float64 answer of
the same weights; and the per-atom outputs staying on the GPU until an output asks for them
(device-to-host copies counted with the torch profiler, which sees the plugin's libtorch: it is
the one `torch` loaded in this process)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from lammps_helpers import (
    atom_array,
    dump_table,
    lammps_module_marks,
    lammps_results,
    lammps_script,
    make_model,
    MPI_CASES,
    MPIRUN,
    open_lammps_quiet,
    reference,
    run_in_process,
    SERIAL_CASES,
    si_diamond,
    sic_triclinic,
    subprocess_results,
    write_data,
)

pytestmark = lammps_module_marks(extra=[pytest.mark.cuda])

from llpr import _core  # noqa: E402  (after the marks: they skip the module without llpr._core)

if not _core.cuda_available():
    pytestmark.append(pytest.mark.skip(reason="no CUDA GPU: " + _core.cuda_unavailable_reason()))

TOL = 1e-10
# float32 resolves about 1.2e-7 relative; LAMMPS's neighbour order and the GPU's summation order
# change the rounding, not the value: allow about 100 float32 ulps of each quantity's magnitude
TOL32 = 1e-5
KEYS = ("energy", "energies", "forces", "virial", "virial_atom", "sigma", "lpr", "global", "force_sigma")

FORCE_SIGMA = "compute uf all llpr/atom forces yes\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_models")
    # with last-layer ensembles, for the force sigma: K = 8 < F (one backward pass per member)
    # and K = 20 > F (the feature Jacobian), as in test_lammps_ensemble.py
    return {
        "si": make_model(d / "si.pt", species=(14,), seed=0, ensemble=8, ensemble_seed=1),
        "sic": make_model(d / "sic.pt", species=(6, 14), seed=1, ensemble=20, ensemble_seed=2),
    }


def assert_same(got, want, tol=TOL, keys=KEYS):
    """Every quantity of `got` equals `want` to `tol` relative to its magnitude (when above 1)."""
    assert list(got["ids"]) == list(want["ids"])
    deviations = {}
    for key in keys:
        g, w = np.asarray(got[key], dtype=float), np.asarray(want[key], dtype=float)
        assert g.shape == w.shape, key
        deviations[key] = float(np.max(np.abs(g - w))) if w.size else 0.0
        assert deviations[key] <= tol * max(1.0, float(np.max(np.abs(w)))), (key, deviations[key])
    return deviations


def _in_process(folder, model, atoms, elements, device, boundary="p p p"):
    """run 0 in-process with `device`: lammps_results plus the force sigma; and the log, whose
    model line names the device the model was moved to."""
    folder.mkdir()
    log = folder / "log.lammps"

    def collect(lmp):
        return {**lammps_results(lmp), "force_sigma": atom_array(lmp, "uf")[:, 2]}

    res = run_in_process(folder, model, atoms, elements, collect=collect, boundary=boundary,
                         pre=f"log {log}", post=FORCE_SIGMA + "run 0", device=device)
    res["log"] = log.read_text()
    return res


@pytest.mark.parametrize("case", list(SERIAL_CASES))
def test_float64_cuda_equals_cpu_on_one_rank(models, tmp_path, case):
    name, make, elements, boundary = SERIAL_CASES[case]
    atoms = make()
    gpu = _in_process(tmp_path / "cuda", models[name], atoms, elements, "cuda", boundary)
    cpu = _in_process(tmp_path / "cpu", models[name], atoms, elements, "cpu", boundary)
    assert "on cuda:0" in gpu["log"] and "on cpu" in cpu["log"]
    dev = assert_same(gpu, cpu)
    print(case, {k: f"{v:.1e}" for k, v in dev.items()})
    # and both are the Python reference's numbers (not merely equal to each other)
    ref = reference(models[name], atoms)
    assert abs(gpu["energy"] - ref["energy"]) <= TOL * max(1.0, abs(ref["energy"]))
    np.testing.assert_allclose(gpu["sigma"], ref["sigma"], rtol=0, atol=TOL)


@pytest.mark.mpi
@pytest.mark.skipif(not os.path.exists(MPIRUN) and shutil.which("mpirun") is None, reason="no mpirun")
@pytest.mark.parametrize("case", list(MPI_CASES))
def test_float64_two_ranks_sharing_one_gpu_equal_cpu(models, tmp_path, case, monkeypatch):
    """`mpirun -np 2 lmp` with one GPU visible: both ranks run the model on cuda:0 (node-local
    rank modulo the GPUs); the result is the two-rank CPU run's, force sigma included."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    name, make, elements, boundary, pre = MPI_CASES[case]
    data = write_data(make(), tmp_path / "data.lmp", elements)
    results = {}
    for device in ("cuda", "cpu"):
        folder = tmp_path / device
        folder.mkdir()
        dump = folder / "force_sigma.dump"
        script = lammps_script(models[name], data, elements, boundary=boundary, pre=pre, device=device) + (
            FORCE_SIGMA + f"dump f all custom 1 {dump} id c_uf[3]\ndump_modify f sort id format float %.17g\n")
        res = subprocess_results(script, folder, nprocs=2)
        res["force_sigma"] = dump_table(dump)[:, 1]
        results[device] = res
    assert "on cuda:0" in results["cuda"]["stdout"] and " on 2 procs " in results["cuda"]["stdout"]
    dev = assert_same(results["cuda"], results["cpu"])
    print(case, {k: f"{v:.1e}" for k, v in dev.items()})


def test_float32_on_the_gpu_within_float32_tolerance(tmp_path):
    """A float32 export runs in float32 on the GPU; its results match the float64 export of the
    same weights to float32 resolution (TOL32)."""
    path32 = make_model(tmp_path / "sic32.pt", species=(6, 14), seed=1, dtype=torch.float32, ensemble=8)
    path64 = make_model(tmp_path / "sic64.pt", species=(6, 14), seed=1, dtype=torch.float64, ensemble=8)
    atoms = sic_triclinic(seed=8)
    gpu32 = _in_process(tmp_path / "cuda32", path32, atoms, ["C", "Si"], "cuda")
    cpu64 = _in_process(tmp_path / "cpu64", path64, atoms, ["C", "Si"], "cpu")
    assert "float32" in gpu32["log"] and "on cuda:0" in gpu32["log"]
    dev = assert_same(gpu32, cpu64, tol=TOL32)
    print("float32 on the GPU vs float64:", {k: f"{v:.1e}" for k, v in dev.items()})
    # the uncertainties are positive numbers of their own, not rounding noise
    np.testing.assert_allclose(gpu32["sigma"], cpu64["sigma"], rtol=TOL32)
    assert np.all(cpu64["sigma"] > 1e3 * TOL32 * cpu64["sigma"].max())


# ------------------------------------------------------------------------ copies to the host
MD = """
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data {data}
pair_style llpr {model} device cuda
pair_coeff * * Si
velocity all create 600 4928459 mom yes rot yes dist gaussian
fix nve all nve
neighbor 0.5 bin
thermo_style custom step pe
thermo 1000
{outputs}
run 0
"""


def _device_to_host_copies(trace_path):
    """Number and bytes of the device-to-host copies in a torch profiler (Kineto) trace."""
    with open(trace_path) as fh:
        events = json.load(fh)["traceEvents"]
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "DtoH" in e.get("name", "")]
    return len(copies), sum(int(e.get("args", {}).get("bytes", 0)) for e in copies)


def _profiled_md(folder, model, data, outputs, steps, dump=None):
    """`run steps` of NVE on the GPU under the torch profiler (after an unprofiled `run 0`):
    the device-to-host copies (number, bytes) and the frames the dump (if any) wrote meanwhile."""
    from torch.profiler import profile, ProfilerActivity

    folder.mkdir()
    lmp = open_lammps_quiet()
    try:
        lmp.commands_string(MD.format(data=data, model=model, outputs=outputs))
        frames_before = dump.read_text().count("ITEM: TIMESTEP") if dump else 0
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            lmp.command(f"run {steps}")
            torch.cuda.synchronize()
        frames = 0
        if dump:
            lmp.command("undump d")  # closes the file
            frames = dump.read_text().count("ITEM: TIMESTEP") - frames_before
    finally:
        lmp.close()
    trace = folder / "trace.json"
    prof.export_chrome_trace(str(trace))
    count, nbytes = _device_to_host_copies(trace)
    return count, nbytes, frames


def test_per_atom_outputs_stay_on_the_gpu_until_dumped(models, tmp_path):
    """Defining `compute llpr/atom` and `compute llpr` costs no copy to the host; a dump every
    10 steps brings back sigma_i and LPR_i (two float64 values per atom) on the dumped steps only,
    never the per-atom features (n_features values per atom)."""
    torch.cuda.init()
    atoms = si_diamond((3, 3, 3), rattle=0.05, seed=3)
    n, steps = len(atoms), 20
    n_features = torch.jit.load(models["si"]).n_features
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    computes = "compute u all llpr/atom\ncompute g all llpr\n"
    dump = tmp_path / "dumped" / "sigma.dump"
    plain = _profiled_md(tmp_path / "plain", models["si"], data, "", steps)
    defined = _profiled_md(tmp_path / "defined", models["si"], data, computes, steps)
    dumped = _profiled_md(tmp_path / "dumped", models["si"], data,
                          computes + f"dump d all custom 10 {dump} id c_u[1] c_u[2]", steps, dump=dump)
    print(f"device-to-host copies (number, bytes): pair style alone {plain[:2]}, computes defined "
          f"{defined[:2]}, dumped {dumped[:2]} in {dumped[2]} frames; {n} atoms, {n_features} features")
    # energies and forces come back every step: the profiler sees the plugin's copies
    assert plain[0] >= steps and plain[1] >= steps * n * 3 * 8, "the profiler recorded no device-to-host copies"
    assert defined[:2] == plain[:2]
    frames = dumped[2]
    assert frames == steps // 10
    extra_copies, extra_bytes = dumped[0] - plain[0], dumped[1] - plain[1]
    assert extra_bytes >= frames * n * 2 * 8  # sigma_i and LPR_i of every atom, on each dumped step
    assert extra_bytes <= frames * (n * 2 * 8 + 1024)  # and nothing else of size n
    assert extra_bytes < frames * n * n_features * 8
    assert 0 < extra_copies <= 4 * frames
