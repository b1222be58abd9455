"""A second atomistic model, deliberately unlike llpr.models.potential.LocalPotential, that follows
llpr.models.protocol.AtomisticModel and nothing else: a radial-only pair network.

Per-atom features ``f_i = sum_j fc(r_ij) MLP([b(r_ij), onehot(s_i), onehot(s_j)])`` with a
sine (Bessel-like) radial basis ``b_n(r) = sin(n pi r / rc) / r`` and the cosine cutoff
``fc(r) = (1 + cos(pi r / rc)) / 2``; energies ``E_i = w . f_i + E0[s_i]``. No angles, no
standardisation hook: only what the protocol asks for (plus ``set_species_energies`` for
training and ``init_kwargs`` for checkpoints).

``message_passing=True`` adds one hop, ``f_i <- f_i + sum_j fc(r_ij) f_j``, over the edges of
every atom given as a centre: the receptive field becomes twice the cutoff and the model is
not strictly local (its centres must not be evaluated in blocks).
"""

import math
from typing import List, Tuple

import torch
from torch import nn


class PairwiseModel(nn.Module):
    species: List[int]
    cutoff: float
    receptive_field: float
    strictly_local: bool
    n_features: int
    n_species: int
    n_basis: int
    message_passing: bool

    def __init__(self, species: List[int], cutoff: float = 3.5, n_basis: int = 6, hidden: int = 12,
                 n_features: int = 8, message_passing: bool = False) -> None:
        super().__init__()
        self.init_kwargs = {"species": [int(z) for z in species], "cutoff": float(cutoff), "n_basis": int(n_basis),
                            "hidden": int(hidden), "n_features": int(n_features),
                            "message_passing": bool(message_passing)}
        self.species = sorted(int(z) for z in species)
        self.cutoff = float(cutoff)
        self.message_passing = bool(message_passing)
        self.receptive_field = 2.0 * self.cutoff if self.message_passing else self.cutoff
        self.strictly_local = not self.message_passing
        self.n_species = len(self.species)
        self.n_basis = int(n_basis)
        self.n_features = int(n_features)
        lookup = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(self.species):
            lookup[z] = k
        self.register_buffer("species_to_index", lookup)
        self.pair_mlp = nn.Sequential(nn.Linear(n_basis + 2 * self.n_species, hidden), nn.Tanh(),
                                      nn.Linear(hidden, n_features), nn.Tanh())
        self.readout = nn.Linear(n_features, 1, bias=False)
        self.register_buffer("reference_energies", torch.zeros(self.n_species))

    def forward(self, atomic_numbers: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_centers: int) -> Tuple[torch.Tensor, torch.Tensor]:
        index = self.species_to_index[atomic_numbers]
        if index.numel() > 0 and int(index.min()) < 0:
            raise ValueError("structure contains an element the model does not know; it knows " + str(self.species))
        i, j = edge_index[0], edge_index[1]
        r = torch.linalg.vector_norm(edge_vectors, dim=1)
        inside = r < self.cutoff
        r_safe = torch.where(inside, r, torch.full_like(r, 0.5 * self.cutoff))
        n = torch.arange(1, self.n_basis + 1, dtype=r.dtype, device=r.device)
        basis = torch.sin(n * (math.pi / self.cutoff) * r_safe.unsqueeze(1)) / r_safe.unsqueeze(1)
        fc = torch.where(inside, 0.5 * (1.0 + torch.cos((math.pi / self.cutoff) * r_safe)), torch.zeros_like(r))
        onehot = torch.nn.functional.one_hot(index, self.n_species).to(r.dtype)
        pair = self.pair_mlp(torch.cat([basis, onehot[i], onehot[j]], dim=1)) * fc.unsqueeze(1)
        n_atoms = atomic_numbers.shape[0]
        h = torch.zeros((n_atoms, self.n_features), dtype=r.dtype, device=r.device).index_add(0, i, pair)
        if self.message_passing:
            h = h.index_add(0, i, fc.unsqueeze(1) * h[j])
        features = h[:n_centers]
        energies = features @ self.readout_weights() + self.reference_energies[index[:n_centers]]
        return energies, features

    @torch.jit.export
    def readout_weights(self) -> torch.Tensor:
        return self.readout.weight.view(-1)

    @torch.jit.export
    def species_energies(self) -> torch.Tensor:
        return self.reference_energies

    def set_species_energies(self, values: torch.Tensor) -> None:
        self.reference_energies.copy_(torch.as_tensor(values, dtype=self.reference_energies.dtype))
