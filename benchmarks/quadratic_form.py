"""The per-step cost of the uncertainty: q_i = f_i^T C^-1 f_i for every atom, measured in one run.

Two ways with the Cholesky factor L (C = L L^T), float64, one thread (as one LAMMPS rank):
* solve: z = L^-1 f by a triangular solve (TRSM), in blocks of rows;
* inverse: z = f (L^-1)^T, a matrix product (GEMM) with the precomputed triangular inverse,
  in blocks of rows.
Both give q = |z|^2 row by row. Also checks that the two agree to 1e-12 relative on a
well-conditioned and an ill-conditioned covariance (condition number ~1e12).

    python benchmarks/quadratic_form.py [--output benchmarks/results/quadratic_form.md]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from llpr.head import LLPRHead

from timing import best_time, write_report  # benchmarks/ is on the path of a script run from it

HERE = os.path.dirname(os.path.abspath(__file__))


def covariance(n_features: int, condition: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_features, n_features, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n_features, dtype=torch.float64)
    return (q * eig) @ q.t()


def solve_q(L, f, block):
    out = []
    for s in range(0, f.shape[0], block):
        z = torch.linalg.solve_triangular(L, f[s : s + block].t(), upper=False)
        out.append((z * z).sum(0))
    return torch.cat(out)


def inverse_q(Linv_t, f, block):
    out = []
    for s in range(0, f.shape[0], block):
        z = f[s : s + block] @ Linv_t
        out.append((z * z).sum(1))
    return torch.cat(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(HERE, "results", "quadratic_form.md"))
    parser.add_argument("--block", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    for n_features in (32, 64, 128):
        C = covariance(n_features, 1e3)
        L = torch.linalg.cholesky(C)
        Linv_t = torch.linalg.solve_triangular(L, torch.eye(n_features, dtype=torch.float64), upper=False).t().contiguous()
        for n in (1000, 8000, 32768):
            f = torch.randn(n, n_features, dtype=torch.float64)
            repeat = 20 if n <= 8000 else 8
            t_solve = best_time(lambda: solve_q(L, f, args.block), repeat)
            t_inv = best_time(lambda: inverse_q(Linv_t, f, args.block), repeat)
            flops = n * n_features * n_features  # multiply-adds of the product with a full (F, F) factor
            rows.append((n, n_features, t_solve, t_inv, t_solve / t_inv, flops / t_inv / 1e9))

    accuracy = []
    for name, condition in (("well-conditioned", 1e2), ("ill-conditioned", 1e12)):
        for n_features in (32, 128):
            C = covariance(n_features, condition, seed=1)
            head = LLPRHead(torch.linalg.cholesky(C), 1.0, 0.0)
            f = torch.randn(5000, n_features, dtype=torch.float64)
            exact = torch.einsum("if,fg,ig->i", f, torch.linalg.inv(C), f)
            L = torch.linalg.cholesky(C)
            s = solve_q(L, f, args.block)
            i = head.quadratic_form(f)
            accuracy.append((name, condition, n_features, float(((i - s).abs() / s).max()),
                             float(((s - exact).abs() / exact).max())))

    lines = [
        "# Quadratic form f^T C^-1 f: triangular solve vs product with L^-1",
        "",
        f"`python benchmarks/quadratic_form.py`, one thread, float64, blocks of {args.block} rows, torch {torch.__version__}.",
        "Best of several repeats; `ratio` = solve / inverse (above 1: the product is faster).",
        "",
        "| atoms | F | solve (ms) | inverse product (ms) | ratio | product GFLOP/s (mult-adds) |",
        "|---|---|---|---|---|---|",
    ]
    for n, nf, ts, ti, ratio, gf in rows:
        lines.append(f"| {n} | {nf} | {1e3 * ts:.3f} | {1e3 * ti:.3f} | {ratio:.2f} | {gf:.2f} |")
    lines += [
        "",
        "Agreement (5000 random rows; relative differences, max over rows):",
        "",
        "| covariance | condition number | F | inverse vs solve | solve vs inv(C) in float64 |",
        "|---|---|---|---|---|",
    ]
    for name, cond, nf, d_is, d_se in accuracy:
        lines.append(f"| {name} | {cond:.0e} | {nf} | {d_is:.2e} | {d_se:.2e} |")
    write_report(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
