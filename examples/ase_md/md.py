"""Molecular dynamics in ASE with an exported llpr model: Langevin dynamics of a silicon
crystal with a vacancy, logging the energy uncertainty as it runs, writing frames with each
atom's sigma for OVITO, and stopping when the model becomes unsure.

    python md.py model.pt                                   # 1000 steps of 1 fs at 900 K
    python md.py model.pt --steps 5000 --temperature 1500 --threshold 0.02 -o md.xyz

The model file is the one `llpr export` writes (the same file LAMMPS runs). Steps default to
the environment variable NSTEPS when it is set.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


class UncertaintyStop(Exception):
    """Raised by the logger to end the run when an atom's sigma_i exceeds the threshold."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", help="exported llpr model (llpr export)")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("NSTEPS", 1000)))
    parser.add_argument("--temperature", type=float, default=900.0, help="K (default 900)")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    parser.add_argument("--interval", type=int, default=10, help="log and write a frame every N steps")
    parser.add_argument("--threshold", type=float, default=None,
                        help="stop when an atom's sigma_i exceeds this (eV); default: never")
    parser.add_argument("--repeat", type=int, default=3, help="cubic cells per direction (default 3: 216 sites)")
    parser.add_argument("-o", "--output", default="md.xyz", help="frames with per-atom sigma and lpr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from ase import units
    from ase.build import bulk
    from ase.constraints import FixCom
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.28
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

    from llpr.ase import LLPRCalculator

    try:
        calc = LLPRCalculator(args.model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"md.py: error: {exc}", file=sys.stderr)
        return 2

    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (args.repeat, args.repeat, args.repeat)
    del atoms[len(atoms) // 2]  # a vacancy
    atoms.calc = calc
    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())  # no drift of the centre of mass
    dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)
    if os.path.exists(args.output):
        os.remove(args.output)

    print(f"{len(atoms)} Si atoms, {args.temperature:.0f} K, {args.steps} steps of {args.timestep} fs with {args.model}")
    print(f"{'step':>6s} {'T (K)':>8s} {'E_pot (eV)':>12s} {'sigma_E (eV)':>13s} {'max sigma_i (meV)':>18s} {'atom':>5s}")
    state = {"stopped": None}

    def report():
        step = dyn.nsteps
        r = calc.results
        k = int(np.argmax(r["sigma"]))
        print(f"{step:6d} {atoms.get_temperature():8.1f} {r['energy']:12.4f} {r['energy_sigma']:13.5f} "
              f"{1000 * r['sigma'][k]:18.3f} {k:5d}")
        frame = atoms.copy()
        frame.calc = None
        frame.arrays["sigma"] = r["sigma"].copy()
        frame.arrays["lpr"] = r["lpr"].copy()
        frame.info.update(step=step, energy=float(r["energy"]), energy_sigma=float(r["energy_sigma"]))
        write(args.output, frame, format="extxyz", append=True)
        if args.threshold is not None and r["sigma"][k] > args.threshold:
            state["stopped"] = (step, k, float(r["sigma"][k]))
            raise UncertaintyStop

    dyn.attach(report, interval=args.interval)  # also called before the first step
    try:
        dyn.run(args.steps)
    except UncertaintyStop:
        step, k, s = state["stopped"]
        print(f"stopped at step {step}: atom {k} has sigma_i = {1000 * s:.3f} meV > {1000 * args.threshold:.3f} meV; "
              f"its environment is worth adding to the training set")
    print(f"wrote {args.output} (per-atom columns sigma, lpr; open it in OVITO and colour by sigma)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
