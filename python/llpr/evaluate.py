"""Evaluate: accuracy and uncertainty-quality metrics of an exported model, with plots and a
one-screen text summary.

Energies: one error and one predicted sigma (the LLPR sigma of the total energy) per
structure. Forces, when the exported file carries a last-layer ensemble (``llpr export
--ensemble K``): each force component's error against its atom's force sigma
``sqrt(sum_k |F_k,i - F_i|^2 / (3 (K-1)))`` (eV/A), i.e. a per-component Gaussian with that
standard deviation. Stresses, where the structures have a stress label (:func:`llpr.data.stress_label`):
the RMSE of the Voigt components (eV/A^3).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from scipy.special import erfinv
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from llpr import modelfile
from llpr.data import check_structure, stress_label, structure_name
from llpr.modelfile import calibration_warnings, ensemble_size, load_exported, require_ensemble
from llpr.uncertainty.calibrate import gaussian_nll

Z95 = 1.959963984540054
EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/A^3 in GPa


def miscalibration_area(errors: np.ndarray, sigmas: np.ndarray, n_levels: int = 99) -> float:
    """Area between the observed and expected coverage of central Gaussian intervals.

    For expected proportions p in (0, 1) the observed proportion is the fraction of
    ``|error| <= sigma * sqrt(2) erfinv(p)``; the area is the mean absolute gap over p
    (0 for perfectly calibrated Gaussian errors, at most 0.5).
    """
    errors = np.abs(np.asarray(errors, dtype=np.float64))
    sigmas = np.asarray(sigmas, dtype=np.float64)
    p = np.linspace(0.0, 1.0, n_levels + 2)[1:-1]
    k = math.sqrt(2.0) * erfinv(p)
    observed = np.array([(errors <= kk * sigmas).mean() for kk in k])
    return float(np.mean(np.abs(observed - p)))


def coverage(errors: np.ndarray, sigmas: np.ndarray, n_sigma: float) -> float:
    return float((np.abs(errors) <= n_sigma * np.asarray(sigmas)).mean())


def binned_error_vs_sigma(errors: np.ndarray, sigmas: np.ndarray, n_bins: int = 10) -> dict:
    """The LLPR paper's calibration curve: sort the points by predicted sigma, split them into
    ``n_bins`` quantile bins of (nearly) equal counts, and give each bin's RMS sigma, RMS error
    and count. A calibrated model has ``rms_error ~ rms_sigma`` in every bin (the y = x line)."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    sigmas = np.asarray(sigmas, dtype=np.float64).ravel()
    if errors.shape != sigmas.shape:
        raise ValueError("errors and sigmas must have the same number of values")
    n = errors.size
    n_bins = int(max(1, min(n_bins, n)))
    order = np.argsort(sigmas, kind="stable")
    bins = [b for b in np.array_split(order, n_bins) if b.size]
    return {
        "rms_sigma": [float(np.sqrt(np.mean(sigmas[b] ** 2))) for b in bins],
        "rms_error": [float(np.sqrt(np.mean(errors[b] ** 2))) for b in bins],
        "count": [int(b.size) for b in bins],
    }


def _default_bins(n: int) -> int:
    """About 10 bins, with at least ~5 points per bin for small sets."""
    return int(max(1, min(10, n // 5)))


def uncertainty_metrics(errors: np.ndarray, sigmas: np.ndarray, prefix: str = "") -> dict:
    """NLL, Spearman(|error|, sigma), miscalibration area, 68/95 % coverage, mean z^2 and the
    binned error-vs-sigma curve of Gaussian predictions ``N(0, sigma^2)`` of ``errors``."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    sigmas = np.asarray(sigmas, dtype=np.float64).ravel()
    rho = spearmanr(np.abs(errors), sigmas).correlation if errors.size > 2 else float("nan")
    return {
        f"{prefix}nll": gaussian_nll(errors, sigmas**2),
        f"{prefix}spearman_abs_error_sigma": float(rho),
        f"{prefix}miscalibration_area": miscalibration_area(errors, sigmas),
        f"{prefix}coverage_68": coverage(errors, sigmas, 1.0),
        f"{prefix}coverage_95": coverage(errors, sigmas, Z95),
        f"{prefix}mean_z2": float(np.mean((errors / sigmas) ** 2)),
        f"{prefix}binned": binned_error_vs_sigma(errors, sigmas, _default_bins(errors.size)),
    }


def _ratio(rmse: float, sigma_rms: float) -> float:
    """RMSE / RMS sigma; inf for a zero sigma, NaN for a NaN."""
    return float(rmse / sigma_rms) if sigma_rms > 0 else (math.nan if math.isnan(sigma_rms) else math.inf)


def calibration_verdict(rmse: float, sigma_rms: float, n: int) -> str:
    """What the ratio RMSE / RMS sigma says: calibrated predictions have a ratio of 1, within
    about two standard errors of an RMS of ``n`` Gaussian values, ``sqrt(2 / n)`` (and within
    0.1 however many there are)."""
    ratio = _ratio(rmse, sigma_rms)
    if not math.isfinite(ratio):
        return f"ratio undefined: RMS sigma is {sigma_rms:.3g}"
    tol = max(0.1, math.sqrt(2.0 / max(n, 1)))
    if abs(ratio - 1.0) <= tol:
        return f"ratio {ratio:.2f}: consistent with calibrated, 1 +- {tol:.2f} for {n} values"
    if ratio > 1.0:
        return f"ratio {ratio:.2f}: errors larger than sigma, overconfident"
    return f"ratio {ratio:.2f}: errors smaller than sigma, underconfident"


def extrapolation_metrics(gammas: list, n_atoms: np.ndarray) -> dict:
    """Statistics of the per-atom extrapolation grade (one array per structure; an empty list:
    the file has no max_train_q): its largest value, the fraction of atoms and of structures
    above 1 (more novel than every training atom), and the mean. ``gamma_available`` says
    which case it is."""
    if not gammas:
        return {"gamma_available": False}
    g = np.concatenate(gammas)
    per_structure = np.array([float(x.max()) if x.size else 0.0 for x in gammas])
    return {
        "gamma_available": True,
        "gamma_max": float(g.max()) if g.size else 0.0,
        "gamma_mean": float(g.mean()) if g.size else 0.0,
        "gamma_fraction_atoms_above_1": float((g > 1.0).mean()) if g.size else 0.0,
        "gamma_fraction_structures_above_1": float((per_structure > 1.0).mean()),
        "gamma_max_structure": int(np.argmax(per_structure)),
    }


def run_exported(module, atoms, forces: bool = True, ensemble: bool = False, stress: bool = False,
                 where: str = "structure") -> dict:
    """:func:`llpr.modelfile.run_exported` on one structure of an evaluation set (``stress``: a
    fully periodic cell whose stress is compared), with a NaN or inf output refused as a
    ValueError naming ``where``, the atoms and their closest pair: metrics of a broken
    evaluation would be NaN, or a miss counted as a number."""
    from ase.calculators.calculator import CalculationFailed

    try:
        return modelfile.run_exported(module, atoms, forces=forces, virial=stress, ensemble=ensemble, where=where)
    except CalculationFailed as exc:
        raise ValueError(f"{where}: {exc}") from None


def _element_list(numbers) -> str:
    from ase.data import chemical_symbols

    return ", ".join(f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z = {z})" for z in numbers)


def check_evaluation_set(module, atoms_list, source: str | None = None) -> None:
    """Refuse, before any evaluation and naming the structure (index, and ``source``: the
    file), what would give wrong or no metrics: a structure no model can take or with a NaN or
    inf label (:func:`llpr.data.check_structure`), one without energy and forces labels, and
    one with an element the model does not know."""
    known = {int(z) for z in module.species}
    for k, atoms in enumerate(atoms_list):
        check_structure(atoms, k, source)
        where = structure_name(k, source)
        if "energy" not in atoms.info or "forces" not in atoms.arrays:
            raise ValueError(f"{where} has no energy/forces labels; evaluate needs labelled data")
        unknown = sorted({int(z) for z in atoms.numbers} - known)
        if unknown:
            raise ValueError(
                f"{where} contains element(s) {_element_list(unknown)} that the model does not know; the "
                f"model's elements: {_element_list(sorted(known))}. Evaluate it on structures of those "
                "elements, or train and export a model that includes the others"
            )


def evaluate_model(model_path: str, atoms_list, progress: bool = False, ensemble: bool | None = None,
                   source: str | None = None) -> dict:
    """Predictions, errors and uncertainty metrics of an exported file on labelled structures.

    ``ensemble``: propagate the file's last-layer ensemble to force uncertainties (default:
    when the file has one; True on a file without one is an error). ``source`` (e.g. the file
    the structures came from) names them in messages. Structures that would give wrong
    numbers are refused with a ValueError that names them (:func:`check_evaluation_set`, and
    a NaN or inf prediction: :func:`run_exported`).
    """
    module = load_exported(model_path)
    if len(atoms_list) == 0:
        raise ValueError("no structures to evaluate")
    check_evaluation_set(module, atoms_list, source)
    k_members = ensemble_size(module)
    if ensemble is None:
        ensemble = k_members > 0
    elif ensemble:
        require_ensemble(module, f"'{model_path}'")
    e_ref, e_pred, e_sigma, n_atoms, f_ref, f_pred, atom_sigma = [], [], [], [], [], [], []
    f_sigma, e_ens_sigma, s_ref, s_pred, gammas = [], [], [], [], []
    for k, atoms in enumerate(tqdm(atoms_list, desc="evaluate", disable=not progress, leave=False)):
        stress = stress_label(atoms, k, source)
        out = run_exported(module, atoms, ensemble=ensemble, stress=stress is not None, where=structure_name(k, source))
        if stress is not None:
            s_ref.append(stress)
            s_pred.append(out["stress"])
        e_ref.append(float(atoms.info["energy"]))
        e_pred.append(out["energy"])
        e_sigma.append(out["energy_sigma"])
        n_atoms.append(len(atoms))
        f_ref.append(np.asarray(atoms.arrays["forces"]))
        f_pred.append(out["forces"])
        atom_sigma.append(out["sigma"])
        if "gamma" in out:
            gammas.append(out["gamma"])
        if ensemble:
            f_sigma.append(out["force_sigma"])
            e_ens_sigma.append(out["ensemble_energy_sigma"])
    e_ref, e_pred, e_sigma, n_atoms = map(np.array, (e_ref, e_pred, e_sigma, n_atoms))
    err = e_pred - e_ref
    f_ref = np.concatenate(f_ref)
    f_pred = np.concatenate(f_pred)
    metrics = {
        "n_structures": int(len(err)),
        "n_atoms": int(n_atoms.sum()),
        "energy_rmse": float(np.sqrt(np.mean(err**2))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean((err / n_atoms) ** 2))),
        "energy_mae_per_atom": float(np.mean(np.abs(err / n_atoms))),
        "energy_sigma_rms": float(np.sqrt(np.mean(e_sigma**2))),
        "force_rmse": float(np.sqrt(np.mean((f_pred - f_ref) ** 2))),
        "force_mae": float(np.mean(np.abs(f_pred - f_ref))),
        "n_stress_structures": len(s_ref),
        "stress_rmse": None,
        "stress_mae": None,
    }
    if s_ref:
        s_err = np.array(s_pred) - np.array(s_ref)
        metrics["stress_rmse"] = float(np.sqrt(np.mean(s_err**2)))
        metrics["stress_mae"] = float(np.mean(np.abs(s_err)))
    metrics["energy_error_sigma_ratio"] = _ratio(metrics["energy_rmse"], metrics["energy_sigma_rms"])
    metrics.update(uncertainty_metrics(err, e_sigma))
    metrics["energy_binned"] = metrics.pop("binned")
    arrays = {
        "energy_reference": e_ref,
        "energy_predicted": e_pred,
        "energy_sigma": e_sigma,
        "n_atoms": n_atoms,
        "forces_reference": f_ref,
        "forces_predicted": f_pred,
        "atom_sigma": np.concatenate(atom_sigma),
    }
    if s_ref:
        arrays["stress_reference"] = np.array(s_ref)
        arrays["stress_predicted"] = np.array(s_pred)
    metrics.update(extrapolation_metrics(gammas, n_atoms))
    if gammas:
        arrays["gamma"] = np.concatenate(gammas)
    metrics["ensemble_size"] = int(k_members) if ensemble else 0
    # members the file has but this evaluation skipped (ensemble=False, `--no-ensemble`)
    metrics["ensemble_skipped"] = int(k_members) if not ensemble else 0
    metrics["calibration_warnings"] = calibration_warnings(module)
    if ensemble:
        fs = np.concatenate(f_sigma)
        arrays["force_sigma"] = fs
        f_err = f_pred - f_ref  # (N, 3): each component against its atom's sigma
        comp_sigma = np.repeat(fs[:, None], 3, axis=1)
        atom_err = np.linalg.norm(f_err, axis=1)
        rho = spearmanr(atom_err, fs).correlation if fs.size > 2 else float("nan")
        metrics.update(
            {
                "force_sigma_mean": float(np.mean(fs)),
                "force_sigma_rms": float(np.sqrt(np.mean(fs**2))),
                "force_error_sigma_ratio": _ratio(metrics["force_rmse"], float(np.sqrt(np.mean(fs**2)))),
                "force_spearman_abs_error_sigma": float(rho),
            }
        )
        fm = uncertainty_metrics(f_err, comp_sigma, prefix="force_")
        fm.pop("force_spearman_abs_error_sigma")  # per atom (above), not per component
        metrics.update(fm)
        # the ensemble's energy spread against the analytic sigma (Monte-Carlo check, ~1/sqrt(2K))
        metrics["ensemble_energy_sigma_ratio"] = float(np.mean(np.array(e_ens_sigma) / e_sigma))
    return {"metrics": metrics, "arrays": arrays}


def _json_safe(value):
    """``value`` with every NaN or inf float replaced by None (null)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics_json(metrics: dict, path: str) -> str:
    """Write ``metrics`` to ``path`` as strict JSON. Labels and predictions are finite (NaN or
    inf ones are refused), so a non-finite metric is an undefined one (a Spearman correlation
    of fewer than three structures, an RMSE / sigma ratio with a zero sigma): it is written as
    null, never as the bare NaN or Infinity that strict JSON readers refuse."""
    with open(path, "w") as fh:
        json.dump(_json_safe(metrics), fh, indent=2, allow_nan=False)
    return path


def format_summary(metrics: dict) -> str:
    """One screen of text: accuracy, then how trustworthy the uncertainties are."""
    m = metrics
    lines = [
        f"structures                 {m['n_structures']} ({m['n_atoms']} atoms)",
        "accuracy",
        f"  energy RMSE              {1000 * m['energy_rmse_per_atom']:.3f} meV/atom ({m['energy_rmse']:.4f} eV/structure)",
        f"  force RMSE               {m['force_rmse']:.4f} eV/A",
        (
            f"  stress RMSE              {m['stress_rmse']:.5f} eV/A^3 ({m['stress_rmse'] * EV_PER_A3_IN_GPA:.3f} GPa; "
            f"{m['n_stress_structures']} structures with a stress label)"
            if m.get("n_stress_structures")
            else "  stress RMSE              none: no structure has a stress label"
        ),
        "energy uncertainty (LLPR sigma of each structure's energy)",
        f"  RMSE vs RMS sigma        {m['energy_rmse']:.4f} vs {m['energy_sigma_rms']:.4f} eV "
        f"({calibration_verdict(m['energy_rmse'], m['energy_sigma_rms'], m['n_structures'])})",
        f"  NLL (energy)             {m['nll']:.3f}",
        f"  Spearman(|error|, sigma) {m['spearman_abs_error_sigma']:.3f}",
        f"  miscalibration area      {m['miscalibration_area']:.3f} (0 = calibrated)",
        f"  coverage 68% / 95%       {m['coverage_68']:.2f} / {m['coverage_95']:.2f} (expected 0.68 / 0.95)",
        f"  mean z^2                 {m['mean_z2']:.3f} (expected 1)",
    ]
    if m.get("gamma_available"):
        lines += [
            "extrapolation grade (gamma_i = q_i / max q of the training atoms; > 1: beyond the training set)",
            f"  max gamma                {m['gamma_max']:.3f} (structure {m['gamma_max_structure']}); "
            f"mean {m['gamma_mean']:.3f}",
            f"  gamma > 1                {100 * m['gamma_fraction_atoms_above_1']:.2f}% of atoms, "
            f"{100 * m['gamma_fraction_structures_above_1']:.1f}% of structures",
        ]
    elif "gamma_available" in m:
        lines.append("extrapolation grade        none: the file has no max q of the training atoms (calibrate with "
                     "`llpr calibrate` and re-export)")
    if m.get("ensemble_size", 0):
        lines += [
            f"force uncertainty (last-layer ensemble, K = {m['ensemble_size']}; per component)",
            f"  RMSE vs RMS sigma        {m['force_rmse']:.4f} vs {m['force_sigma_rms']:.4f} eV/A "
            f"({calibration_verdict(m['force_rmse'], m['force_sigma_rms'], m['n_atoms'])}; "
            f"mean sigma {m['force_sigma_mean']:.4f})",
            f"  NLL (force components)   {m['force_nll']:.3f}",
            f"  Spearman(|F error|, sigma) {m['force_spearman_abs_error_sigma']:.3f} (per atom)",
            f"  miscalibration area      {m['force_miscalibration_area']:.3f}",
            f"  coverage 68% / 95%       {m['force_coverage_68']:.2f} / {m['force_coverage_95']:.2f}",
            f"  mean z^2                 {m['force_mean_z2']:.3f}",
            f"  ensemble/analytic energy sigma {m['ensemble_energy_sigma_ratio']:.3f} "
            f"(Monte-Carlo noise ~{1 / math.sqrt(2 * max(m['ensemble_size'] - 1, 1)):.2f})",
        ]
    elif m.get("ensemble_skipped", 0):
        lines.append(
            f"force uncertainty          skipped (--no-ensemble); the file has a {m['ensemble_skipped']}-member "
            "last-layer ensemble: evaluate without --no-ensemble for force sigmas"
        )
    else:
        lines.append("force uncertainty          none: export with `llpr export --ensemble K` for force sigmas")
    lines += [f"calibration warning        {w}" for w in m.get("calibration_warnings", [])]
    return "\n".join(lines)


def _pyplot():
    # imported here: matplotlib takes long to import and picks a backend, and only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _component_parity(ax, reference, predicted, quantity: str, title: str, style: dict) -> None:
    """Predicted against reference values (every component), with the y = x line."""
    ref, pred = np.ravel(reference), np.ravel(predicted)
    style = dict(style)
    ax.plot(ref, pred, style.pop("fmt"), **style)
    lim = [min(ref.min(), pred.min()), max(ref.max(), pred.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel(f"reference {quantity}")
    ax.set_ylabel(f"predicted {quantity}")
    ax.set_title(title)


def plot_parity(arrays: dict, path: str) -> str:
    """Predicted against reference energies (with sigma bars), force components and, where
    there are stress labels, stress components (GPa)."""
    plt = _pyplot()
    has_stress = "stress_reference" in arrays
    fig, axes = plt.subplots(1, 3 if has_stress else 2, figsize=(13.5 if has_stress else 9, 4.2))
    n = arrays["n_atoms"]
    ref = arrays["energy_reference"] / n
    pred = arrays["energy_predicted"] / n
    ax = axes[0]
    ax.errorbar(ref, pred, yerr=arrays["energy_sigma"] / n, fmt="o", ms=3, alpha=0.6, elinewidth=0.8)
    lim = [min(ref.min(), pred.min()), max(ref.max(), pred.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("reference energy (eV/atom)")
    ax.set_ylabel("predicted energy (eV/atom)")
    ax.set_title("energy (bars: LLPR sigma)")
    _component_parity(axes[1], arrays["forces_reference"], arrays["forces_predicted"], "force component (eV/A)",
                      "forces", dict(fmt=".", ms=1.5, alpha=0.4))
    if has_stress:
        _component_parity(axes[2], arrays["stress_reference"] * EV_PER_A3_IN_GPA,
                          arrays["stress_predicted"] * EV_PER_A3_IN_GPA, "stress component (GPa)",
                          "stress (Voigt components)", dict(fmt="o", ms=2.5, alpha=0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_calibration(arrays: dict, path: str) -> str:
    """|error| against predicted sigma (log-log) with the y = x line and the sigma bands."""
    plt = _pyplot()
    err = np.abs(arrays["energy_predicted"] - arrays["energy_reference"])
    sig = arrays["energy_sigma"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.loglog(sig, np.maximum(err, 1e-12), "o", ms=3, alpha=0.6, label="structures")
    lo, hi = sig.min() * 0.5, sig.max() * 2.0
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k--", lw=0.8, label="|error| = sigma")
    ax.plot(xs, 1.96 * xs, "k:", lw=0.8, label="95% bound")
    ax.set_xlabel("predicted sigma (eV)")
    ax.set_ylabel("|error| (eV)")
    ax.set_title("energy error vs LLPR sigma")
    ax.legend(fontsize=8)
    _readable_log_ticks(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _readable_log_ticks(ax) -> None:
    """Tick labels of a log-log panel that do not overlap: over less than two decades,
    matplotlib labels minor ticks in scientific notation (2x10^-2, 3x10^-2, ...), which run
    into each other; there, label 1, 2 and 5 times the powers of ten as plain numbers and leave
    the minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if lo <= 0 or hi <= 0 or math.log10(hi / lo) >= 2.0:
            continue
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())


def _binned_panel(ax, errors, sigmas, unit: str, title: str, point_label: str) -> None:
    errors = np.abs(np.asarray(errors, dtype=np.float64).ravel())
    sigmas = np.asarray(sigmas, dtype=np.float64).ravel()
    tiny = 1e-300
    few = errors.size < 500
    ax.loglog(np.maximum(sigmas, tiny), np.maximum(errors, tiny), "o" if few else ".", ms=3 if few else 2,
              alpha=0.5 if few else 0.15, color="0.5", label=f"|error| of {point_label}")
    b = binned_error_vs_sigma(errors, sigmas, _default_bins(errors.size))
    ax.loglog(b["rms_sigma"], b["rms_error"], "o-", ms=5, color="C3", label="RMS error per sigma bin")
    positive = np.concatenate([sigmas[sigmas > 0], np.asarray(b["rms_error"])[np.asarray(b["rms_error"]) > 0]])
    lo = positive.min() * 0.5 if positive.size else 1e-3
    hi = positive.max() * 2.0 if positive.size else 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x (calibrated)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"RMS predicted sigma ({unit})")
    ax.set_ylabel(f"RMS error ({unit})")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    _readable_log_ticks(ax)


def plot_error_vs_sigma(arrays: dict, path: str) -> str:
    """The LLPR paper's figure (:func:`error_vs_sigma_figure`), written to ``path``."""
    plt = _pyplot()
    fig = error_vs_sigma_figure(arrays)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def error_vs_sigma_figure(arrays: dict):
    """The LLPR paper's figure: points binned by predicted sigma (quantile bins), RMS error per
    bin against RMS sigma per bin (log-log) with the y = x line; energies, and forces when the
    ensemble gave force sigmas. Returns the matplotlib figure."""
    plt = _pyplot()
    has_forces = "force_sigma" in arrays
    fig, axes = plt.subplots(1, 2 if has_forces else 1, figsize=(9.2 if has_forces else 4.8, 4.4), squeeze=False)
    err = arrays["energy_predicted"] - arrays["energy_reference"]
    _binned_panel(axes[0, 0], err, arrays["energy_sigma"], "eV", "energy (per structure)", "structures")
    if has_forces:
        f_err = arrays["forces_predicted"] - arrays["forces_reference"]
        comp_sigma = np.repeat(arrays["force_sigma"][:, None], 3, axis=1)
        _binned_panel(axes[0, 1], f_err, comp_sigma, "eV/A", "forces (per component, ensemble sigma)",
                      "force components")
    fig.tight_layout()
    return fig


def plot_gamma(arrays: dict, path: str) -> str:
    """Histogram of the per-atom extrapolation grade (log scale), with gamma = 1 (the most novel
    training atom) marked."""
    plt = _pyplot()
    g = np.asarray(arrays["gamma"], dtype=np.float64)
    positive = g[g > 0]
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    if positive.size:
        lo, hi = min(positive.min(), 0.5), max(positive.max(), 2.0)
        ax.hist(positive, bins=np.geomspace(lo, hi, 40), color="tab:blue", alpha=0.8)
    ax.axvline(1.0, color="k", ls="--", lw=1.0, label="gamma = 1: most novel training atom")
    ax.set_xscale("log")
    ax.set_xlabel("extrapolation grade gamma_i = q_i / max q (training)")
    ax.set_ylabel("atoms")
    ax.set_title(f"{100 * float((g > 1).mean()):.1f}% of {g.size} atoms above 1")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(arrays: dict, folder: str) -> dict:
    """The figures of `llpr evaluate --plots`: parity, calibration, error_vs_sigma and, when the
    file has the extrapolation grade, gamma."""
    os.makedirs(folder, exist_ok=True)
    paths = {
        "parity": plot_parity(arrays, os.path.join(folder, "parity.png")),
        "calibration": plot_calibration(arrays, os.path.join(folder, "calibration.png")),
        "error_vs_sigma": plot_error_vs_sigma(arrays, os.path.join(folder, "error_vs_sigma.png")),
    }
    if "gamma" in arrays:
        paths["gamma"] = plot_gamma(arrays, os.path.join(folder, "gamma.png"))
    return paths
