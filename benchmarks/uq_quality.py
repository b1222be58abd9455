"""Uncertainty quality: LLPR (one model) against a deep ensemble (K models) on silicon.

Data: Si.sw reference structures (`llpr.data.generate_dataset`). In distribution (ID):
crystal up to 900 K, strained crystal, melt-quenched amorphous and liquid; their held-out
10 % is the ID test set, another 10 % the validation set. Out of distribution (OOD), never
trained on: (001) surfaces, vacancies, interstitials and crystal above 900 K.

Models: K potentials trained with the same data and wall-clock budget each (different
seeds) form the deep ensemble; LLPR is fitted on member 0 alone (one model, 1/K of the
training cost). Both uncertainties get one scale fitted on the validation set (LLPR: alpha
and varsigma; ensemble: a factor on its variance).

Reported per test set: energy and force RMSE, energy NLL, Spearman(|error|, sigma),
miscalibration area, 68 %/95 % coverage, and training and inference cost.

    python benchmarks/uq_quality.py [--members 5] [--time-limit 150] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from llpr.calibrate import gaussian_nll
from llpr.data import generate_dataset
from llpr.ensemble import DeepEnsemble
from llpr.evaluate import coverage, miscalibration_area
from llpr.graphs import AtomisticDataset, make_loader
from llpr.train import TrainConfig, predict_batch
from llpr.uncertainty import LLPR

OOD_TYPES = ("surface", "vacancy", "interstitial")


def is_ood(atoms) -> bool:
    t = atoms.info["config_type"]
    return t in OOD_TYPES or (t == "crystal" and atoms.info.get("temperature", 0.0) > 900.0)


def split(structures, seed: int):
    idd = [a for a in structures if not is_ood(a)]
    ood = [a for a in structures if is_ood(a)]
    order = np.random.default_rng(seed).permutation(len(idd))
    n_val = n_test = max(1, len(idd) // 10)
    val = [idd[i] for i in order[:n_val]]
    test = [idd[i] for i in order[n_val : n_val + n_test]]
    train = [idd[i] for i in order[n_val + n_test :]]
    return train, val, test, ood


def llpr_predict(llpr: LLPR, atoms_list, batch_size: int = 8) -> dict:
    """Energies, LLPR variances and forces, batched like the ensemble's predictions."""
    dtype = next(llpr.model.parameters()).dtype
    dataset = AtomisticDataset(atoms_list, llpr.model.cutoff, dtype, require_labels=False)
    energies, variances, forces = [], [], []
    for batch in make_loader(dataset, batch_size):
        out = llpr.predict(batch)
        _, f = predict_batch(llpr.model, batch, forces=True)
        energies.append(out["prediction"].numpy())
        variances.append(out["variance"].numpy())
        forces.append(f.detach().double().numpy())
    return {"energy": np.concatenate(energies), "energy_variance": np.concatenate(variances),
            "forces": np.concatenate(forces)}


def metrics(pred: dict, atoms_list) -> dict:
    ref = np.array([a.info["energy"] for a in atoms_list])
    n = np.array([len(a) for a in atoms_list])
    f_ref = np.concatenate([a.arrays["forces"] for a in atoms_list])
    err = pred["energy"] - ref
    sigma = np.sqrt(pred["energy_variance"])
    out = {
        "n_structures": len(atoms_list),
        "energy_rmse_mev_per_atom": 1000 * float(np.sqrt(np.mean((err / n) ** 2))),
        "force_rmse": float(np.sqrt(np.mean((pred["forces"] - f_ref) ** 2))),
        "nll": gaussian_nll(err, sigma**2),
        "spearman": float(spearmanr(np.abs(err), sigma).correlation),
        "miscalibration_area": miscalibration_area(err, sigma),
        "coverage_68": coverage(err, sigma, 1.0),
        "coverage_95": coverage(err, sigma, 1.959963984540054),
        "mean_sigma_mev_per_atom": 1000 * float(np.mean(sigma / n)),
    }
    if "force_variance" in pred:
        fs = np.sqrt(pred["force_variance"]).ravel()
        fe = (pred["forces"] - f_ref).ravel()
        out["force_nll"] = gaussian_nll(fe, np.maximum(fs, 1e-12) ** 2)
        out["force_spearman"] = float(spearmanr(np.abs(fe), fs).correlation)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=150.0, help="training budget per model (s)")
    parser.add_argument("--n-per-type", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test run")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.quick:
        args.members, args.time_limit, args.n_per_type = 2, 5.0, 6
    torch.set_num_threads(2)
    start = time.perf_counter()
    structures = generate_dataset("sw", n_per_type=args.n_per_type, seed=args.seed, progress=False)
    train, val, test, ood = split(structures, args.seed)
    config = TrainConfig(time_limit_s=args.time_limit, seed=args.seed)

    ensemble = DeepEnsemble.train(train, val, args.members, config)
    t0 = time.perf_counter()
    dtype = next(ensemble.members[0].parameters()).dtype
    llpr = LLPR(ensemble.members[0]).fit(make_loader(AtomisticDataset(train, ensemble.members[0].cutoff, dtype), 16))
    llpr.calibrate(make_loader(AtomisticDataset(val, ensemble.members[0].cutoff, dtype), 16))
    llpr_fit_s = time.perf_counter() - t0
    ensemble.calibrate(val)

    results = {}
    for name, data in (("ID test", test), ("OOD test", ood)):
        t0 = time.perf_counter()
        p_llpr = llpr_predict(llpr, data)
        t_llpr = time.perf_counter() - t0
        t0 = time.perf_counter()
        p_ens = ensemble.predict(data)
        t_ens = time.perf_counter() - t0
        results[name] = {
            "LLPR": metrics(p_llpr, data) | {"inference_s": t_llpr},
            f"deep ensemble (K={args.members})": metrics(p_ens, data) | {"inference_s": t_ens},
        }
    train_one = float(np.mean(ensemble.train_time_s))
    costs = {
        "LLPR": {"training_s": train_one + llpr_fit_s, "llpr_fit_calibrate_s": llpr_fit_s},
        f"deep ensemble (K={args.members})": {"training_s": float(np.sum(ensemble.train_time_s))},
    }
    wall = time.perf_counter() - start

    cols = [
        ("energy RMSE (meV/atom)", "energy_rmse_mev_per_atom", "{:.2f}"),
        ("force RMSE (eV/A)", "force_rmse", "{:.4f}"),
        ("NLL", "nll", "{:.3f}"),
        ("Spearman", "spearman", "{:.2f}"),
        ("miscal. area", "miscalibration_area", "{:.3f}"),
        ("cov. 68%", "coverage_68", "{:.2f}"),
        ("cov. 95%", "coverage_95", "{:.2f}"),
        ("inference (s)", "inference_s", "{:.2f}"),
    ]
    lines = [
        "# Uncertainty quality on silicon: LLPR vs deep ensemble",
        "",
        f"`python benchmarks/uq_quality.py --members {args.members} --time-limit {args.time_limit:g} "
        f"--n-per-type {args.n_per_type}`, {time.strftime('%Y-%m-%d')}, {platform.machine()} 2-core CPU, "
        f"torch {torch.__version__}, {wall / 60:.1f} min in all.",
        "",
        f"Train {len(train)} / validation {len(val)} / ID test {len(test)} / OOD test {len(ood)} structures "
        "(OOD: surfaces, vacancies, interstitials, crystal above 900 K). Energy metrics per structure.",
        "",
    ]
    for set_name, by_method in results.items():
        lines += [f"## {set_name}", "", "| method | " + " | ".join(c[0] for c in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for method, m in by_method.items():
            lines.append(f"| {method} | " + " | ".join(fmt.format(m[key]) for _, key, fmt in cols) + " |")
        lines.append("")
    ens_name = f"deep ensemble (K={args.members})"
    lines += [
        "## Cost",
        "",
        f"Training: LLPR {costs['LLPR']['training_s']:.0f} s (one model + {llpr_fit_s:.1f} s for the covariance "
        f"and calibration); deep ensemble {costs[ens_name]['training_s']:.0f} s "
        f"({costs[ens_name]['training_s'] / costs['LLPR']['training_s']:.2f}x).",
    ]
    for set_name, by_method in results.items():
        ratio = by_method["LLPR"]["nll"], by_method[ens_name]["nll"]
        lines.append(f"- {set_name}: NLL LLPR {ratio[0]:.3f} vs ensemble {ratio[1]:.3f}.")
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(args.out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(args.out, f"uq_quality{suffix}.md"), "w") as fh:
        fh.write(table)
    with open(os.path.join(args.out, f"uq_quality{suffix}.json"), "w") as fh:
        json.dump({"results": results, "costs": costs, "args": vars(args), "wall_s": wall}, fh, indent=1)


if __name__ == "__main__":
    main()
