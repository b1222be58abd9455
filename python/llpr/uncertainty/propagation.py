"""Last-layer ensembles (Laplace sampling of the read-out) and their propagation to forces
and virials. The propagation functions are TorchScript-compatible: the exported file compiles
them, so Python and C++ (LAMMPS) run the same code.

The LLPR posterior of the read-out weights is ``N(w, alpha^2 C^-1)``, ``C = F^T F +
varsigma^2 I = L L^T``. Member ``k`` has weights ``w_k = w + dw_k`` with ``dw_k = alpha
L^-T z_k``, ``z_k ~ N(0, I)``, re-centred so that ``sum_k dw_k = 0`` (the ensemble mean is then
the model's prediction). Because the read-out is linear, member ``k``'s energy is ``E + dw_k .
s`` with ``s = sum_i f_i`` (summed last-layer features), and its forces are ``F - d(dw_k .
s)/dr``: only the gradients of the ``K`` projections ``dw_k . s`` are needed. They are linear
in ``dw_k``, so ``min(K - 1, n_features)`` backward passes suffice for a re-centred ensemble
(one per member but the last, whose gradient is minus the sum of the others, or one per
feature component followed by a ``(K, F) x (F, ...)`` product).

Spread conventions (sample statistics with Bessel's correction, since the ensemble mean is
the sample mean): energy ``sigma_E^2 = sum_k dE_k^2 / (K - 1)``; per-atom force ``sigma_F,i^2
= sum_k |dF_k,i|^2 / (3 (K - 1))``, the mean over the three Cartesian components of their
variance (eV/A): the standard deviation of one force component under isotropic errors.
"""

from typing import List, Optional, Tuple

import torch


def sample_deviations(cholesky: torch.Tensor, alpha: float, k: int, seed: int) -> torch.Tensor:
    """``K`` re-centred deviations ``dw_k = alpha L^-T z_k - mean``, (K, F) float64.

    ``z`` is drawn with ``torch.randn`` from a CPU generator seeded with ``seed``, so the
    ensemble depends only on (L, alpha, K, seed).
    """
    if k < 2:
        raise ValueError("a last-layer ensemble needs at least 2 members (K >= 2), got " + str(k))
    L = cholesky.detach().to(device=torch.device("cpu"), dtype=torch.float64)
    n = L.shape[0]
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    z = torch.randn([k, n], generator=generator, dtype=torch.float64)
    # L^T x = z  =>  x = L^-T z, Cov(x) = (L L^T)^-1 = C^-1
    dw = torch.linalg.solve_triangular(L.t(), z.t(), upper=True).t() * float(alpha)
    return dw - dw.mean(dim=0, keepdim=True)


def pass_plan(deviations: torch.Tensor, n_features: int) -> Tuple[bool, bool, int]:
    """(centred, use_jacobian, number of backward passes) for these member deviations."""
    K = deviations.shape[0]
    centred = False
    if K >= 2:
        dw64 = deviations.to(torch.float64)
        scale = float(dw64.abs().max())
        centred = float(dw64.sum(dim=0).abs().max()) <= 1e-12 * scale * K
    n_solve = K - 1 if centred else K
    use_jacobian = n_solve > n_features
    return centred, use_jacobian, n_features if use_jacobian else n_solve


def _backward_rows(
    feature_sum: torch.Tensor, edge_vectors: torch.Tensor, deviations: torch.Tensor, use_jacobian: bool, n_pass: int
) -> List[torch.Tensor]:
    """Edge gradients (E, 3) of ``c . feature_sum`` for the cotangents ``c`` of the plan: the
    first ``n_pass`` members, or the ``F`` unit vectors (feature Jacobian rows)."""
    dw = deviations.to(feature_sum.dtype)
    rows: List[torch.Tensor] = []
    for a in range(n_pass):
        if use_jacobian:
            cotangent = torch.zeros_like(feature_sum)
            cotangent[a] = 1.0
        else:
            cotangent = dw[a]
        cotangents: List[Optional[torch.Tensor]] = [cotangent]
        grads = torch.autograd.grad(
            [feature_sum], [edge_vectors], grad_outputs=cotangents, retain_graph=True, allow_unused=True
        )
        g = grads[0]
        if g is None:
            g = torch.zeros_like(edge_vectors)
        rows.append(g.to(torch.float64))
    return rows


def combine_passes(rows: torch.Tensor, deviations: torch.Tensor, centred: bool, use_jacobian: bool) -> torch.Tensor:
    """Per-member quantities (K, ...) from the per-pass ones (n_pass, ...) by linearity."""
    K = deviations.shape[0]
    if use_jacobian:
        F = rows.shape[0]
        shape: List[int] = [K]
        for d in rows.shape[1:]:
            shape.append(d)
        return (deviations.to(torch.float64) @ rows.reshape(F, -1)).reshape(shape)
    if centred:
        return torch.cat([rows, -rows.sum(dim=0, keepdim=True)], dim=0)
    return rows


def ensemble_edge_gradients(
    feature_sum: torch.Tensor, edge_vectors: torch.Tensor, deviations: torch.Tensor
) -> torch.Tensor:
    """Gradients of ``dw_k . feature_sum`` with respect to ``edge_vectors`` for every member,
    (K, E, 3) float64. ``feature_sum`` (F,) must be differentiable with respect to
    ``edge_vectors`` (E, 3); the graph is retained (the caller may differentiate again).

    Cost: ``min(K', F)`` backward passes, ``K' = K - 1`` for a re-centred ensemble (its last
    member's gradient is minus the sum of the others, by linearity) and ``K`` otherwise;
    when ``K' > F``, the ``F`` rows of the feature Jacobian are computed and combined.
    Memory: K x E x 3 doubles (:func:`ensemble_force_virial_deviations` needs less).
    """
    K = deviations.shape[0]
    E = edge_vectors.shape[0]
    if K == 0:
        return torch.zeros([0, E, 3], dtype=torch.float64, device=edge_vectors.device)
    centred, use_jacobian, n_pass = pass_plan(deviations, feature_sum.shape[0])
    rows = _backward_rows(feature_sum, edge_vectors, deviations, use_jacobian, n_pass)
    return combine_passes(torch.stack(rows), deviations, centred, use_jacobian)


def accumulate_pass_rows(
    forces: torch.Tensor,
    virials: torch.Tensor,
    feature_sum: torch.Tensor,
    edge_vectors: torch.Tensor,
    edge_index: torch.Tensor,
    deviations: torch.Tensor,
    use_jacobian: bool,
    n_pass: int,
) -> None:
    """Add the backward passes of the plan, for the features summed in ``feature_sum`` (a part
    of the centres, differentiable with respect to ``edge_vectors``, their edges), reduced to
    atoms into ``forces`` (n_pass, n_atoms, 3) and to virials into ``virials`` (n_pass, 3, 3),
    in place, float64; an accumulator with a leading size 0 is skipped. Linear in the
    features, so the centres may come in blocks: ``combine_passes`` turns the sums into
    members."""
    if n_pass == 0 or (forces.shape[0] == 0 and virials.shape[0] == 0):
        return
    rows = _backward_rows(feature_sum, edge_vectors, deviations, use_jacobian, n_pass)
    r = edge_vectors.detach().to(torch.float64)
    for a in range(n_pass):
        add_edge_gradient(forces, virials, a, rows[a], r, edge_index)


def add_edge_gradient(
    forces: torch.Tensor, virials: torch.Tensor, row: int, g: torch.Tensor, r: torch.Tensor, edge_index: torch.Tensor
) -> None:
    """Add the edge gradient ``g = dX/dr_e`` (E, 3) of a quantity X to row ``row`` of the
    atom forces ``-dX/dr`` (P, N, 3) and of the virials ``-sum_e r_e (x) g_e`` (P, 3, 3), in
    place; an accumulator with a leading size 0 is skipped."""
    if forces.shape[0] > 0:
        forces[row].index_add_(0, edge_index[0], g)
        forces[row].index_add_(0, edge_index[1], -g)
    if virials.shape[0] > 0:
        virials[row].sub_(r.t() @ g)


def ensemble_force_virial_deviations(
    feature_sum: torch.Tensor,
    edge_vectors: torch.Tensor,
    edge_index: torch.Tensor,
    n_atoms: int,
    deviations: torch.Tensor,
    compute_forces: bool,
    compute_virial: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Member force deviations ``dF_k = -d(dw_k . s)/dr`` (K, n_atoms, 3) and virial
    deviations ``-sum_e r_e (x) d(dw_k . s)/dr_e`` (K, 3, 3), float64 (empty (0, ...) tensors
    when not asked). Same backward passes as :func:`ensemble_edge_gradients`, each reduced to
    atoms (and to a virial) at once: memory (K + passes) x n_atoms x 3, not K x edges x 3."""
    K = deviations.shape[0]
    device = edge_vectors.device
    forces = torch.zeros([0, n_atoms, 3], dtype=torch.float64, device=device)
    virials = torch.zeros([0, 3, 3], dtype=torch.float64, device=device)
    if K == 0 or not (compute_forces or compute_virial):
        return forces, virials
    centred, use_jacobian, n_pass = pass_plan(deviations, feature_sum.shape[0])
    f_pass = torch.zeros([n_pass if compute_forces else 0, n_atoms, 3], dtype=torch.float64, device=device)
    v_pass = torch.zeros([n_pass if compute_virial else 0, 3, 3], dtype=torch.float64, device=device)
    accumulate_pass_rows(f_pass, v_pass, feature_sum, edge_vectors, edge_index, deviations, use_jacobian, n_pass)
    if compute_forces:
        forces = combine_passes(f_pass, deviations, centred, use_jacobian)
    if compute_virial:
        virials = combine_passes(v_pass, deviations, centred, use_jacobian)
    return forces, virials


def edge_gradients_to_forces(gradients: torch.Tensor, edge_index: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """Per-atom forces (K, n_atoms, 3) from edge gradients ``dE/d(r_j - r_i)`` (K, E, 3)."""
    K = gradients.shape[0]
    forces = torch.zeros([K, n_atoms, 3], dtype=gradients.dtype, device=gradients.device)
    return forces.index_add(1, edge_index[0], gradients).index_add(1, edge_index[1], -gradients)


def ensemble_energy_deviations(deviations: torch.Tensor, feature_sums: torch.Tensor) -> torch.Tensor:
    """Member energy deviations ``dw_k . s`` of member deviations ``dw`` (K, F): (K,) for one
    summed feature vector ``s`` (F,), (B, K) for rows (B, F); float64."""
    s = feature_sums.to(torch.float64)
    dw = deviations.to(torch.float64)
    if s.dim() == 1:
        return dw @ s
    return s @ dw.t()


def voigt_stress(virial: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """Stress ``-W / volume`` in Voigt order xx, yy, zz, yz, xz, xy (ASE's convention) of
    virials ``W`` (n, 3, 3) and volumes (n,); off-diagonal pairs are averaged. Linear in ``W``:
    the members' stress deviations are this of their virial deviations."""
    sym = 0.5 * (virial + virial.transpose(1, 2))
    voigt = torch.stack(
        [sym[:, 0, 0], sym[:, 1, 1], sym[:, 2, 2], sym[:, 1, 2], sym[:, 0, 2], sym[:, 0, 1]], dim=1
    )
    return -voigt / volume.to(voigt.dtype).unsqueeze(1)


def force_sigma(force_deviations: torch.Tensor) -> torch.Tensor:
    """Per-atom force sigma ``sqrt(sum_k |dF_k,i|^2 / (3 (K - 1)))`` (N,) from member force
    deviations ``dF_k = F_k - F`` (K, N, 3)."""
    K = force_deviations.shape[0]
    if K < 2:
        return torch.zeros([force_deviations.shape[1]], dtype=force_deviations.dtype,
                           device=force_deviations.device)
    return torch.sqrt((force_deviations * force_deviations).sum(dim=2).sum(dim=0) / (3.0 * (K - 1)))


def ensemble_sigma(deviations: torch.Tensor) -> torch.Tensor:
    """Spread ``sqrt(sum_k d_k^2 / (K - 1))`` over the leading (member) axis."""
    K = deviations.shape[0]
    if K < 2:
        return torch.zeros_like(deviations[0])
    return torch.sqrt((deviations * deviations).sum(dim=0) / (K - 1))
