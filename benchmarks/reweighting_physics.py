"""Is the reweighting right? Member k of the last-layer ensemble, run directly, against the
mean model's trajectory reweighted to member k.

    python benchmarks/reweighting_physics.py                 # ~35 min on 2 cores
    python benchmarks/reweighting_physics.py --quick         # minutes; a smoke test, no verdict

1. Train a small silicon model on Stillinger-Weber data (crystal, strained, liquid, vacancy,
   amorphous; ``llpr.lammps.sampling``), fit and calibrate the LLPR, export it with a K = 32
   last-layer ensemble (seed 0).
2. A pilot NPT run of the mean model (64 atoms of diamond Si, 1200 K, 0 bar); from it, two
   members: the one with the largest reweighted shift of the density among those whose
   weights keep an effective sample size (ESS) of at least half the frames, and the same
   among those with an ESS fraction between 0.1 (where ``llpr reweight`` starts warning) and
   0.3.
3. Production: the mean model (with ``compute e all llpr ensemble yes``, recorded by ``fix
   llpr/record``: the record ``llpr reweight`` reads) and each chosen member exported as a
   model of its own (``llpr.lammps.reweight.export_member``: read-out ``w + dw_k``; its thermo output
   and a ``fix ave/time`` file of the RDF, read by ``benchmarks/lammps_output.py``), the same
   protocol, independent velocities, two runs at a time.
4. Three observables: the potential energy per atom (depends on the model: member k's own
   energies ``pe + dE_k`` are reweighted), the density, and the height of the first peak of
   the radial distribution function (the mean of ``g(r)`` over the bins within 0.1 A of the
   mean model's first maximum, per frame). For each: member k's direct-MD average with its
   block-jackknife error, the reweighted estimates (direct exponential and cumulant
   expansion) with theirs, and ``z = (reweighted - direct MD) / sqrt(err_rw^2 + err_MD^2)``.
   The runs are independent, so ``z`` is standard normal if both estimates are unbiased and
   their errors right; the check is ``|z| <= 3`` (a false alarm in ~0.3 % of cases per
   observable and estimator, ~4 % for the twelve). How far member k is from the mean model in
   the same units (``z`` of the shift) says how much the check can see.
5. Cumulant expansion against direct reweighting for every member with an ESS fraction of at
   least 0.5: ``(direct - CEA) / err(direct - CEA)``, and their difference against the model
   uncertainty.

Runs already in ``--work`` with the same input are reused (the trained model too).
Writes ``benchmarks/results/reweighting_physics.{md,json}`` and ``..._rdf.png`` (``--out``).
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

from llpr.lammps.reweight import BOLTZMANN

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
BIN = os.path.dirname(sys.executable)
LMP = os.path.join(BIN, "lmp")
K, SEED, T_K = 32, 0, 1200.0
N_ATOMS = 64
PEAK_HALF_WIDTH = 0.1  # A

MD = """units metal
atom_style atomic
atom_modify map array
lattice diamond 5.431
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
mass 1 28.0855
pair_style llpr {model} device cpu
pair_coeff * * Si
compute rdf all rdf 80
variable rho equal density
velocity all create {temp2} {seed} mom yes rot yes dist gaussian
fix npt all npt temp {temp} {temp} 0.1 iso 0.0 0.0 1.0
timestep 0.001
neighbor 1.0 bin
thermo_style custom step temp pe press vol density
thermo_modify format float %.15g
thermo {every}
run {equilibration}
reset_timestep 0
{production}
run {steps}
"""
# the mean model's production is recorded for reweighting; a member's (no ensemble in its
# file) is read from its thermo output and an RDF file
RECORD = """compute e all llpr ensemble yes max no
fix rec all llpr/record {every} md.rec e v_rho c_rdf[1] c_rdf[2]"""
PLAIN = "fix rdf all ave/time {every} 1 {every} c_rdf[*] file rdf.dat mode vector"


def train(work: str, quick: bool):
    """The calibrated LLPR of a small model trained on SW silicon (cached in ``work``)."""
    from llpr.data import split_dataset
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.lammps.sampling import generate_dataset
    from llpr.models.train import TrainConfig, evaluate_errors, train_model
    from llpr.uncertainty.estimator import LLPR, load_llpr, save_llpr

    path = os.path.join(work, "llpr.ckpt")
    if os.path.exists(path):
        return load_llpr(path), json.load(open(os.path.join(work, "training.json")))
    n = 2 if quick else 1
    counts = {"crystal": 30 // n, "strained": 14 // n, "liquid": 16 // n, "vacancy": 10 // n, "amorphous": 10 // n}
    structures = generate_dataset(potential="sw", n_per_type=counts, seed=0, progress=False)
    train_set, val, test = split_dataset(structures, (0.7, 0.15, 0.15), seed=0)
    config = TrainConfig(max_epochs=3 if quick else 400, time_limit_s=30 if quick else 420, dtype="float64", seed=0,
                         num_threads=2)
    model, history = train_model(train_set, val, config, progress=False)

    def loader(part):
        return make_loader(AtomisticDataset(part, model.cutoff, torch.float64), 8)

    llpr = LLPR(model).fit(loader(train_set)).calibrate(loader(val))
    save_llpr(llpr, path)
    errors = evaluate_errors(model, AtomisticDataset(test, model.cutoff, torch.float64))
    info = {"structures": {k: int(v) for k, v in counts.items()}, "epochs": history["best_epoch"] + 1,
            "wall_s": history["wall_time_s"], "test_energy_rmse_mev_per_atom": 1000 * errors["energy_rmse_per_atom"],
            "test_force_rmse_ev_per_a": errors["force_rmse"], "calibration": llpr.calibration_summary()}
    with open(os.path.join(work, "training.json"), "w") as fh:
        json.dump(info, fh, indent=1, default=float)
    return llpr, info


def start_md(folder, model, steps, equilibration, every, seed, ensemble):
    """Start one run in ``folder`` (None: a finished run with the same input is there already)."""
    os.makedirs(folder, exist_ok=True)
    script = MD.format(model=model, production=(RECORD if ensemble else PLAIN).format(every=every), temp=T_K,
                       temp2=2 * T_K, seed=seed, steps=steps, equilibration=equilibration, every=every)
    path, log = os.path.join(folder, "in.md"), os.path.join(folder, "log.lammps")
    if os.path.exists(path) and open(path).read() == script and os.path.exists(log) and \
            "Total wall time" in open(log).read():
        return None
    with open(path, "w") as fh:
        fh.write(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    return subprocess.Popen([LMP, "-in", "in.md", "-log", "log.lammps", "-nocite", "-screen", "none"], cwd=folder,
                            env=env)


def wait(procs):
    for p in procs:
        if p is not None and p.wait() != 0:
            raise RuntimeError(f"LAMMPS failed (exit {p.returncode}) in {p.args}; see its log.lammps")


def observables(folder, peak=None, model=None):
    """Per-frame observables of a run: steps, pe per atom, density, first-peak height (and the
    RDF); with ``model`` (the mean model's file), read from the run's record, which must have
    been written with that file, with the members' dE_k."""
    if model is not None:
        from llpr.lammps.reweight import select_segments

        segments = select_segments(os.path.join(folder, "md.rec"), model=model)
        if len(segments) != 1:
            raise RuntimeError(f"{folder}/md.rec holds {len(segments)} runs; the production is one run")
        rec = segments[0]
        if rec.header["members"] != K or rec.header["units"] != "metal":
            raise RuntimeError(f"{rec.where}: K = {rec.header['members']}, units {rec.header['units']}; expected "
                               f"K = {K}, metal")
        steps, atoms = rec.steps, rec.column("atoms")
        pe, density, r, g = rec.column("pe"), rec.column("v_rho"), rec.column("c_rdf[1]")[0], rec.column("c_rdf[2]")
        dE = rec.column("dE")
    else:
        from lammps_output import read_ave_time_vector, read_thermo

        thermo = read_thermo(os.path.join(folder, "log.lammps"))[-1]
        rdf = read_ave_time_vector(os.path.join(folder, "rdf.dat"))
        steps, ia, ib = np.intersect1d(thermo.steps, rdf.steps, return_indices=True)
        atoms = np.full(steps.size, N_ATOMS)  # thermo_modify norm no (the default): pe is the total
        pe, density = thermo.column("PotEng")[ia], thermo.column("Density")[ia]
        r, g = rdf.column("c_rdf[1]")[0], rdf.column("c_rdf[2]")[ib]
        dE = None
    if not np.all(atoms == N_ATOMS):
        raise RuntimeError(f"{folder}: {sorted(set(atoms.tolist()))} atoms, expected {N_ATOMS}")
    if peak is None:  # the first maximum of this run's mean g(r)
        mean_g = g.mean(axis=0)
        first = int(np.argmax(mean_g[: np.searchsorted(r, 3.0)]))
        peak = float(r[first])
    bins = np.abs(r - peak) <= PEAK_HALF_WIDTH + 1e-9
    out = {"steps": steps, "pe_per_atom": pe / N_ATOMS, "density": density, "peak": g[:, bins].mean(axis=1),
           "peak_r": peak, "r": r, "g": g}
    if dE is not None:
        out["dE"] = dE
    return out


def reweight_all(obs):
    from llpr.lammps.reweight import reweight

    dE = obs["dE"]
    values = {"pe_per_atom": obs["pe_per_atom"], "density": obs["density"], "peak": obs["peak"], "rdf": obs["g"]}
    return reweight(dE, values, T_K, member_deviations={"pe_per_atom": dE / N_ATOMS}, warn=False)


def choose_members(pilot, quick):
    """From the pilot run: the member with the largest reweighted density shift among those
    whose weights keep an ESS of at least half the frames, and the same among those with an
    ESS fraction between 0.1 (the warning threshold) and 0.3."""
    frac = pilot.ess / pilot.frames
    dens = pilot.observables["density"]
    shift = np.abs(dens.members["cea"][:, 0] - dens.mean_model[0])
    chosen = []
    for lo, hi in ((0.5, 1.01), (0.1, 0.3)):
        eligible = np.nonzero((frac >= lo) & (frac < hi))[0]
        if eligible.size:
            chosen.append(int(eligible[np.argmax(shift[eligible])]) + 1)
    if quick and not chosen:  # an undertrained model: any member, to exercise the code
        chosen = [int(np.argmax(frac)) + 1]
    if not chosen:
        raise RuntimeError(f"no member keeps an ESS fraction of 0.1 in the pilot (largest {frac.max():.2f}): the "
                           "model's energy deviations are too large for a check of direct reweighting here")
    return chosen


def compare(result, member_obs, k, block_average):
    """Member k's direct-MD averages against the mean model's run reweighted to it."""
    rows = {}
    for name in ("pe_per_atom", "density", "peak"):
        r = result.observables[name]
        md_mean, md_err, md_block = block_average(member_obs[name])
        row = {"member_md": float(md_mean), "member_md_error": float(md_err), "member_md_block": int(md_block),
               "mean_model": float(r.mean_model[0]), "mean_model_error": float(r.mean_model_error[0])}
        for est in ("direct", "cea"):
            value, err = float(r.members[est][k, 0]), float(r.members_error[est][k, 0])
            row[est] = value
            row[f"{est}_error"] = err
            row[f"z_{est}"] = (value - md_mean) / float(np.hypot(err, md_err))
        row["z_shift"] = (md_mean - row["mean_model"]) / float(np.hypot(md_err, row["mean_model_error"]))
        for est in ("direct", "cea"):  # the miss in units of the model uncertainty
            row[f"{est}_miss_over_model_sigma"] = (row[est] - md_mean) / float(r.model_sigma["cea"][0])
        row["model_sigma_cea"] = float(r.model_sigma["cea"][0])
        row["model_sigma_direct"] = float(r.model_sigma["direct"][0])
        rows[name] = row
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: checks that it all runs, no verdict")
    parser.add_argument("--work", default=os.path.join("/tmp", "llpr_reweighting_physics"),
                        help="folder for the model, the runs and the trained checkpoint (reused if present)")
    parser.add_argument("--steps", type=int, default=None, help="production steps per run (default 250000)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "reweighting_physics"))
    args = parser.parse_args(argv)
    started = time.time()
    steps = args.steps or (4000 if args.quick else 250_000)
    pilot_steps = 2000 if args.quick else 25_000
    equilibration = 1000 if args.quick else 5000
    every = 10
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(2)
    from llpr.modelfile import export_model
    from llpr.lammps.reweight import block_average, export_member, plot_result

    llpr, training = train(args.work, args.quick)
    mean_pt = export_model(llpr, os.path.join(args.work, "mean.pt"), ensemble=K, seed=SEED)
    print(f"model: {training}", flush=True)

    # pilot: choose the members
    wait([start_md(os.path.join(args.work, "pilot"), mean_pt, pilot_steps, equilibration, every, 11, True)])
    pilot = reweight_all(observables(os.path.join(args.work, "pilot"), model=mean_pt))
    members = choose_members(pilot, args.quick)
    frac = pilot.ess / pilot.frames
    print(f"pilot: ESS fraction {frac.min():.2f}..{frac.max():.2f}; members {members}", flush=True)
    files = {m: export_member(llpr, os.path.join(args.work, f"member{m}.pt"), m, K, SEED) for m in members}

    # production, two runs at a time
    runs = [("mean", mean_pt, 22, True)] + [(f"member{m}", files[m], 33 + i, False) for i, m in enumerate(members)]
    for start in range(0, len(runs), 2):
        wait([start_md(os.path.join(args.work, name), model, steps, equilibration, every, seed, ens)
              for name, model, seed, ens in runs[start:start + 2]])
    mean_obs = observables(os.path.join(args.work, "mean"), model=mean_pt)
    result = reweight_all(mean_obs)
    frac = result.ess / result.frames
    checks = {}
    for m in members:
        member_obs = observables(os.path.join(args.work, f"member{m}"), peak=mean_obs["peak_r"])
        checks[str(m)] = {"ess_fraction": float(frac[m - 1]), "pilot_ess_fraction": float(pilot.ess[m - 1] / pilot.frames),
                          "rows": compare(result, member_obs, m - 1, block_average)}
    large = np.nonzero(frac >= 0.5)[0]
    cea_vs_direct = {}
    for name in ("pe_per_atom", "density", "peak"):
        r = result.observables[name]
        diff = r.members["direct"][large, 0] - r.members["cea"][large, 0]
        z = diff / r.members_error["direct-cea"][large, 0]
        cea_vs_direct[name] = {"members": int(large.size), "max_abs_z": float(np.abs(z).max()) if z.size else None,
                               "rms_z": float(np.sqrt(np.mean(z ** 2))) if z.size else None,
                               "max_abs_over_model_sigma": float(np.abs(diff).max() / r.model_sigma["cea"][0])
                               if z.size else None}
    # the check, per estimator: the largest |z| over the members and observables (and per member)
    verdict = {est: {m: max(abs(row[f"z_{est}"]) for row in c["rows"].values()) for m, c in checks.items()}
               for est in ("direct", "cea")}
    beta = 1.0 / (BOLTZMANN["metal"] * T_K)
    out = {
        "date": date.today().isoformat(), "quick": args.quick, "temperature": T_K, "atoms": N_ATOMS, "members": K,
        "steps": steps, "pilot_steps": pilot_steps, "equilibration": equilibration, "every": every,
        "frames": result.frames, "training": training, "ess_fraction": frac.tolist(),
        "beta_std_dE": (beta * mean_obs["dE"].std(axis=0)).tolist(), "peak_r": mean_obs["peak_r"],
        "checks": checks, "cea_vs_direct": cea_vs_direct, "verdict": verdict, "elapsed_s": time.time() - started,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(out, fh, indent=1, default=float)
    # the RDF with its model-uncertainty band (from the mean model's run)
    result.observables["rdf"].axis, result.observables["rdf"].axis_name = mean_obs["r"], "r (A)"
    plot_result(result, args.out + "_rdf.png", names=["rdf"])
    report = format_report(out, " ".join(["python benchmarks/reweighting_physics.py"] + (argv or sys.argv[1:])))
    with open(args.out + ".md", "w") as fh:
        fh.write(report)
    print(report)
    return out


def format_report(r, command):
    t = r["training"]
    labels = {"pe_per_atom": "potential energy per atom (eV), member's own energies",
              "density": "density (g/cm^3)", "peak": f"first RDF peak height (bins within {PEAK_HALF_WIDTH} A of "
                                                     f"{r['peak_r']:.3f} A)"}
    frac = np.array(r["ess_fraction"])
    bsd = np.array(r["beta_std_dE"])
    lines = [
        "# Reweighting to an ensemble member vs running it: measured agreement",
        "",
        f"`{command}`, {r['date']}. Model: trained {t['epochs']} epochs ({t['wall_s']:.0f} s) on SW silicon "
        f"({sum(t['structures'].values())} structures), test RMSE {t['test_energy_rmse_mev_per_atom']:.2f} meV/atom "
        f"and {t['test_force_rmse_ev_per_a']:.3f} eV/A; alpha = {t['calibration']['alpha']:.3g}; K = {r['members']} "
        "members (seed 0).",
        "",
        f"{r['atoms']} atoms of diamond Si, NPT at {r['temperature']:.0f} K and 0 bar (Nose-Hoover, 0.1 / 1 ps), "
        f"1 fs; {r['equilibration']} steps of equilibration, then {r['steps']} steps per run, a frame every "
        f"{r['every']} steps ({r['frames']} frames of the mean model's run used). Along that run, beta*std(dE_k) is "
        f"{bsd.min():.2f} to {bsd.max():.2f} (median {np.median(bsd):.2f}) over the members, and the ESS fraction of "
        f"their weights {frac.min():.3f} to {frac.max():.2f} (median {np.median(frac):.2f}; below 0.1 for "
        f"{int((frac < 0.1).sum())} of {len(frac)}).",
        "",
        "Members run directly, chosen on a pilot run of the mean model "
        f"({r['pilot_steps']} steps): the largest reweighted density shift among the members with an ESS fraction "
        ">= 0.5, and the same among those between 0.1 and 0.3. Errors are block-jackknife sampling errors (1 "
        "sigma). z = (reweighted - member MD) / combined error; the two runs are independent, so the check is "
        "|z| <= 3 for each observable and estimator. z of the shift = (member MD - mean model) / combined error: "
        "how far apart the two models are in these units, i.e. what the check can resolve.",
        "",
    ]
    for m, c in r["checks"].items():
        lines += [
            f"### Member {m} (ESS fraction {c['ess_fraction']:.2f})",
            "",
            "| observable | mean model | member MD | z of the shift | reweighted (direct) | z | reweighted (CEA) | z "
            "| model sigma (CEA) | (direct - MD) / model sigma | (CEA - MD) / model sigma |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in c["rows"].items():
            lines.append(
                f"| {labels[name]} | {row['mean_model']:.6g} +- {row['mean_model_error']:.2g} | {row['member_md']:.6g} "
                f"+- {row['member_md_error']:.2g} | {row['z_shift']:+.1f} | {row['direct']:.6g} +- "
                f"{row['direct_error']:.2g} | {row['z_direct']:+.2f} | {row['cea']:.6g} +- {row['cea_error']:.2g} | "
                f"{row['z_cea']:+.2f} | {row['model_sigma_cea']:.2g} | {row['direct_miss_over_model_sigma']:+.2f} | "
                f"{row['cea_miss_over_model_sigma']:+.2f} |")
        lines.append("")
    lines += ["Verdict (|z| <= 3)" + (" (quick run: not a verdict)" if r["quick"] else "") + ":", ""]
    for est, label in (("direct", "direct reweighting"), ("cea", "cumulant expansion")):
        per = r["verdict"][est]
        worst = max(per.values())
        lines.append(f"* {label}: largest |z| {worst:.2f} ("
                     + ", ".join(f"member {m} (ESS {r['checks'][m]['ess_fraction']:.2f}): {v:.2f}" for m, v in per.items())
                     + f") -- {'within the bound' if worst <= 3 else '**outside the bound**'}")
    lines += [
        "",
        "## Cumulant expansion vs direct reweighting (members with ESS fraction >= 0.5)",
        "",
        "| observable | members | max abs z | rms z | max abs(direct - CEA) / model sigma |",
        "|---|---|---|---|---|",
    ]
    for name, c in r["cea_vs_direct"].items():
        if c["max_abs_z"] is None:
            lines.append(f"| {name} | 0 | - | - | - |")
        else:
            lines.append(f"| {name} | {c['members']} | {c['max_abs_z']:.2f} | {c['rms_z']:.2f} | "
                         f"{c['max_abs_over_model_sigma']:.2f} |")
    lines += ["", "z = (direct - CEA) / block-jackknife error of the difference (the two share the frames, so this "
              "error is much smaller than either estimate's).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
