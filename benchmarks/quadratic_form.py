"""The per-step cost of the uncertainty: q_i = f_i^T C^-1 f_i for every atom, measured in one run.

Three ways with the Cholesky factor L (C = L L^T), float64, one thread (as one LAMMPS rank):
* solve: z = L^-1 f by a triangular solve (TRSM), in blocks of rows;
* inverse: z = f (L^-1)^T, a matrix product (GEMM) with the precomputed triangular inverse,
  in blocks of rows (LLPRHead.quadratic_form, what Python and a GPU run);
* native: the C++ core's kernel with the same triangular inverse, which skips its zero half
  (llpr._core.native_quadratic_form, what the core runs on a CPU).
All give q = |z|^2 row by row. Also checks that they agree to 1e-12 relative on a
well-conditioned and an ill-conditioned covariance (condition number ~1e12).

    python benchmarks/quadratic_form.py [--output benchmarks/results/quadratic_form.md]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from llpr import _core
from llpr.uncertainty.llpr_head import LLPRHead

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
    parser.add_argument("--quick", action="store_true", help="two small sizes (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _core.set_num_threads(1)
    native = _core.native_kernels_unsupported_reason() == ""

    rows = []
    for n_features in ((32,) if args.quick else (32, 64, 128)):
        C = covariance(n_features, 1e3)
        L = torch.linalg.cholesky(C)
        Linv_t = torch.linalg.solve_triangular(L, torch.eye(n_features, dtype=torch.float64), upper=False).t().contiguous()
        for n in ((1000, 5000) if args.quick else (1000, 8000, 32768)):
            f = torch.randn(n, n_features, dtype=torch.float64)
            repeat = 20 if n <= 8000 else 8
            t_solve = best_time(lambda: solve_q(L, f, args.block), repeat)
            t_inv = best_time(lambda: inverse_q(Linv_t, f, args.block), repeat)
            u, fn = Linv_t.numpy(), f.numpy()
            t_nat = best_time(lambda: _core.native_quadratic_form(u, fn), repeat) if native else float("nan")
            flops = n * n_features * n_features  # multiply-adds of the product with a full (F, F) factor
            triangle = n * n_features * (n_features + 1) / 2  # those of a triangular one
            rows.append((n, n_features, t_solve, t_inv, t_nat, t_solve / t_inv, t_inv / t_nat, flops / t_inv / 1e9,
                         triangle / t_nat / 1e9))

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
            nat = torch.from_numpy(_core.native_quadratic_form(head.inverse_factor_t.numpy(), f.numpy())) if native \
                else torch.full_like(s, float("nan"))
            accuracy.append((name, condition, n_features, float(((i - s).abs() / s).max()),
                             float(((nat - s).abs() / s).max()), float(((s - exact).abs() / exact).max())))

    lines = [
        "# Quadratic form f^T C^-1 f: triangular solve, product with L^-1, native kernel",
        "",
        f"`python benchmarks/quadratic_form.py`, one thread, float64, blocks of {args.block} rows, torch {torch.__version__}"
        f"; native kernel: {'AVX2' if native else 'not available here (' + _core.native_kernels_unsupported_reason() + ')'}.",
        "Best of several repeats. *solve / product*: above 1, the product is faster; *product / native*: above 1, "
        "the native kernel is faster. Rates in 10^9 multiply-adds per second: the product's counted over the "
        "full (F, F) factor, the native kernel's over its triangle (F (F + 1) / 2 per row), which is all it computes.",
        "",
        "| atoms | F | solve (ms) | product (ms) | native (ms) | solve / product | product / native | "
        "product G mult-adds/s | native G mult-adds/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, nf, ts, ti, tn, r1, r2, gf, gn in rows:
        lines.append(f"| {n} | {nf} | {1e3 * ts:.3f} | {1e3 * ti:.3f} | {1e3 * tn:.3f} | {r1:.2f} | {r2:.2f} | "
                     f"{gf:.2f} | {gn:.2f} |")
    lines += [
        "",
        "Agreement (5000 random rows; relative differences, max over rows):",
        "",
        "| covariance | condition number | F | product vs solve | native vs solve | solve vs inv(C) in float64 |",
        "|---|---|---|---|---|---|",
    ]
    for name, cond, nf, d_is, d_ns, d_se in accuracy:
        lines.append(f"| {name} | {cond:.0e} | {nf} | {d_is:.2e} | {d_ns:.2e} | {d_se:.2e} |")
    write_report(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
