"""The exported module: an atomistic model, its LLPR head and the metadata in one TorchScript
module, :class:`ExportedLLPRModel`.

It is the only contract between Python and C++ (LAMMPS). Its format is documented in
``docs/model-format.md``; bump ``FORMAT_VERSION`` on any incompatible change. Writing and
reading the files is :mod:`llpr.modelfile`'s job.
"""

import json
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from llpr.models.protocol import check_atomistic_model
from llpr.uncertainty.llpr_head import LLPRHead
from llpr.uncertainty.propagation import accumulate_pass_rows, add_edge_gradient, combine_passes, pass_plan

FORMAT_VERSION = 2
ENERGY_UNIT = "eV"
LENGTH_UNIT = "Angstrom"
FEATURE_REDUCTION = "sum"


def _joined(blocks: List[torch.Tensor]) -> torch.Tensor:
    """The per-block results in one tensor (no copy for a single block)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def _add_gradient(
    forces: torch.Tensor,
    virial: torch.Tensor,
    v_atom: torch.Tensor,
    target: torch.Tensor,
    edge_vectors: torch.Tensor,
    edges: torch.Tensor,
    compute_virial: bool,
    retain_graph: bool,
) -> None:
    """One backward pass of ``target`` (0-d) to ``edge_vectors``, added to row 0 of the
    forces (1, N, 3) and of the virial (1, 3, 3), and with ``compute_virial`` to the per-atom
    virial (N, 3, 3): each edge's share split half/half between its two atoms."""
    grads = torch.autograd.grad([target], [edge_vectors], retain_graph=retain_graph, allow_unused=True)
    g = grads[0]
    if g is None:
        g = torch.zeros_like(edge_vectors)
    add_edge_gradient(forces, virial, 0, g, edge_vectors.detach(), edges)
    if compute_virial:
        half = -0.5 * (edge_vectors.detach().unsqueeze(2) * g.unsqueeze(1))  # each edge's share, per atom
        v_atom.index_add_(0, edges[0], half)
        v_atom.index_add_(0, edges[1], half)


class ExportedLLPRModel(nn.Module):
    """TorchScript-able wrapper: potential + LLPR head + metadata (format version 2).

    ``forward`` inputs (N atoms, E directed edges):

    * ``positions`` (N, 3), model dtype, Angstrom: centre atoms first (``n_centers`` of them),
      then any ghost/image atoms;
    * ``atomic_numbers`` (N,) int64;
    * ``edge_index`` (2, E) int64: row 1 a neighbour of row 0; every neighbour within the
      cutoff of every atom in row 0 must be listed (a full list). For a strictly local model
      row 0 holds centres (< n_centers); for one that passes messages, ghost atoms carry their
      own edges too (LAMMPS gives every local and ghost atom's), and their messages reach the
      centres;
    * ``edge_shifts`` (E, 3) model dtype: Cartesian periodic offset added to
      ``positions[j] - positions[i]`` (zeros when images are explicit ghost atoms);
    * ``n_centers``: number of atoms whose energy is computed;
    * ``compute_forces``, ``compute_virial``: what to differentiate.

    Outputs (a dict): ``energy`` (0-d, sum over centres), ``energies`` (n_centers,),
    ``features`` (n_centers, F), ``forces`` (N, 3) when asked (ghost atoms get the forces that
    must be reverse-communicated to their owners), ``virial`` (3, 3) and ``virial_atom``
    (N, 3, 3) when asked (virial = sum_i r_i (x) F_i, i.e. -sum_edges r_e (x) dE/dr_e; each
    edge's share is split half/half between its two atoms), ``sigma`` and ``lpr`` (n_centers,)
    in float64.

    The LLPR state and every uncertainty formula live in the submodule ``head``
    (:class:`llpr.uncertainty.llpr_head.LLPRHead`): the covariance factor, ``alpha``, ``varsigma`` and the
    last-layer ensemble ``dw_k = w_k - w`` (K, F) (K = 0: no ensemble); ``ensemble_forward``
    (same inputs as ``forward``) gives the members' energy, force and virial deviations.
    """

    llpr_format_version: int
    species: List[int]
    cutoff: float
    receptive_field: float
    strictly_local: bool
    energy_unit: str
    length_unit: str
    dtype: str
    feature_reduction: str
    n_features: int
    calibration: str
    llpr_package_version: str
    ensemble_info: str
    model_info: str
    chunk_centers: int

    def __init__(
        self,
        model: nn.Module,
        head: LLPRHead,
        calibration: Dict[str, object],
        package_version: str,
        ensemble_info: Optional[Dict[str, object]] = None,
    ) -> None:
        super().__init__()
        check_atomistic_model(model)
        self.model = model
        param = next(model.parameters())
        self.llpr_format_version = FORMAT_VERSION
        self.species = [int(z) for z in model.species]
        self.cutoff = float(model.cutoff)
        self.receptive_field = float(model.receptive_field)
        self.strictly_local = bool(model.strictly_local)
        self.energy_unit = ENERGY_UNIT
        self.length_unit = LENGTH_UNIT
        # LAMMPS and ASE feed positions in the recorded dtype, float32 or float64: a network in
        # another dtype (float16, bfloat16) would be recorded as float32 and fail on every call
        dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
        if not dtypes <= {torch.float32, torch.float64}:
            raise ValueError(
                f"cannot export a model with {', '.join(sorted(str(d) for d in dtypes))} parameters; the exported "
                "file holds a float32 or float64 network: export with --dtype float32 or float64 "
                "(export_model(..., dtype=torch.float32)), or convert the model first (model.float())"
            )
        self.dtype = "float64" if param.dtype == torch.float64 else "float32"
        self.feature_reduction = FEATURE_REDUCTION
        self.n_features = int(model.n_features)
        if head.n_features() != self.n_features:
            raise ValueError(f"the LLPR head has {head.n_features()} features, the model {self.n_features}")
        self.calibration = json.dumps(calibration, sort_keys=True)
        self.llpr_package_version = package_version
        self.head = head
        self.ensemble_info = json.dumps(ensemble_info or {}, sort_keys=True)
        describe = getattr(model, "describe", None)
        info = describe() if callable(describe) else {"architecture": type(model).__name__}
        self.model_info = json.dumps(info, sort_keys=True)
        # centres per block of the force evaluation on a CPU (see evaluate)
        self.chunk_centers = 4096

    @torch.jit.export
    def quadratic_form(self, features: torch.Tensor) -> torch.Tensor:
        """f^T C^-1 f for each row of ``features`` (B, F), float64 (:class:`LLPRHead`)."""
        return self.head.quadratic_form(features)

    @torch.jit.export
    def local_uncertainty(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom sigma_i (eV) and LPR_i (:class:`LLPRHead`)."""
        return self.head.local_uncertainty(features)

    @torch.jit.export
    def energy_variance(self, feature_sums: torch.Tensor) -> torch.Tensor:
        """Variance (eV^2) of total energies whose summed features are the rows of
        ``feature_sums`` (B, F); a 1-D input is one structure (:class:`LLPRHead`)."""
        return self.head.energy_variance(feature_sums)

    def _run_model(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        n_centers: int,
        need_grad: bool,
        first_center: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge vectors (a leaf requiring grad when ``need_grad``), per-atom energies and
        last-layer features of the centres ``first_center .. first_center + n_centers - 1``,
        given only their edges (``edge_index`` in the caller's atom numbering)."""
        edge_vectors = positions[edge_index[1]] - positions[edge_index[0]] + edge_shifts
        if need_grad:
            edge_vectors = edge_vectors.detach().requires_grad_(True)
        numbers = atomic_numbers
        local = edge_index
        if first_center > 0:
            # the model wants its centres first: put a copy of this block's centres in front
            numbers = torch.cat([atomic_numbers[first_center : first_center + n_centers], atomic_numbers])
            local = torch.stack([edge_index[0] - first_center, edge_index[1] + n_centers])
        energies, features = self.model(numbers, local, edge_vectors, n_centers)
        return edge_vectors, energies, features

    def _center_blocks(
        self, edge_index: torch.Tensor, edge_shifts: torch.Tensor, n_centers: int, split: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int, int, int]]]:
        """A strictly local model's centres may be evaluated in blocks, so that the edge-sized
        tensors of the forward and backward passes stay in the CPU caches; one block on a GPU
        unless the system is large, and always one block for a model that is not strictly local
        (an atom's energy needs its neighbours' edges too). Returns the edges (sorted by centre
        when ``split`` asks for several blocks), their shifts, and per block (first centre,
        number of centres, first edge, end of its edges)."""
        block = self.chunk_centers if edge_index.device.type == "cpu" else 16 * self.chunk_centers
        if not (self.strictly_local and split and n_centers > block and edge_index.shape[1] > 0):
            return edge_index, edge_shifts, [(0, n_centers, 0, edge_index.shape[1])]
        centers = edge_index[0]
        if not bool((centers[1:] >= centers[:-1]).all()):
            order = torch.argsort(centers, stable=True)
            edge_index = edge_index[:, order]
            edge_shifts = edge_shifts[order]
            centers = edge_index[0]
        starts = list(range(0, n_centers, block))
        limits = torch.tensor(starts + [n_centers], dtype=centers.dtype, device=centers.device)
        bounds: List[int] = torch.searchsorted(centers, limits).tolist()
        blocks: List[Tuple[int, int, int, int]] = []
        for k in range(len(starts)):
            blocks.append((starts[k], min(starts[k] + block, n_centers) - starts[k], bounds[k], bounds[k + 1]))
        return edge_index, edge_shifts, blocks

    @torch.jit.export
    def ensemble_size(self) -> int:
        """Number K of last-layer ensemble members (0: the file has no ensemble)."""
        return self.head.ensemble_size()

    def _run_blocks(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        n_centers: int,
        compute_forces: bool,
        compute_virial: bool,
        members: bool,
        graph: Optional[List[torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """The one loop over blocks of centres behind ``evaluate``, ``ensemble_forward`` and
        ``forward_graph``.

        Per block: the model's energies and features, then the backward passes, reduced to
        atoms (``forces``, (P, N, 3)) and to virials (``virial``, (P, 3, 3)) at once: one pass
        of the energy (P = 1, model dtype, plus the per-atom virial) or, with ``members``, the
        passes of the last-layer ensemble's plan (float64; ``combine_passes`` turns them into
        members). Both are linear in the summed features, so the blocks add up. Given a
        ``graph`` list, the backward passes are left to ``backward_graph``: each block's edge
        vectors, edges, energies and features (with their autograd graph) are appended to it
        instead, and the forces and virials come back empty."""
        need_grad = compute_forces or compute_virial
        if graph is not None:
            compute_forces, compute_virial = False, False
        n_all = positions.shape[0]
        edge_index, edge_shifts, blocks = self._center_blocks(edge_index, edge_shifts, n_centers, need_grad)
        dw = self.head.ensemble_deviations
        use_jacobian, n_pass = False, 1
        dtype = positions.dtype
        if members:
            centred, use_jacobian, n_pass = pass_plan(dw, self.n_features)
            dtype = torch.float64
        # accumulators only for what is asked (the pair style asks for virials on few steps)
        forces = torch.zeros([n_pass if compute_forces else 0, n_all, 3], dtype=dtype, device=positions.device)
        virial = torch.zeros([n_pass if compute_virial else 0, 3, 3], dtype=dtype, device=positions.device)
        n_virial_atoms = n_all if (compute_virial and not members) else 0
        v_atom = torch.zeros([n_virial_atoms, 3, 3], dtype=dtype, device=positions.device)
        energy_blocks: List[torch.Tensor] = []
        feature_blocks: List[torch.Tensor] = []
        for c0, n, e0, e1 in blocks:
            edges = edge_index[:, e0:e1]
            edge_vectors, energies, features = self._run_model(
                positions, atomic_numbers, edges, edge_shifts[e0:e1], n, need_grad, c0
            )
            energy_blocks.append(energies.detach())
            feature_blocks.append(features.detach())
            if graph is not None:
                graph.extend([edge_vectors, edges, energies, features])
                continue
            if not need_grad:
                continue
            if members:
                accumulate_pass_rows(forces, virial, features.sum(dim=0), edge_vectors, edges, dw, use_jacobian, n_pass)
                continue
            _add_gradient(forces, virial, v_atom, energies.sum(), edge_vectors, edges, compute_virial, False)
        return {"energies": _joined(energy_blocks), "features": _joined(feature_blocks), "forces": forces,
                "virial": virial, "virial_atom": v_atom}

    @torch.jit.export
    def forward_graph(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        n_centers: int,
        compute_forces: bool = True,
        compute_virial: bool = False,
    ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
        """First half of a biased evaluation (``fix llpr/bias``; inputs as ``forward``): the
        model's ``energy``, ``energies`` and ``features`` (detached, as ``evaluate``), and the
        autograd graph that ``backward_graph`` differentiates once the group's features have
        been summed (over MPI ranks in LAMMPS) and the bias gradient is known. The graph is
        opaque to the caller: per block of centres (as in ``evaluate``), its edge vectors,
        edges, energies and features."""
        graph: List[torch.Tensor] = []
        passes = self._run_blocks(positions, atomic_numbers, edge_index, edge_shifts, n_centers, compute_forces,
                                  compute_virial, False, graph)
        energies = passes["energies"]
        return {"energy": energies.sum(), "energies": energies, "features": passes["features"]}, graph

    @torch.jit.export
    def backward_graph(
        self,
        graph: List[torch.Tensor],
        n_atoms: int,
        center_weights: torch.Tensor,
        feature_cotangent: torch.Tensor,
        with_energy: bool,
        compute_forces: bool,
        compute_virial: bool,
        retain_graph: bool,
    ) -> Dict[str, torch.Tensor]:
        """Second half of a biased evaluation: the forces (N, 3) and virials (``virial`` (3, 3),
        ``virial_atom`` (N, 3, 3)), conventions as ``evaluate``, of ``sum_i E_i + sum_i
        center_weights[i] feature_cotangent . f_i`` over the centres of ``graph`` (from
        ``forward_graph`` on ``n_atoms`` atoms); ``with_energy = False`` drops the energies'
        term. One backward pass per block: the bias only changes the read-out of the weighted
        centres from ``w`` to ``w + center_weights[i] feature_cotangent``. ``retain_graph``
        keeps the graph for another call."""
        device = center_weights.device
        dtype = graph[0].dtype if len(graph) > 0 else torch.float64
        forces = torch.zeros([1 if compute_forces else 0, n_atoms, 3], dtype=dtype, device=device)
        virial = torch.zeros([1 if compute_virial else 0, 3, 3], dtype=dtype, device=device)
        v_atom = torch.zeros([n_atoms if compute_virial else 0, 3, 3], dtype=dtype, device=device)
        c0 = 0
        for b in range(len(graph) // 4):
            edge_vectors, edges, energies, features = graph[4 * b], graph[4 * b + 1], graph[4 * b + 2], graph[4 * b + 3]
            n = features.shape[0]
            weights = center_weights[c0 : c0 + n].to(features.dtype)
            bias = (weights @ features) @ feature_cotangent.to(features.dtype)
            target = energies.sum() + bias if with_energy else bias
            _add_gradient(forces, virial, v_atom, target, edge_vectors, edges, compute_virial, retain_graph)
            c0 += n
        out: Dict[str, torch.Tensor] = {}
        if compute_forces:
            out["forces"] = forces[0]
        if compute_virial:
            out["virial"] = virial[0]
            out["virial_atom"] = v_atom
        return out

    @torch.jit.export
    def ensemble_forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        n_centers: int,
        compute_forces: bool = True,
        compute_virial: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """The last-layer ensemble on one structure (inputs as ``forward``), float64:
        ``energy_deviations`` (K,) ``dE_k = dw_k . sum_i f_i`` over the centres;
        ``force_deviations`` (K, N, 3) ``dF_k = F_k - F`` on every atom, ghosts included
        (to be reverse-communicated), and ``force_sigma`` (N,) ``sqrt(sum_k |dF_k,i|^2 /
        (3 (K-1)))`` of these (complete only when no forces are still to be added from
        elsewhere) if ``compute_forces``; ``virial_deviations`` (K, 3, 3) if
        ``compute_virial``; plus ``energy`` and ``features`` as in ``forward``."""
        dw = self.head.ensemble_deviations
        if dw.shape[0] == 0:
            raise RuntimeError(
                "this model file has no last-layer ensemble; export it with `llpr export --ensemble K`"
            )
        passes = self._run_blocks(positions, atomic_numbers, edge_index, edge_shifts, n_centers, compute_forces,
                                  compute_virial, True)
        centred, use_jacobian, n_pass = pass_plan(dw, self.n_features)
        features = passes["features"]
        out: Dict[str, torch.Tensor] = {
            "energy": passes["energies"].sum(),
            "energy_deviations": self.head.ensemble_energy_deviations(features.sum(dim=0)),
            "features": features,
        }
        if compute_forces:
            dforces = combine_passes(passes["forces"], dw, centred, use_jacobian)
            out["force_deviations"] = dforces
            out["force_sigma"] = self.head.force_sigma(dforces)
        if compute_virial:
            out["virial_deviations"] = combine_passes(passes["virial"], dw, centred, use_jacobian)
        return out

    @torch.jit.export
    def evaluate(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        n_centers: int,
        compute_forces: bool = True,
        compute_virial: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """``forward`` without the per-atom ``sigma`` and ``lpr`` (what the LAMMPS pair style
        calls every step: the computes derive sigma from the cached ``features`` only on the
        steps they are invoked)."""
        passes = self._run_blocks(positions, atomic_numbers, edge_index, edge_shifts, n_centers, compute_forces,
                                  compute_virial, False)
        energies = passes["energies"]
        out: Dict[str, torch.Tensor] = {"energy": energies.sum(), "energies": energies}
        if compute_forces:
            out["forces"] = passes["forces"][0]
        if compute_virial:
            out["virial"] = passes["virial"][0]
            out["virial_atom"] = passes["virial_atom"]
        out["features"] = passes["features"]
        return out

    def forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        n_centers: int,
        compute_forces: bool = True,
        compute_virial: bool = False,
    ) -> Dict[str, torch.Tensor]:
        out = self.evaluate(positions, atomic_numbers, edge_index, edge_shifts, n_centers, compute_forces, compute_virial)
        features = out["features"]
        sigma, lpr = self.local_uncertainty(features)
        out["sigma"] = sigma
        out["lpr"] = lpr
        return out
