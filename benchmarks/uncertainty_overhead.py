"""Per-atom + global uncertainty every step in LAMMPS, as a share of a step: the core's native
CPU path against the LLPR head's TorchScript methods, measured in one run.

    python benchmarks/uncertainty_overhead.py            # 1728 / 8000 / 32768 atoms (~10 min)
    python benchmarks/uncertainty_overhead.py --quick    # 512 atoms, a smoke test

Diamond Si at 600 K, NVE, one rank, one thread, the default-architecture model of
benchmarks/lammps_performance.py (64 features, float64). Three runs per size, interleaved and
repeated:

* ``plain``: ``thermo_style custom step pe`` every step;
* ``native``: plus the per-atom sigma (``compute llpr/atom``, reduced to its max) and the
  global sigma (``compute llpr``) every step, as a user would write it; the core evaluates
  them with its native kernels (the default on a CPU with AVX2);
* ``head``: the same, with ``LLPR_NATIVE_UNCERTAINTY=0``: the core calls the file's
  LLPRHead methods through TorchScript instead.

The computes run in LAMMPS's Output timer section and the model in Pair, so their cost per step
is the Output time of a run minus that of ``plain``, against ``plain``'s Pair time (free of the
run-to-run noise of the model's own time; the wall-clock ratios are reported next to it).
Writes ``benchmarks/results/uncertainty_overhead.{md,json}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lammps_performance import _cpu_name, build_model, lammps_input, run_lammps  # noqa: E402
from timing import target_lines, write_report  # noqa: E402

TARGET = 1.0  # % of a step, every step (issue 12)
SWITCH = "LLPR_NATIVE_UNCERTAINTY"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 atoms, few steps (smoke test)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each run (best kept)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "uncertainty_overhead"))
    args = parser.parse_args(argv)
    started = time.time()
    sizes = {4: 10} if args.quick else {6: 200, 10: 60, 16: 30}  # cells per side: steps
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory(prefix="llpr_overhead_") as work:
        models = {"device": "cpu", "llpr": build_model(os.path.join(work, "m64.pt"), seed=0)}
        variants = {"plain": (False, {}), "native": (True, {}), "head": (True, {SWITCH: "0"})}
        for cells, steps in sizes.items():
            runs = {k: [] for k in variants}
            for _ in range(repeats):
                for name, (uncertainty, env) in variants.items():
                    script = lammps_input(cells, "llpr", models, steps, 3, every=1, uncertainty=uncertainty)
                    runs[name].append(run_lammps(script, work, env=env))
            best = {k: min(v, key=lambda r: r["loop_s"]) for k, v in runs.items()}
            plain = best["plain"]
            pair = plain["sections_s"]["Pair"]
            row = {"atoms": plain["atoms"], "steps": steps, "pair_ms_per_step": 1e3 * pair / steps}
            for name in ("native", "head"):
                extra = best[name]["sections_s"]["Output"] - plain["sections_s"]["Output"]
                row[name] = {
                    "pair_ms_per_step": 1e3 * best[name]["sections_s"]["Pair"] / steps,
                    "ms_per_step": 1e3 * extra / steps,
                    "timers_percent": 100 * extra / pair,
                    "wall_percent": 100 * (best[name]["loop_s"] / plain["loop_s"] - 1),
                    "all_loop_s": [r["loop_s"] for r in runs[name]],
                }
            row["plain_all_loop_s"] = [r["loop_s"] for r in runs["plain"]]
            row["head_over_native"] = row["head"]["ms_per_step"] / row["native"]["ms_per_step"]
            rows.append(row)
            print(f"{row['atoms']} atoms: native {row['native']['timers_percent']:.3f}% "
                  f"head {row['head']['timers_percent']:.3f}% of a step", flush=True)
    result = {
        "date": str(date.today()),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "quick": args.quick,
        "repeats": repeats,
        "minutes": (time.time() - started) / 60,
        "rows": rows,
    }
    write(result, args.out, " ".join(sys.argv[1:]))
    return result


def write(r: dict, out: str, arguments: str) -> None:
    worst = max(row["native"]["timers_percent"] for row in r["rows"])
    lines = [
        "# Per-atom + global uncertainty every step in LAMMPS: native CPU path vs the head's TorchScript methods",
        "",
        f"`python benchmarks/uncertainty_overhead.py {arguments}`".replace(" `", "`"),
        "",
        f"{r['date']}, {r['cpu']}, torch {r['torch']}; diamond Si at 600 K, NVE, 1 rank, 1 thread, default-architecture "
        f"model (64 features, float64); best of {r['repeats']} interleaved runs; {r['minutes']:.1f} min in all.",
        "",
        "Thermo output every step with `c_g[1]` of `compute g all llpr` and the max of `compute u all llpr/atom` "
        "(`compute umax all reduce max c_u[1]`), against the same run with `thermo_style custom step pe` only. "
        "*timers*: the Output-section time per step minus the plain run's, as a share of the plain run's Pair time "
        "per step; *wall*: loop-time ratio, which also holds the model's run-to-run noise (each run's own Pair "
        "time per step is in its *Pair* column). *head*: the same run with "
        f"`{SWITCH}=0` (the LLPR head's TorchScript methods, as before the native path).",
        "",
        "| atoms | steps | plain: Pair ms / step | native: Pair | native ms / step | native: timers | native: wall | "
        "head: Pair | head ms / step | head: timers | head: wall | head / native |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        n, h = row["native"], row["head"]
        lines.append(
            f"| {row['atoms']} | {row['steps']} | {row['pair_ms_per_step']:.2f} | {n['pair_ms_per_step']:.2f} | "
            f"{n['ms_per_step']:.3f} | {n['timers_percent']:+.3f}% | {n['wall_percent']:+.2f}% | "
            f"{h['pair_ms_per_step']:.2f} | {h['ms_per_step']:.3f} | "
            f"{h['timers_percent']:+.3f}% | {h['wall_percent']:+.2f}% | {row['head_over_native']:.2f} |")
    lines += target_lines([(f"per-atom + global uncertainty every step <= {TARGET:g}% of a step",
                            f"{worst:.3f}% (native, timers, worst size)", worst <= TARGET)])
    write_report(lines, out + ".md")
    with open(out + ".json", "w") as fh:
        json.dump(r, fh, indent=2)


if __name__ == "__main__":
    main()
