"""Calibrate: choose alpha (scale) and varsigma (regulariser) on a validation set.

The predicted variance of a validation target is ``alpha^2 q(varsigma)`` with
``q = f^T (F^T F + varsigma^2 I)^-1 f``. The mean Gaussian negative log-likelihood

    NLL = 1/2 mean[ log(2 pi alpha^2 q) + e^2 / (alpha^2 q) ]

is minimised over alpha in closed form (``alpha^2 = mean(e^2 / q)``, which makes the mean
of ``z^2 = e^2 / sigma^2`` exactly 1), and over varsigma by a search on a log grid followed
by a bounded 1-D refinement (Brent) around the best grid point.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar


def gaussian_nll(errors: np.ndarray, variances: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood of ``errors`` under zero-mean ``variances``."""
    errors = np.asarray(errors, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    return float(np.mean(0.5 * np.log(2.0 * np.pi * variances) + 0.5 * errors**2 / variances))


@dataclass
class CalibrationResult:
    alpha: float
    varsigma: float
    nll: float
    nll_before: float
    n_validation: int
    condition_number: float
    numerical_rank: int
    grid_log10_varsigma: list = field(default_factory=list)
    grid_nll: list = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "alpha": self.alpha,
            "varsigma": self.varsigma,
            "nll": self.nll,
            "nll_before": self.nll_before,
            "n_validation": self.n_validation,
            "condition_number": self.condition_number if math.isfinite(self.condition_number) else None,
            "numerical_rank": self.numerical_rank,
        }


class SpectralQuadraticForm:
    """q(varsigma) = f^T (A + varsigma^2 I)^-1 f for many f and many varsigma, from one
    symmetric eigendecomposition of A = F^T F (float64)."""

    def __init__(self, covariance: torch.Tensor, features: torch.Tensor) -> None:
        cov = covariance.to(torch.float64)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        self.eigenvalues = eigvals.clamp(min=0.0).numpy()
        proj = features.to(torch.float64) @ eigvecs
        self.projections = (proj * proj).numpy()  # (B, F)

    def __call__(self, varsigma: float) -> np.ndarray:
        return self.projections @ (1.0 / (self.eigenvalues + varsigma**2))


def _nll_at(qf: SpectralQuadraticForm, errors2: np.ndarray, log10_varsigma: float) -> tuple[float, float]:
    q = qf(10.0**log10_varsigma)
    alpha2 = float(np.mean(errors2 / q))
    nll = 0.5 * (math.log(2.0 * math.pi * alpha2) + float(np.mean(np.log(q))) + 1.0)
    return nll, alpha2


def calibrate_hyperparameters(
    covariance: torch.Tensor,
    features: torch.Tensor,
    errors: torch.Tensor,
    n_grid: int = 61,
    alpha_before: float = 1.0,
    varsigma_before: float = 1.0,
) -> CalibrationResult:
    """Fit alpha and varsigma by minimising the validation NLL.

    ``covariance`` is F^T F (F, F); ``features`` (B, F) and ``errors`` (B,) are the
    validation features and prediction errors (prediction - target). ``alpha_before`` and
    ``varsigma_before`` only define the reported "before" NLL.
    """
    features = torch.as_tensor(features, dtype=torch.float64)
    errors2 = torch.as_tensor(errors, dtype=torch.float64).numpy() ** 2
    if features.shape[0] == 0:
        raise ValueError("the validation set is empty: calibration needs at least one structure")
    if features.shape[0] != errors2.shape[0]:
        raise ValueError("features and errors must have the same number of rows")
    if not np.all(np.isfinite(errors2)) or not torch.isfinite(features).all():
        raise ValueError("non-finite errors or features in the validation set")
    if np.all(errors2 == 0.0):
        raise ValueError("all validation errors are exactly zero: alpha cannot be calibrated")

    qf = SpectralQuadraticForm(covariance, features)
    lam = qf.eigenvalues
    lam_max = float(lam.max()) if lam.size else 0.0
    if lam_max <= 0.0:
        raise ValueError("the feature covariance is zero: all training features vanish")
    n_features = lam.size
    tol = lam_max * n_features * np.finfo(np.float64).eps
    rank = int(np.sum(lam > tol))
    lam_min = float(lam.min())
    condition = lam_max / lam_min if lam_min > 0 else float("inf")
    if rank < n_features or condition > 1e10:
        warnings.warn(
            f"the feature covariance F^T F is {'rank-deficient' if rank < n_features else 'ill-conditioned'} "
            f"(numerical rank {rank} of {n_features}, condition number {condition:.3g}); "
            "the regulariser varsigma^2 I added in calibration keeps it invertible",
            RuntimeWarning,
            stacklevel=2,
        )

    # log-grid over varsigma^2 from 1e-12 to 10 times the largest eigenvalue
    lo = 0.5 * math.log10(lam_max * 1e-12)
    hi = 0.5 * math.log10(lam_max * 10.0)
    grid = np.linspace(lo, hi, n_grid)
    values = np.array([_nll_at(qf, errors2, g)[0] for g in grid])
    best = int(np.argmin(values))
    step = grid[1] - grid[0]
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, n_grid - 1)])
    refined = minimize_scalar(
        lambda g: _nll_at(qf, errors2, g)[0], bounds=bracket, method="bounded", options={"xatol": 1e-6 * step}
    )
    log_vs = float(refined.x) if refined.fun <= values[best] else float(grid[best])
    if best in (0, n_grid - 1):
        warnings.warn(
            "the best varsigma lies at the edge of the search grid "
            f"(varsigma = {10**log_vs:.3g}); the validation set may be too small or unlike the training set",
            RuntimeWarning,
            stacklevel=2,
        )
    nll, alpha2 = _nll_at(qf, errors2, log_vs)
    q_before = qf(varsigma_before)
    nll_before = gaussian_nll(np.sqrt(errors2), alpha_before**2 * q_before)
    return CalibrationResult(
        alpha=math.sqrt(alpha2),
        varsigma=10.0**log_vs,
        nll=nll,
        nll_before=nll_before,
        n_validation=int(errors2.shape[0]),
        condition_number=condition,
        numerical_rank=rank,
        grid_log10_varsigma=grid.tolist(),
        grid_nll=values.tolist(),
    )
