"""Calibrate: choose alpha (scale) and varsigma (regulariser) on a validation set.

The predicted variance of a validation target is ``alpha^2 q(varsigma)`` with
``q = f^T (F^T F + varsigma^2 I)^-1 f``. The mean Gaussian negative log-likelihood

    NLL = 1/2 mean[ log(2 pi alpha^2 q) + e^2 / (alpha^2 q) ]

is minimised over alpha in closed form (``alpha^2 = mean(e^2 / q)``, which makes the mean
of ``z^2 = e^2 / sigma^2`` exactly 1), and over varsigma by a search on a log grid followed
by a bounded 1-D refinement (Brent) around the best grid point.

Two options change the objective (both keep ``alpha`` in closed form):

* **forces** (``force_weight`` w > 0): the per-component force errors ``e_ic`` of the
  validation atoms enter too, with the variance ``alpha^2 qbar_i``, ``qbar_i = 1/3 sum_c
  g_ic^T C^-1 g_ic`` and ``g_ic = d(sum_j f_j)/d r_ic``: the limit of the last-layer
  ensemble's per-atom force variance (:mod:`llpr.uncertainty.propagation`), so the calibrated ``alpha``
  scales the force sigma that predictions and LAMMPS report. The objective is
  ``NLL_energy + w NLL_force`` (each a mean: over structures, over force components), and
  ``alpha^2 = (mean(e^2/q) + w mean(e_f^2/qbar)) / (1 + w)``.
* **power law** (``fit_power``): the energy variance becomes ``s^2 q^b``, a recalibration
  ``sigma = s (sqrt q)^b`` that lets sigma grow faster (b > 1) or slower than the linear
  model predicts away from the training set; ``s^2 = mean(e^2 / q^b)`` and ``b`` is fitted
  (bounded, 1/4 to 4) at each varsigma. ``alpha`` stays the b = 1 scale at that varsigma:
  the last-layer ensemble (and hence the force sigma) is sampled with it.
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
    # how it was calibrated (recorded in checkpoints and in the exported file's calibration JSON)
    method: str = "energy"
    force_weight: float = 0.0
    force_nll: float | None = None
    n_force_components: int = 0
    sigma_power: float = 1.0
    sigma_scale: float | None = None
    n_extra: int = 0
    extra_source: str = ""
    # problems found while calibrating (e.g. the best varsigma at the grid's edge), kept with
    # the result so that checkpoints, exported files, `llpr check` and `llpr evaluate` show them
    warnings: list = field(default_factory=list)

    @property
    def energy_scale(self) -> float:
        """``s`` of the energy variance ``s^2 q^b`` (``alpha`` unless a power law was fitted)."""
        return self.alpha if self.sigma_scale is None else self.sigma_scale

    def summary(self) -> dict:
        return {
            "alpha": self.alpha,
            "varsigma": self.varsigma,
            "nll": self.nll,
            "nll_before": self.nll_before,
            "n_validation": self.n_validation,
            "condition_number": self.condition_number if math.isfinite(self.condition_number) else None,
            "numerical_rank": self.numerical_rank,
            "method": self.method,
            "force_weight": self.force_weight,
            "force_nll": self.force_nll,
            "n_force_components": self.n_force_components,
            "sigma_power": self.sigma_power,
            "sigma_scale": self.energy_scale,
            "n_extra": self.n_extra,
            "extra_source": self.extra_source,
            "warnings": list(self.warnings),
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


class _Objective:
    """The calibration objective at one varsigma: energy NLL (optionally a power law) plus
    ``force_weight`` times the force-component NLL, with the scale in closed form."""

    POWER_BOUNDS = (0.25, 4.0)

    def __init__(self, qf, errors2, qf_force=None, force_errors2=None, force_weight=0.0, fit_power=False):
        self.qf, self.errors2 = qf, errors2
        self.qf_force, self.force_errors2 = qf_force, force_errors2
        self.w = float(force_weight)
        self.fit_power = fit_power

    def _power(self, q: np.ndarray) -> tuple[float, float, float]:
        """(NLL, s^2, b) of the energy variance s^2 q^b at its best b."""
        logq = np.log(q)

        def nll(b):
            s2 = float(np.mean(self.errors2 * np.exp(-b * logq)))
            return 0.5 * (math.log(2.0 * math.pi * s2) + b * float(np.mean(logq)) + 1.0), s2

        res = minimize_scalar(lambda b: nll(b)[0], bounds=self.POWER_BOUNDS, method="bounded",
                              options={"xatol": 1e-8})
        b = float(res.x)
        value, s2 = nll(b)
        return value, s2, b

    def __call__(self, log10_varsigma: float) -> dict:
        """objective, alpha^2, energy NLL, force NLL, b, s^2 at this varsigma."""
        vs = 10.0**log10_varsigma
        q = self.qf(vs)
        a_e = float(np.mean(self.errors2 / q))
        if self.fit_power:
            nll_e, s2, b = self._power(q)
            return {"objective": nll_e, "alpha2": a_e, "nll": nll_e, "force_nll": None, "power": b, "scale2": s2}
        if self.w == 0.0 or self.qf_force is None:
            nll_e = 0.5 * (math.log(2.0 * math.pi * a_e) + float(np.mean(np.log(q))) + 1.0)
            return {"objective": nll_e, "alpha2": a_e, "nll": nll_e, "force_nll": None, "power": 1.0, "scale2": a_e}
        qbar = self.qf_force(vs)
        a_f = float(np.mean(self.force_errors2 / qbar))
        alpha2 = (a_e + self.w * a_f) / (1.0 + self.w)
        nll_e = gaussian_nll(np.sqrt(self.errors2), alpha2 * q)
        nll_f = gaussian_nll(np.sqrt(self.force_errors2), alpha2 * qbar)
        return {"objective": nll_e + self.w * nll_f, "alpha2": alpha2, "nll": nll_e, "force_nll": nll_f,
                "power": 1.0, "scale2": alpha2}


class _ForceQuadraticForm:
    """qbar_i(varsigma) = 1/3 sum_c g_ic^T (A + varsigma^2 I)^-1 g_ic per atom, repeated for
    its three components, from the eigendecomposition of :class:`SpectralQuadraticForm`."""

    def __init__(self, energy_form: SpectralQuadraticForm, eigvecs: torch.Tensor, jacobian: torch.Tensor) -> None:
        self.eigenvalues = energy_form.eigenvalues
        proj = jacobian.to(torch.float64) @ eigvecs  # (M, 3, F)
        self.projections = (proj * proj).mean(dim=1).numpy()  # (M, F)

    def __call__(self, varsigma: float) -> np.ndarray:
        qbar = self.projections @ (1.0 / (self.eigenvalues + varsigma**2))
        return np.repeat(qbar, 3)


def required_targets(fit_power: bool = False) -> int:
    """How many validation targets the calibration needs: one more than it fits parameters.

    The fitted parameters are alpha and varsigma (2), or the power law's scale s, exponent b
    and varsigma (3). With alpha (s) in closed form, the NLL depends on varsigma only through
    the ratios of the targets' variances: with one target it is the same at every varsigma.
    With as many targets as parameters, its minimum is an exact fit of every target (each
    ``z_i^2 = e_i^2 / sigma_i^2 = 1``), and every exact fit has the same NLL; there are often
    several (the variance ratios need not be monotonic in varsigma), so which one is found would
    be arbitrary. One more target breaks those ties. With forces, each validation atom is one
    more target (its three force components share one variance)."""
    return 4 if fit_power else 3


def check_enough_targets(n_energy: int, n_force_atoms: int = 0, fit_power: bool = False,
                         unit: str = "structure") -> None:
    """ValueError when ``n_energy`` validation targets (``unit``: structures; samples of a
    tabular model) and ``n_force_atoms`` atoms with forces (force calibration) cannot determine
    the calibration (:func:`required_targets`)."""
    need = required_targets(fit_power)
    if n_energy + n_force_atoms >= need:
        return
    what = "the power law sigma = s sqrt(q)^b (s, b and varsigma)" if fit_power else "alpha and varsigma"
    got = f"{n_energy} validation {unit}{'s' if n_energy != 1 else ''}"
    if n_force_atoms:
        got += f" and {n_force_atoms} atom{'s' if n_force_atoms != 1 else ''} with forces"
    hint = (f": with no more targets than the {need - 1} fitted parameters, the NLL cannot single out one "
            f"varsigma, and the one found would be arbitrary. Use at least {need} validation {unit}s")
    if not fit_power:
        hint += (", or calibrate on forces too (force_weight > 0, `llpr calibrate --force-calibration`), "
                 "where each atom with forces adds a target")
    raise ValueError(f"calibrating {what} needs at least {need} validation targets, got {got}{hint}")


def calibrate_hyperparameters(
    covariance: torch.Tensor,
    features: torch.Tensor,
    errors: torch.Tensor,
    n_grid: int = 61,
    alpha_before: float = 1.0,
    varsigma_before: float = 1.0,
    force_jacobian: torch.Tensor | None = None,
    force_errors: torch.Tensor | None = None,
    force_weight: float = 0.0,
    fit_power: bool = False,
    unit: str = "structure",
) -> CalibrationResult:
    """Fit alpha and varsigma by minimising the validation NLL.

    ``covariance`` is F^T F (F, F); ``features`` (B, F) and ``errors`` (B,) are the
    validation features and prediction errors (prediction - target). ``alpha_before`` and
    ``varsigma_before`` only define the reported "before" NLL.

    ``force_weight`` > 0 adds the force NLL (see the module docstring), from
    ``force_jacobian`` (M, 3, F), the gradients ``d(sum_j f_j)/d r_ic`` of each validation
    atom's structure's summed features with respect to its position, and ``force_errors``
    (M, 3). ``fit_power`` fits the power law ``sigma = s (sqrt q)^b`` on the energies instead
    (not combined with forces: the force sigma comes from the ensemble, which has b = 1).

    ``unit`` names a validation row in messages ("structure"; "sample" for tabular models).
    A validation set that cannot determine the fit is refused (ValueError): fewer targets than
    :func:`required_targets`, or an NLL that is the same at every varsigma.
    """
    force_weight = float(force_weight)
    if not math.isfinite(force_weight) or force_weight < 0:
        raise ValueError(f"force_weight must be a finite number >= 0, got {force_weight}")
    if force_weight > 0 and fit_power:
        raise ValueError("a power-law sigma is fitted on energies only; use force_weight=0 with fit_power=True")
    if force_weight > 0:
        if force_jacobian is None or force_errors is None:
            raise ValueError("force_weight > 0 needs force_jacobian and force_errors (validation forces)")
        force_jacobian = torch.as_tensor(force_jacobian, dtype=torch.float64)
        force_errors2 = torch.as_tensor(force_errors, dtype=torch.float64).reshape(-1).numpy() ** 2
        if force_jacobian.dim() != 3 or force_jacobian.shape[1] != 3 or force_jacobian.shape[0] * 3 != force_errors2.shape[0]:
            raise ValueError(f"force_jacobian must be (M, 3, F) and force_errors (M, 3), got "
                             f"{tuple(force_jacobian.shape)} and {tuple(torch.as_tensor(force_errors).shape)}")
        if force_jacobian.shape[0] == 0:
            raise ValueError("force calibration needs validation atoms with forces; none were given")
        if not np.all(np.isfinite(force_errors2)) or not torch.isfinite(force_jacobian).all():
            raise ValueError("non-finite force errors or force Jacobian in the validation set")
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
    # an atom whose features do not move with it (zero Jacobian, e.g. an isolated atom) has a
    # force variance of zero whatever alpha and varsigma: it has nothing to calibrate, and its
    # z^2 = e^2 / 0 would make the objective infinite, so it is left out of the force terms
    n_force_atoms = 0
    if force_weight > 0:
        moving = (force_jacobian.flatten(1) != 0).any(dim=1)
        n_force_atoms = int(moving.sum())
        if n_force_atoms == 0:
            raise ValueError("force calibration: no validation atom's features change when it moves (every force "
                             "Jacobian is zero, e.g. isolated atoms); calibrate on energies only (force_weight=0)")
        force_jacobian = force_jacobian[moving]
        force_errors2 = force_errors2.reshape(-1, 3)[moving.numpy()].reshape(-1)
    check_enough_targets(int(errors2.shape[0]), n_force_atoms, fit_power, unit)

    qf = SpectralQuadraticForm(covariance, features)
    qf_force = None
    if force_weight > 0:
        _, eigvecs = torch.linalg.eigh(covariance.to(torch.float64))
        qf_force = _ForceQuadraticForm(qf, eigvecs, force_jacobian)
    objective = _Objective(qf, errors2, qf_force, force_errors2 if force_weight > 0 else None, force_weight,
                           fit_power)
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
    values = np.array([objective(g)["objective"] for g in grid])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"the calibration objective is not finite at varsigma = "
                         f"{10 ** grid[~np.isfinite(values)][0]:.3g}: a validation {unit} whose predicted variance is "
                         "zero has a non-zero error; check the validation set and the model's features")
    best = int(np.argmin(values))
    step = grid[1] - grid[0]
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, n_grid - 1)])
    refined = minimize_scalar(
        lambda g: objective(g)["objective"], bounds=bracket, method="bounded", options={"xatol": 1e-6 * step}
    )
    log_vs = float(refined.x) if refined.fun <= values[best] else float(grid[best])
    # enough targets, but the same variance ratios at every varsigma (copies of one structure,
    # proportional features): the objective is flat up to round-off, which would pick varsigma.
    # (With all eigenvalues of F^T F equal, varsigma only rescales every q alike and alpha
    # absorbs it: any varsigma gives the same sigmas, so a flat objective is harmless there.)
    scale = max(1.0, float(np.max(np.abs(values))))
    isotropic = float(lam.max() - lam.min()) <= 1e-12 * lam_max
    if not isotropic and float(np.max(values) - np.min(values)) <= 1e-9 * scale:
        raise ValueError(
            f"the validation NLL is the same at every varsigma (its {errors2.shape[0]} {unit}s have "
            f"proportional features, e.g. copies of one {unit}): the validation set cannot determine varsigma; "
            f"use {unit}s that differ from each other"
        )
    recorded = []
    if best in (0, n_grid - 1):
        recorded.append(
            "the best varsigma lies at the edge of the search grid "
            f"(varsigma = {10**log_vs:.3g}); the validation set may be too small or unlike the training set"
        )
    for message in recorded:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    best_point = objective(log_vs)
    alpha2 = best_point["alpha2"]
    q_before = qf(varsigma_before)
    nll_before = gaussian_nll(np.sqrt(errors2), alpha_before**2 * q_before)
    return CalibrationResult(
        alpha=math.sqrt(alpha2),
        varsigma=10.0**log_vs,
        nll=best_point["nll"],
        nll_before=nll_before,
        n_validation=int(errors2.shape[0]),
        condition_number=condition,
        numerical_rank=rank,
        grid_log10_varsigma=grid.tolist(),
        grid_nll=values.tolist(),
        method="power-law" if fit_power else ("energy+forces" if force_weight > 0 else "energy"),
        force_weight=force_weight,
        force_nll=best_point["force_nll"],
        n_force_components=int(force_errors2.shape[0]) if force_weight > 0 else 0,
        sigma_power=best_point["power"],
        sigma_scale=math.sqrt(best_point["scale2"]) if fit_power else None,
        warnings=recorded,
    )
