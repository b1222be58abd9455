"""Train an llpr potential with calibrated uncertainty on your own extended-XYZ file.

    python fit_my_data.py structures.xyz -o my_model
    python fit_my_data.py dft.xyz -o my_model --energy-key REF_energy --forces-key REF_forces

The file needs, for every structure, the total energy (eV) and the forces (eV/A): by default
`energy=...` in the comment line and a `forces` column (what ASE writes for a structure with
a single-point calculator); other names with --energy-key / --forces-key. The structures are
split into training, validation (early stopping and calibration) and test sets; the script
trains, fits and calibrates the LLPR uncertainty, exports `OUT/model.pt` for LAMMPS and ASE,
and reports how the uncertainty does on the test set. It also writes `OUT/test_sigma.xyz`,
the test structures with each atom's `sigma` (open it in OVITO and colour by `sigma`).

Sizes: --epochs / --time-limit, with defaults from the environment variables EPOCHS and
TIME_LIMIT when they are set (400 epochs, 600 s otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def load_structures(path: str, energy_key: str, forces_key: str):
    """Read every structure of an extended-XYZ file and put its labels where llpr looks for
    them (atoms.info['energy'], atoms.arrays['forces']); clear errors when they are missing."""
    from ase.io import read

    if not os.path.exists(path):
        raise FileNotFoundError(f"'{path}' does not exist; give the path of your extended-XYZ file")
    frames = read(path, index=":", format="extxyz")
    if not frames:
        raise ValueError(f"'{path}' holds no structures")
    for k, atoms in enumerate(frames):
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        energy = atoms.info.get(energy_key, results.get(energy_key))
        forces = atoms.arrays.get(forces_key, results.get(forces_key))
        if energy is None or forces is None:
            info_keys = sorted(set(atoms.info) | {key for key in results if np.ndim(results[key]) == 0})
            array_keys = sorted(set(atoms.arrays) - {"numbers", "positions"}
                                | {key for key in results if np.ndim(results[key]) == 2})
            missing = [f"energy '{energy_key}'" if energy is None else None,
                       f"forces '{forces_key}'" if forces is None else None]
            raise ValueError(
                f"structure {k} of '{path}' has no {' and no '.join(m for m in missing if m)}. "
                f"Its per-structure keys are: {', '.join(info_keys) or 'none'}; its per-atom keys: "
                f"{', '.join(array_keys) or 'none'}. Name yours with --energy-key and --forces-key"
            )
        atoms.calc = None
        atoms.info["energy"] = float(energy)
        atoms.arrays["forces"] = np.asarray(forces, dtype=float).reshape(len(atoms), 3)
        atoms.info.setdefault("config_type", "user")
    return frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("structures", help="extended-XYZ file with energies and forces")
    parser.add_argument("-o", "--output", default="my_model", help="output folder (default my_model)")
    parser.add_argument("--energy-key", default="energy", help="name of the total energy (default energy)")
    parser.add_argument("--forces-key", default="forces", help="name of the per-atom forces (default forces)")
    parser.add_argument("--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 400)))
    parser.add_argument("--time-limit", type=float, default=float(os.environ.get("TIME_LIMIT", 600)))
    parser.add_argument("--cutoff", type=float, default=4.0, help="model cutoff in Angstrom (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        structures = load_structures(args.structures, args.energy_key, args.forces_key)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fit_my_data.py: error: {exc}", file=sys.stderr)
        return 2

    import torch

    from llpr.data import split_dataset, write_dataset
    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.train import TrainConfig, train_model
    from llpr.uncertainty.estimator import LLPR, save_llpr

    os.makedirs(args.output, exist_ok=True)
    train, val, test = split_dataset(structures, args.split, seed=args.seed)
    elements = sorted({s for a in structures for s in a.get_chemical_symbols()})
    print(f"{len(structures)} structures ({', '.join(elements)}): {len(train)} train / {len(val)} validation / "
          f"{len(test)} test")
    if not val or not test:
        print("fit_my_data.py: error: the split left no validation or no test structure; give more structures "
              "or change --split", file=sys.stderr)
        return 2

    # 1. train
    config = TrainConfig(max_epochs=args.epochs, time_limit_s=args.time_limit, dtype="float64", seed=args.seed,
                         model={"cutoff": args.cutoff})
    model, history = train_model(train, val, config, progress=False)
    print(f"trained {len(history['epoch'])} epochs ({history['stop_reason']})")

    # 2. LLPR: covariance on the training set, alpha and varsigma on the validation set
    def loader(atoms_list):
        return make_loader(AtomisticDataset(atoms_list, model.cutoff, torch.float64), 16)

    llpr = LLPR(model).fit(loader(train)).calibrate(loader(val))
    s = llpr.calibration_summary()
    print(f"calibrated: alpha = {s['alpha']:.4g} eV, varsigma = {s['varsigma']:.4g}")

    # 3. one file for LAMMPS and ASE (+ the Python state, for `llpr export` or load_llpr)
    model_path = os.path.join(args.output, "model.pt")
    export_model(llpr, model_path)
    save_llpr(llpr, os.path.join(args.output, "llpr.ckpt"))
    for name, part in (("train", train), ("val", val), ("test", test)):
        write_dataset(part, os.path.join(args.output, f"{name}.xyz"))

    # 4. the test set: errors against uncertainties, structure by structure
    errors, sigmas, n_atoms, with_sigma = [], [], [], []
    for atoms in test:
        out = llpr.predict(next(iter(loader([atoms]))))
        errors.append(float(out["prediction"][0] - out["target"][0]))
        sigmas.append(float(out["sigma"][0]))
        n_atoms.append(len(atoms))
        copy = atoms.copy()
        copy.arrays["sigma"] = out["atom_sigma"].numpy()
        copy.arrays["lpr"] = out["lpr"].numpy()
        with_sigma.append(copy)
    write_dataset(with_sigma, os.path.join(args.output, "test_sigma.xyz"))
    errors, sigmas, n_atoms = map(np.asarray, (errors, sigmas, n_atoms))
    order = np.argsort(-sigmas / n_atoms)
    print(f"\ntest structures, most uncertain first (per atom, meV/atom):")
    print(f"  {'#':>4s} {'atoms':>6s} {'config':>14s} {'|error|':>9s} {'sigma':>9s}")
    for k in order[: min(10, len(order))]:
        print(f"  {k:4d} {n_atoms[k]:6d} {str(test[k].info.get('config_type', '')):>14s} "
              f"{1000 * abs(errors[k]) / n_atoms[k]:9.3f} {1000 * sigmas[k] / n_atoms[k]:9.3f}")
    z = errors / sigmas
    print(f"\nenergy RMSE {1000 * np.sqrt(np.mean((errors / n_atoms) ** 2)):.2f} meV/atom; "
          f"errors within 1 sigma: {np.mean(np.abs(z) <= 1):.0%} (68% expected), "
          f"within 2 sigma: {np.mean(np.abs(z) <= 2):.0%} (95% expected)")
    print(f"wrote {model_path} (pair_style llpr {model_path}; pair_coeff * * {' '.join(elements)} if your "
          f"LAMMPS types are in this order) and {os.path.join(args.output, 'test_sigma.xyz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
