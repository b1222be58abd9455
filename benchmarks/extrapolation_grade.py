"""Out-of-distribution detection on silicon: per-atom sigma, the extrapolation grade gamma and
the total-energy sigma as scores separating in- from out-of-distribution structures.

Data and split: those of ``benchmarks/uq_quality.py`` (its ``split()``): Si.sw structures from
`llpr.lammps.sampling.generate_dataset`; trained on crystal up to 900 K, strained crystal, amorphous
and liquid; ID test = their held-out 10 %. OOD sets, never trained or calibrated on: (001)
surfaces, vacancies, interstitials, crystal above 900 K. Strained crystal is part of the
training distribution in that split; its ID-test structures against the rest of the ID test
are reported as a control (an AUROC near 0.5 is expected there).

One model (seed ``--seed``, exactly ``--epochs`` epochs, early stopping off, as uq_quality's
member 0), LLPR fitted on the training set, calibrated on the validation set, and the
extrapolation grade's reference ``max_train q`` recorded over the training atoms.

Scores per structure: max_i sigma_i (eV), max_i gamma_i, sigma of the total energy (eV) and
its per-atom value sigma / N. AUROC of each score for ID test (negatives) against each OOD set
(positives), from ranks (the Mann-Whitney U statistic, ties counted half); plus the fraction of
structures with max gamma > 1. The numbers depend only on the data, seed and epochs, not on
the machine's speed.

    python benchmarks/extrapolation_grade.py [--epochs 300] [--n-per-type 40] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from scipy.stats import rankdata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from uq_quality import split, train_config  # noqa: E402  (the same split and budget)

from llpr.graphs import AtomisticDataset, make_loader  # noqa: E402
from llpr.lammps.sampling import generate_dataset  # noqa: E402
from llpr.models.train import train_model  # noqa: E402
from llpr.uncertainty.estimator import LLPR  # noqa: E402

SCORES = ("max_atom_sigma", "max_gamma", "energy_sigma", "energy_sigma_per_atom")


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half: the area under the ROC
    curve, from the rank sum of the positives (Mann-Whitney U)."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError("AUROC needs at least one structure in each set")
    ranks = rankdata(np.concatenate([neg, pos]))
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))


def structure_scores(llpr: LLPR, atoms_list, batch_size: int = 16) -> dict:
    """The four scores of every structure (arrays in the order of ``atoms_list``)."""
    dtype = next(llpr.model.parameters()).dtype
    dataset = AtomisticDataset(atoms_list, llpr.model.cutoff, dtype, require_labels=False)
    out = {name: [] for name in SCORES}
    for batch in make_loader(dataset, batch_size):
        pred = llpr.predict(batch)
        index = batch["batch"]
        n = int(batch["n_structures"])
        counts = torch.bincount(index, minlength=n).to(torch.float64)
        for key, name in (("atom_sigma", "max_atom_sigma"), ("gamma", "max_gamma")):
            best = torch.full((n,), -torch.inf, dtype=torch.float64).scatter_reduce(
                0, index, pred[key].to(torch.float64), reduce="amax")
            out[name].append(best.numpy())
        out["energy_sigma"].append(pred["sigma"].numpy())
        out["energy_sigma_per_atom"].append((pred["sigma"] / counts).numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


def set_row(name: str, negatives: dict, positives: dict) -> dict:
    """AUROC of every score for ``negatives`` against ``positives`` (dicts of score arrays), and
    the positives' max-gamma statistics."""
    row = {"set": name, "n": int(len(positives["max_gamma"])), "n_negatives": int(len(negatives["max_gamma"]))}
    for score in SCORES:
        row[f"auroc_{score}"] = auroc(negatives[score], positives[score])
    row["fraction_max_gamma_above_1"] = float((positives["max_gamma"] > 1.0).mean())
    row["median_max_gamma"] = float(np.median(positives["max_gamma"]))
    return row


def ood_sets(ood):
    """Named (description, structures) positives against the ID test."""
    kind = lambda a: a.info["config_type"]  # noqa: E731
    sets = {
        "surface": [a for a in ood if kind(a) == "surface"],
        "vacancy": [a for a in ood if kind(a) == "vacancy"],
        "interstitial": [a for a in ood if kind(a) == "interstitial"],
        "hot crystal (> 900 K)": [a for a in ood if kind(a) == "crystal"],
        "all OOD": list(ood),
    }
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--n-per-type", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test run (results *_quick.*)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--from-json", default=None, help="only rewrite the Markdown report of this result JSON")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            text = report(json.load(fh))
        with open(os.path.splitext(args.from_json)[0] + ".md", "w") as fh:
            fh.write(text)
        print(text)
        return
    args.time_limit = None  # uq_quality.train_config: the fixed-epoch budget
    if args.quick:
        args.n_per_type, args.epochs = 6, 3
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    structures = generate_dataset("sw", n_per_type=args.n_per_type, seed=args.seed, progress=False)
    train, val, test, ood = split(structures, args.seed)
    print(f"data: {len(structures)} structures; train {len(train)} / val {len(val)} / ID test {len(test)} / "
          f"OOD {len(ood)}", flush=True)
    model, history = train_model(train, val, train_config(args), progress=False)
    dtype = next(model.parameters()).dtype
    train_loader = make_loader(AtomisticDataset(train, model.cutoff, dtype), 16)
    llpr = LLPR(model).fit(train_loader)
    llpr.calibrate(make_loader(AtomisticDataset(val, model.cutoff, dtype), 16), train_loader=train_loader)

    train_max = structure_scores(llpr, train)["max_gamma"]
    id_scores = structure_scores(llpr, test)
    kinds = np.array([a.info["config_type"] for a in test])
    # point defects and hot crystals are crystals: the crystalline part of the ID test (crystal up
    # to 900 K, strained) is their like-for-like reference, liquid and amorphous ones aside
    references = {"ID test": np.ones(len(test), bool), "crystalline ID test": np.isin(kinds, ("crystal", "strained"))}
    set_scores = {name: structure_scores(llpr, part) for name, part in ood_sets(ood).items() if part}
    tables, id_rows = {}, {}
    for ref_name, mask in references.items():
        if not mask.any():
            continue
        negatives = {k: v[mask] for k, v in id_scores.items()}
        id_rows[ref_name] = {"n": int(mask.sum()),
                             "fraction_max_gamma_above_1": float((negatives["max_gamma"] > 1.0).mean()),
                             "median_max_gamma": float(np.median(negatives["max_gamma"]))}
        tables[ref_name] = [set_row(name, negatives, pos) for name, pos in set_scores.items()]
    # control: strained crystals are trained on; against the rest of the ID test
    strained = kinds == "strained"
    if strained.any() and (~strained).any():
        tables["ID test"].append(set_row("strained (trained on; control vs the rest of ID test)",
                                         {k: v[~strained] for k, v in id_scores.items()},
                                         {k: v[strained] for k, v in id_scores.items()}))
    wall = time.perf_counter() - start

    result = {"command": " ".join(["python", "benchmarks/extrapolation_grade.py"] + sys.argv[1:]),
              "epochs": args.epochs, "seed": args.seed, "n_per_type": args.n_per_type,
              "n_train": len(train), "n_val": len(val), "n_train_atoms": llpr.n_train_atoms_,
              "max_train_q": llpr.max_train_q_,
              "max_train_q_config_type": train[int(np.argmax(train_max))].info["config_type"],
              "train_max_gamma": float(train_max.max()), "alpha": llpr.alpha, "varsigma": llpr.varsigma,
              "best_epoch": history["best_epoch"], "references": id_rows, "tables": tables,
              "scores": {"ID test": {"config_type": kinds.tolist(), **{k: v.tolist() for k, v in id_scores.items()}},
                         **{name: {k: v.tolist() for k, v in sc.items()} for name, sc in set_scores.items()}},
              "wall_s": wall}
    suffix = "_quick" if args.quick else ""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"extrapolation_grade{suffix}.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(args.out, f"extrapolation_grade{suffix}.md"), "w") as fh:
        fh.write(report(result))
    print(report(result))


def report(result: dict) -> str:
    """The Markdown report of one run's ``result`` (what the JSON holds)."""
    r = result
    id_n = r["references"]["ID test"]["n"]
    lines = [
        "# Out-of-distribution detection on silicon: per-atom sigma, extrapolation grade gamma, energy sigma",
        "",
        f"`{r['command']}`",
        "",
        f"Split of `benchmarks/uq_quality.py`: train {r['n_train']} / validation {r['n_val']} / ID test {id_n} "
        f"structures; one model, exactly {r['epochs']} epochs (seed {r['seed']}; best validation epoch "
        f"{r['best_epoch'] + 1} kept). alpha = {r['alpha']:.4g}, varsigma = {r['varsigma']:.4g}; max q over the "
        f"{r['n_train_atoms']} training atoms = {r['max_train_q']:.4g} (gamma = 1), on an atom of a "
        f"{r['max_train_q_config_type']} structure. The numbers depend on the data, seed and epochs only, not on the "
        "machine.",
        "",
        "AUROC of each per-structure score, reference structures (negatives) against each set (positives); "
        "1 = every structure of the set scores above every reference structure, 0.5 = no separation, below 0.5 = "
        "the set scores lower than the reference. Two references: the whole ID test (crystal up to 900 K, "
        "strained, liquid, amorphous) and its crystalline part (crystal up to 900 K and strained), the "
        "like-for-like reference of point defects and hot crystals.",
        "",
    ]
    for ref_name, rows in r["tables"].items():
        ref_row = r["references"][ref_name]
        few = "; few, so its AUROCs are coarse" if ref_row["n"] < 10 else ""
        lines += [
            f"### Against the {ref_name} ({ref_row['n']} structures{few})",
            "",
            "| set | structures | max sigma_i | max gamma_i | energy sigma | energy sigma / N | max gamma > 1 | median max gamma |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(f"| {row['set']} | {row['n']} | {row['auroc_max_atom_sigma']:.3f} | {row['auroc_max_gamma']:.3f} | "
                         f"{row['auroc_energy_sigma']:.3f} | {row['auroc_energy_sigma_per_atom']:.3f} | "
                         f"{100 * row['fraction_max_gamma_above_1']:.0f}% | {row['median_max_gamma']:.2f} |")
        lines += [
            f"| {ref_name} (reference) | {ref_row['n']} | | | | | {100 * ref_row['fraction_max_gamma_above_1']:.0f}% | "
            f"{ref_row['median_max_gamma']:.2f} |",
            "",
        ]
    lines += [
        "max sigma_i and max gamma_i rank structures identically (sigma_i = alpha sqrt(max_train_q gamma_i)), so "
        "their AUROCs are equal; gamma adds a threshold that needs no calibration: gamma > 1 means an atom more "
        "novel than every training atom. That threshold is set by the training set's most unusual atom (here in a "
        f"{r['max_train_q_config_type']} structure): environments less unusual than it, such as point defects in a "
        "crystal when liquid and amorphous structures are trained on, stay below 1 even where the ranking separates "
        "them (the AUROC against the crystalline reference). The total-energy sigma grows with the number of atoms; "
        "sigma / N removes that.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
