"""Uncertainty quality of LLPR on a MACE model, next to llpr's own potential, on silicon.

The data and the ID / OOD split are those of benchmarks/uq_quality.py (Si.sw structures; OOD:
surfaces, vacancies, interstitials, crystal above 900 K, never trained or calibrated on).
Two models are trained on the same training set and validated on the same validation set:
a MACE (2 interactions, r_max 4 A, float64) by MACE's own ``mace_run_train``, for a fixed
number of epochs, and llpr's ``LocalPotential`` with the budget of uq_quality.py. LLPR is then
fitted and calibrated on each, the same way (alpha and varsigma on the validation energies;
force sigma from a K-member last-layer ensemble), and both are scored on the ID and OOD test
sets: energy and force RMSE, NLL, Spearman, miscalibration area, 68/95 % coverage.

    python benchmarks/mace_quality.py [--mace-epochs 60] [--epochs 300] [--n-per-type 40] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from uq_quality import llpr_predict, machine_description, metrics, split, train_config  # noqa: E402

from llpr.data import write_dataset  # noqa: E402
from llpr.graphs import AtomisticDataset, make_loader  # noqa: E402
from llpr.models.mace import MACEModel  # noqa: E402
from llpr.lammps.sampling import generate_dataset  # noqa: E402
from llpr.models.train import train_model  # noqa: E402
from llpr.uncertainty.estimator import LLPR  # noqa: E402

MACE_ARGS = ["--model", "MACE", "--hidden_irreps", "16x0e+16x1o", "--MLP_irreps", "16x0e", "--max_L", "1",
             "--correlation", "2", "--r_max", "4.0", "--num_interactions", "2", "--batch_size", "4",
             "--E0s", "average", "--energy_key", "energy", "--forces_key", "forces", "--device", "cpu",
             "--default_dtype", "float64"]


def train_mace(train, val, folder: str, epochs: int, seed: int) -> tuple[str, float]:
    os.makedirs(folder, exist_ok=True)
    write_dataset(train, os.path.join(folder, "train.xyz"))
    write_dataset(val, os.path.join(folder, "val.xyz"))
    command = [os.path.join(os.path.dirname(sys.executable), "mace_run_train"), "--name", "si_mace",
               "--train_file", "train.xyz", "--valid_file", "val.xyz", "--max_num_epochs", str(epochs),
               "--seed", str(seed), *MACE_ARGS]
    start = time.perf_counter()
    with open(os.path.join(folder, "mace_train.log"), "w") as log:
        subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=True)
    return os.path.join(folder, "si_mace_compiled.model"), time.perf_counter() - start


def calibrated(model, train, val) -> tuple[LLPR, float]:
    start = time.perf_counter()
    dtype = next(model.parameters()).dtype
    llpr = LLPR(model).fit(make_loader(AtomisticDataset(train, model.cutoff, dtype), 8))
    llpr.calibrate(make_loader(AtomisticDataset(val, model.cutoff, dtype), 8))
    return llpr, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mace-epochs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=300, help="epochs of llpr's own potential (as uq_quality.py)")
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--llpr-ensemble", type=int, default=32)
    parser.add_argument("--n-per-type", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test run (results *_quick.*)")
    parser.add_argument("--work", default="runs/mace_quality")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.quick:
        args.mace_epochs, args.epochs, args.n_per_type, args.llpr_ensemble = 2, 3, 4, 4
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    structures = generate_dataset("sw", n_per_type=args.n_per_type, seed=args.seed, progress=False)
    train, val, test, ood = split(structures, args.seed)
    print(f"train {len(train)} / val {len(val)} / ID test {len(test)} / OOD {len(ood)}", flush=True)

    mace_file, mace_train_s = train_mace(train, val, args.work, args.mace_epochs, args.seed)
    print(f"MACE trained in {mace_train_s:.0f} s", flush=True)
    native, _ = train_model(train, val, train_config(args), progress=False)
    print("llpr potential trained", flush=True)

    results, fit_s = {}, {}
    models = {"MACE (mace_run_train) + LLPR": MACEModel.from_file(mace_file), "llpr LocalPotential + LLPR": native}
    for name, model in models.items():
        llpr, fit_s[name] = calibrated(model, train, val)
        weights = llpr.sample_ensemble(args.llpr_ensemble, seed=0)
        for set_name, data in (("ID test", test), ("OOD test", ood)):
            results.setdefault(set_name, {})[name] = metrics(llpr_predict(llpr, data, weights), data)
        s = llpr.calibration_summary()
        results.setdefault("calibration", {})[name] = {"alpha": s["alpha"], "varsigma": s["varsigma"],
                                                        "n_features": int(model.n_features)}
        print(f"{name}: done", flush=True)
    wall = time.perf_counter() - start

    suffix = "_quick" if args.quick else ""
    command = (f"python benchmarks/mace_quality.py --mace-epochs {args.mace_epochs} --epochs {args.epochs} "
               f"--llpr-ensemble {args.llpr_ensemble} --n-per-type {args.n_per_type} --seed {args.seed}"
               + (" --quick" if args.quick else ""))
    cols = [("energy RMSE (meV/atom)", "energy_rmse_mev_per_atom", "{:.2f}"), ("NLL", "nll", "{:.3f}"),
            ("Spearman", "spearman", "{:.2f}"), ("cov. 68%", "coverage_68", "{:.2f}"),
            ("cov. 95%", "coverage_95", "{:.2f}"), ("force RMSE (eV/A)", "force_rmse", "{:.4f}"),
            ("force NLL", "force_nll", "{:.3f}"), ("force Spearman", "force_spearman", "{:.2f}"),
            ("force cov. 68% / 95%", None, None)]

    def cell(m, key, fmt):
        if key is None:
            return f"{m['force_coverage_68']:.2f} / {m['force_coverage_95']:.2f}"
        return fmt.format(m[key])

    lines = ["# LLPR on a MACE model vs on llpr's own potential (silicon)", "", f"`{command}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {machine_description()}; torch {torch.__version__}; "
             f"{wall / 60:.1f} min in all (MACE training {mace_train_s / 60:.1f} min).", "",
             f"Train {len(train)} / validation {len(val)} / ID test {len(test)} / OOD test {len(ood)} structures "
             "(the split of benchmarks/uq_quality.py). MACE: " + " ".join(MACE_ARGS[:16])
             + f", {args.mace_epochs} epochs; llpr potential: {args.epochs} epochs. Both: LLPR fitted on the "
             "training set, alpha and varsigma on the validation energies, force sigma from a "
             f"{args.llpr_ensemble}-member last-layer ensemble.", ""]
    for set_name in ("ID test", "OOD test"):
        lines += [f"## {set_name}", "", "| model | " + " | ".join(c[0] for c in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for name, m in results[set_name].items():
            lines.append(f"| {name} | " + " | ".join(cell(m, k, f) for _, k, f in cols) + " |")
        lines.append("")
    lines += ["## Calibration", "", "| model | features | alpha | varsigma | LLPR fit + calibration (s) |",
              "|---|---|---|---|---|"]
    for name, c in results["calibration"].items():
        lines.append(f"| {name} | {c['n_features']} | {c['alpha']:.4g} | {c['varsigma']:.3g} | {fit_s[name]:.1f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"mace_quality{suffix}.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, f"mace_quality{suffix}.json"), "w") as fh:
        json.dump({"command": command, "results": results, "fit_s": fit_s, "mace_train_s": mace_train_s}, fh, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
