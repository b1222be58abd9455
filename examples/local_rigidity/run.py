"""Local prediction rigidity of silicon atoms by coordination number.

A small version of the experiment of Chong et al., JCTC 19, 8020 (2023), on offline Si.sw
data: train one model on 4-coordinated environments only (crystal and strained crystal at
300-1200 K, and any amorphous snapshot whose atoms are all 4-coordinated), and one with a few
structures containing under- and over-coordinated atoms added (vacancies, interstitials,
surfaces, melt-quenched amorphous). Both are fitted and calibrated on the same validation
set of 4-coordinated structures; then the LPR of every atom of a held-out test set (all
kinds of environments) is grouped by coordination number (neighbours within 2.85 A).

Expected (the paper's result): the LPR of 3- and 5-coordinated atoms rises several-fold when
such environments are added to the training set, while 4-coordinated atoms change little.

    python examples/local_rigidity/run.py [--time-limit 180] [--n-defect 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from llpr.data import split_dataset
from llpr.graphs import AtomisticDataset, collate, make_loader, neighbor_list
from llpr.lammps.sampling import generate_dataset
from llpr.models.train import TrainConfig, train_model
from llpr.uncertainty.estimator import LLPR

BOND_CUTOFF = 2.85  # A, between the first (2.35 A) and second (3.84 A) neighbour shells


def coordination(atoms) -> np.ndarray:
    edge_index, _ = neighbor_list(atoms, BOND_CUTOFF)
    return np.bincount(edge_index[0], minlength=len(atoms))


def fully_fourfold(atoms) -> bool:
    return bool(np.all(coordination(atoms) == 4))


def fit_llpr(model, train, val) -> LLPR:
    dtype = next(model.parameters()).dtype
    llpr = LLPR(model).fit(make_loader(AtomisticDataset(train, model.cutoff, dtype), 16))
    return llpr.calibrate(make_loader(AtomisticDataset(val, model.cutoff, dtype), 16))


def lpr_by_coordination(llpr: LLPR, structures) -> dict[int, np.ndarray]:
    dtype = next(llpr.model.parameters()).dtype
    groups: dict[int, list] = {}
    for atoms in structures:
        batch = collate([AtomisticDataset([atoms], llpr.model.cutoff, dtype, require_labels=False)[0]])
        lpr = llpr.predict(batch)["lpr"].numpy()
        for cn, value in zip(coordination(atoms), lpr):
            groups.setdefault(int(cn), []).append(value)
    return {cn: np.array(v) for cn, v in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-limit", type=float, default=180.0, help="training budget per model (s)")
    parser.add_argument("--n-defect", type=int, default=10, help="defect structures added to the second set")
    parser.add_argument("--n-per-type", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=400, help="at most this many epochs per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    everything = generate_dataset("sw", n_per_type=args.n_per_type, seed=args.seed, progress=False)
    fourfold = [a for a in everything if fully_fourfold(a)]
    # liquid snapshots stay in the test set only: the added structures are defects of solids
    defective = [a for a in everything if not fully_fourfold(a) and a.info["config_type"] != "liquid"]
    liquid = [a for a in everything if a.info["config_type"] == "liquid"]
    train4, val4, test4 = split_dataset(fourfold, (0.8, 0.1, 0.1), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(defective))
    added = [defective[i] for i in order[: args.n_defect]]
    test = test4 + [defective[i] for i in order[args.n_defect :]] + liquid
    kinds = {}
    for a in added:
        kinds[a.info["config_type"]] = kinds.get(a.info["config_type"], 0) + 1

    config = TrainConfig(time_limit_s=args.time_limit, max_epochs=args.epochs, seed=args.seed)
    with_defects = f"+ {len(added)} defect structures"
    retrained, info = {}, {}
    llpr_four = None
    for name, train in (("4-coordinated only", train4), (with_defects, train4 + added)):
        model, history = train_model(train, val4, config, progress=False)
        llpr = fit_llpr(model, train, val4)
        llpr_four = llpr_four or llpr
        retrained[name] = lpr_by_coordination(llpr, test)
        info[name] = {"n_train": len(train), "epochs": history["best_epoch"] + 1,
                      "alpha": llpr.alpha, "varsigma": llpr.varsigma}
        print(f"trained '{name}' on {len(train)} structures ({history['best_epoch'] + 1} epochs)", flush=True)

    # the same network (trained on 4-coordinated structures only) and the same alpha and
    # varsigma; only the structures entering F^T F change: isolates what the data do
    dtype = next(llpr_four.model.parameters()).dtype
    same = LLPR(llpr_four.model).fit(make_loader(AtomisticDataset(train4 + added, llpr_four.model.cutoff, dtype), 16))
    same.load_state_dict({**same.state_dict(), "calibration": llpr_four.state_dict()["calibration"]})
    same_model = {"4-coordinated only": retrained["4-coordinated only"], with_defects: lpr_by_coordination(same, test)}

    lines = [
        "# Local prediction rigidity by coordination number (Si.sw)",
        "",
        f"`python examples/local_rigidity/run.py --time-limit {args.time_limit:g} --n-defect {args.n_defect} "
        f"--n-per-type {args.n_per_type}`, {time.strftime('%Y-%m-%d')}, "
        f"{(time.perf_counter() - start) / 60:.1f} min on this machine.",
        "",
        f"Training sets: {len(train4)} structures whose atoms are all 4-coordinated "
        f"({', '.join(sorted({x.info['config_type'] for x in train4}))}); the second set adds "
        f"{len(added)} structures with under/over-coordinated atoms "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}). "
        f"Test: {len(test)} held-out structures. Coordination: neighbours within {BOND_CUTOFF} A. "
        "LPR = 1 / (f_i^T C^-1 f_i); geometric means over atoms (LPR spans decades). "
        "Models: " + "; ".join(f"{k}: {v['epochs']} epochs, alpha {v['alpha']:.3g}, varsigma {v['varsigma']:.3g}"
                               for k, v in info.items()) + ".",
        "",
    ]
    summaries = {}
    for title, (a, b) in (
        ("A. Two models, each trained, fitted and calibrated on its own set", tuple(retrained.values())),
        ("B. One model (trained on 4-coordinated structures), F^T F with and without the defect structures, "
         "same alpha and varsigma", tuple(same_model.values())),
    ):
        rows, summary = comparison_table(a, b, "4-coordinated only", with_defects)
        lines += [f"## {title}", ""] + rows + [""]
        summaries[title[0]] = summary
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lpr_by_coordination.md"), "w") as fh:
        fh.write(table)
    with open(os.path.join(args.out, "lpr_by_coordination.json"), "w") as fh:
        json.dump({"summary": summaries, "models": info}, fh, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, (title, pair) in zip(axes, (("A: retrained models", retrained), ("B: same model, more data in F^T F", same_model))):
        cns = sorted(set(pair["4-coordinated only"]) & set(pair[with_defects]))
        width = 0.38
        for k, (name, lpr) in enumerate(pair.items()):
            pos = np.arange(len(cns)) + (k - 0.5) * width
            ax.boxplot([lpr[cn] for cn in cns], positions=pos, widths=width * 0.9, showfliers=False,
                       patch_artist=True, boxprops={"facecolor": f"C{k}", "alpha": 0.6})
            ax.plot([], [], "s", color=f"C{k}", label=name)
        ax.set_xticks(np.arange(len(cns)), [str(c) for c in cns])
        ax.set_yscale("log")
        ax.set_xlabel("coordination number")
        ax.set_ylabel("local prediction rigidity")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "lpr_by_coordination.png"), dpi=120)
    print(f"wrote {args.out}/lpr_by_coordination.(md|json|png)")


def comparison_table(a: dict, b: dict, name_a: str, name_b: str) -> tuple[list[str], dict]:
    rows = [
        f"| coordination | atoms | LPR, {name_a} | LPR, {name_b} | ratio | LPR / LPR(4), first | LPR / LPR(4), second |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for cn in sorted(set(a) & set(b)):
        ga, gb = float(np.exp(np.log(a[cn]).mean())), float(np.exp(np.log(b[cn]).mean()))
        summary[cn] = {"atoms": int(len(a[cn])), "lpr_a": ga, "lpr_b": gb, "ratio": gb / ga}
    for cn, row in summary.items():
        # relative to the 4-coordinated atoms of the same model: free of the overall scale
        # that each model's features and varsigma set
        row["relative_a"] = row["lpr_a"] / summary[4]["lpr_a"] if 4 in summary else float("nan")
        row["relative_b"] = row["lpr_b"] / summary[4]["lpr_b"] if 4 in summary else float("nan")
        rows.append(
            f"| {cn} | {row['atoms']} | {row['lpr_a']:.4g} | {row['lpr_b']:.4g} | {row['ratio']:.2f} "
            f"| {row['relative_a']:.3f} | {row['relative_b']:.3f} |"
        )
    return rows, summary


if __name__ == "__main__":
    main()
