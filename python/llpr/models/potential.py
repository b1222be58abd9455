"""A strictly local, species-aware neural-network potential with a linear read-out.

The energy of atom ``i`` depends only on the neighbours ``j`` within ``cutoff`` (receptive
field = one cutoff, no message passing), which is what lets LAMMPS run it with one ghost
shell and makes the per-atom energy and per-atom last-layer feature well defined.

Descriptor (all rotation/permutation invariant and smooth at the cutoff):

* radial basis ``b_k(r)``: Gaussians times the C2 cutoff ``fc(r) = 1 - 10x^3 + 15x^4 - 6x^5``
  (x = r / cutoff), so energies and forces go to zero smoothly at the cutoff;
* species-pair mixing into ``n_channels`` radial channels ``R_n(r_ij) = sum_k b_k W[s_i,s_j]_kn``;
* moment tensors ``M_i[n, L] = sum_j R_n(r_ij) u_ij^{(x)L}`` (u = unit vector, L = 0..l_max),
  stored in symmetric form with multiplicity weights so that plain dot products are full
  tensor contractions;
* invariants: ``M_i[n, 0]`` (two-body) and ``<M_i[n, L], M_i[n', L]> =
  sum_{j,k} R_n(r_ij) R_n'(r_ik) cos(theta_jik)^L`` for n <= n' (three-body, angular).

The invariants (standardised with fixed training-set statistics) and a one-hot of the
centre species go through an MLP whose last hidden activations are the **last-layer
features** ``f_i``; the atomic energy is ``E_i = w . f_i + E0[s_i]`` with a bias-free linear
read-out ``w`` and fixed per-species reference energies ``E0`` (fitted by least squares on
the training set). LLPR treats ``w`` as the last layer.

The module is scriptable with ``torch.jit.script`` and works in float32 and float64. It
follows :class:`llpr.models.protocol.AtomisticModel`; checkpoints of it are read and written by
:mod:`llpr.models.checkpoint`.
"""


import math
from typing import Iterable, List, Tuple

import torch
from torch import nn


def _symmetric_monomials(l_max: int) -> Tuple[List[List[int]], List[float], List[int]]:
    """Exponent triples (a, b, c) with a+b+c = L for L = 0..l_max, the square root of
    their multinomial multiplicity, and the L of each, in a fixed order."""
    exps: List[List[int]] = []
    weights: List[float] = []
    orders: List[int] = []
    for L in range(l_max + 1):
        for a in range(L, -1, -1):
            for b in range(L - a, -1, -1):
                c = L - a - b
                mult = math.factorial(L) // (math.factorial(a) * math.factorial(b) * math.factorial(c))
                exps.append([a, b, c])
                weights.append(math.sqrt(mult))
                orders.append(L)
    return exps, weights, orders


class LocalPotential(nn.Module):
    """Strictly local moment-tensor neural-network potential.

    Parameters
    ----------
    species:
        Atomic numbers the model knows, e.g. ``[14]`` or ``[6, 14]``.
    cutoff:
        Radial cutoff in Angstrom (also the receptive field: the model is strictly local).
    n_basis, n_channels, l_max:
        Radial basis size, number of mixed radial channels, highest angular order.
    hidden:
        Widths of the MLP hidden layers; the last one is the feature dimension.
    """

    # exported metadata (TorchScript attributes, llpr.models.protocol.AtomisticModel)
    cutoff: float
    receptive_field: float
    strictly_local: bool
    n_species: int
    n_features: int
    l_max: int

    def __init__(
        self,
        species: List[int],
        cutoff: float = 4.0,
        n_basis: int = 8,
        n_channels: int = 8,
        l_max: int = 3,
        hidden: Tuple[int, ...] = (64, 64),
        r_min: float = 1.5,
    ) -> None:
        super().__init__()
        species = [int(z) for z in species]
        if len(species) == 0:
            raise ValueError("LocalPotential needs at least one species (atomic numbers)")
        if len(set(species)) != len(species) or any(z < 1 or z > 118 for z in species):
            raise ValueError(f"species must be distinct atomic numbers in 1..118, got {species}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.species: List[int] = sorted(species)
        self.cutoff = float(cutoff)
        self.receptive_field = float(cutoff)  # no message passing
        self.strictly_local = True
        self.n_species = len(self.species)
        self.n_basis = int(n_basis)
        self.n_channels = int(n_channels)
        self.l_max = int(l_max)
        # constructor arguments, to rebuild the model from a checkpoint (not scripted)
        self.init_kwargs = {
            "species": list(self.species),
            "cutoff": float(cutoff),
            "n_basis": int(n_basis),
            "n_channels": int(n_channels),
            "l_max": int(l_max),
            "hidden": [int(h) for h in hidden],
            "r_min": float(r_min),
        }
        self.hidden_sizes: List[int] = [int(h) for h in hidden]

        lookup = torch.full((119,), -1, dtype=torch.long)
        for idx, z in enumerate(self.species):
            lookup[z] = idx
        self.register_buffer("species_to_index", lookup)

        centers = torch.linspace(r_min, cutoff, n_basis)
        width = (cutoff - r_min) / max(n_basis - 1, 1)
        self.register_buffer("basis_centers", centers)
        self.register_buffer("basis_width", torch.tensor(width))

        exps, weights, orders = _symmetric_monomials(l_max)
        self.register_buffer("monomial_exponents", torch.tensor(exps, dtype=torch.long))
        # integer multiplicities (exact in any dtype); their square roots are taken in the
        # model's dtype at run time. A float buffer would be rounded whenever the model
        # passes through float32 and the contraction would no longer be exactly invariant.
        self.register_buffer(
            "monomial_multiplicity", torch.tensor([int(round(w * w)) for w in weights], dtype=torch.long)
        )
        self.n_monomials = len(exps)
        # index ranges of each L in the monomial list
        bounds: List[int] = [0]
        for L in range(l_max + 1):
            bounds.append(bounds[-1] + (L + 1) * (L + 2) // 2)
        self.l_bounds: List[int] = bounds
        # monomials of order L >= 2 as (one of order L - 1) x (one component of u): index of
        # that parent within block L - 1 and the axis, per monomial (entries of blocks 0 and 1
        # unused). Derived from the exponents, so not saved in checkpoints.
        parent = [0] * len(exps)
        axis = [0] * len(exps)
        for p_idx, (a, b, c) in enumerate(exps):
            L = a + b + c
            if L < 2:
                continue
            k = 0 if a > 0 else (1 if b > 0 else 2)
            e = [a, b, c]
            e[k] -= 1
            parent[p_idx] = exps.index(e) - bounds[L - 1]
            axis[p_idx] = k
        self.register_buffer("monomial_parent", torch.tensor(parent, dtype=torch.long), persistent=False)
        self.register_buffer("monomial_axis", torch.tensor(axis, dtype=torch.long), persistent=False)

        S = self.n_species
        self.radial_mixing = nn.Parameter(
            torch.randn(n_basis, S * S * n_channels) / math.sqrt(n_basis)
        )
        iu = torch.triu_indices(n_channels, n_channels)
        self.register_buffer("pair_rows", iu[0].clone())
        self.register_buffer("pair_cols", iu[1].clone())
        n_pairs = iu.shape[1]
        self.n_invariants = n_channels + (l_max + 1) * n_pairs
        self.register_buffer("invariant_mean", torch.zeros(self.n_invariants))
        self.register_buffer("invariant_std", torch.ones(self.n_invariants))

        layers: List[nn.Module] = []
        width_in = self.n_invariants + S
        for h in self.hidden_sizes:
            layers.append(nn.Linear(width_in, h))
            layers.append(nn.SiLU())
            width_in = h
        self.mlp = nn.Sequential(*layers)
        self.n_features = width_in
        self.readout = nn.Linear(width_in, 1, bias=False)
        nn.init.normal_(self.readout.weight, std=0.01)
        self.register_buffer("energy_shift", torch.zeros(S))

    # ------------------------------------------------------------------ descriptor
    def _cutoff_fn(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.cutoff).clamp(max=1.0)
        return 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)

    def species_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers to 0..n_species-1; raise on an unknown element."""
        if atomic_numbers.numel() > 0:
            if int(atomic_numbers.min()) < 0 or int(atomic_numbers.max()) > 118:
                raise ValueError("atomic numbers must lie in 0..118")
        idx = self.species_to_index[atomic_numbers]
        if atomic_numbers.numel() > 0 and int(idx.min()) < 0:
            unknown: List[int] = torch.unique(atomic_numbers[idx < 0]).tolist()
            raise ValueError(
                "structure contains element(s) with atomic number "
                + str(unknown)
                + " that the model does not know; the model was trained for atomic numbers "
                + str(self.species)
            )
        return idx

    def _monomial_blocks(self, u: torch.Tensor) -> List[torch.Tensor]:
        """Symmetric monomials ``ux^a uy^b uz^c`` of the unit vectors ``u`` (E, 3), one block
        (E, (L+1)(L+2)/2) per order L = 1..l_max, in the order of ``monomial_exponents``
        (unweighted). Each order is the previous one times one component of ``u``: a few
        passes over (E, P) memory, no ``pow``."""
        blocks: List[torch.Tensor] = []
        if self.l_max >= 1:
            blocks.append(u)
        for L in range(2, self.l_max + 1):
            lo = self.l_bounds[L]
            hi = self.l_bounds[L + 1]
            parent = self.monomial_parent[lo:hi]
            axis = self.monomial_axis[lo:hi]
            blocks.append(blocks[-1].index_select(1, parent) * u.index_select(1, axis))
        return blocks

    def _edge_slots(self, centers: torch.Tensor, n_centers: int) -> Tuple[torch.Tensor, int]:
        """Row ``centre * max_degree + k`` of each edge in the padded layout (the edge is the
        k-th of its centre, in edge order) and ``max_degree``. Edges need not be sorted."""
        n_edges = centers.shape[0]
        if n_edges == 0 or n_centers == 0:
            return torch.zeros_like(centers), 1
        counts = torch.bincount(centers, minlength=n_centers)
        max_degree = int(counts.max())
        start = torch.cumsum(counts, 0) - counts
        position = torch.arange(n_edges, dtype=centers.dtype, device=centers.device)
        if bool((centers[1:] >= centers[:-1]).all()):
            slot = position - start[centers]
        else:
            order = torch.argsort(centers, stable=True)
            slot = torch.empty_like(centers)
            slot[order] = position - start[centers[order]]
        return centers * max_degree + slot, max_degree

    def invariants(
        self,
        species_idx: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_centers: int,
    ) -> torch.Tensor:
        """Raw (unstandardised) invariants of the first ``n_centers`` atoms."""
        centers = edge_index[0]
        neighbors = edge_index[1]
        r = torch.linalg.vector_norm(edge_vectors, dim=1)
        # edges at or beyond the cutoff contribute exactly zero (smooth cutoff)
        inside = r < self.cutoff
        r_safe = torch.where(inside, r, torch.full_like(r, 0.5 * self.cutoff))
        u = edge_vectors / r_safe.unsqueeze(1)
        fc = torch.where(inside, self._cutoff_fn(r_safe), torch.zeros_like(r_safe))
        d = (r_safe.unsqueeze(1) - self.basis_centers.to(r.dtype)) / self.basis_width.to(r.dtype)
        basis = torch.exp(-d * d) * fc.unsqueeze(1)  # (E, K)

        S = self.n_species
        C = self.n_channels
        mixed = basis @ self.radial_mixing  # (E, S*S*C)
        pair_type = species_idx[centers] * S + species_idx[neighbors]
        mixed = mixed.view(-1, S * S, C)
        radial = mixed.gather(1, pair_type.view(-1, 1, 1).expand(-1, 1, C)).squeeze(1)  # (E, C)

        # moment tensors M_i[:, L] = sum_{edges e of centre i} radial_e (x) mono_L,e as batched
        # products over a padded (centre, slot) layout: memory ~ n_centers x max_degree x (C + P)
        # instead of an (E, C, P) intermediate (which dominated the run time, forward and
        # backward). Padding rows are zero and contribute nothing.
        flat, max_degree = self._edge_slots(centers, n_centers)
        n = n_centers
        radial_t = (
            torch.zeros((n * max_degree, C), dtype=radial.dtype, device=radial.device)
            .index_copy_(0, flat, radial)
            .view(n, max_degree, C)
            .transpose(1, 2)
        )  # (n, C, D)
        m0 = radial_t.sum(dim=2)  # (n, C): L = 0, two-body
        pair_flat = self.pair_rows * C + self.pair_cols
        parts: List[torch.Tensor] = [m0, (m0.unsqueeze(2) * m0.unsqueeze(1)).reshape(n, C * C).index_select(1, pair_flat)]
        for L, mono in enumerate(self._monomial_blocks(u)):
            P = mono.shape[1]
            padded = torch.zeros((n * max_degree, P), dtype=mono.dtype, device=mono.device).index_copy_(0, flat, mono)
            m = torch.bmm(radial_t, padded.view(n, max_degree, P))  # (n, C, P)
            lo = self.l_bounds[L + 1]
            weight = self.monomial_multiplicity[lo : lo + P].to(m.dtype)  # contraction weights
            gram = torch.bmm(m * weight, m.transpose(1, 2))  # (n, C, C): sum_jk R R' cos^L
            parts.append(gram.reshape(n, C * C).index_select(1, pair_flat))
        return torch.cat(parts, dim=1)

    def features(
        self,
        species_idx: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_centers: int,
    ) -> torch.Tensor:
        """Last-layer features f_i of the first ``n_centers`` atoms, shape (n_centers, F)."""
        inv = self.invariants(species_idx, edge_index, edge_vectors, n_centers)
        inv = (inv - self.invariant_mean) / self.invariant_std
        onehot = torch.nn.functional.one_hot(species_idx[:n_centers], self.n_species).to(inv.dtype)
        return self.mlp(torch.cat([inv, onehot], dim=1))

    def forward(
        self,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_centers: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies (n_centers,) and last-layer features (n_centers, F).

        ``atomic_numbers`` covers all atoms that appear in ``edge_index`` (centres first,
        then any ghost/image atoms); ``edge_index[0]`` must be < ``n_centers``;
        ``edge_vectors[e] = r_{edge_index[1,e]} - r_{edge_index[0,e]}``.
        """
        species_idx = self.species_index(atomic_numbers)
        f = self.features(species_idx, edge_index, edge_vectors, n_centers)
        energies = self.readout(f).squeeze(1) + self.energy_shift[species_idx[:n_centers]]
        return energies, f

    @torch.jit.export
    def readout_weights(self) -> torch.Tensor:
        return self.readout.weight.view(-1)

    @torch.jit.export
    def species_energies(self) -> torch.Tensor:
        """The per-species reference energies ``E0`` (in the order of ``species``)."""
        return self.energy_shift

    def set_species_energies(self, values: torch.Tensor) -> None:
        """Set ``E0`` (a fixed buffer, fitted by :func:`llpr.models.train.fit_energy_shift`)."""
        self.energy_shift.copy_(torch.as_tensor(values, dtype=self.energy_shift.dtype))

    def fit_statistics(self, graphs: Iterable[dict], max_structures: int = 200) -> None:
        """Standardise the invariants with the mean and standard deviation over (the first
        ``max_structures`` of) the training ``graphs``."""
        parts = []
        dtype = self.radial_mixing.dtype
        with torch.no_grad():
            for k, item in enumerate(graphs):
                if k == max_structures:
                    break
                ev = edge_vectors_from_positions(item["positions"], item["edge_index"], item["edge_shifts"])
                idx = self.species_index(item["atomic_numbers"])
                parts.append(self.invariants(idx, item["edge_index"], ev.to(dtype), len(idx)))
        inv = torch.cat(parts).to(torch.float64)
        mean = inv.mean(0)
        std = inv.std(0).clamp(min=1e-6 * float(inv.std(0).max()) + 1e-12)
        self.invariant_mean.copy_(mean.to(self.invariant_mean.dtype))
        self.invariant_std.copy_(std.to(self.invariant_std.dtype))


def edge_vectors_from_positions(
    positions: torch.Tensor, edge_index: torch.Tensor, edge_shifts: torch.Tensor
) -> torch.Tensor:
    """``r_j - r_i + shift`` for every edge (shift = Cartesian periodic image offset)."""
    return positions[edge_index[1]] - positions[edge_index[0]] + edge_shifts
