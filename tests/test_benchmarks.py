"""The performance benchmark harness runs end to end (tiny sizes): every section produces
finite numbers in the layout the reports are written from. Timings themselves are not asserted
(performance claims come from the committed benchmark output)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script: str, *args: str, timeout: float = 900) -> None:
    """Run benchmarks/`script` with `args` on one thread; assert that it succeeded."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_lammps_performance_quick(tmp_path):
    run_benchmark("lammps_performance.py", "--quick", "--out", str(tmp_path / "perf"))
    r = json.loads((tmp_path / "perf.json").read_text())
    for key in ("overhead", "integration", "ase_vs_lammps", "scaling", "mpi", "committee", "references", "force_sigma",
                "force_sigma_large"):
        assert key in r, key

    def finite(x):
        if isinstance(x, dict):
            return all(finite(v) for v in x.values())
        if isinstance(x, list):
            return all(finite(v) for v in x)
        return not isinstance(x, float) or math.isfinite(x)

    assert finite(r)
    assert r["mpi"]["two_ranks_one_thread_s_per_step"] > 0
    assert r["scaling"][0]["atoms"] == 64 and r["scaling"][-1]["atoms"] == 512
    assert set(r["references"]) == {"llpr float64", "llpr float32", "sw (Si.sw)", "mliap nn (Si.nn.mliap)"}
    assert [(x["members"], x["every"]) for x in r["force_sigma"]["rows"]] == [(8, 1), (8, 100), (32, 1), (32, 100)]
    assert [x["atoms"] for x in r["ase_vs_lammps"]["sizes"]] == [64, 216]
    large = r["force_sigma_large"]
    assert large["members"] == 32 and large["chunk_centers"] == 4096 and large["rows"][0]["atoms"] == 512
    assert all(row[v]["s_per_step"] > 0 for row in large["rows"] for v in ("blocks", "one_block"))


@pytest.mark.slow
def test_uncertainty_overhead_quick(tmp_path):
    """Both paths of the per-step uncertainty run and give finite costs (differences of timings:
    their sign is noise on a busy machine, so it is not asserted)."""
    run_benchmark("uncertainty_overhead.py", "--quick", "--out", str(tmp_path / "u"))
    r = json.loads((tmp_path / "u.json").read_text())
    (row,) = r["rows"]
    assert row["atoms"] == 512 and row["pair_ms_per_step"] > 0
    for name in ("native", "head"):
        assert math.isfinite(row[name]["timers_percent"]) and math.isfinite(row[name]["ms_per_step"])


@pytest.mark.slow
def test_quadratic_form_quick(tmp_path):
    """Solve, product and native kernel timed; their agreement is within 1e-12 on both covariances."""
    out = tmp_path / "q.md"
    run_benchmark("quadratic_form.py", "--quick", "--output", str(out))
    text = out.read_text()
    agreement = [line.split("|") for line in text.splitlines() if line.startswith("| well") or line.startswith("| ill")]
    assert len(agreement) == 4
    for cells in agreement:
        assert float(cells[4]) < 1e-12 and (cells[5].strip() == "nan" or float(cells[5]) < 1e-12)


DEVICE_SCRIPTS = ["lammps_performance.py", "gpu_performance.py"]


@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
def test_device_without_gpu_is_refused(script):
    """--device cuda on a machine where torch sees no GPU stops at once with a message naming
    the device and the way out (this test machine has no GPU; skipped where one is visible)."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--device", "cuda"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "--device cuda: torch" in proc.stderr and "sees no CUDA GPU here" in proc.stderr


@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
def test_unknown_device_is_refused(script):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--device", "gpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "--device gpu: unknown device; use cpu, cuda or cuda:N" in proc.stderr


@pytest.mark.slow
def test_gpu_performance_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_performance.py end to end with the model on the CPU (tiny sizes): every
    section produces finite numbers, the larger sizes stop for a stated reason, and the report
    has each section. (What it measures on a GPU comes from benchmarks/gpu_check.sh.)"""
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_performance.py"), "--device", "cpu", "--quick",
         "--max-ranks", "2", "--budget-s", "600", "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert r["skipped"] == []
    for dtype in ("float64", "float32"):
        rows = r["throughput"][dtype]["rows"]
        assert [x["atoms"] for x in rows] == [216, 512] and all(x["atom_steps_per_s"] > 0 for x in rows)
        assert r["throughput"][dtype]["stopped_by"].startswith("the list of sizes ends")
    assert [x["ranks"] for x in r["mpi_scaling"]] == [1, 2] and r["gpu_vs_cpu"]["cpu_ranks"] == 2
    assert r["overhead"]["s_per_step"] > 0 and r["bare"]["ratio"] > 0
    assert r["profile"]["steps"] == 3 and r["profile"]["wall_s_per_step"] > 0 and "evaluate" in r["profile"]["top_operators"]


def test_gpu_check_without_gpu_stops_at_once(tmp_path):
    """benchmarks/gpu_check.sh on a machine without a usable GPU stops before setting anything up,
    with the reason on screen and in $OUT/summary.txt."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable), timeout=120)
    assert proc.returncode == 2
    kind = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    want = f"FAILED: no CUDA GPU is usable: torch {torch.__version__} ({kind}) sees 0 CUDA devices"
    assert want in proc.stdout and want in (tmp_path / "summary.txt").read_text()
    assert "installed" not in proc.stdout and "pytest" not in proc.stdout  # nothing set up, nothing run


@pytest.mark.slow
def test_biased_md_quick(tmp_path):
    """benchmarks/biased_md.py end to end at tiny sizes: every setting explored, timed and
    driving one active-learning round, with finite numbers in the report."""
    out = tmp_path / "biased"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "biased_md.py"), "--quick", "--steps", "120", "--seeds", "1",
         "--pick", "1", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "biased.json").read_text())
    assert list(r["exploration"]) == ["plain MD (tau 0)", "tau relative 0.1", "tau relative 0.3"]
    for runs in r["exploration"].values():
        assert len(runs) == 1 and len(runs[0]["first_step_above"]) == 3 and math.isfinite(runs[0]["max_sigma_mev"])
    assert all(runs[0]["mean_tau"] >= 0 for name, runs in r["exploration"].items() if name != "plain MD (tau 0)")
    assert all(t["s_per_step"] > 0 for t in r["step_time"].values())
    assert set(r["active_learning"]) == {"before", "+ frames of plain MD (tau 0)", "+ frames of tau relative 0.3"}
    for row in r["active_learning"].values():
        assert math.isfinite(row["heldout"]["energy_rmse_mev_per_atom"]) and math.isfinite(row["heldout"]["force_rmse_ev_per_a"])
    assert "| tau relative 0.3 |" in (tmp_path / "biased.md").read_text()  # a row of the measured settings


@pytest.mark.slow
def test_reweighting_physics_quick(tmp_path):
    """benchmarks/reweighting_physics.py end to end at tiny sizes: the mean model's runs are
    reweighted from their fix llpr/record records (written with its file, one run each), the
    members' runs read from their own thermo output and RDF file; finite numbers in the report."""
    from llpr.lammps.reweight import read_record

    work = tmp_path / "work"
    run_benchmark("reweighting_physics.py", "--quick", "--steps", "1000", "--work", str(work), "--out",
                  str(tmp_path / "rw"))
    r = json.loads((tmp_path / "rw.json").read_text())
    assert r["frames"] == 101 and len(r["ess_fraction"]) == 32  # steps 0..1000 every 10, K = 32
    for run in ("pilot", "mean"):
        segments = read_record(work / run / "md.rec")
        assert len(segments) == 1 and segments[0].header["members"] == 32 and segments[0].steps[0] == 0
    assert segments[0].data.shape[0] == r["frames"]
    assert r["checks"]
    for check in r["checks"].values():
        for row in check["rows"].values():
            assert all(math.isfinite(row[key]) for key in ("member_md", "member_md_error", "direct", "cea", "z_cea"))
    assert (tmp_path / "rw_rdf.png").exists() and "| density (g/cm^3) |" in (tmp_path / "rw.md").read_text()


@pytest.mark.slow
def test_extrapolation_grade_quick(tmp_path):
    """The OOD benchmark runs (tiny sizes); its AUROCs agree with a direct count of pairs, and
    the max-sigma and max-gamma scores rank the structures identically."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from extrapolation_grade import auroc

    run_benchmark("extrapolation_grade.py", "--quick", "--out", str(tmp_path), timeout=600)
    r = json.loads((tmp_path / "extrapolation_grade_quick.json").read_text())
    assert (tmp_path / "extrapolation_grade_quick.md").exists()
    assert r["train_max_gamma"] == pytest.approx(1.0, abs=1e-12)  # the training atom that sets max q
    ref = r["scores"]["ID test"]
    for row in r["tables"]["ID test"]:
        assert row["auroc_max_gamma"] == pytest.approx(row["auroc_max_atom_sigma"], abs=1e-12)
        if row["set"] in r["scores"]:
            pos = np.array(r["scores"][row["set"]]["max_gamma"])
            neg = np.array(ref["max_gamma"])
            pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
            assert row["auroc_max_gamma"] == pytest.approx(pairs, abs=1e-12)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5


@pytest.mark.slow
def test_calibration_variants_quick(tmp_path):
    """Every calibration variant gets a row (ID and OOD) next to the deep ensemble, and each row
    was calibrated as its name says."""
    run_benchmark("calibration_variants.py", "--quick", "--out", str(tmp_path))
    r = json.loads((tmp_path / "calibration_variants_quick.json").read_text())
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from calibration_variants import VARIANTS

    names = [name for name, _ in VARIANTS]
    for set_name in ("ID test", "OOD test"):
        assert list(r["results"][set_name]) == names + ["deep ensemble (K=2)"]
        for row in r["results"][set_name].values():
            assert math.isfinite(row["nll"]) and math.isfinite(row["force_nll"])
    for name, options in VARIANTS:
        cal = r["calibration"][name]
        assert cal["force_weight"] == options.get("force_weight", 0.0)
        assert (cal["method"] == "power-law") == bool(options.get("sigma_power"))
        assert (cal["n_extra"] > 0) == bool(options.get("extra"))
    md = (tmp_path / "calibration_variants_quick.md").read_text()
    assert all(f"| {name} |" in md for name in names + ["deep ensemble (K=2)"])
