"""Helpers of the active-learning loop in run.sh.

    python al.py check MODEL                       refuse a model file without the extrapolation
                                                   grade (re-export it)
    python al.py label DUMP TRAIN.xyz --potential sw [--tag NAME]
                                                   label the frame(s) of a LAMMPS dump with the
                                                   reference potential and append them to TRAIN.xyz
    python al.py retrain PREVIOUS.ckpt TRAIN.xyz VAL.xyz OUT [--epochs N] [--time-limit S]
                                                   continue training the previous model on the
                                                   grown training set (fine-tuning), refit and
                                                   recalibrate the LLPR, export OUT.pt (and
                                                   OUT.ckpt, OUT.llpr.ckpt)

The criterion is the extrapolation grade gamma_i = q_i / max q of the training atoms, which
each exported file carries: it needs no threshold computed from the data (gamma_i > 1: an atom
less familiar than anything the model was trained on).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def cmd_check(args) -> None:
    from llpr.modelfile import load_exported, require_extrapolation_grade

    module = load_exported(args.model)
    require_extrapolation_grade(module, f"'{args.model}'")
    print(f"{args.model}: gamma_i = q_i / {float(module.head.max_train_q):.6g} (max q of its training atoms)",
          file=sys.stderr)


def cmd_label(args) -> None:
    from ase.io import read

    from llpr.data import read_dataset, write_dataset
    from llpr.lammps.labelling import label_structures

    frames = read(args.dump, index=":", format="lammps-dump-text")
    for atoms in frames:
        atoms.info["config_type"] = args.tag
    labelled = label_structures(frames, potential=args.potential)
    train = read_dataset(args.train)
    write_dataset(train + labelled, args.train)
    for atoms in labelled:
        print(f"labelled {len(atoms)} atoms with {args.potential}: E = {atoms.info['energy']:.3f} eV, "
              f"max |F| = {np.abs(atoms.arrays['forces']).max():.2f} eV/A", file=sys.stderr)
    print(f"{args.train}: {len(train)} -> {len(train) + len(labelled)} structures", file=sys.stderr)


def fine_tune(model, train, val, epochs: int, time_limit: float, lr: float, energy_weight=100.0,
              force_weight=1.0):
    """Continue training `model` on `train` (early stopping on `val`), keeping its energy
    reference and descriptor normalisation as they are. (llpr.models.train.train_model refits those
    from the data, which is right for a new model but shifts the inputs of a trained one.)"""
    import copy
    import time

    import torch

    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.train import predict_batch

    dtype = next(model.parameters()).dtype
    train_loader = make_loader(AtomisticDataset(train, model.cutoff, dtype), 8, shuffle=True)
    val_loader = make_loader(AtomisticDataset(val, model.cutoff, dtype), 16)

    def loss_of(batch, create_graph):
        energy, forces = predict_batch(model, batch, forces=True, create_graph=create_graph)
        e = (energy - batch["energy"]) / batch["n_atoms"].to(energy.dtype)
        return energy_weight * (e**2).mean() + force_weight * ((forces - batch["forces"]) ** 2).mean()

    def validation_loss():
        model.eval()
        losses = [float(loss_of(batch, False).detach()) * int(batch["n_structures"]) for batch in val_loader]
        return sum(losses) / len(val)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, start, epoch = validation_loss(), copy.deepcopy(model.state_dict()), time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss_of(batch, True).backward()
            optimizer.step()
        current = validation_loss()
        if current < best:
            best, best_state = current, copy.deepcopy(model.state_dict())
        if time.perf_counter() - start > time_limit:
            break
    model.load_state_dict(best_state)
    model.eval()
    return epoch


def cmd_retrain(args) -> None:
    import torch

    from llpr.models.checkpoint import load_model, save_model
    from llpr.data import read_dataset
    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.uncertainty.estimator import LLPR, save_llpr

    model = load_model(args.previous)
    dtype = next(model.parameters()).dtype
    train, val = read_dataset(args.train), read_dataset(args.val)
    epochs = fine_tune(model, train, val, args.epochs, args.time_limit, args.lr)
    save_model(model, f"{args.out}.ckpt")

    def loader(atoms_list):
        return make_loader(AtomisticDataset(atoms_list, model.cutoff, dtype), 16)

    # the training set changed: refit the covariance and recalibrate
    # max q over the grown training set: the reference of the next round's gamma
    llpr = LLPR(model).fit(loader(train)).calibrate(loader(val), train_loader=loader(train))
    save_llpr(llpr, f"{args.out}.llpr.ckpt")
    export_model(llpr, f"{args.out}.pt", dtype=torch.float64)
    s = llpr.calibration_summary()
    print(f"trained {epochs} more epochs on {len(train)} structures; alpha {s['alpha']:.3g}, "
          f"varsigma {s['varsigma']:.3g}, max q {s['max_train_q']:.4g}; wrote {args.out}.pt", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check that a model file carries the extrapolation grade")
    p.add_argument("model")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("label", help="label a dump's frames and add them to the training set")
    p.add_argument("dump")
    p.add_argument("train")
    p.add_argument("--potential", default="sw")
    p.add_argument("--tag", default="active_learning", help="config_type of the new structures")
    p.set_defaults(func=cmd_label)
    p = sub.add_parser("retrain", help="continue training on the grown training set, recalibrate, export")
    p.add_argument("previous", help="checkpoint of the previous model (from llpr train or a previous retrain)")
    p.add_argument("train")
    p.add_argument("val")
    p.add_argument("out", help="prefix of the files to write: OUT.ckpt, OUT.llpr.ckpt, OUT.pt")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--time-limit", type=float, default=240.0)
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (lower than from scratch: default 5e-4)")
    p.set_defaults(func=cmd_retrain)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"al.py {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
