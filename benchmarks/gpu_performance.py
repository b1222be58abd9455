"""GPU performance of the LAMMPS path, in a fixed time budget (benchmarks/gpu_check.sh runs it).

    python benchmarks/gpu_performance.py                      # on a machine with a CUDA GPU
    python benchmarks/gpu_performance.py --budget-s 240       # the time it may take (default)
    python benchmarks/gpu_performance.py --device cpu --quick # the script itself, anywhere (tiny)

Prints a markdown report and writes it with the raw numbers to
``benchmarks/results/gpu_performance.{md,json}`` (``--out`` to change). The models, inputs and
timings are those of benchmarks/lammps_performance.py (default-architecture model with
untrained weights, diamond Si at 600 K, NVE, LAMMPS's "Loop time" of a timed run after a
warm-up run, one thread per rank), with the model on the GPU (``device cuda``, one MPI rank)
unless stated:

a) throughput: atom-steps per second at ~32k atoms, float64 and float32, then at sizes doubled
   until the GPU runs out of memory, a run fails, or the budget left for it would be overrun
   (the report says which stopped it);
b) the uncertainty overhead: ``compute llpr/atom`` (reduced to its maximum) and ``compute llpr``
   in the thermo output every step vs the same thermo output without them, at ~32k atoms
   (best of two interleaved runs each, and the computes' share from LAMMPS's timer breakdown);
c) the LAMMPS step against the bare TorchScript call (the file's ``evaluate`` with forces on the
   GPU, edge list built once and not timed) at ~32k atoms, with LAMMPS's timer breakdown
   (Pair, Neigh, Comm, ...) and a torch profiler trace of a few in-process steps: host-to-device
   and device-to-host copies (count, bytes, time), GPU kernel time, and the top operators;
d) 1 GPU (1 rank) against 16 CPU ranks (the CPU model, one thread each) on the same atoms;
e) CPU MPI scaling at ~32k atoms on 1, 2, 4, 8 and 16 ranks (as many as there are cores).

Sections run in the order e/d, b, c, then the larger sizes of a, each given a share of what is
left of the budget; a section that does not fit is reported as skipped, never guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lammps_performance import _cpu_name, _fmt, bare_libtorch, build_model, lammps_input, run_lammps  # noqa: E402

# diamond Si: 8 n^3 atoms; 16 -> 32768, each next size about twice the atoms of the last
SIZES = [16, 20, 25, 32, 40, 50, 63, 80, 100, 126, 159, 200]
QUICK_SIZES = [3, 4]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


def timed_run(script: str, work: str, ranks: int = 1, timeout: float = 600) -> dict:
    """run_lammps plus the wall time of the whole `lmp` process (start-up and set-up included)."""
    t0 = time.time()
    r = run_lammps(script, work, ranks=ranks, threads=1, timeout=timeout)
    r["wall_s"] = time.time() - t0
    r["atom_steps_per_s"] = r["atoms"] * r["steps"] / r["loop_s"]
    return r


def steps_to_fill(s_per_step: float, target_s: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, target_s / max(s_per_step, 1e-9))))


def first_line_of_error(exc: Exception) -> str:
    text = str(exc)
    for line in text.splitlines():
        if line.startswith("ERROR") or "out of memory" in line.lower():
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else type(exc).__name__


# --------------------------------------------------------------------------------- profiler
def profile_steps(model_path: str, n: int, device: str, steps: int) -> dict:
    """`steps` steps of the in-process LAMMPS (the `lammps` module, this process's libtorch)
    under the torch profiler: per-step wall time, GPU kernel time, host-device copies."""
    from torch.profiler import ProfilerActivity, profile

    from llpr.lammps.session import open_lammps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    lmp = open_lammps()
    try:
        lmp.commands_string(lammps_input(n, "llpr", {"llpr": model_path, "device": device}, steps=0, warmup=3))
        with profile(activities=activities) as prof:
            sync()
            t0 = time.perf_counter()
            lmp.command(f"run {steps}")
            sync()
            wall = time.perf_counter() - t0
        atoms = lmp.get_natoms()
    finally:
        lmp.close()
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        prof.export_chrome_trace(fh.name)
        with open(fh.name) as trace:
            events = json.load(trace)["traceEvents"]
    out = {"atoms": atoms, "steps": steps, "wall_s_per_step": wall / steps}
    kernels = [e for e in events if e.get("cat") == "kernel"]
    out["kernel_s_per_step"] = sum(e.get("dur", 0) for e in kernels) * 1e-6 / steps
    out["kernels_per_step"] = len(kernels) / steps
    for direction in ("HtoD", "DtoH"):
        copies = [e for e in events if e.get("cat") == "gpu_memcpy" and direction in e.get("name", "")]
        out[direction] = {
            "copies_per_step": len(copies) / steps,
            "bytes_per_step": sum(int(e.get("args", {}).get("bytes", 0)) for e in copies) / steps,
            "s_per_step": sum(e.get("dur", 0) for e in copies) * 1e-6 / steps,
        }
    sort_by = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    out["top_operators"] = prof.key_averages().table(sort_by=sort_by, row_limit=12)
    return out


# -------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=240.0, help="time the whole benchmark may take (s)")
    parser.add_argument("--device", default="cuda", help="where the model runs in the GPU sections: cuda (default), "
                        "cuda:N, or cpu (to try the script on a machine without a GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    parser.add_argument("--max-ranks", type=int, default=16, help="most CPU MPI ranks (default 16, at most the cores)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu_performance"),
                        help="output path without extension (.md and .json are written)")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device {args.device}: unknown device; use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here; "
                     "run on a machine with a GPU and a CUDA build of torch (or --device cpu to try the script)")
    budget = Budget(args.budget_s)
    started = time.time()
    device = args.device
    sizes = QUICK_SIZES if args.quick else SIZES
    n0 = sizes[0]
    cores = os.cpu_count() or 1
    ranks = [r for r in (1, 2, 4, 8, 16) if r <= min(args.max_ranks, cores)]
    target = 0.5 if args.quick else 4.0  # seconds of timed loop per run
    results: dict = {"device": device, "quick": args.quick, "budget_s": args.budget_s, "skipped": []}

    def skip(section: str, why: str):
        results["skipped"].append(f"{section}: {why}")
        print(f"skipped {section}: {why}", flush=True)

    with tempfile.TemporaryDirectory(prefix="llpr_gpu_bench_") as work:
        paths = {"llpr": build_model(os.path.join(work, "m64.pt"), seed=0),
                 "llpr32": build_model(os.path.join(work, "m32.pt"), seed=0, dtype=torch.float32)}
        gpu = dict(paths, device=device)
        cpu = dict(paths, device="cpu")

        def run(n, kind="llpr", models=gpu, steps=10, warmup=3, every=0, uncertainty=True, nranks=1):
            script = lammps_input(n, kind, models, steps, warmup, every=every, uncertainty=uncertainty)
            return timed_run(script, work, ranks=nranks, timeout=max(30.0, budget.left()))

        # a) ~32k atoms on the GPU, float64 and float32: a probe sizes the timed run
        throughput = {}
        for kind, dtype in (("llpr", "float64"), ("llpr32", "float32")):
            probe = run(n0, kind, steps=5)
            r = run(n0, kind, steps=steps_to_fill(probe["s_per_step"], target, 10, 2000))
            throughput[dtype] = {"rows": [r], "stopped_by": None}
            print(f"{dtype} {r['atoms']} atoms on {device}: {r['atom_steps_per_s']:.3g} atom-steps/s "
                  f"({r['s_per_step'] * 1e3:.2f} ms/step)", flush=True)
        results["throughput"] = throughput
        gpu_step = throughput["float64"]["rows"][0]

        # e) and d) CPU MPI scaling at the same size; the largest rank count is d)'s CPU side
        one = run(n0, models=cpu, steps=3, warmup=1)
        scaling = [dict(one, ranks=1)]
        for nr in ranks[1:]:
            need = 1.5 * scaling[-1]["wall_s"]
            if need > 0.35 * budget.left():
                skip(f"e) {nr} CPU ranks", f"needs about {need:.0f} s, {budget.left():.0f} s left")
                break
            steps = steps_to_fill(one["s_per_step"] / nr, target / 2, 3, 200)
            scaling.append(dict(run(n0, models=cpu, steps=steps, warmup=1, nranks=nr), ranks=nr))
            print(f"CPU {nr} ranks: {scaling[-1]['s_per_step']:.3f} s/step", flush=True)
        for row in scaling:
            row["speedup"] = one["s_per_step"] / row["s_per_step"]
            row["efficiency"] = row["speedup"] / row["ranks"]
        results["mpi_scaling"] = scaling
        best = scaling[-1]
        results["gpu_vs_cpu"] = {"atoms": gpu_step["atoms"], "gpu_s_per_step": gpu_step["s_per_step"],
                                 "cpu_ranks": best["ranks"], "cpu_s_per_step": best["s_per_step"],
                                 "gpu_speedup": best["s_per_step"] / gpu_step["s_per_step"]}

        # b) uncertainty every step vs the same thermo output without the computes
        steps = steps_to_fill(gpu_step["s_per_step"], target, 10, 2000)
        per_run = (gpu_step["wall_s"] - gpu_step["loop_s"]) + (steps + 3) * gpu_step["s_per_step"]
        if 4 * per_run < 0.5 * budget.left():
            runs = {True: [], False: []}
            for _ in range(1 if args.quick else 2):
                for unc in (False, True):
                    runs[unc].append(run(n0, steps=steps, every=1, uncertainty=unc))
            plain, with_u = (min(runs[u], key=lambda x: x["loop_s"]) for u in (False, True))
            extra = with_u["sections_s"].get("Output", 0.0) - plain["sections_s"].get("Output", 0.0)
            results["overhead"] = {"atoms": plain["atoms"], "steps": steps, "repeats": len(runs[True]),
                                   "plain_s_per_step": plain["s_per_step"], "s_per_step": with_u["s_per_step"],
                                   "wall_overhead": with_u["loop_s"] / plain["loop_s"] - 1.0,
                                   "timer_overhead": extra / plain["sections_s"]["Pair"]}
            print(f"uncertainty every step: {100 * results['overhead']['wall_overhead']:+.2f}% wall, "
                  f"{100 * results['overhead']['timer_overhead']:+.2f}% timers", flush=True)
        else:
            skip("b) uncertainty overhead", f"{budget.left():.0f} s left")

        # c) the step against the bare TorchScript call, and a profile of in-process steps
        if budget.left() > 60 or args.quick:
            bare = bare_libtorch(paths["llpr"], n0, threads=1, repeats=5, device=device)
            results["bare"] = {"atoms": bare["atoms"], "bare_s_per_step": bare["s_per_step"],
                               "plugin_s_per_step": gpu_step["s_per_step"],
                               "plugin_pair_s_per_step": gpu_step["sections_s"]["Pair"] / gpu_step["steps"],
                               "ratio": gpu_step["s_per_step"] / bare["s_per_step"],
                               "sections_s_per_step": {k: v / gpu_step["steps"] for k, v in gpu_step["sections_s"].items()}}
            print(f"plugin step / bare evaluate = {results['bare']['ratio']:.3f}", flush=True)
            results["profile"] = profile_steps(paths["llpr"], n0, device, steps=3 if args.quick else 5)
            p = results["profile"]
            print(f"profile: {p['wall_s_per_step'] * 1e3:.2f} ms/step, kernels {p['kernel_s_per_step'] * 1e3:.2f} ms, "
                  f"HtoD {p['HtoD']['bytes_per_step'] / 1e6:.2f} MB, DtoH {p['DtoH']['bytes_per_step'] / 1e6:.2f} MB "
                  "per step", flush=True)
        else:
            skip("c) bare call and profile", f"{budget.left():.0f} s left")

        # a) larger sizes, doubling the atoms, half of what is left for each precision
        for kind, dtype in (("llpr", "float64"), ("llpr32", "float32")):
            share = budget.left() / (2 if dtype == "float64" else 1) - 5
            section_end = time.time() + share
            rows = throughput[dtype]["rows"]
            stopped = f"the list of sizes ends at {8 * sizes[-1] ** 3} atoms"
            for n in sizes[1:]:
                # set-up grows with the atoms too: the next run takes about twice the last one
                need = 2.2 * rows[-1]["wall_s"]
                if need > section_end - time.time():
                    stopped = (f"time: {8 * n ** 3} atoms would need about {need:.0f} s, "
                               f"{max(0.0, section_end - time.time()):.0f} s of the budget left for {dtype}")
                    break
                try:
                    r = timed_run(lammps_input(n, kind, gpu, steps=2, warmup=1), work,
                                  timeout=max(30.0, section_end - time.time()))
                except subprocess.TimeoutExpired:
                    stopped = f"time: the run at {8 * n ** 3} atoms outlasted the budget"
                    break
                except RuntimeError as exc:
                    message = first_line_of_error(exc)
                    what = "GPU memory" if "out of memory" in message.lower() else "a failed run"
                    stopped = f"{what} at {8 * n ** 3} atoms: {message}"
                    break
                rows.append(r)
                print(f"{dtype} {r['atoms']} atoms: {r['atom_steps_per_s']:.3g} atom-steps/s", flush=True)
            throughput[dtype]["stopped_by"] = stopped
            print(f"{dtype}: largest {rows[-1]['atoms']} atoms; stopped by {stopped}", flush=True)

    results["elapsed_s"] = time.time() - started
    results["machine"] = {
        "cpu": _cpu_name(), "cores": cores, "torch": torch.__version__, "cuda": torch.version.cuda,
        "lammps": __import__("lammps").__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
    }
    results["date"] = date.today().isoformat()
    report = format_report(results, " ".join(["python benchmarks/gpu_performance.py"] + (argv or sys.argv[1:])))
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(results, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write(report)
    return results


def format_report(r: dict, command: str) -> str:
    m = r["machine"]
    where = f"{r['device']} ({m['gpu']})" if m.get("gpu") else r["device"]
    lines = [
        "# LAMMPS path on a GPU",
        "",
        f"`{command}`, {r['date']}, model on {where}, {m['cpu']} ({m['cores']} cores), torch {m['torch']} "
        f"(CUDA {m['cuda']}), LAMMPS {m['lammps']}; {r['elapsed_s'] / 60:.1f} min of a {r['budget_s']:.0f} s budget.",
        "",
        "Default-architecture llpr model, diamond Si at 600 K, NVE, LAMMPS loop time of the timed run; "
        "1 MPI rank with the model on the GPU unless stated, 1 thread per rank.",
        "",
    ]
    if "throughput" in r:
        lines += ["## a) Throughput", "", "| precision | atoms | steps | ms / step | atom-steps / s | Pair | Neigh | Comm |",
                  "|---|---|---|---|---|---|---|---|"]
        for dtype, t in r["throughput"].items():
            for row in t["rows"]:
                sec = {k: v / row["steps"] * 1e3 for k, v in row["sections_s"].items()}
                lines.append(f"| {dtype} | {row['atoms']} | {row['steps']} | {_fmt(row['s_per_step'] * 1e3)} | "
                             f"{row['atom_steps_per_s']:.3g} | {_fmt(sec.get('Pair', 0))} | {_fmt(sec.get('Neigh', 0))} | "
                             f"{_fmt(sec.get('Comm', 0))} |")
        lines.append("")
        lines.append("(Pair, Neigh, Comm: LAMMPS's timer breakdown, ms per step.)")
        for dtype, t in r["throughput"].items():
            lines.append(f"Largest {dtype} system run: {t['rows'][-1]['atoms']} atoms; the next size was not run "
                         f"because of {t['stopped_by']}.")
        lines.append("")
    if "overhead" in r:
        o = r["overhead"]
        lines += ["## b) Uncertainty every step", "",
                  f"{o['atoms']} atoms, {o['steps']} steps: pair style alone {_fmt(o['plain_s_per_step'] * 1e3)} ms/step, "
                  f"with `compute llpr/atom` (max) and `compute llpr` in the thermo output every step "
                  f"{_fmt(o['s_per_step'] * 1e3)} ms/step: **{100 * o['wall_overhead']:+.2f}%** (wall, best of {o['repeats']}), "
                  f"{100 * o['timer_overhead']:+.2f}% (the computes' Output time / Pair time).", ""]
    if "bare" in r:
        b = r["bare"]
        lines += ["## c) LAMMPS step vs the bare TorchScript call", "",
                  f"{b['atoms']} atoms: bare `evaluate` (forward + forces) {_fmt(b['bare_s_per_step'] * 1e3)} ms; "
                  f"LAMMPS step {_fmt(b['plugin_s_per_step'] * 1e3)} ms (Pair {_fmt(b['plugin_pair_s_per_step'] * 1e3)} ms): "
                  f"**{b['ratio']:.2f}x** the bare call.", "",
                  "LAMMPS timer breakdown (ms per step): " + ", ".join(
                      f"{k} {_fmt(v * 1e3)}" for k, v in b["sections_s_per_step"].items()), ""]
    if "profile" in r:
        p = r["profile"]
        lines += [f"Torch profiler, {p['steps']} in-process steps at {p['atoms']} atoms (profiling slows the steps): "
                  f"{_fmt(p['wall_s_per_step'] * 1e3)} ms/step wall, GPU kernels {_fmt(p['kernel_s_per_step'] * 1e3)} ms/step "
                  f"({p['kernels_per_step']:.0f} kernels).", "",
                  "| copies | per step | MB / step | ms / step |", "|---|---|---|---|"]
        for direction in ("HtoD", "DtoH"):
            c = p[direction]
            lines.append(f"| {direction} | {c['copies_per_step']:.1f} | {c['bytes_per_step'] / 1e6:.3f} | "
                         f"{c['s_per_step'] * 1e3:.3f} |")
        lines += ["", "```text", p["top_operators"].rstrip(), "```", ""]
    if "gpu_vs_cpu" in r:
        g = r["gpu_vs_cpu"]
        lines += ["## d) 1 GPU vs CPU ranks", "",
                  f"{g['atoms']} atoms: 1 rank with the GPU {_fmt(g['gpu_s_per_step'] * 1e3)} ms/step; "
                  f"{g['cpu_ranks']} CPU ranks {_fmt(g['cpu_s_per_step'] * 1e3)} ms/step: the GPU is "
                  f"**{g['gpu_speedup']:.1f}x** faster.", ""]
    if "mpi_scaling" in r:
        lines += ["## e) CPU MPI scaling", "", "| ranks | atoms | steps | s / step | speed-up | efficiency |",
                  "|---|---|---|---|---|---|"]
        for row in r["mpi_scaling"]:
            lines.append(f"| {row['ranks']} | {row['atoms']} | {row['steps']} | {_fmt(row['s_per_step'])} | "
                         f"{row['speedup']:.2f} | {100 * row['efficiency']:.0f}% |")
        lines.append("")
    if r["skipped"]:
        lines += ["## Not run", ""] + [f"* {s}" for s in r["skipped"]] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
