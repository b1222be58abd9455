"""Cost of the checks that keep damaged files and NaN out of the results, measured in one run.

1. Load time: verifying a model file's whole-file seal (CRC-64 of every byte) against
   torch.jit.load of the same file, for a small exported model and for large files (a
   TorchScript module holding a big float64 buffer, sealed as `llpr export` seals).
2. Per step: the finiteness check of the last-layer features that the C++ core runs (one
   sum over the (N, F) tensor; torch.isfinite(...).all() for comparison) against the step
   time measured in benchmarks/results/lammps_performance_ensemble_blocks.md.

    python benchmarks/integrity_cost.py [--sizes-mb 100 500] [--output benchmarks/results/integrity_cost.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from timing import best_time, write_report  # benchmarks/ is on the path of a script run from it

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


class _Blob(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("blob", torch.randn(n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blob[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="*", default=[100.0, 500.0])
    parser.add_argument("--output", default=os.path.join(HERE, "results", "integrity_cost.md"))
    args = parser.parse_args(argv)
    from llpr import _core
    from lammps_helpers import make_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = make_model(os.path.join(tmp, "small.pt"), species=(14,), seed=0, ensemble=32)
        files = [("exported Si model (K = 32)", small)]
        for mb in args.sizes_mb:
            path = os.path.join(tmp, f"blob{int(mb)}.pt")
            torch.jit.save(torch.jit.script(_Blob(int(mb * 1e6 / 8))), path)
            _core.seal_file(path)
            files.append((f"TorchScript file with a {mb:.0f} MB tensor", path))
        for name, path in files:
            _core.verify_file(path)  # warm the page cache: both timings read from memory
            verify = best_time(lambda: _core.verify_file(path))
            load = best_time(lambda: torch.jit.load(path))
            size = os.path.getsize(path)
            rows.append((name, size / 1e6, verify, load, size / verify / 1e9))

    # per-step finiteness check of the features, 1 thread as in the LAMMPS runs of the benchmark
    torch.set_num_threads(1)
    step_rows = []
    step_time = {8000: 0.198, 32768: 0.691}  # s per step, benchmarks/results/lammps_performance_ensemble_blocks.md
    for n in (8000, 32768):
        for f in (64, 128):
            feats = torch.randn(n, f, dtype=torch.float64)
            t = best_time(lambda: float(feats.sum()), repeat=20)
            t_isfinite = best_time(lambda: bool(torch.isfinite(feats).all()), repeat=20)
            step_rows.append((n, f, t, t / step_time[n], t_isfinite))

    lines = [
        "# Integrity checks: measured cost",
        "",
        f"`python benchmarks/integrity_cost.py` on this machine ({os.cpu_count()} cores), torch {torch.__version__}.",
        "Files are read from the page cache (warm); a cold read from a network file system adds",
        "its own I/O time to both columns alike, since torch.jit.load reads every byte too.",
        "",
        "| file | size (MB) | verify seal (s) | torch.jit.load (s) | verify / load | verify GB/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, mb, verify, load, rate in rows:
        lines.append(f"| {name} | {mb:.2f} | {verify:.4f} | {load:.4f} | {verify / load:.2f} | {rate:.2f} |")
    lines += [
        "",
        "Finiteness check of the last-layer features, every step (1 thread), against the step time",
        "of `pair_style llpr` at the same size (float64, 1 rank, benchmarks/results/lammps_performance_ensemble_blocks.md):",
        "",
        "| atoms | F | features.sum() (ms, used) | share of a step | isfinite(features).all() (ms) |",
        "|---|---|---|---|---|",
    ]
    for n, f, t, share, t_isfinite in step_rows:
        lines.append(f"| {n} | {f} | {1e3 * t:.3f} | {100 * share:.3f} % | {1e3 * t_isfinite:.3f} |")
    lines += ["", "(The step times are those of a model with F = 64; a model with F = 128 costs more per "
              "step, so its share is smaller than shown.)"]
    write_report(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
