"""Calibration variants of LLPR against a deep ensemble, in and out of distribution (silicon).

Same data, split, model budget and metrics as ``benchmarks/uq_quality.py``: LLPR is fitted
on member 0 (seed ``--seed``) and calibrated in several ways, each a public option of
``LLPR.calibrate`` (and of ``llpr calibrate``):

* ``energy``: alpha, varsigma from the validation energies' NLL (the default);
* ``energy+forces w``: the joint NLL ``NLL_energy + w NLL_force`` (``force_weight=w``,
  ``--force-calibration w``);
* ``power law``: ``sigma = s sqrt(q)^b`` fitted on the energies (``sigma_power=True``,
  ``--sigma-power``);
* ``+ extra``: each of the above with a few extra structures in the calibration set
  (``extra=``, ``--calibration-extra FILE``): ``--n-extra`` structures of each OOD kind
  (surface, vacancy, interstitial, crystal above 900 K), sampled with another seed
  (``--extra-seed``), so none of them is in the OOD test set.

The deep ensemble is trained here (``--members`` models), or its rows are read from a
``uq_quality.py`` JSON of the same data, split, seed and epochs (``--ensemble-json``), which
then saves training all but member 0; compare the JSON's LLPR row with this run's
``energy (default)`` row first: if they differ, member 0 did not train to the same model
(another package version) and the ensemble rows are not comparable.

    python benchmarks/calibration_variants.py [--epochs 300] [--ensemble-json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from uq_quality import OOD_TYPES, is_ood, llpr_predict, machine_description, metrics, split, train_config, train_members  # noqa: E402

from llpr.graphs import AtomisticDataset, make_loader  # noqa: E402
from llpr.lammps.sampling import generate_dataset  # noqa: E402
from llpr.models.train import train_model  # noqa: E402
from llpr.uncertainty.estimator import LLPR  # noqa: E402

VARIANTS = (
    ("energy (default)", {}),
    ("energy+forces w=1", {"force_weight": 1.0}),
    ("energy+forces w=10", {"force_weight": 10.0}),
    ("power law", {"sigma_power": True}),
    ("energy + extra", {"extra": True}),
    ("energy+forces w=1 + extra", {"force_weight": 1.0, "extra": True}),
    ("power law + extra", {"sigma_power": True, "extra": True}),
)


def ood_kind(atoms) -> str:
    t = atoms.info["config_type"]
    return t if t in OOD_TYPES else "hot crystal"


def per_kind_nll(pred: dict, atoms_list) -> dict:
    """Energy NLL of each OOD kind (the set mixes four)."""
    ref = np.array([a.info["energy"] for a in atoms_list])
    nll = 0.5 * np.log(2 * np.pi * pred["energy_variance"]) + 0.5 * (pred["energy"] - ref) ** 2 / pred["energy_variance"]
    kinds = np.array([ood_kind(a) for a in atoms_list])
    return {k: float(nll[kinds == k].mean()) for k in sorted(set(kinds))}


def extra_structures(n: int, seed: int) -> list:
    counts = {"surface": n, "vacancy": n, "interstitial": n, "crystal": 4 * n}
    structures = generate_dataset("sw", n_per_type=counts, seed=seed, progress=False)
    out, hot = [], 0
    for a in structures:
        if not is_ood(a):
            continue
        if a.info["config_type"] == "crystal":
            if hot >= n:
                continue
            hot += 1
        out.append(a)
    return out


def run_variants(model, train, val, test, ood, extra, args, verbose=False):
    """Fit LLPR on ``model`` and calibrate it in each of VARIANTS: metrics on the ID and OOD
    test sets, calibration summaries and the OOD energy NLL by kind."""
    dtype = next(model.parameters()).dtype
    loader = lambda s: make_loader(AtomisticDataset(s, model.cutoff, dtype), 16)  # noqa: E731
    llpr = LLPR(model).fit(loader(train))
    results = {"ID test": {}, "OOD test": {}}
    calibrations, ood_kinds = {}, {}
    for name, options in VARIANTS:
        opts = dict(options)
        if opts.pop("extra", False):
            opts.update(extra=loader(extra), extra_source=f"{len(extra)} OOD-kind structures, seed {args.extra_seed}")
        llpr.calibrate(loader(val), **opts)
        calibrations[name] = llpr.calibration_summary()
        weights = llpr.sample_ensemble(args.llpr_ensemble, seed=args.ensemble_seed)
        for set_name, data in (("ID test", test), ("OOD test", ood)):
            pred = llpr_predict(llpr, data, weights)
            results[set_name][name] = metrics(pred, data)
            if set_name == "OOD test":
                ood_kinds[name] = per_kind_nll(pred, data)
        if verbose:
            print(f"{name}: alpha {llpr.alpha:.4g} varsigma {llpr.varsigma:.4g} b {llpr.calibration_.sigma_power:.3g}; "
                  f"ID NLL {results['ID test'][name]['nll']:.3f} OOD NLL {results['OOD test'][name]['nll']:.3f}",
                  flush=True)
    return results, calibrations, ood_kinds


def summarise_member(k: int, results: dict) -> dict:
    """Energy and force NLL of each variant, ID and OOD, for member ``k``."""
    return {"member": k, "nll": {name: {f"{s} {q}": results[s][name][key] for s in ("ID test", "OOD test")
                                        for q, key in (("energy", "nll"), ("forces", "force_nll"))}
                                 for name, _ in VARIANTS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--llpr-ensemble", type=int, default=32)
    parser.add_argument("--ensemble-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-per-type", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-extra", type=int, default=2, help="extra calibration structures of each OOD kind")
    parser.add_argument("--extra-seed", type=int, default=1)
    parser.add_argument("--ensemble-json", default=None,
                        help="uq_quality.py JSON whose deep-ensemble rows to reuse (same data, seed, epochs)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test run (results *_quick.*)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    args.time_limit = None
    if args.quick:
        args.members, args.n_per_type, args.llpr_ensemble, args.epochs, args.n_extra = 2, 6, 4, 3, 1
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    structures = generate_dataset("sw", n_per_type=args.n_per_type, seed=args.seed, progress=False)
    train, val, test, ood = split(structures, args.seed)
    extra = extra_structures(args.n_extra, args.extra_seed)
    print(f"train {len(train)} / val {len(val)} / ID test {len(test)} / OOD {len(ood)} / extra {len(extra)}",
          flush=True)
    config = train_config(args)
    reused = None
    if args.ensemble_json:
        with open(args.ensemble_json) as fh:
            reused = json.load(fh)
        for key in ("epochs", "n_per_type", "seed", "llpr_ensemble", "ensemble_seed"):
            if reused["args"][key] != getattr(args, key):
                raise SystemExit(f"{args.ensemble_json} was run with {key}={reused['args'][key]}, not "
                                 f"{getattr(args, key)}: its ensemble is not comparable")
        model, history = train_model(train, val, config, progress=False)
        runs = [{"seed": config.seed, "epochs": len(history["epoch"]), "best_epoch": history["best_epoch"],
                 "best_val_energy_rmse_mev_per_atom": 1000 * history["val_energy_rmse"][history["best_epoch"]]}]
        print(f"member 0: {runs[0]}", flush=True)
    else:
        members, runs = train_members(train, val, args.members, config)
        model = members.members[0]
    results, calibrations, ood_kinds = run_variants(model, train, val, test, ood, extra, args, verbose=True)
    # the same variants on every other member: how much the verdicts depend on member 0's seed
    per_member = [summarise_member(0, results)]
    if reused is None:
        for k, member in enumerate(members.members[1:], start=1):
            per_member.append(summarise_member(k, run_variants(member, train, val, test, ood, extra, args)[0]))
            print(f"variants on member {k}: done", flush=True)
    ens_name = f"deep ensemble (K={args.members})"
    if reused is not None:
        for set_name in results:
            results[set_name][ens_name + ", from " + os.path.basename(args.ensemble_json)] = \
                reused["results"][set_name][ens_name]
        ens_source = f"rows read from {args.ensemble_json} (same data, split, seed and epochs)"
    else:
        members.calibrate(val)
        for set_name, data in (("ID test", test), ("OOD test", ood)):
            results[set_name][ens_name] = metrics(members.predict(data), data)
        ens_source = "trained in this run"
    wall = time.perf_counter() - start
    command = (f"python benchmarks/calibration_variants.py --members {args.members} --epochs {args.epochs} "
               f"--llpr-ensemble {args.llpr_ensemble} --ensemble-seed {args.ensemble_seed} --threads {args.threads} "
               f"--n-per-type {args.n_per_type} --seed {args.seed} --n-extra {args.n_extra} "
               f"--extra-seed {args.extra_seed}" + (f" --ensemble-json {args.ensemble_json}" if reused else "")
               + (" --quick" if args.quick else ""))
    report = {"command": command, "machine": machine_description(), "torch": torch.__version__, "wall_s": wall,
              "ensemble_source": ens_source, "training_runs": runs, "n_extra_structures": len(extra),
              "results": results, "calibration": calibrations, "ood_energy_nll_by_kind": ood_kinds,
              "per_member": per_member,
              "args": vars(args)}
    suffix = "_quick" if args.quick else ""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"calibration_variants{suffix}.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    with open(os.path.join(args.out, f"calibration_variants{suffix}.md"), "w") as fh:
        fh.write(render(report))
    print(f"wrote {args.out}/calibration_variants{suffix}.md ({wall:.0f} s)")


def render(report: dict) -> str:
    lines = ["# LLPR calibration variants against a deep ensemble (silicon)", "",
             f"`{report['command']}`", "",
             f"{report['machine']}; torch {report['torch']}; {report['wall_s'] / 60:.1f} min. "
             f"Data, split, model budget and metrics as `benchmarks/uq_quality.py`; LLPR on member 0; "
             f"deep ensemble: {report['ensemble_source']}. Extra calibration structures: "
             f"{report['n_extra_structures']} (OOD kinds, another sampling seed; not in the OOD test set).", "",
             "Energies per structure, forces per Cartesian component (LLPR force sigma: last-layer ensemble). "
             "NLL in nats.", ""]
    head = ("| variant | alpha | varsigma | b | ID E NLL | ID E cov 68/95 | ID E Spearman | ID F NLL | ID F cov 68/95 "
            "| OOD E NLL | OOD E cov 68/95 | OOD E Spearman | OOD E RMSE/RMS sigma | OOD F NLL | OOD F cov 68/95 |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name in report["results"]["ID test"]:
        i, o = report["results"]["ID test"][name], report["results"]["OOD test"][name]
        cal = report["calibration"].get(name)
        c = (f"{cal['alpha']:.4g} | {cal['varsigma']:.3g} | {cal['sigma_power']:.2f}" if cal else "— | — | —")
        lines.append(
            f"| {name} | {c} | {i['nll']:.3f} | {i['coverage_68']:.2f}/{i['coverage_95']:.2f} | {i['spearman']:.2f} "
            f"| {i['force_nll']:.3f} | {i['force_coverage_68']:.2f}/{i['force_coverage_95']:.2f} "
            f"| {o['nll']:.3f} | {o['coverage_68']:.2f}/{o['coverage_95']:.2f} | {o['spearman']:.2f} "
            f"| {o['energy_rmse'] / o['energy_sigma_rms']:.2f} "
            f"| {o['force_nll']:.3f} | {o['force_coverage_68']:.2f}/{o['force_coverage_95']:.2f} |")
    kinds = sorted(next(iter(report["ood_energy_nll_by_kind"].values())))
    lines += ["", "OOD energy NLL by kind:", "", "| variant | " + " | ".join(kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for name, row in report["ood_energy_nll_by_kind"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in kinds) + " |")
    members = report.get("per_member", [])
    if len(members) > 1:
        cols = ("ID test energy", "ID test forces", "OOD test energy", "OOD test forces")
        ens = [n for n in report["results"]["ID test"] if n not in report["calibration"]][0]
        lines += ["", f"Every variant on each of the {len(members)} members (LLPR fitted on member k; NLL, mean over "
                  "members, and on how many members the variant beats the default):", "",
                  "| variant | " + " | ".join(f"{c} NLL (mean)" for c in cols) + " | better than default (ID E / OOD E) |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for name in report["calibration"]:
            means = [np.mean([m["nll"][name][c] for m in members]) for c in cols]
            wins = [sum(m["nll"][name][c] < m["nll"]["energy (default)"][c] for m in members)
                    for c in ("ID test energy", "OOD test energy")]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in means)
                         + f" | {wins[0]}/{len(members)} , {wins[1]}/{len(members)} |")
        e = report["results"]
        lines.append(f"| {ens} | {e['ID test'][ens]['nll']:.3f} | {e['ID test'][ens]['force_nll']:.3f} | "
                     f"{e['OOD test'][ens]['nll']:.3f} | {e['OOD test'][ens]['force_nll']:.3f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
