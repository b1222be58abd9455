"""Uncertainty quality: LLPR (one model) against a deep ensemble (K models) on silicon.

Data: Si.sw reference structures (`llpr.lammps.sampling.generate_dataset`). In distribution (ID):
crystal up to 900 K, strained crystal, melt-quenched amorphous and liquid; their held-out
10 % is the ID test set, another 10 % the validation set. Out of distribution (OOD), never
trained on: (001) surfaces, vacancies, interstitials and crystal above 900 K.

Models: K potentials trained on the same data with the same budget and different seeds form
the deep ensemble; LLPR is fitted on member 0 alone (one model, 1/K of the training cost).
The budget is a fixed number of epochs per model (``--epochs``, the default mode: early
stopping is off, so every model runs exactly that many epochs and keeps its best-validation
state), or a wall-clock limit per model (``--time-limit``, which on a shared machine gives the
models unequal numbers of epochs). Both uncertainties get their scale fitted on the (ID)
validation set's energies only (LLPR: alpha and varsigma; ensemble: a factor on its
variance).

Energies: one error and one sigma per structure (LLPR: the analytic sigma; ensemble: the
member spread). Forces, per Cartesian component: LLPR's per-atom force sigma from a K'-member
last-layer ensemble (``LLPR.sample_ensemble`` + ``predict(..., forces=True)``: ``sqrt(sum_k
|F_k,i - F_i|^2 / (3 (K' - 1)))``, the same for the three components of an atom) against the
deep ensemble's per-component member spread (scaled by its energy-fitted factor).

Reported per test set: energy and force RMSE, NLL, Spearman(|error|, sigma), miscalibration
area, 68 %/95 % coverage (energies and force components), and training and inference cost.

    python benchmarks/uq_quality.py [--members 5] [--epochs 300 | --time-limit 150]
                                    [--llpr-ensemble 32] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import numpy as np
import torch
from scipy.stats import spearmanr

from deep_ensemble import DeepEnsemble
from llpr.evaluate import uncertainty_metrics
from llpr.graphs import AtomisticDataset, make_loader
from llpr.lammps.sampling import generate_dataset
from llpr.models.train import TrainConfig, predict_batch, train_model
from llpr.uncertainty.estimator import LLPR

OOD_TYPES = ("surface", "vacancy", "interstitial")


def is_ood(atoms) -> bool:
    t = atoms.info["config_type"]
    return t in OOD_TYPES or (t == "crystal" and atoms.info.get("temperature", 0.0) > 900.0)


def split(structures, seed: int):
    idd = [a for a in structures if not is_ood(a)]
    ood = [a for a in structures if is_ood(a)]
    order = np.random.default_rng(seed).permutation(len(idd))
    n_val = n_test = max(4, len(idd) // 10)  # 4: the fewest validation structures that calibrate a power law
    val = [idd[i] for i in order[:n_val]]
    test = [idd[i] for i in order[n_val : n_val + n_test]]
    train = [idd[i] for i in order[n_val + n_test :]]
    return train, val, test, ood


def train_config(args) -> TrainConfig:
    """Fixed epochs: early stopping and the minimum-learning-rate stop are switched off (the
    learning rate still decays on plateaus), so every model runs exactly ``args.epochs``
    epochs and keeps its best-validation state. Wall clock: the default stopping rules plus
    the time limit, as before."""
    if args.time_limit is not None:
        return TrainConfig(time_limit_s=args.time_limit, seed=args.seed, num_threads=args.threads)
    return TrainConfig(max_epochs=args.epochs, early_stopping_patience=args.epochs + 1, min_learning_rate=0.0,
                       time_limit_s=None, seed=args.seed, num_threads=args.threads)


def train_members(train, val, n_members: int, config: TrainConfig):
    """The deep ensemble's members (seeds ``config.seed + k``), as `DeepEnsemble.train` trains
    them, keeping each member's training history."""
    members, times, runs = [], [], []
    for k in range(n_members):
        start = time.perf_counter()
        model, history = train_model(train, val, replace(config, seed=config.seed + k), progress=False)
        times.append(time.perf_counter() - start)
        members.append(model)
        runs.append({"seed": config.seed + k, "epochs": len(history["epoch"]), "best_epoch": history["best_epoch"],
                     "stop_reason": history["stop_reason"], "train_s": times[-1],
                     "best_val_energy_rmse_mev_per_atom": 1000 * history["val_energy_rmse"][history["best_epoch"]],
                     "best_val_force_rmse": history["val_force_rmse"][history["best_epoch"]]})
        print(f"member {k}: {runs[-1]['epochs']} epochs ({runs[-1]['stop_reason']}), best {runs[-1]['best_epoch']}, "
              f"{times[-1]:.0f} s, val {runs[-1]['best_val_energy_rmse_mev_per_atom']:.2f} meV/atom "
              f"{runs[-1]['best_val_force_rmse']:.4f} eV/A", flush=True)
    ensemble = DeepEnsemble(members)
    ensemble.train_time_s = times
    return ensemble, runs


def llpr_predict(llpr: LLPR, atoms_list, weights: torch.Tensor | None = None, batch_size: int = 8) -> dict:
    """Energies, LLPR variances and forces, batched like the ensemble's predictions; with
    ``weights`` (a last-layer ensemble), also the per-atom force sigma, broadcast to the three
    components (``force_variance``, N x 3, like the deep ensemble's)."""
    dtype = next(llpr.model.parameters()).dtype
    dataset = AtomisticDataset(atoms_list, llpr.model.cutoff, dtype, require_labels=False)
    energies, variances, forces, force_sigma = [], [], [], []
    for batch in make_loader(dataset, batch_size):
        if weights is None:
            out = llpr.predict(batch)
            _, f = predict_batch(llpr.model, batch, forces=True)
        else:
            out = llpr.predict(batch, ensemble=weights, forces=True)
            f = out["forces"]
            force_sigma.append(out["force_sigma"].numpy())
        energies.append(out["prediction"].numpy())
        variances.append(out["variance"].numpy())
        forces.append(f.detach().double().numpy())
    pred = {"energy": np.concatenate(energies), "energy_variance": np.concatenate(variances),
            "forces": np.concatenate(forces)}
    if weights is not None:
        fs = np.concatenate(force_sigma)
        pred["force_variance"] = np.repeat(fs[:, None] ** 2, 3, axis=1)
    return pred



def _calibration(errors, sigmas, prefix=""):
    """llpr.evaluate's calibration metrics under this report's key names."""
    m = uncertainty_metrics(errors, sigmas, prefix)
    m[f"{prefix}spearman"] = m.pop(f"{prefix}spearman_abs_error_sigma")
    m.pop(f"{prefix}binned")
    return m

def metrics(pred: dict, atoms_list) -> dict:
    ref = np.array([a.info["energy"] for a in atoms_list])
    n = np.array([len(a) for a in atoms_list])
    f_ref = np.concatenate([a.arrays["forces"] for a in atoms_list])
    err = pred["energy"] - ref
    sigma = np.sqrt(pred["energy_variance"])
    out = {
        "n_structures": len(atoms_list),
        "n_atoms": int(n.sum()),
        "energy_rmse_mev_per_atom": 1000 * float(np.sqrt(np.mean((err / n) ** 2))),
        "energy_rmse": float(np.sqrt(np.mean(err**2))),
        "energy_sigma_rms": float(np.sqrt(np.mean(sigma**2))),
        "force_rmse": float(np.sqrt(np.mean((pred["forces"] - f_ref) ** 2))),
        "mean_sigma_mev_per_atom": 1000 * float(np.mean(sigma / n)),
        **_calibration(err, sigma),
    }
    if "force_variance" in pred:
        # per Cartesian component: each component's error against its own sigma
        fs = np.sqrt(np.maximum(pred["force_variance"], 1e-24)).ravel()
        fe = (pred["forces"] - f_ref).ravel()
        out.update({
            "force_sigma_rms": float(np.sqrt(np.mean(fs**2))),
            **_calibration(fe, fs, "force_"),
        })
        # per atom, as `llpr evaluate` reports it: |force error| against the atom's sigma
        atom_err = np.linalg.norm(pred["forces"] - f_ref, axis=1)
        atom_sigma = np.sqrt(np.mean(np.maximum(pred["force_variance"], 1e-24), axis=1))
        out["force_spearman_per_atom"] = float(spearmanr(atom_err, atom_sigma).correlation)
    return out


def machine_description() -> str:
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            models = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if models:
            name = models[0]
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPU cores, no GPU used"


def relative_gap(a: float, b: float) -> float:
    """(a - b) / |b|: how much larger a is than b, relative to b."""
    return (a - b) / abs(b) if b != 0 else float("inf")


def _nll_points(errors: np.ndarray, variances: np.ndarray) -> np.ndarray:
    return 0.5 * np.log(2.0 * np.pi * variances) + 0.5 * errors**2 / variances


def nll_difference_ci(p_a: dict, p_b: dict, atoms_list, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap over structures of NLL(a) - NLL(b), for energies and for force
    components (a structure's components stay together: they are correlated). 95 % interval."""
    ref = np.array([a.info["energy"] for a in atoms_list])
    n = np.array([len(a) for a in atoms_list])
    f_ref = np.concatenate([a.arrays["forces"] for a in atoms_list])
    d_e = (_nll_points(p_a["energy"] - ref, p_a["energy_variance"])
           - _nll_points(p_b["energy"] - ref, p_b["energy_variance"]))
    owner = np.repeat(np.arange(len(atoms_list)), n)
    d_f_atom = (_nll_points(p_a["forces"] - f_ref, np.maximum(p_a["force_variance"], 1e-24))
                - _nll_points(p_b["forces"] - f_ref, np.maximum(p_b["force_variance"], 1e-24))).sum(axis=1)
    d_f_sum = np.bincount(owner, weights=d_f_atom, minlength=len(atoms_list))
    count = 3.0 * n
    rng = np.random.default_rng(seed)
    e_boot, f_boot = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(atoms_list), len(atoms_list))
        e_boot.append(d_e[idx].mean())
        f_boot.append(d_f_sum[idx].sum() / count[idx].sum())
    return {
        "energy": {"difference": float(d_e.mean()), "ci95": [float(np.percentile(e_boot, 2.5)),
                                                            float(np.percentile(e_boot, 97.5))]},
        "forces": {"difference": float(d_f_sum.sum() / count.sum()),
                   "ci95": [float(np.percentile(f_boot, 2.5)), float(np.percentile(f_boot, 97.5))]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=300,
                        help="training budget: exactly this many epochs per model (default 300; no early stopping)")
    budget.add_argument("--time-limit", type=float, default=None,
                        help="training budget: wall-clock seconds per model instead (unequal epochs when loaded)")
    parser.add_argument("--llpr-ensemble", type=int, default=32,
                        help="members K of LLPR's last-layer ensemble for the force sigma (default 32)")
    parser.add_argument("--ensemble-seed", type=int, default=0, help="seed of LLPR's last-layer ensemble")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: faster than 2 on this 2-core machine when it is shared)")
    parser.add_argument("--n-per-type", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test run (results *_quick.*)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.quick:
        args.members, args.n_per_type, args.llpr_ensemble = 2, 6, 4
        if args.time_limit is None:
            args.epochs = 3
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    start = time.perf_counter()
    structures = generate_dataset("sw", n_per_type=args.n_per_type, seed=args.seed, progress=False)
    data_s = time.perf_counter() - start
    train, val, test, ood = split(structures, args.seed)
    print(f"data: {len(structures)} structures in {data_s:.0f} s; train {len(train)} / val {len(val)} / "
          f"ID test {len(test)} / OOD {len(ood)}", flush=True)
    config = train_config(args)

    ensemble, runs = train_members(train, val, args.members, config)
    model = ensemble.members[0]
    t0 = time.perf_counter()
    dtype = next(model.parameters()).dtype
    llpr = LLPR(model).fit(make_loader(AtomisticDataset(train, model.cutoff, dtype), 16))
    llpr.calibrate(make_loader(AtomisticDataset(val, model.cutoff, dtype), 16))
    weights = llpr.sample_ensemble(args.llpr_ensemble, seed=args.ensemble_seed)
    llpr_fit_s = time.perf_counter() - t0
    ensemble.calibrate(val)

    ens_name = f"deep ensemble (K={args.members})"
    llpr_name = f"LLPR (forces: last-layer ensemble K={args.llpr_ensemble})"
    results, inference, gaps = {}, {}, {}
    for name, data in (("ID test", test), ("OOD test", ood)):
        t0 = time.perf_counter()
        p_plain = llpr_predict(llpr, data)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        p_llpr = llpr_predict(llpr, data, weights)
        t_llpr = time.perf_counter() - t0
        force_check = float(np.abs(p_plain["forces"] - p_llpr["forces"]).max())  # same model, two code paths
        t0 = time.perf_counter()
        p_ens = ensemble.predict(data)
        t_ens = time.perf_counter() - t0
        results[name] = {llpr_name: metrics(p_llpr, data) | {"max_force_difference_of_code_paths": force_check},
                         ens_name: metrics(p_ens, data)}
        gaps[name] = nll_difference_ci(p_llpr, p_ens, data, seed=args.seed)
        inference[name] = {"LLPR energy sigma only (s)": t_plain, "LLPR with force sigma (s)": t_llpr,
                           f"{ens_name} (s)": t_ens}
        print(f"{name}: done", flush=True)
    # LLPR on every member: how much the comparison depends on which seed LLPR's model had
    per_member = []
    for k, member in enumerate(ensemble.members):
        llpr_k = LLPR(member).fit(make_loader(AtomisticDataset(train, member.cutoff, dtype), 16))
        llpr_k.calibrate(make_loader(AtomisticDataset(val, member.cutoff, dtype), 16))
        w_k = llpr_k.sample_ensemble(args.llpr_ensemble, seed=args.ensemble_seed)
        row = {"member": k, "val_energy_rmse_mev_per_atom": runs[k]["best_val_energy_rmse_mev_per_atom"]}
        for name, data in (("ID test", test), ("OOD test", ood)):
            row[name] = metrics(llpr_predict(llpr_k, data, w_k), data)
        per_member.append(row)
    print("LLPR on every member: done", flush=True)
    train_one = ensemble.train_time_s[0]
    costs = {
        "LLPR": {"training_s": train_one + llpr_fit_s, "member0_training_s": train_one,
                 "llpr_fit_calibrate_sample_s": llpr_fit_s},
        ens_name: {"training_s": float(np.sum(ensemble.train_time_s))},
        "inference_s": inference,
    }
    wall = time.perf_counter() - start
    load_end = os.getloadavg()

    budget_txt = (f"--epochs {args.epochs}" if args.time_limit is None else f"--time-limit {args.time_limit:g}")
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python benchmarks/uq_quality.py "
               f"--members {args.members} {budget_txt} --llpr-ensemble {args.llpr_ensemble} "
               f"--ensemble-seed {args.ensemble_seed} --threads {args.threads} --n-per-type {args.n_per_type} "
               f"--seed {args.seed}" + (" --quick" if args.quick else ""))
    epochs = [r["epochs"] for r in runs]
    if args.time_limit is None:
        budget_line = (f"Budget: exactly {args.epochs} epochs per model (early stopping off; each keeps its "
                       f"best-validation state: best epochs {', '.join(str(r['best_epoch']) for r in runs)}); "
                       f"epochs run: {', '.join(map(str, epochs))}.")
    else:
        budget_line = (f"Budget: {args.time_limit:g} s wall clock per model; epochs run: "
                       f"{', '.join(map(str, epochs))} (stop: {', '.join(r['stop_reason'] for r in runs)}).")
    e_cols = [
        ("energy RMSE (meV/atom)", "energy_rmse_mev_per_atom", "{:.2f}"),
        ("RMSE / RMS sigma (eV)", None, None),
        ("NLL", "nll", "{:.3f}"),
        ("Spearman", "spearman", "{:.2f}"),
        ("miscal. area", "miscalibration_area", "{:.3f}"),
        ("cov. 68%", "coverage_68", "{:.2f}"),
        ("cov. 95%", "coverage_95", "{:.2f}"),
    ]
    f_cols = [
        ("force RMSE (eV/A)", "force_rmse", "{:.4f}"),
        ("RMS sigma (eV/A)", "force_sigma_rms", "{:.4f}"),
        ("NLL", "force_nll", "{:.3f}"),
        ("Spearman", "force_spearman", "{:.2f}"),
        ("miscal. area", "force_miscalibration_area", "{:.3f}"),
        ("cov. 68%", "force_coverage_68", "{:.2f}"),
        ("cov. 95%", "force_coverage_95", "{:.2f}"),
    ]

    def cell(m, key, fmt):
        if key is None:
            return f"{m['energy_rmse']:.3f} / {m['energy_sigma_rms']:.3f}"
        return fmt.format(m[key])

    lines = [
        "# Uncertainty quality on silicon: LLPR vs deep ensemble",
        "",
        f"`{command}`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {machine_description()}; torch {torch.__version__}, "
        f"{args.threads} torch thread(s); {wall / 60:.1f} min in all (data {data_s:.0f} s). Load average "
        f"(1 min) {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end: the machine was shared.",
        "",
        f"Train {len(train)} / validation {len(val)} / ID test {len(test)} / OOD test {len(ood)} structures "
        "(OOD: surfaces, vacancies, interstitials, crystal above 900 K; never trained or calibrated on). "
        + budget_line,
        "",
    ]
    for set_name, by_method in results.items():
        lines += [f"## {set_name}", "", "Energies (per structure):", "",
                  "| method | " + " | ".join(c[0] for c in e_cols) + " |", "|---" * (len(e_cols) + 1) + "|"]
        for method, m in by_method.items():
            lines.append(f"| {method} | " + " | ".join(cell(m, key, fmt) for _, key, fmt in e_cols) + " |")
        lines += ["", "Forces (per Cartesian component: each component's error against its sigma; LLPR gives "
                  "one sigma per atom for its three components, the ensemble one per component):", "",
                  "| method | " + " | ".join(c[0] for c in f_cols) + " |", "|---" * (len(f_cols) + 1) + "|"]
        for method, m in by_method.items():
            lines.append(f"| {method} | " + " | ".join(cell(m, key, fmt) for _, key, fmt in f_cols) + " |")
        lines.append("")
    t_llpr, t_ens = costs["LLPR"]["training_s"], costs[ens_name]["training_s"]
    lines += [
        "## Cost",
        "",
        f"Training: LLPR {t_llpr:.0f} s (member 0, {train_one:.0f} s, + {llpr_fit_s:.1f} s for the covariance, "
        f"calibration and ensemble sampling); deep ensemble {t_ens:.0f} s: LLPR costs "
        f"{t_llpr / t_ens:.2f}x the ensemble ({t_ens / t_llpr:.2f}x less) in wall-clock time, "
        f"{runs[0]['epochs']} / {sum(epochs)} = {runs[0]['epochs'] / sum(epochs):.2f} of its epochs "
        "(the members' times differ with the machine's load, not with their work).",
        "",
        "| inference (s) | LLPR, energy sigma only | LLPR with force sigma | " + ens_name + " |",
        "|---|---|---|---|",
    ]
    for set_name, t in inference.items():
        lines.append(f"| {set_name} ({results[set_name][llpr_name]['n_structures']} structures) | "
                     + " | ".join(f"{v:.2f}" for v in t.values()) + " |")
    lines += ["", "## LLPR on each member", "",
              "LLPR above is fitted on member 0. The same, fitted on each member in turn (same data, "
              "calibration and last-layer ensemble size):", "",
              "| member | val. energy RMSE (meV/atom) | ID NLL energy | ID NLL forces | OOD NLL energy | "
              "OOD NLL forces | OOD energy cov. 68% / 95% | OOD force cov. 68% / 95% |",
              "|---|---|---|---|---|---|---|---|"]
    for row in per_member:
        i, o = row["ID test"], row["OOD test"]
        lines.append(f"| {row['member']} | {row['val_energy_rmse_mev_per_atom']:.2f} | {i['nll']:.3f} | "
                     f"{i['force_nll']:.3f} | {o['nll']:.3f} | {o['force_nll']:.3f} | "
                     f"{o['coverage_68']:.2f} / {o['coverage_95']:.2f} | "
                     f"{o['force_coverage_68']:.2f} / {o['force_coverage_95']:.2f} |")
    mean_of = {f"{s_} {k_}": float(np.mean([r[s_][k_] for r in per_member]))
               for s_ in ("ID test", "OOD test") for k_ in ("nll", "force_nll")}
    lines.append(f"| mean | | {mean_of['ID test nll']:.3f} | {mean_of['ID test force_nll']:.3f} | "
                 f"{mean_of['OOD test nll']:.3f} | {mean_of['OOD test force_nll']:.3f} | | |")
    lines += ["", "## NLL: LLPR against the ensemble", "",
              "NLL is in nats per structure (energies) or per force component; negative values are normal "
              "for small errors, so the difference LLPR - ensemble (in nats; 95 % interval from a paired "
              "bootstrap over structures) says more than a percentage.", ""]
    for set_name, by_method in results.items():
        for label, key, part in (("energy", "nll", "energy"), ("force components", "force_nll", "forces")):
            a, b = by_method[llpr_name][key], by_method[ens_name][key]
            ci = gaps[set_name][part]["ci95"]
            gap = relative_gap(a, b)
            if gap <= 0:
                verdict = "LLPR as good or better"
            elif gap <= 0.10:
                verdict = "LLPR worse, but within 10 %"
            else:
                verdict = "LLPR worse, NOT within 10 %"
            lines.append(f"- {set_name}, {label}: LLPR {a:.3f} vs ensemble {b:.3f} (LLPR - ensemble = "
                         f"{a - b:+.3f} nats, 95 % interval [{ci[0]:+.3f}, {ci[1]:+.3f}]; {100 * gap:+.0f} % of "
                         f"|ensemble|): {verdict}.")
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(args.out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(args.out, f"uq_quality{suffix}.md"), "w") as fh:
        fh.write(table)
    with open(os.path.join(args.out, f"uq_quality{suffix}.json"), "w") as fh:
        json.dump({"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_description(),
                   "torch": torch.__version__, "load_average_start_end": [load_start[0], load_end[0]],
                   "results": results, "costs": costs, "training_runs": runs,
                   "nll_difference_llpr_minus_ensemble": gaps, "llpr_on_each_member": per_member,
                   "calibration": {"llpr": llpr.calibration_summary(), "ensemble_scale": ensemble.scale},
                   "args": vars(args), "wall_s": wall}, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
