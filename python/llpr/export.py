"""Export: one TorchScript file carrying the model, the LLPR factor and metadata.

The exported module is the only contract between Python and C++ (LAMMPS). Its format is
documented in ``docs/model-format.md``; bump ``FORMAT_VERSION`` on any incompatible change.
An atomistic model (:class:`llpr.protocol.AtomisticModel`) is wrapped in
:class:`ExportedLLPRModel`, a tabular one in :class:`llpr.tabular.ExportedTabularModel`.
"""

import copy
import json
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import __version__
from .head import LLPRHead
from .plugin import _core
from .propagation import accumulate_pass_rows, combine_passes, pass_plan
from .protocol import check_atomistic_model, readout_weights
from .tabular import ExportedTabularModel
from .uncertainty import LLPR

FORMAT_VERSION = 2
ENERGY_UNIT = "eV"
LENGTH_UNIT = "Angstrom"
FEATURE_REDUCTION = "sum"


def _joined(blocks: List[torch.Tensor]) -> torch.Tensor:
    """The per-block results in one tensor (no copy for a single block)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


class ExportedLLPRModel(nn.Module):
    """TorchScript-able wrapper: potential + LLPR head + metadata (format version 2).

    ``forward`` inputs (N atoms, E directed edges):

    * ``positions`` (N, 3), model dtype, Angstrom: centre atoms first (``n_centers`` of them),
      then any ghost/image atoms;
    * ``atomic_numbers`` (N,) int64;
    * ``edge_index`` (2, E) int64: row 0 centre atom (< n_centers), row 1 neighbour; every
      neighbour of every centre within the cutoff must be listed (a full list);
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
    (:class:`llpr.head.LLPRHead`): the covariance factor, ``alpha``, ``varsigma`` and the
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
        self.dtype = "float64" if param.dtype == torch.float64 else "float32"
        self.feature_reduction = FEATURE_REDUCTION
        self.n_features = int(model.n_features)
        if head.n_features() != self.n_features:
            raise ValueError(f"the LLPR head has {head.n_features()} features, the model {self.n_features}")
        self.calibration = json.dumps(calibration, sort_keys=True)
        self.llpr_package_version = package_version
        self.head = head
        self.ensemble_info = json.dumps(ensemble_info or {}, sort_keys=True)
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
        need_grad = compute_forces or compute_virial
        n_all = positions.shape[0]
        # blocks of centres as in evaluate(): the members' force deviations are linear in the
        # summed features, so each block's backward passes add up
        edge_index, edge_shifts, blocks = self._center_blocks(edge_index, edge_shifts, n_centers, need_grad)
        centred, use_jacobian, n_pass = pass_plan(dw, self.n_features)
        dev = positions.device
        f_pass = torch.zeros([n_pass if compute_forces else 0, n_all, 3], dtype=torch.float64, device=dev)
        v_pass = torch.zeros([n_pass if compute_virial else 0, 3, 3], dtype=torch.float64, device=dev)
        energy_blocks: List[torch.Tensor] = []
        feature_blocks: List[torch.Tensor] = []
        for c0, n, e0, e1 in blocks:
            edges = edge_index[:, e0:e1]
            edge_vectors, energies, features = self._run_model(
                positions, atomic_numbers, edges, edge_shifts[e0:e1], n, need_grad, c0
            )
            energy_blocks.append(energies.detach())
            feature_blocks.append(features.detach())
            if need_grad:
                accumulate_pass_rows(f_pass, v_pass, features.sum(dim=0), edge_vectors, edges, dw, use_jacobian,
                                     n_pass)
        energies = _joined(energy_blocks)
        features = _joined(feature_blocks)
        out: Dict[str, torch.Tensor] = {
            "energy": energies.sum(),
            "energy_deviations": self.head.ensemble_energy_deviations(features.sum(dim=0)),
            "features": features,
        }
        if compute_forces:
            dforces = combine_passes(f_pass, dw, centred, use_jacobian)
            out["force_deviations"] = dforces
            out["force_sigma"] = self.head.force_sigma(dforces)
        if compute_virial:
            out["virial_deviations"] = combine_passes(v_pass, dw, centred, use_jacobian)
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
        need_grad = compute_forces or compute_virial
        n_all = positions.shape[0]
        edge_index, edge_shifts, blocks = self._center_blocks(edge_index, edge_shifts, n_centers, need_grad)
        energy_blocks: List[torch.Tensor] = []
        feature_blocks: List[torch.Tensor] = []
        # accumulators only for what is asked (the pair style asks for virials on few steps)
        n_forces = n_all if compute_forces else 0
        n_virial = n_all if compute_virial else 0
        forces = torch.zeros((n_forces, 3), dtype=positions.dtype, device=positions.device)
        virial = torch.zeros((3, 3), dtype=positions.dtype, device=positions.device)
        v_atom = torch.zeros((n_virial, 3, 3), dtype=positions.dtype, device=positions.device)
        for c0, n, e0, e1 in blocks:
            edges = edge_index[:, e0:e1]
            edge_vectors, energies, features = self._run_model(
                positions, atomic_numbers, edges, edge_shifts[e0:e1], n, need_grad, c0
            )
            energy_blocks.append(energies.detach())
            feature_blocks.append(features.detach())
            if need_grad:
                grads = torch.autograd.grad([energies.sum()], [edge_vectors], allow_unused=True)
                g = grads[0]
                if g is None:
                    g = torch.zeros_like(edge_vectors)
                if compute_forces:
                    forces = forces.index_add(0, edges[0], g).index_add(0, edges[1], -g)
                if compute_virial:
                    w_edge = -(edge_vectors.detach().unsqueeze(2) * g.unsqueeze(1))  # (E, 3, 3)
                    virial = virial + w_edge.sum(dim=0)
                    half = 0.5 * w_edge  # each edge's share, half to each of its atoms
                    v_atom = v_atom.index_add(0, edges[0], half).index_add(0, edges[1], half)
        energies = _joined(energy_blocks)
        out: Dict[str, torch.Tensor] = {"energy": energies.sum(), "energies": energies}
        if compute_forces:
            out["forces"] = forces
        if compute_virial:
            out["virial"] = virial
            out["virial_atom"] = v_atom
        out["features"] = _joined(feature_blocks)
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


def export_model(
    llpr, path: str, dtype: Optional[torch.dtype] = None, ensemble: int = 0, seed: int = 0
) -> str:
    """Write ``llpr`` (a fitted and calibrated :class:`llpr.uncertainty.LLPR`) to one
    TorchScript file at ``path``: an :class:`ExportedLLPRModel` for an atomistic model (what
    LAMMPS runs), an :class:`llpr.tabular.ExportedTabularModel` for a tabular one.

    ``dtype`` (torch.float32 / torch.float64) converts the model first; the LLPR head is
    float64 in any case. ``ensemble`` = K >= 2 adds a last-layer ensemble of K members drawn
    with ``seed`` (:meth:`llpr.uncertainty.LLPR.ensemble_deviations`); 0 (default) adds none.
    The file is sealed with a whole-file checksum (docs/model-format.md). Returns the path.
    """
    if not isinstance(llpr, LLPR):
        raise TypeError(f"export_model needs a fitted and calibrated llpr.LLPR, got {type(llpr).__name__}")
    llpr._require_calibrated("export")
    ensemble = int(ensemble)
    if ensemble == 1 or ensemble < 0:
        raise ValueError(f"--ensemble must be 0 (no ensemble) or at least 2 members, got {ensemble}")
    ensemble_info = None
    if ensemble >= 2:
        ensemble_info = {"size": ensemble, "seed": int(seed), "stored": "deviations w_k - w", "recentred": True}
    head = llpr.head(ensemble, seed)
    model = copy.deepcopy(llpr.model).cpu()
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    summary = llpr.calibration_summary()
    if llpr.kind == "atomistic":
        wrapper = ExportedLLPRModel(model, head, summary, __version__, ensemble_info)
    elif llpr.kind == "tabular":
        wrapper = ExportedTabularModel(model, head, readout_weights(model), llpr.target_scale, llpr.target_shift,
                                       summary, __version__, ensemble_info)
    else:
        raise TypeError(
            f"cannot export {type(llpr.model).__name__}: it follows neither llpr model protocol "
            "(llpr.protocol.AtomisticModel, llpr.protocol.TabularModel)"
        )
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is what libtorch in
        # LAMMPS loads; nothing for the user to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(wrapper)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot export to {path}: folder {directory} does not exist")
    torch.jit.save(scripted, path)
    # libtorch does not check a file's CRCs when it loads it: the seal lets every loader
    # (LAMMPS, llpr check, Python) refuse a damaged copy
    _core().seal_file(path)
    return path


def verify_integrity(path: str) -> dict:
    """Check that ``path`` holds exactly the bytes that were exported (the whole-file
    checksum written by :func:`export_model`; for files without one, the CRC-32 of every
    stored zip record). Returns ``{"sealed", "bytes", "records", "summary"}``; raises
    ValueError (``llpr._core.DamagedFileError``) saying what is damaged."""
    return _core().verify_file(os.fspath(path))


def ensemble_size(module) -> int:
    """K of a loaded exported module's last-layer ensemble (0 when it has none)."""
    return int(module.ensemble_size())


def require_ensemble(module, path: str = "the model file") -> int:
    """K of ``module``'s ensemble; ValueError with the export hint when it has none."""
    k = ensemble_size(module)
    if k == 0:
        raise ValueError(_core().no_ensemble_message(path))
    return k


def load_exported(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load an exported file after the C++ core (the validator LAMMPS uses) has checked it:
    its integrity seal, its format version and every item of the contract.

    Raises FileNotFoundError for a missing path and ValueError (``llpr._core.ModelError``)
    with the C++ core's message otherwise: a damaged file, a file that is not TorchScript or
    not an llpr model, a file of another format version, or a device this torch cannot use.
    """
    core = _core()
    path = os.fspath(path)
    core.check_device(str(device))
    core.check(path)
    return torch.jit.load(path, map_location=device)
