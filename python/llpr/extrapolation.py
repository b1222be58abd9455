"""The extrapolation grade's reference: the largest per-atom quadratic form of the training set.

``gamma_i = q(f_i) / max_train q`` with ``q(f) = f^T C^-1 f`` (:meth:`llpr.head.LLPRHead.
extrapolation_grade`). ``C = F^T F + varsigma^2 I`` depends on the calibrated ``varsigma``, so
the maximum is taken after calibration, in one streaming pass over the training atoms (the
covariance fit sees only their per-structure sums).
"""

from __future__ import annotations

import math

import torch


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
