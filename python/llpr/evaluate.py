"""Evaluate: accuracy and uncertainty-quality metrics of an exported model, with plots."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from scipy.special import erfinv
from scipy.stats import spearmanr

from .calibrate import gaussian_nll
from .export import load_exported
from .graphs import neighbor_list


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


def run_exported(module, atoms, forces: bool = True) -> dict:
    """Run an exported module on one ASE structure (vesin neighbour list)."""
    dtype = torch.float64 if module.dtype == "float64" else torch.float32
    edge_index, edge_shifts = neighbor_list(atoms, float(module.cutoff))
    out = module(
        torch.tensor(atoms.positions, dtype=dtype),
        torch.tensor(atoms.numbers, dtype=torch.long),
        torch.from_numpy(edge_index),
        torch.tensor(edge_shifts, dtype=dtype),
        len(atoms),
        forces,
        False,
    )
    feature_sum = out["features"].to(torch.float64).sum(0)
    out["energy_sigma"] = torch.sqrt(module.energy_variance(feature_sum))[0]
    return out


def evaluate_model(model_path: str, atoms_list, progress: bool = False) -> dict:
    """Predictions, errors and uncertainty metrics of an exported file on labelled structures."""
    from tqdm.auto import tqdm

    module = load_exported(model_path)
    if len(atoms_list) == 0:
        raise ValueError("no structures to evaluate")
    e_ref, e_pred, e_sigma, n_atoms, f_ref, f_pred, atom_sigma = [], [], [], [], [], [], []
    for k, atoms in enumerate(tqdm(atoms_list, desc="evaluate", disable=not progress, leave=False)):
        if "energy" not in atoms.info or "forces" not in atoms.arrays:
            raise ValueError(f"structure {k} has no energy/forces labels; evaluate needs labelled data")
        out = run_exported(module, atoms)
        e_ref.append(float(atoms.info["energy"]))
        e_pred.append(float(out["energy"]))
        e_sigma.append(float(out["energy_sigma"]))
        n_atoms.append(len(atoms))
        f_ref.append(np.asarray(atoms.arrays["forces"]))
        f_pred.append(out["forces"].detach().double().numpy())
        atom_sigma.append(out["sigma"].numpy())
    e_ref, e_pred, e_sigma, n_atoms = map(np.array, (e_ref, e_pred, e_sigma, n_atoms))
    err = e_pred - e_ref
    f_ref = np.concatenate(f_ref)
    f_pred = np.concatenate(f_pred)
    rho = spearmanr(np.abs(err), e_sigma).correlation if len(err) > 2 else float("nan")
    metrics = {
        "n_structures": int(len(err)),
        "n_atoms": int(n_atoms.sum()),
        "energy_rmse": float(np.sqrt(np.mean(err**2))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean((err / n_atoms) ** 2))),
        "energy_mae_per_atom": float(np.mean(np.abs(err / n_atoms))),
        "force_rmse": float(np.sqrt(np.mean((f_pred - f_ref) ** 2))),
        "force_mae": float(np.mean(np.abs(f_pred - f_ref))),
        "nll": gaussian_nll(err, e_sigma**2),
        "spearman_abs_error_sigma": float(rho),
        "miscalibration_area": miscalibration_area(err, e_sigma),
        "coverage_68": coverage(err, e_sigma, 1.0),
        "coverage_95": coverage(err, e_sigma, 1.959963984540054),
        "mean_z2": float(np.mean((err / e_sigma) ** 2)),
    }
    arrays = {
        "energy_reference": e_ref,
        "energy_predicted": e_pred,
        "energy_sigma": e_sigma,
        "n_atoms": n_atoms,
        "forces_reference": f_ref,
        "forces_predicted": f_pred,
        "atom_sigma": np.concatenate(atom_sigma),
    }
    return {"metrics": metrics, "arrays": arrays}


def plot_parity(arrays: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
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
    ax = axes[1]
    fr = arrays["forces_reference"].ravel()
    fp = arrays["forces_predicted"].ravel()
    ax.plot(fr, fp, ".", ms=1.5, alpha=0.4)
    lim = [min(fr.min(), fp.min()), max(fr.max(), fp.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("reference force component (eV/A)")
    ax.set_ylabel("predicted force component (eV/A)")
    ax.set_title("forces")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_calibration(arrays: dict, path: str) -> str:
    """|error| against predicted sigma (log-log) with the y = x line and the sigma bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(arrays: dict, folder: str) -> dict:
    os.makedirs(folder, exist_ok=True)
    return {
        "parity": plot_parity(arrays, os.path.join(folder, "parity.png")),
        "calibration": plot_calibration(arrays, os.path.join(folder, "calibration.png")),
    }
