"""Does biasing help? Uncertainty-biased MD (``fix llpr/bias``) against plain MD, from a
silicon crystal at 900 K, and one active-learning round driven by each.

    python benchmarks/biased_md.py            # ~30 min on 2 busy cores
    python benchmarks/biased_md.py --quick    # a few minutes: every stage runs, no verdict

1. Model: a small LocalPotential trained on Stillinger-Weber (SW) silicon, crystal and
   strained crystal at 300-1200 K only (``llpr.lammps.sampling``), for a fixed number of epochs (no
   time limit: the model, and so every count below, is the same on any machine up to
   round-off); LLPR fitted on the training set, calibrated on the validation set, exported.
2. Thresholds: the largest per-atom sigma_i of any training atom (as
   ``examples/active_learning``: an atom past it is less familiar to the model than anything
   it was trained on), and 1.5 and 2 times that.
3. Exploration: 64 atoms of diamond silicon, NVT at 900 K, ``--steps`` steps of 1 fs, for
   plain MD (tau = 0) and ``fix llpr/bias all ... tau relative R`` with two values of R
   (the bias force R times the mean force; running averages over 50 steps, measured every
   10), ``--seeds`` velocity seeds each. Per run: the first step at which the largest
   sigma_i exceeds each threshold (``fix halt`` would stop there), the largest sigma_i of
   the run, and the mean tau the controller settled on.
4. Cost: the time of a step with the bias (fixed tau: one backward pass; tau relative
   every 10: one more backward pass every tenth step) over the time of a plain step, 512
   atoms, NVE, best of 3. The only number here that needs a quiet machine.
5. One active-learning round: from the plain runs and from the runs with the larger R, the
   ``--pick`` frames with the largest sigma_i of each run (frames every 20 steps, at least
   200 steps apart) are labelled with SW and added to the training set, and the model is
   trained again from scratch on the grown set (the same settings, epochs and seed for
   both). Energy and force errors on a held-out set of defects and surfaces (vacancies,
   interstitials, (001) slabs, none of them in any training set) before and after, and on
   the picked frames themselves.

Writes ``benchmarks/results/biased_md.{md,json}`` (``--out``; with ``--quick`` the default is
in ``--work``). Data, models and MD runs already in ``--work`` with the same inputs are
reused; the timings are always measured again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import write_report  # noqa: E402

BIN = os.path.dirname(sys.executable)
LMP = os.path.join(BIN, "lmp")
T_K = 900.0
FRAME_EVERY = 20
RATIOS = (0.1, 0.3)  # tau relative R of the two biased settings
FACTORS = (1.0, 1.5, 2.0)  # thresholds: these times the largest sigma_i of the training atoms

MD = """units metal
atom_style atomic
atom_modify map array
lattice diamond 5.431
region box block 0 {cells} 0 {cells} 0 {cells}
create_box 1 box
create_atoms 1 box
mass 1 28.0855
pair_style llpr {model} device cpu
pair_coeff * * Si
compute g all llpr
{bias}
velocity all create {temp2} {seed} mom yes rot yes dist gaussian
{integrate}
timestep 0.001
thermo_style custom step temp pe c_g[1] c_g[2] {columns}
thermo_modify format float %.10g
thermo {thermo}
{dump}
run {steps}
"""


def lmp_run(folder, script, reuse=True):
    """Run `script` with `lmp` in `folder` unless (`reuse`) a finished run of the same input is
    there; its log's last thermo table and the log's text."""
    from lammps_output import read_thermo

    os.makedirs(folder, exist_ok=True)
    path, log = os.path.join(folder, "in.md"), os.path.join(folder, "log.lammps")
    done = reuse and os.path.exists(path) and open(path).read() == script and os.path.exists(log) and \
        "Total wall time" in open(log).read()
    if not done:
        with open(path, "w") as fh:
            fh.write(script)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop("LAMMPS_PLUGIN_PATH", None)
        proc = subprocess.run([LMP, "-in", "in.md", "-log", "log.lammps", "-nocite", "-screen", "none"], cwd=folder,
                              env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"LAMMPS failed (exit {proc.returncode}) in {folder}; see its log.lammps")
    return read_thermo(log)[-1], open(log).read()


def bias_command(ratio, tau=None):
    if tau is not None:
        return f"fix b all llpr/bias tau {tau}"
    if ratio == 0:
        return ""
    return f"fix b all llpr/bias tau relative {ratio} hist 50 delay 50 every 10"


# ------------------------------------------------------------------------------------- model
def datasets(work, quick):
    """Training, validation (crystal and strained crystal) and held-out (defects, surfaces)
    structures, labelled with SW (cached in `work`)."""
    from llpr.data import read_dataset, split_dataset, write_dataset
    from llpr.lammps.sampling import generate_dataset

    files = [os.path.join(work, f"{name}.xyz") for name in ("train", "val", "heldout")]
    if all(os.path.exists(f) for f in files):
        return [read_dataset(f) for f in files]
    n = 2 if quick else 1  # quick: still 4 validation structures, as calibration needs at least 3
    known = generate_dataset(potential="sw", n_per_type={"crystal": 24 // n, "strained": 12 // n},
                             config_types=("crystal", "strained"), seed=0, progress=False)
    train, val, _ = split_dataset(known, (0.8, 0.2, 0.0), seed=0)
    heldout = generate_dataset(potential="sw", n_per_type=6 // n, config_types=("vacancy", "interstitial", "surface"),
                               seed=1, progress=False)
    for f, part in zip(files, (train, val, heldout)):
        write_dataset(part, f)
    return train, val, heldout


def loader(model, structures):
    from llpr.graphs import AtomisticDataset, make_loader

    return make_loader(AtomisticDataset(structures, model.cutoff, torch.float64), 8)


def calibrated(model, train, val):
    from llpr.uncertainty.estimator import LLPR

    return LLPR(model).fit(loader(model, train)).calibrate(loader(model, val))


def trained_model(work, train, val, epochs, name):
    """A model trained from scratch on `train` for `epochs` epochs (seed 0; the
    best-validation state), cached in `work` as `name`."""
    from llpr.models.checkpoint import load_model, save_model
    from llpr.models.train import TrainConfig, train_model

    path = os.path.join(work, f"{name}_{epochs}_{len(train)}.ckpt")
    if os.path.exists(path):
        return load_model(path)
    config = TrainConfig(max_epochs=epochs, early_stopping_patience=epochs, dtype="float64", seed=0, num_threads=1)
    model, _ = train_model(train, val, config, progress=False)
    save_model(model, path)
    return model


def errors(model, structures):
    from llpr.graphs import AtomisticDataset
    from llpr.models.train import evaluate_errors

    e = evaluate_errors(model, AtomisticDataset(structures, model.cutoff, torch.float64))
    return {"energy_rmse_mev_per_atom": 1000 * e["energy_rmse_per_atom"], "force_rmse_ev_per_a": e["force_rmse"]}


# ----------------------------------------------------------------------------------- stages
def sigma_threshold(model_pt, train):
    """The largest sigma_i over the training atoms, by the exported file (as LAMMPS sees it)."""
    from llpr.ase import LLPRCalculator

    calc = LLPRCalculator(model_pt)
    largest = 0.0
    for atoms in train:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        largest = max(largest, float(np.max(calc.results["sigma"])))
    return largest


def explore(work, model_pt, ratio, seed, steps):
    """One 64-atom NVT run at 900 K; its thermo table (every step) and the folder of its frames."""
    folder = os.path.join(work, "explore", f"R{ratio}_seed{seed}")
    bias = bias_command(ratio)
    script = MD.format(cells=2, model=model_pt, bias=bias, temp2=2 * T_K, seed=seed, thermo=1, steps=steps,
                       integrate=f"fix nvt all nvt temp {T_K} {T_K} 0.1",
                       columns="f_b f_b[2]" if bias else "",
                       dump=f"dump d all custom {FRAME_EVERY} frames.dump id type x y z\ndump_modify d sort id")
    table, _ = lmp_run(folder, script)
    return table, folder


def summarize_run(table, threshold, steps):
    """First step past each threshold (None: never in the run), largest sigma_i, mean tau."""
    sigma_max = table.column("c_g[2]")
    first = []
    for factor in FACTORS:
        above = np.nonzero(sigma_max > factor * threshold)[0]
        first.append(int(table.steps[above[0]]) if above.size else None)
    out = {"first_step_above": first, "max_sigma_mev": 1000 * float(sigma_max.max()), "steps": steps}
    if "f_b[2]" in table.columns:
        tau = table.column("f_b[2]")
        out["mean_tau"] = float(tau[tau > 0].mean()) if (tau > 0).any() else 0.0
    return out


def pick_frames(table, folder, count):
    """The `count` frames of a run (every FRAME_EVERY steps) with the largest sigma_i, at least
    10 frames apart, as ASE Atoms (Si)."""
    from ase.io import read

    frames = read(os.path.join(folder, "frames.dump"), index=":", format="lammps-dump-text")
    steps = np.arange(len(frames)) * FRAME_EVERY
    sigma = dict(zip(table.steps.tolist(), table.column("c_g[2]").tolist()))
    order = sorted(range(len(frames)), key=lambda k: -sigma.get(int(steps[k]), -1.0))
    chosen = []
    for k in order:
        if all(abs(k - c) >= 10 for c in chosen):
            chosen.append(k)
        if len(chosen) == count:
            break
    picked = []
    for k in chosen:
        atoms = frames[k]
        atoms.numbers[:] = 14
        atoms.info["config_type"] = "explored"
        atoms.info["sigma_max"] = sigma.get(int(steps[k]), float("nan"))
        picked.append(atoms)
    return picked


def step_time(work, model_pt, setting, quick):
    """Seconds per step (LAMMPS Loop time) of 512 atoms in NVE, best of 3, the CPU use LAMMPS
    reported for that run (well below 100 %: the machine was busy) and the CPU seconds per step
    (Loop time times CPU use: on a busy machine closer to what a quiet one would show)."""
    steps = 20 if quick else 100
    best, cpu = None, None
    for repeat in range(3):
        folder = os.path.join(work, "timing", f"{setting}_{repeat}")
        bias = {"plain": "", "fixed": bias_command(None, tau=0.05), "relative": bias_command(0.1)}[setting]
        script = MD.format(cells=4, model=model_pt, bias=bias, temp2=2 * T_K, seed=11, thermo=steps, steps=steps,
                           integrate="fix nve all nve", columns="", dump="") + f"# repeat {repeat}\n"
        _, log = lmp_run(folder, script, reuse=False)  # a timing is always measured anew
        loop = [ln for ln in log.splitlines() if ln.startswith("Loop time of")][-1]
        use = [ln for ln in log.splitlines() if "% CPU use" in ln][-1]
        per_step = float(loop.split()[3]) / steps
        if best is None or per_step < best:
            best, cpu = per_step, float(use.split("%")[0])
    return {"s_per_step": best, "cpu_use_percent": cpu, "cpu_s_per_step": best * cpu / 100.0}


def active_learning(work, model, train, val, heldout, picked, epochs):
    """Retrain from scratch, same settings and seed, on the training set plus each set of
    picked frames (labelled with SW); held-out errors, and the picked frames' own errors,
    before (the model that explored) and after."""
    from llpr.lammps.labelling import label_structures

    rows = {"before": {"heldout": errors(model, heldout), "train_structures": len(train)}}
    for k, (name, frames) in enumerate(picked.items()):
        labelled = label_structures(frames, potential="sw")
        retrained = trained_model(work, train + labelled, val, epochs, f"round1_{k}")
        rows[name] = {"heldout": errors(retrained, heldout), "train_structures": len(train) + len(labelled),
                      "new_frames_before": errors(model, labelled), "new_frames_after": errors(retrained, labelled),
                      "new_frames_sigma_max_mev": [1000 * float(a.info["sigma_max"]) for a in frames]}
    return rows


# ----------------------------------------------------------------------------------- report
def report(result, out):
    lines = [f"# Biased MD: does fix llpr/bias find what the model does not know? ({result['date']})", "",
             f"Model: LocalPotential trained {result['epochs']} epochs on {result['n_train']} SW silicon structures "
             f"(crystal and strained crystal, 300-1200 K); threshold s0: the largest sigma_i of any training atom, "
             f"{result['threshold_mev']:.2f} meV. Exploration: 64 atoms, NVT {T_K:.0f} K, {result['steps']} steps of "
             f"1 fs, seeds {result['seeds']}. First step at which the largest sigma_i passes each threshold, per "
             "seed (- : not in the run); in brackets the median over seeds, a run that never passes counted as "
             "the run's length.", ""]
    head = " | ".join(f"first step past {f:g} s0" for f in FACTORS)
    lines += [f"| setting | {head} | largest sigma_i, meV (each seed) | mean tau |",
              "|---" * (len(FACTORS) + 3) + "|"]
    for name, runs in result["exploration"].items():
        cells = []
        for k in range(len(FACTORS)):
            firsts = [r["first_step_above"][k] for r in runs]
            median = np.median([result["steps"] if f is None else f for f in firsts])
            cells.append(", ".join("-" if f is None else str(f) for f in firsts) + f" ({median:g})")
        tau = "" if name == "plain MD (tau 0)" else f"{np.mean([r['mean_tau'] for r in runs]):.3g}"
        sigma_text = ", ".join(f"{r['max_sigma_mev']:.1f}" for r in runs)
        lines.append(f"| {name} | {' | '.join(cells)} | {sigma_text} | {tau} |")
    t = {k: v["s_per_step"] for k, v in result["step_time"].items()}
    c = {k: v["cpu_s_per_step"] for k, v in result["step_time"].items()}
    cpu = ", ".join(f"{k} {v['cpu_use_percent']:.0f} %" for k, v in result["step_time"].items())
    lines += ["", "The per-seed steps follow from the trajectories: deterministic on one machine, but MD is chaotic "
              "and another CPU's round-off gives other trajectories after a few hundred steps, so compare the "
              "settings, not single numbers.", "",
              f"Cost (512 atoms, NVE, one thread; {'QUICK run' if result['quick'] else 'best of 3'}): plain "
              f"{1000 * t['plain']:.2f} ms/step; fixed tau {t['fixed'] / t['plain']:.3f}x (target <= 1.05); tau "
              f"relative every 10 {t['relative'] / t['plain']:.3f}x. CPU use LAMMPS reported for these runs: {cpu} "
              "(below ~90 % the machine was busy and the wall-time ratios are not a measurement of llpr); in CPU "
              f"time per step: fixed tau {c['fixed'] / c['plain']:.3f}x, tau relative every 10 "
              f"{c['relative'] / c['plain']:.3f}x.", "",
              "One active-learning round (the picked frames labelled with SW, the model retrained from scratch with "
              f"the same settings and seed; held-out: vacancies, interstitials, (001) surfaces, {result['n_heldout']} "
              "structures):",
              "", "| model | training structures | held-out energy RMSE (meV/atom) | held-out force RMSE (eV/A) | "
              "new frames: force RMSE before -> after (eV/A) |", "|---|---|---|---|---|"]
    for name, row in result["active_learning"].items():
        h = row["heldout"]
        new = ""
        if "new_frames_before" in row:
            before, after = row["new_frames_before"], row["new_frames_after"]
            new = f"{before['force_rmse_ev_per_a']:.3f} -> {after['force_rmse_ev_per_a']:.3f}"
        lines.append(f"| {name} | {row['train_structures']} | {h['energy_rmse_mev_per_atom']:.2f} | "
                     f"{h['force_rmse_ev_per_a']:.4f} | {new} |")
    lines += ["", f"Wall time {result['wall_s'] / 60:.1f} min (what was reused from `--work` not counted). Produced "
              f"by `python benchmarks/biased_md.py{' --quick' if result['quick'] else ''}`."]
    write_report(lines, out + ".md")
    with open(out + ".json", "w") as fh:
        json.dump(result, fh, indent=1, default=float)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: checks that it all runs, no verdict")
    parser.add_argument("--work", default=os.path.join("/tmp", "llpr_biased_md"),
                        help="folder for the data, models and runs (reused if present)")
    parser.add_argument("--steps", type=int, default=None, help="MD steps per exploration run (default 3000)")
    parser.add_argument("--seeds", type=int, default=None, help="velocity seeds per setting (default 4)")
    parser.add_argument("--pick", type=int, default=2, help="frames per run added to the training set")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    started = time.time()
    quick = args.quick
    steps = args.steps or (300 if quick else 3000)
    seeds = list(range(1, 1 + (args.seeds or (2 if quick else 4))))
    epochs = 3 if quick else 150
    out = args.out or (os.path.join(args.work, "biased_md") if quick else os.path.join(HERE, "results", "biased_md"))
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(1)
    from llpr.modelfile import export_model

    train, val, heldout = datasets(args.work, quick)
    model = trained_model(args.work, train, val, epochs, "model")
    llpr = calibrated(model, train, val)
    model_pt = export_model(llpr, os.path.join(args.work, "model.pt"))
    threshold = sigma_threshold(model_pt, train)
    print(f"{len(train)} training structures, threshold {1000 * threshold:.2f} meV", flush=True)

    exploration, picked = {}, {}
    for ratio in (0.0,) + RATIOS:
        name = "plain MD (tau 0)" if ratio == 0 else f"tau relative {ratio}"
        runs, frames = [], []
        for seed in seeds:
            table, folder = explore(args.work, model_pt, ratio, seed, steps)
            runs.append(summarize_run(table, threshold, steps))
            frames += pick_frames(table, folder, args.pick)
            print(name, seed, runs[-1], flush=True)
        exploration[name] = runs
        if ratio in (0.0, RATIOS[-1]):
            picked[f"+ frames of {name}"] = frames

    timing = {s: step_time(args.work, model_pt, s, quick) for s in ("plain", "fixed", "relative")}
    print("step time", timing, flush=True)
    al = active_learning(args.work, model, train, val, heldout, picked, epochs)
    result = {"date": str(date.today()), "quick": quick, "epochs": epochs,
              "n_train": len(train), "n_heldout": len(heldout), "threshold_mev": 1000 * threshold, "steps": steps,
              "seeds": seeds, "exploration": exploration, "step_time": timing, "active_learning": al,
              "wall_s": time.time() - started}
    report(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
