"""Density and radial distribution function of the runs of examples/observables/run.sh, with
their model uncertainty (the members of the last-layer ensemble, by reweighting each run) and
their sampling error (block averaging), as a table (observables.md) and a figure.

    python summarize.py --temps 900 1200 1500 -o observables.png    (in the run folder)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def thermal_expansion(results) -> dict:
    """-dln(rho)/dT from a straight line through ln(density) at the temperatures, for the mean
    model (with the sampling error of the slope, the runs being independent) and for each
    member (its reweighted densities): the members' spread is the slope's model uncertainty.
    The same members at every temperature, so their errors in the density largely cancel."""
    temps = np.array(list(results))
    dens = [r.observables["v_rho"] for r in results.values()]
    x = temps - temps.mean()
    weights = x / np.sum(x * x)  # slope = sum_i weights_i y_i

    def slope(y):
        return -float(np.dot(weights, np.log(y)))

    out = {"mean_model": slope(np.array([d.mean_model[0] for d in dens]))}
    relative = np.array([d.mean_model_error[0] / d.mean_model[0] for d in dens])
    out["sampling"] = float(np.sqrt(np.sum((weights * relative) ** 2)))
    for est in ("direct", "cea"):
        per_member = np.stack([d.members[est][:, 0] for d in dens], axis=1)  # (K, temperatures)
        out[est] = float(np.std([slope(m) for m in per_member], ddof=1))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--temps", type=float, nargs="+", required=True, help="the runs' temperatures (K)")
    parser.add_argument("-o", "--output", default="observables.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llpr.lammps.reweight import format_report, reweight_record

    results = {}
    for T in args.temps:
        tag = f"{T:g}"
        try:
            # the record of in.observables: v_rho is the density, c_rdf[2] g(r) against c_rdf[1]
            results[T] = reweight_record(T, f"md_{tag}.rec", observables=["v_rho", "pe", "c_rdf[2]"], warn=False)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: temperature {tag} K: {exc}", file=sys.stderr)
            return 2
        print(format_report(results[T]))
        print()

    lines = ["| T (K) | density (g/cm^3) | sampling error | model sigma (CEA) | model sigma (direct) | "
             "pe (eV) | model sigma of pe (CEA) | smallest ESS / frames |",
             "|---|---|---|---|---|---|---|---|"]
    for T, r in results.items():
        d, e = r.observables["v_rho"], r.observables["pe"]
        lines.append(f"| {T:g} | {d.mean_model[0]:.5f} | {d.mean_model_error[0]:.5f} | {d.model_sigma['cea'][0]:.5f} | "
                     f"{d.model_sigma['direct'][0]:.5f} | {e.mean_model[0]:.4f} | {e.model_sigma['cea'][0]:.4f} | "
                     f"{r.ess.min():.0f} / {r.frames} |")
    expansion = thermal_expansion(results) if len(results) >= 2 else None
    if expansion:
        lines += ["", f"Volumetric thermal expansion -dln(density)/dT, {min(results):g} to {max(results):g} K (a line "
                  f"through the temperatures): {expansion['mean_model']:.3g} /K, sampling error "
                  f"{expansion['sampling']:.2g} /K, model sigma {expansion['direct']:.2g} /K (direct) and "
                  f"{expansion['cea']:.2g} /K (CEA), from each member's own line."]
    table = "\n".join(lines)
    print(table)
    with open(args.output.rsplit(".", 1)[0] + ".md", "w") as fh:
        fh.write(table + "\n")

    fig, (ax_g, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (T, r) in enumerate(results.items()):
        g = r.observables["c_rdf[2]"]
        offset = 1.5 * k  # stacked, for legibility
        y, s = g.mean_model + offset, g.model_sigma["cea"]
        ax_g.plot(g.axis, y, color=f"C{k}", lw=1, label=f"{T:g} K (+{offset:g})")
        ax_g.fill_between(g.axis, y - 2 * s, y + 2 * s, color=f"C{k}", alpha=0.3, lw=0)
    ax_g.set_xlabel("r (A)")
    ax_g.set_ylabel("g(r), shifted")
    ax_g.set_title("RDF, band: +-2 model sigma (CEA)", fontsize=9)
    ax_g.legend(fontsize=8)
    temps = np.array(list(results))
    dens = np.array([r.observables["v_rho"].mean_model[0] for r in results.values()])
    model = np.array([r.observables["v_rho"].model_sigma["cea"][0] for r in results.values()])
    sampling = np.array([r.observables["v_rho"].mean_model_error[0] for r in results.values()])
    ax_d.errorbar(temps, dens, yerr=model, fmt="o", capsize=6, lw=2, label="model uncertainty (1 sigma)")
    ax_d.errorbar(temps + 0.01 * np.ptp(temps + 1), dens, yerr=sampling, fmt="none", ecolor="k", capsize=3,
                  label="sampling error (1 sigma)")
    ax_d.set_xlabel("T (K)")
    ax_d.set_ylabel("density (g/cm^3)")
    title = "density at 0 bar"
    if expansion:
        title += (f"; -dln(rho)/dT = {1e6 * expansion['mean_model']:.1f} +- {1e6 * expansion['direct']:.1f} (model) "
                  f"+- {1e6 * expansion['sampling']:.1f} (sampling) 1e-6/K")
    ax_d.set_title(title, fontsize=9)
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"figure: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
