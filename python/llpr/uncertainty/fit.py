"""Fit: the two streaming passes over the training set, in float64.

* the feature covariance ``F^T F`` (:class:`CovarianceAccumulator`);
* the extrapolation grade's reference, the largest per-atom quadratic form of the training set
  (:class:`MaximumAccumulator`), for ``gamma_i = q(f_i) / max_train q`` with ``q(f) = f^T C^-1 f``
  (:meth:`llpr.uncertainty.llpr_head.LLPRHead.extrapolation_grade`). ``C = F^T F + varsigma^2 I``
  depends on the calibrated ``varsigma``, so the maximum is taken after calibration, in a second
  streaming pass over the training atoms (the covariance fit sees only their per-structure sums).
"""

from __future__ import annotations

import math

import torch


class CovarianceAccumulator:
    """Accumulates ``F^T F`` (and the number of rows) over batches of features.

    Features of any dtype/device are promoted to float64 on the CPU, so the result does not
    depend on the model's dtype and one batch at a time is held in memory.
    """

    def __init__(self, n_features: int | None = None) -> None:
        self.n_features = n_features
        self.covariance: torch.Tensor | None = None
        self.n_samples = 0

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"features must be a (batch, n_features) matrix, got shape {tuple(features.shape)}")
        f = features.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(f).all():
            raise ValueError("non-finite (NaN/inf) features while fitting the covariance; check the inputs")
        if self.n_features is None:
            self.n_features = f.shape[1]
        if f.shape[1] != self.n_features:
            raise ValueError(f"features have {f.shape[1]} columns, expected {self.n_features}")
        if self.covariance is None:
            self.covariance = torch.zeros((self.n_features, self.n_features), dtype=torch.float64)
        self.covariance += f.t() @ f
        self.n_samples += f.shape[0]

    def all_reduce(self) -> None:
        """Sum ``F^T F`` and the row count over the processes of ``torch.distributed`` (when
        it is initialised with more than one process; a no-op otherwise), so that every
        process holds the covariance of the whole training set, each having fitted its share."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        if self.covariance is None:
            if self.n_features is None:
                raise ValueError("a process with no training structures cannot take part in the all-reduce "
                                 "without n_features; give CovarianceAccumulator(n_features)")
            self.covariance = torch.zeros((self.n_features, self.n_features), dtype=torch.float64)
        count = torch.tensor([float(self.n_samples)], dtype=torch.float64)
        dist.all_reduce(self.covariance, op=dist.ReduceOp.SUM)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        self.n_samples = int(count.item())

    def result(self) -> torch.Tensor:
        if self.covariance is None or self.n_samples == 0:
            raise ValueError("no features were accumulated: the data loader given to fit() is empty")
        # symmetrise away round-off
        return 0.5 * (self.covariance + self.covariance.t())


class MaximumAccumulator:
    """The largest ``q`` over batches of per-atom features, and the number of atoms seen."""

    def __init__(self, head) -> None:
        self.head = head
        self.maximum = -math.inf
        self.n_atoms = 0

    def update(self, atom_features: torch.Tensor) -> None:
        f = atom_features.detach().to(device="cpu", dtype=torch.float64)
        if f.shape[0] == 0:
            return
        q = self.head.quadratic_form(f)
        if not bool(torch.isfinite(q).all()):
            raise ValueError("non-finite (NaN/inf) features in the training set while recording max q; check the inputs")
        self.maximum = max(self.maximum, float(q.max()))
        self.n_atoms += f.shape[0]

    def all_reduce(self) -> None:
        """The maximum and the count over the processes of ``torch.distributed`` (a no-op
        without it), each having seen its share of the training set."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        values = torch.tensor([self.maximum], dtype=torch.float64)
        count = torch.tensor([float(self.n_atoms)], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        self.maximum = float(values.item())
        self.n_atoms = int(count.item())

    def result(self) -> float:
        if self.n_atoms == 0:
            raise ValueError("no training atoms were seen: the training loader for the extrapolation grade is empty")
        if not self.maximum > 0.0:
            raise ValueError(f"the largest training-atom q is {self.maximum}: the training features vanish")
        return self.maximum
