"""A MACE model in LAMMPS through llpr: the step time against MACE's own ASE calculator on the
same atoms, and the cost of the uncertainty every step.

The model: a ScaleShiftMACE (16x0e+16x1o, 2 interactions, r_max 4 A, float64; the weights do
not change the cost, so it is initialised, not trained), calibrated by llpr on a few
structures and exported. For each size (a diamond Si supercell, 600 K, NVE):

* LAMMPS, one rank: ``pair_style llpr`` alone, and with ``compute llpr/atom`` + ``compute
  llpr`` evaluated every step (thermo every step in both, so that only the computes differ);
* ASE: MACE's ``MACECalculator`` in a velocity-Verlet run, and llpr's ``LLPRCalculator`` with
  the exported file, on the same atoms.

Ratios are of times measured in this one run: ASE MACE / LAMMPS (target >= 1) and LAMMPS with
/ without uncertainty - 1 (target <= 2 %).

    python benchmarks/mace_lammps.py [--sizes 5 10] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from lammps_performance import LATTICE, lammps_input, run_lammps  # noqa: E402
from timing import write_report  # noqa: E402


def build_model(folder: str) -> tuple[str, str]:
    from mace_models import make_mace, save_mace
    from test_mace import labelled

    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.mace import MACEModel
    from llpr.modelfile import export_model
    from llpr.uncertainty.estimator import LLPR

    import pathlib

    pickled, compiled = save_mace(make_mace([14], seed=0, hidden="16x0e+16x1o"), pathlib.Path(folder))
    model = MACEModel.from_file(compiled)
    loaders = [make_loader(AtomisticDataset(labelled(n, s, (14,)), model.cutoff, torch.float64), 4)
               for n, s in ((8, 0), (4, 40))]
    llpr = LLPR(model).fit(loaders[0]).calibrate(loaders[1])
    return pickled, export_model(llpr, os.path.join(folder, "si_mace.pt"))


def ase_steps(calc, n: int, steps: int) -> float:
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = bulk("Si", "diamond", LATTICE, cubic=True) * (n, n, n)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(2)  # first calls: TorchScript set-up
    t0 = time.perf_counter()
    dyn.run(steps)
    return (time.perf_counter() - t0) / steps


def head_cost(exported: str, n_atoms: int, repeats: int = 20) -> float:
    """Seconds for the per-atom sigma_i / LPR_i and the global sigma of `n_atoms` atoms: the
    exported head's methods on random features of the model's width (what compute llpr/atom
    and compute llpr add to a step, the model's own work aside)."""
    from llpr.modelfile import load_exported

    head = load_exported(exported).head
    features = torch.randn(n_atoms, int(head.n_features()), dtype=torch.float64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        head.local_uncertainty(features)
        head.energy_variance(features.sum(0))
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10], help="supercells n x n x n of 8 atoms")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="LAMMPS runs per variant (the best is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mace.calculators import MACECalculator

    from llpr.ase import LLPRCalculator

    work = tempfile.mkdtemp(prefix="mace_lammps_")
    pickled, exported = build_model(work)
    load0 = os.getloadavg()[0]
    rows = []
    for n in args.sizes:
        timing = {}
        for name, unc in (("lammps", False), ("lammps_uncertainty", True)):
            runs = [run_lammps(lammps_input(n, "llpr", {"llpr": exported}, args.steps, 2, every=1, uncertainty=unc),
                               work, threads=args.threads) for _ in range(args.repeats)]
            timing[name] = min(r["s_per_step"] for r in runs)
            timing[name + "_pair_s"] = min(r["sections_s"].get("Pair", 0.0) for r in runs) / args.steps
            atoms = runs[0]["atoms"]
        timing["ase_mace"] = ase_steps(MACECalculator(model_paths=pickled, device="cpu", default_dtype="float64"),
                                       n, args.steps)
        timing["ase_llpr"] = ase_steps(LLPRCalculator(exported), n, args.steps)
        timing["atoms"] = atoms
        timing["head_s"] = head_cost(exported, atoms)
        rows.append(timing)
        print(n, {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in timing.items()}, flush=True)
    load1 = os.getloadavg()[0]

    command = (f"python benchmarks/mace_lammps.py --sizes {' '.join(map(str, args.sizes))} --steps {args.steps} "
               f"--repeats {args.repeats} --threads {args.threads}")
    lines = ["# A MACE model in LAMMPS (llpr) vs MACE's ASE calculator; uncertainty cost", "", f"`{command}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPU cores, 1 MPI rank, {args.threads} torch "
             f"thread(s); torch {torch.__version__}; load average {load0:.1f} at the start, {load1:.1f} at the end. "
             "ScaleShiftMACE 16x0e+16x1o, 2 interactions, r_max 4 A, float64; diamond Si at 600 K, NVE.", "",
             "| atoms | LAMMPS s/step | + uncertainty every step | overhead | head's own work (s) | head / step | "
             "ASE MACECalculator s/step | ASE / LAMMPS | ASE LLPRCalculator s/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        overhead = r["lammps_uncertainty"] / r["lammps"] - 1.0
        lines.append(f"| {r['atoms']} | {r['lammps']:.3f} | {r['lammps_uncertainty']:.3f} | {100 * overhead:+.2f} % | "
                     f"{r['head_s']:.2e} | {100 * r['head_s'] / r['lammps']:.3f} % | "
                     f"{r['ase_mace']:.3f} | {r['ase_mace'] / r['lammps']:.2f}x | {r['ase_llpr']:.3f} |")
    lines += ["", "Targets: ASE / LAMMPS >= 1.0x; uncertainty overhead <= 2 %. 'overhead' is the difference of two "
              "LAMMPS runs and carries their noise (a loaded machine moves it by several %); 'head's own work' "
              "times the uncertainty's arithmetic alone (the head's methods on features of the model's width, best "
              f"of 20). LAMMPS's graph adds the ghost atoms that the first of the {2} layers needs (out to r_max "
              "plus the 1 A skin from the rank's atoms); ASE's periodic graph needs none."]
    os.makedirs(args.out, exist_ok=True)
    write_report(lines, os.path.join(args.out, "mace_lammps.md"))
    with open(os.path.join(args.out, "mace_lammps.json"), "w") as fh:
        json.dump({"command": command, "rows": rows}, fh, indent=2)



if __name__ == "__main__":
    main()
