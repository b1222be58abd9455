"""Cost of the members' energy deviations (`compute llpr ensemble yes`) every step, and of
the members' virial (`virial yes`) on the steps it is asked for, in LAMMPS.

    python benchmarks/ensemble_observables_cost.py            # 8000 atoms, K = 32 and 128 (~10 min)
    python benchmarks/ensemble_observables_cost.py --quick    # 512 atoms, a smoke test

Diamond Si at 600 K, NVE, one rank, one thread, the default-architecture model of
benchmarks/lammps_performance.py (untrained weights: run time does not depend on them). Each
variant is the same run with another thermo output:

* ``pe``: ``thermo_style custom step pe`` (the baseline);
* ``sigma``: plus ``c_g[1]`` of a plain ``compute g all llpr`` (feature sum, all-reduce,
  quadratic form);
* ``dE K=32`` / ``dE K=128``: ``c_e[*]`` of ``compute e all llpr ensemble yes`` (the same feature
  sum and all-reduce, plus the (K x F) product through the core), and the same with ``max no``
  (without the largest sigma_i, which needs every atom's sigma_i);
* ``virial K=32`` / ``K=128``: ``c_v[*]`` of ``compute v all llpr ensemble yes virial yes``
  every ``--virial-every`` steps (one re-run of the model with min(K - 1, F) backward passes).

The computes run in LAMMPS's "Output" timer section and the model in "Pair", so a compute's
cost per step is the Output time per step of its variant minus the baseline's, against the
baseline's loop time per step (free of the run-to-run noise of the model's own time; the
wall-clock ratios of interleaved repeats are reported next to it). The (K x F) product alone
is also timed through the Python binding of the core (``llpr._core.Model``).
Writes ``benchmarks/results/ensemble_observables_cost.{md,json}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lammps_performance import _cpu_name, build_model, lammps_input, run_lammps  # noqa: E402
from timing import target_lines  # noqa: E402

TARGET = 0.5  # % of a step, every step (issue 15)


def script(n: int, model: str, thermo: str, computes: str, steps: int, warmup: int, every: int) -> str:
    """benchmarks/lammps_performance.py's input (diamond Si, 600 K, NVE) with this thermo output."""
    base = lammps_input(n, "llpr", {"llpr": model, "device": "cpu"}, steps, warmup, every=0)
    quiet = "thermo_style custom step pe\nthermo 1000000"
    assert quiet in base
    return base.replace(quiet, f"{computes}\nthermo_style custom step pe {thermo}\nthermo {every}")


def product_time(model_path: str, repeats: int = 2000) -> float:
    """Microseconds per call of the core's ensemble_energy_deviations (the (K x F) product)."""
    from llpr._core import Model

    m = Model(model_path, "cpu")
    s = np.random.default_rng(0).normal(size=m.metadata["n_features"])
    for _ in range(50):
        m.ensemble_energy_deviations(s)
    t0 = time.perf_counter()
    for _ in range(repeats):
        m.ensemble_energy_deviations(s)
    return 1e6 * (time.perf_counter() - t0) / repeats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 atoms, few steps (smoke test)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "ensemble_observables_cost"))
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each variant")
    parser.add_argument("--virial-every", type=int, default=100, help="steps between virial invocations")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="only rewrite the report (and the amortised virial share) from a saved JSON")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as fh:
            result = json.load(fh)
        for v in result["virial"].values():
            v["percent_at_every"] = 100 * v["steps_per_call"] / result["virial_every"]
        with open(args.out + ".json", "w") as fh:
            json.dump(result, fh, indent=1)
        with open(args.out + ".md", "w") as fh:
            fh.write(format_report(result, result.get("command", "python benchmarks/ensemble_observables_cost.py")))
        return result
    torch.set_num_threads(1)
    n = 4 if args.quick else 10  # 8 n^3 atoms
    steps, warmup = (20, 3) if args.quick else (100, 5)
    virial_steps = 2 * args.virial_every if not args.quick else 20
    virial_every = args.virial_every if not args.quick else 10
    started = time.time()
    result = {"atoms": 8 * n ** 3, "steps": steps, "repeats": args.repeats, "virial_every": virial_every,
              "virial_steps": virial_steps, "date": date.today().isoformat(), "cpu": _cpu_name(),
              "cores": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="llpr_ens_cost_") as work:
        models = {K: build_model(os.path.join(work, f"e{K}.pt"), seed=0, ensemble=K) for K in (32, 128)}
        from llpr._core import Model

        result["features"] = int(Model(models[32], "cpu").metadata["n_features"])
        result["product_us"] = {str(K): product_time(models[K]) for K in models}
        variants = {
            "pe": (models[32], "", ""),
            "sigma": (models[32], "c_g[1]", "compute g all llpr"),
            "dE K=32": (models[32], "c_e[*]", "compute e all llpr ensemble yes"),
            "dE K=128": (models[128], "c_e[*]", "compute e all llpr ensemble yes"),
            "dE K=32 max no": (models[32], "c_e[*]", "compute e all llpr ensemble yes max no"),
            "dE K=128 max no": (models[128], "c_e[*]", "compute e all llpr ensemble yes max no"),
        }
        runs = {k: [] for k in variants}
        for rep in range(args.repeats):
            for name in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
                model, thermo, computes = variants[name]
                r = run_lammps(script(n, model, thermo, computes, steps, warmup, 1), work)
                runs[name].append(r)
                print(f"{name}: {r['s_per_step'] * 1e3:.2f} ms/step, output {r['sections_s'].get('Output', 0):.4f} s",
                      flush=True)
        base = min(runs["pe"], key=lambda r: r["loop_s"])
        base_output = min(r["sections_s"].get("Output", 0.0) for r in runs["pe"]) / steps
        rows = {}
        for name, rs in runs.items():
            best = min(rs, key=lambda r: r["loop_s"])
            output = min(r["sections_s"].get("Output", 0.0) for r in rs) / steps
            rows[name] = {
                "s_per_step": best["s_per_step"],
                "s_per_step_runs": [r["s_per_step"] for r in rs],
                "output_ms_per_step": 1e3 * output,
                "timers_percent": 100 * (output - base_output) / base["s_per_step"],
                "wall_percent": 100 * (best["s_per_step"] / base["s_per_step"] - 1),
            }
        result["every_step"] = rows

        virial = {}
        for K in (32, 128):
            computes = "compute v all llpr ensemble yes virial yes"
            r_v = run_lammps(script(n, models[K], "c_v[*]", computes, virial_steps, warmup, virial_every), work)
            r_0 = run_lammps(script(n, models[K], "", "", virial_steps, warmup, virial_every), work)
            calls = virial_steps // virial_every + 1  # thermo at the first and every N-th step
            extra = r_v["sections_s"].get("Output", 0.0) - r_0["sections_s"].get("Output", 0.0)
            virial[str(K)] = {
                "calls": calls,
                "s_per_call": extra / calls,
                "steps_per_call": extra / calls / r_0["s_per_step"],
                # amortised over a long run with one invocation every virial_every steps
                "percent_at_every": 100 * extra / calls / r_0["s_per_step"] / virial_every,
                "s_per_step": r_0["s_per_step"],
            }
            print(f"virial K={K}: {extra / calls:.3f} s per call ({extra / calls / r_0['s_per_step']:.1f} steps)",
                  flush=True)
        result["virial"] = virial
    result["elapsed_s"] = time.time() - started
    command = "python benchmarks/ensemble_observables_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["command"] = command.strip()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    report = format_report(result, command.strip())
    with open(args.out + ".md", "w") as fh:
        fh.write(report)
    print(report)
    return result


def format_report(r: dict, command: str) -> str:
    rows = r["every_step"]
    worst = max(rows[f"dE K={K} max no"]["timers_percent"] for K in (32, 128))
    added = max(rows[f"dE K={K}"]["timers_percent"] - rows["sigma"]["timers_percent"] for K in (32, 128))
    lines = [
        "# Members' energy deviations and virials in LAMMPS: measured cost",
        "",
        f"`{command}`, {r['date']}, {r['cpu']} ({r['cores']} cores), torch {r['torch']}; {r['atoms']} atoms of "
        f"diamond Si at 600 K, NVE, 1 rank, 1 thread; default-architecture model ({r['features']} features); "
        f"{r['elapsed_s'] / 60:.1f} min in all.",
        "",
        "## Every step",
        "",
        "*timers*: the variant's Output-section time per step minus the baseline's (`step pe`), as a share of the "
        f"baseline's loop time per step; *wall*: loop-time ratio (best of {r['repeats']} interleaved runs). The "
        f"baseline's own runs took {1e3 * min(rows['pe']['s_per_step_runs']):.1f} to "
        f"{1e3 * max(rows['pe']['s_per_step_runs']):.1f} ms per step: the wall ratios hold that much run-to-run "
        "noise (other work on the machine), the timer column does not.",
        "",
        "| thermo output | s / step | Output ms / step | timers | wall |",
        "|---|---|---|---|---|",
    ]
    labels = {"pe": "`step pe` (baseline)", "sigma": "+ `c_g[1]` of `compute g all llpr` (no keywords)",
              "dE K=32": "+ `c_e[*]`, `ensemble yes`, K = 32", "dE K=128": "+ `c_e[*]`, `ensemble yes`, K = 128",
              "dE K=32 max no": "+ `c_e[*]`, `ensemble yes max no`, K = 32",
              "dE K=128 max no": "+ `c_e[*]`, `ensemble yes max no`, K = 128"}
    for name, row in rows.items():
        lines.append(f"| {labels[name]} | {row['s_per_step']:.4f} | {row['output_ms_per_step']:.3f} | "
                     f"{row['timers_percent']:+.3f}% | {row['wall_percent']:+.2f}% |")
    lines += [
        "",
        "The (K x F) product alone, through the core (`llpr._core.Model.ensemble_energy_deviations`, one call): "
        + ", ".join(f"K = {K}: {us:.1f} us" for K, us in r["product_us"].items()) + ".",
        "",
        "## Members' virial (`virial yes`), on the steps it is asked for",
        "",
        f"Thermo output every {r['virial_every']} steps over {r['virial_steps']} steps, against the same run "
        "without the compute (Output-section difference per invocation).",
        "",
        "| K | invocations | s per invocation | in steps of the pair style | added to a long run, one every "
        f"{r['virial_every']} steps |",
        "|---|---|---|---|---|",
    ]
    for K, v in r["virial"].items():
        lines.append(f"| {K} | {v['calls']} | {v['s_per_call']:.3f} | {v['steps_per_call']:.1f} | "
                     f"{v['percent_at_every']:.1f}% |")
    lines += target_lines([(f"members' energy deviations every step at {r['atoms']} atoms, K = 32 and 128: "
                            f"<= {TARGET}% of a step", f"{worst:.3f}% (`ensemble yes max no`, timers, worst K)",
                            worst <= TARGET)])
    lines += [
        "",
        f"What `ensemble yes` adds to a plain `compute llpr` (its elements 2 and 3 need every atom's sigma_i, "
        f"which `max no` skips): {added:+.3f}% of a step (timers, worst K).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
