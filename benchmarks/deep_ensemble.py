"""Deep-ensemble baseline: K independently trained potentials (the committee approach).

Each member is trained with :func:`llpr.models.train.train_model` on the same data with the same
budget and a different seed. The ensemble predicts the member mean; its uncertainty is the
member spread, scaled by one factor ``s`` fitted in closed form on a validation set
(minimum Gaussian NLL, ``s^2 = mean(error^2 / variance)``), the same calibration freedom
LLPR's ``alpha`` has, so that the two are compared on equal terms.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace

import numpy as np
import torch

from llpr.graphs import AtomisticDataset, make_loader
from llpr.models.train import TrainConfig, predict_batch, train_model


class DeepEnsemble:
    def __init__(self, members: list) -> None:
        if len(members) < 2:
            raise ValueError("a deep ensemble needs at least two members")
        self.members = members
        self.scale = 1.0
        self.train_time_s: list[float] = []

    @classmethod
    def train(cls, train_atoms, val_atoms, n_members: int = 5, config: TrainConfig | None = None,
              progress: bool = False) -> "DeepEnsemble":
        """Train ``n_members`` potentials with seeds ``config.seed + k``."""
        config = config or TrainConfig()
        members, times = [], []
        for k in range(n_members):
            start = time.perf_counter()
            model, _ = train_model(train_atoms, val_atoms, replace(config, seed=config.seed + k), progress=progress)
            times.append(time.perf_counter() - start)
            members.append(model)
        ensemble = cls(members)
        ensemble.train_time_s = times
        return ensemble

    def predict(self, atoms_list, forces: bool = True, batch_size: int = 8) -> dict:
        """Per structure: mean energy and its variance (calibrated scale applied); per atom
        (concatenated over structures): mean forces (N, 3) and force variance (N, 3)."""
        dtype = next(self.members[0].parameters()).dtype
        dataset = AtomisticDataset(atoms_list, self.members[0].cutoff, dtype, require_labels=False)
        energies, force_sets = [], []
        for model in self.members:
            model.eval()
            e_m, f_m = [], []
            for batch in make_loader(dataset, batch_size):
                e, f = predict_batch(model, batch, forces=forces)
                e_m.append(e.detach())
                if forces:
                    f_m.append(f.detach().to(torch.float64))
            energies.append(torch.cat(e_m))
            if forces:
                force_sets.append(torch.cat(f_m))
        E = torch.stack(energies)  # (K, B)
        out = {
            "energy": E.mean(0).numpy(),
            "energy_variance": self.scale**2 * E.var(0, unbiased=False).numpy(),
            "member_energies": E.numpy(),
        }
        if forces:
            F = torch.stack(force_sets)  # (K, N, 3)
            out["forces"] = F.mean(0).numpy()
            out["force_variance"] = self.scale**2 * F.var(0, unbiased=False).numpy()
        return out

    def calibrate(self, val_atoms) -> "DeepEnsemble":
        """Fit the variance scale on labelled validation structures (energies)."""
        self.scale = 1.0
        pred = self.predict(val_atoms, forces=False)
        ref = np.array([a.info["energy"] for a in val_atoms])
        self.scale = math.sqrt(float(np.mean((pred["energy"] - ref) ** 2 / pred["energy_variance"])))
        return self

    def copy(self) -> "DeepEnsemble":
        return copy.deepcopy(self)
