"""Fit: streaming accumulation of the feature covariance F^T F in float64."""

from __future__ import annotations

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
