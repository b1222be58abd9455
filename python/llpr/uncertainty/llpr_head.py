"""The LLPR head: the calibrated covariance factor and every uncertainty formula, in one
TorchScript-able module.

The estimator (:class:`llpr.uncertainty.estimator.LLPR`), the exported file (its ``head`` submodule) and
through it the C++ core and LAMMPS all compute uncertainties with this module, so there is
one implementation of each formula. With ``C = F^T F + varsigma^2 I = L L^T``:

* quadratic form ``q(f) = f^T C^-1 f = |L^-1 f|^2``;
* per atom ``sigma_i = alpha sqrt(q(f_i))`` and ``LPR_i = 1 / q(f_i)``;
* a group's (structure's) energy variance ``alpha^2 q(sum_i f_i)``;
* the extrapolation grade ``gamma_i = q(f_i) / max_train q``, the largest quadratic form of
  any training atom (``max_train_q``, recorded after calibration because ``C`` depends on
  ``varsigma``): ``gamma > 1`` is an environment more novel than every atom trained on;
* after a power-law recalibration (:mod:`llpr.uncertainty.calibrate`), ``sigma = s q^(b/2)`` instead of
  ``alpha q^(1/2)`` in both (``sigma_scale`` s, ``sigma_power`` b; b = 1 and s = alpha
  otherwise); the ensemble is sampled with ``alpha`` either way;
* a last-layer ensemble ``dw_k = w_k - w`` (K, F): member energy deviations ``dw_k . s`` of
  summed features ``s``, and the spreads of :mod:`llpr.uncertainty.propagation`;
* the gradient of a group's energy sigma with respect to its summed features, ``d sigma_E /
  d s = alpha^2 C^-1 s / sigma_E``, and the (optionally capped) sigma of the uncertainty bias
  of uncertainty-biased MD (:func:`capped_sigma`, below).

The quadratic form is evaluated as a product with the precomputed triangular inverse
``L^-1``: a matrix product is faster than a triangular solve on the same rows and agrees with
it to round-off even for ill-conditioned covariances (docs/performance.md). On a CPU it runs
in blocks of rows that stay in cache.

This module is the reference. The C++ core (LAMMPS, ``llpr._core``) evaluates the per-step
formulas (:meth:`quadratic_form`, :meth:`local_uncertainty`, :meth:`extrapolation_grade`,
:meth:`energy_variance`) natively on a CPU, with a kernel that skips the zero half of ``L^-1``,
after checking on load that they reproduce this module's methods for the file
(``cpp/src/native_head.h``, ``docs/model-format.md``).
"""


import math
from typing import Optional, Tuple

import torch
from torch import nn

from llpr.uncertainty.propagation import ensemble_energy_deviations, ensemble_sigma, force_sigma



# The uncertainty bias of uncertainty-biased molecular dynamics (LAMMPS ``fix llpr/bias``).
#
# The biased energy of a group of atoms is ``E_b = E - tau * s(sigma_E)``, with ``sigma_E =
# alpha sqrt(S^T C^-1 S)`` the LLPR uncertainty of the group's energy (``S`` its summed
# last-layer features) and ``s`` either ``sigma_E`` itself or, with a cap ``c > 0``, ``c
# tanh(sigma_E / c)``: equal to ``sigma_E`` for small values and bounded by ``c``, so that the
# bias energy stays finite and its force fades where the model is already very unsure.
#
# Its gradient needs no extra backward pass: ``d s / d S = s'(sigma_E) alpha^2 C^-1 S /
# sigma_E`` is a vector of ``F`` numbers, so the biased forces are one backward pass of the
# energies with the read-out ``w`` of each group atom replaced by ``w - tau d s / d S``. The
# LLPR head (:meth:`llpr.uncertainty.llpr_head.LLPRHead.bias_sigma`) computes ``sigma_E``, ``s`` and ``d s / d
# S``; the exported module's ``forward_graph`` / ``backward_graph`` run the two halves of the
# evaluation around it (the group's features are summed, over MPI ranks in LAMMPS, in between).
def capped_sigma(sigma: torch.Tensor, sigma_cap: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``s(sigma)`` and ``ds / dsigma``: ``sigma`` and 1 when ``sigma_cap <= 0`` (no cap),
    otherwise ``sigma_cap tanh(sigma / sigma_cap)`` and ``1 - tanh^2``."""
    if sigma_cap <= 0.0:
        return sigma, torch.ones_like(sigma)
    t = torch.tanh(sigma / sigma_cap)
    return sigma_cap * t, 1.0 - t * t


class LLPRHead(nn.Module):
    """Covariance factor, ``alpha``, ``varsigma`` and last-layer ensemble of one model.

    ``cholesky`` (F, F): lower-triangular ``L`` with ``L L^T = F^T F + varsigma^2 I``;
    ``ensemble_deviations`` (K, F): ``dw_k`` (K = 0: no ensemble); ``max_train_q``: the
    largest ``f_i^T C^-1 f_i`` over the training set's atoms, with this ``C`` (None: not
    recorded, stored as NaN; :meth:`extrapolation_grade` then refuses). All state is float64.
    """

    block_rows: int
    power_law: bool

    def __init__(
        self,
        cholesky: torch.Tensor,
        alpha: float,
        varsigma: float,
        ensemble_deviations: Optional[torch.Tensor] = None,
        max_train_q: Optional[float] = None,
        sigma_scale: Optional[float] = None,
        sigma_power: float = 1.0,
    ) -> None:
        super().__init__()
        L = cholesky.detach().to(device="cpu", dtype=torch.float64).clone()
        if L.dim() != 2 or L.shape[0] != L.shape[1]:
            raise ValueError(f"the covariance factor must be a square matrix, got shape {tuple(L.shape)}")
        n = L.shape[0]
        if not bool(torch.isfinite(L).all()) or not bool((torch.diagonal(L) > 0).all()):
            raise ValueError("the covariance factor must be a finite lower-triangular matrix with a positive diagonal")
        if ensemble_deviations is None:
            ensemble_deviations = torch.zeros((0, n), dtype=torch.float64)
        dw = ensemble_deviations.detach().to(device="cpu", dtype=torch.float64).clone()
        if dw.dim() != 2 or dw.shape[1] != n:
            raise ValueError(f"ensemble deviations must have shape (K, {n}), got {tuple(dw.shape)}")
        self.register_buffer("cholesky", torch.tril(L))
        # (L^-1)^T, so that z = f @ inverse_factor_t for row-major features
        inverse = torch.linalg.solve_triangular(self.cholesky, torch.eye(n, dtype=torch.float64), upper=False)
        self.register_buffer("inverse_factor_t", inverse.t().contiguous())
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float64))
        self.register_buffer("varsigma", torch.tensor(float(varsigma), dtype=torch.float64))
        self.register_buffer("ensemble_deviations", dw)
        if max_train_q is None:
            max_train_q = float("nan")
        elif not (math.isfinite(float(max_train_q)) and float(max_train_q) > 0.0):
            raise ValueError(f"max_train_q must be a positive number (the largest training-atom q), got {max_train_q}")
        self.register_buffer("max_train_q", torch.tensor(float(max_train_q), dtype=torch.float64))
        scale = float(alpha) if sigma_scale is None else float(sigma_scale)
        if not (scale > 0 and float(sigma_power) > 0 and torch.isfinite(torch.tensor([scale, float(sigma_power)])).all()):
            raise ValueError(f"sigma_scale and sigma_power must be positive numbers, got {sigma_scale}, {sigma_power}")
        self.register_buffer("sigma_scale", torch.tensor(scale, dtype=torch.float64))
        self.register_buffer("sigma_power", torch.tensor(float(sigma_power), dtype=torch.float64))
        self.power_law = float(sigma_power) != 1.0
        # rows per block on a CPU: a (block, F) float64 slab and its product stay in cache
        self.block_rows = 4096

    @torch.jit.export
    def n_features(self) -> int:
        return self.cholesky.shape[0]

    @torch.jit.export
    def ensemble_size(self) -> int:
        """Number K of last-layer ensemble members (0: none)."""
        return self.ensemble_deviations.shape[0]

    @torch.jit.export
    def quadratic_form(self, features: torch.Tensor) -> torch.Tensor:
        """``f^T C^-1 f`` (B,) for each row of ``features`` (B, F), float64."""
        f = features.to(torch.float64)
        if f.dim() == 1:
            f = f.unsqueeze(0)
        n = f.shape[0]
        if f.device.type != "cpu" or n <= self.block_rows:
            z = f @ self.inverse_factor_t
            return (z * z).sum(dim=1)
        parts = []
        for start in range(0, n, self.block_rows):
            z = f[start : start + self.block_rows] @ self.inverse_factor_t
            parts.append((z * z).sum(dim=1))
        return torch.cat(parts)

    @torch.jit.export
    def local_uncertainty(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom ``sigma_i = alpha sqrt(q_i)`` (energy units) and ``LPR_i = 1 / q_i``."""
        q = self.quadratic_form(features)
        if self.power_law:
            return self.sigma_scale * torch.pow(q, 0.5 * self.sigma_power), 1.0 / q
        return self.alpha * torch.sqrt(q), 1.0 / q

    @torch.jit.export
    def has_extrapolation_grade(self) -> bool:
        """Whether ``max_train_q`` was recorded (a positive number, not NaN)."""
        return bool(self.max_train_q > 0.0)

    @torch.jit.export
    def extrapolation_grade(self, features: torch.Tensor) -> torch.Tensor:
        """Per-atom ``gamma_i = q(f_i) / max_train q`` (B,), float64."""
        if not bool(self.max_train_q > 0.0):
            raise RuntimeError(
                "this LLPR head has no training-set maximum of q (max_train_q) for the extrapolation grade; "
                "calibrate with the training set (llpr calibrate, or LLPR.calibrate(val, train_loader=train)) "
                "and export again"
            )
        return self.quadratic_form(features) / self.max_train_q

    @torch.jit.export
    def energy_variance(self, feature_sums: torch.Tensor) -> torch.Tensor:
        """Variance (B,) of the energies whose summed features are the rows of
        ``feature_sums`` (B, F); a 1-D input is one structure (or group)."""
        q = self.quadratic_form(feature_sums)
        if self.power_law:
            return self.sigma_scale * self.sigma_scale * torch.pow(q, self.sigma_power)
        return self.alpha * self.alpha * q

    @torch.jit.export
    def energy_sigma_gradient(self, feature_sum: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``sigma_E = alpha sqrt(s^T C^-1 s)`` (0-d) of one summed feature vector ``s`` (F,)
        and its gradient ``d sigma_E / d s = alpha^2 C^-1 s / sigma_E`` (F,), float64. At
        ``s = 0`` (``sigma_E = 0``, the tip of the cone) the gradient is taken as zero."""
        s = feature_sum.to(torch.float64).reshape(-1)
        sigma = torch.sqrt(self.energy_variance(s)).reshape(())
        # C^-1 s = L^-T L^-1 s, from the same stored inverse as the quadratic form
        c_inv_s = self.inverse_factor_t @ (s @ self.inverse_factor_t)
        if bool(sigma > 0.0):
            return sigma, self.alpha * self.alpha * c_inv_s / sigma
        return sigma, torch.zeros_like(s)

    @torch.jit.export
    def bias_sigma(self, feature_sum: torch.Tensor, sigma_cap: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the uncertainty bias ``E_b = E - tau s(sigma_E)`` needs (:mod:`llpr.uncertainty.llpr_head`), for
        one summed feature vector ``s`` (F,): ``sigma_E`` (0-d), ``s(sigma_E)`` (0-d; ``sigma_E``
        itself when ``sigma_cap <= 0``, else ``sigma_cap tanh(sigma_E / sigma_cap)``) and its
        gradient ``d s / d s_vec`` (F,), float64 (eV for an energy model)."""
        sigma, gradient = self.energy_sigma_gradient(feature_sum)
        value, slope = capped_sigma(sigma, sigma_cap)
        return sigma, value, slope * gradient

    @torch.jit.export
    def ensemble_energy_deviations(self, feature_sums: torch.Tensor) -> torch.Tensor:
        """Member energy deviations ``dw_k . s``: (K,) for one summed feature vector (F,),
        (B, K) for rows (B, F)."""
        return ensemble_energy_deviations(self.ensemble_deviations, feature_sums)

    @torch.jit.export
    def force_sigma(self, force_deviations: torch.Tensor) -> torch.Tensor:
        """Per-atom force sigma (N,) from member force deviations (K, N, 3)."""
        return force_sigma(force_deviations)

    @torch.jit.export
    def ensemble_sigma(self, deviations: torch.Tensor) -> torch.Tensor:
        """Spread over the members (leading axis) of per-member deviations."""
        return ensemble_sigma(deviations)
