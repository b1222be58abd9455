"""Export: one TorchScript file carrying the model, the LLPR factor and metadata.

The exported module is the only contract between Python and C++ (LAMMPS). Its format is
documented in ``docs/model-format.md``; bump ``FORMAT_VERSION`` on any incompatible change.
"""

import json
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

FORMAT_VERSION = 1
ENERGY_UNIT = "eV"
LENGTH_UNIT = "Angstrom"
FEATURE_REDUCTION = "sum"

REQUIRED_ATTRIBUTES = (
    "llpr_format_version",
    "species",
    "cutoff",
    "receptive_field",
    "energy_unit",
    "length_unit",
    "dtype",
    "feature_reduction",
    "n_features",
    "calibration",
)
REQUIRED_BUFFERS = ("llpr_cholesky", "llpr_alpha", "llpr_varsigma")


class ExportedLLPRModel(nn.Module):
    """TorchScript-able wrapper: potential + LLPR state + metadata (format version 1).

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
    """

    llpr_format_version: int
    species: List[int]
    cutoff: float
    receptive_field: float
    energy_unit: str
    length_unit: str
    dtype: str
    feature_reduction: str
    n_features: int
    calibration: str
    llpr_package_version: str

    def __init__(
        self,
        model: nn.Module,
        cholesky: torch.Tensor,
        alpha: float,
        varsigma: float,
        calibration: Dict[str, object],
        package_version: str,
    ) -> None:
        super().__init__()
        self.model = model
        param = next(model.parameters())
        self.llpr_format_version = FORMAT_VERSION
        self.species = [int(z) for z in model.species]
        self.cutoff = float(model.cutoff)
        self.receptive_field = float(model.cutoff)
        self.energy_unit = ENERGY_UNIT
        self.length_unit = LENGTH_UNIT
        self.dtype = "float64" if param.dtype == torch.float64 else "float32"
        self.feature_reduction = FEATURE_REDUCTION
        self.n_features = int(model.n_features)
        self.calibration = json.dumps(calibration, sort_keys=True)
        self.llpr_package_version = package_version
        self.register_buffer("llpr_cholesky", cholesky.detach().to(torch.float64).clone())
        self.register_buffer("llpr_alpha", torch.tensor(float(alpha), dtype=torch.float64))
        self.register_buffer("llpr_varsigma", torch.tensor(float(varsigma), dtype=torch.float64))

    @torch.jit.export
    def quadratic_form(self, features: torch.Tensor) -> torch.Tensor:
        """f^T C^-1 f for each row of ``features`` (B, F), in float64, via the Cholesky factor."""
        f = features.to(torch.float64)
        z = torch.linalg.solve_triangular(self.llpr_cholesky, f.t(), upper=False)
        return (z * z).sum(dim=0)

    @torch.jit.export
    def local_uncertainty(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom sigma_i = alpha sqrt(f_i^T C^-1 f_i) (eV) and LPR_i = 1 / (f_i^T C^-1 f_i)."""
        q = self.quadratic_form(features)
        return self.llpr_alpha * torch.sqrt(q), 1.0 / q

    @torch.jit.export
    def energy_variance(self, feature_sums: torch.Tensor) -> torch.Tensor:
        """Variance (eV^2) of total energies whose summed features are the rows of
        ``feature_sums`` (B, F); a 1-D input is treated as one structure."""
        if feature_sums.dim() == 1:
            feature_sums = feature_sums.unsqueeze(0)
        return self.llpr_alpha * self.llpr_alpha * self.quadratic_form(feature_sums)

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
        edge_vectors = positions[edge_index[1]] - positions[edge_index[0]] + edge_shifts
        need_grad = compute_forces or compute_virial
        if need_grad:
            edge_vectors = edge_vectors.detach().requires_grad_(True)
        energies, features = self.model(atomic_numbers, edge_index, edge_vectors, n_centers)
        energy = energies.sum()
        out: Dict[str, torch.Tensor] = {"energy": energy.detach(), "energies": energies.detach()}
        if need_grad:
            grads = torch.autograd.grad([energy], [edge_vectors], allow_unused=True)
            g = grads[0]
            if g is None:
                g = torch.zeros_like(edge_vectors)
            n_all = positions.shape[0]
            if compute_forces:
                forces = torch.zeros((n_all, 3), dtype=positions.dtype, device=positions.device)
                forces = forces.index_add(0, edge_index[0], g).index_add(0, edge_index[1], -g)
                out["forces"] = forces
            if compute_virial:
                w_edge = -(edge_vectors.detach().unsqueeze(2) * g.unsqueeze(1))  # (E, 3, 3)
                out["virial"] = w_edge.sum(dim=0)
                half = 0.5 * w_edge
                v_atom = torch.zeros((n_all, 3, 3), dtype=positions.dtype, device=positions.device)
                v_atom = v_atom.index_add(0, edge_index[0], half).index_add(0, edge_index[1], half)
                out["virial_atom"] = v_atom
        features = features.detach()
        sigma, lpr = self.local_uncertainty(features)
        out["features"] = features
        out["sigma"] = sigma
        out["lpr"] = lpr
        return out


def export_model(llpr, path: str, dtype: Optional[torch.dtype] = None) -> str:
    """Write ``llpr`` (a fitted and calibrated :class:`llpr.uncertainty.LLPR` wrapping a
    :class:`llpr.model.LocalPotential`) to one TorchScript file at ``path``.

    ``dtype`` (torch.float32 / torch.float64) converts the model first; the LLPR factor is
    float64 in any case. Returns the path.
    """
    from . import __version__
    from .uncertainty import LLPR

    if not isinstance(llpr, LLPR):
        raise TypeError(f"export_model needs a fitted and calibrated llpr.LLPR, got {type(llpr).__name__}")
    llpr._require_calibrated("export")
    import copy

    model = copy.deepcopy(llpr.model).cpu()
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    wrapper = ExportedLLPRModel(
        model,
        llpr.cholesky_factor(),
        llpr.alpha,
        llpr.varsigma,
        llpr.calibration_summary(),
        __version__,
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
    return path


def _is_torch_checkpoint(path: str) -> bool:
    """A torch.save archive (zip with data.pkl) that is not TorchScript (no constants.pkl)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = [n.rsplit("/", 1)[-1] for n in archive.namelist()]
    return "data.pkl" in names and "constants.pkl" not in names


def load_exported(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load an exported file and check it against the format contract.

    Raises FileNotFoundError for a missing path and ValueError naming what is wrong for a
    file that is not a TorchScript archive or lacks LLPR data/metadata.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file '{path}' does not exist; check the path")
    try:
        module = torch.jit.load(path, map_location=device)
    except Exception as exc:
        if _is_torch_checkpoint(path):
            raise ValueError(
                f"'{path}' is not a readable TorchScript file: it is a PyTorch checkpoint (torch.save, "
                "as written by `llpr train` and `llpr calibrate`), not an exported model; run "
                "`llpr export llpr.ckpt -o model.pt` and use model.pt"
            ) from exc
        raise ValueError(
            f"'{path}' is not a readable TorchScript file ({str(exc).splitlines()[0]}); "
            "export a model with `llpr export` or llpr.export_model()"
        ) from exc
    missing = [name for name in REQUIRED_ATTRIBUTES if not hasattr(module, name)]
    buffers = dict(module.named_buffers())
    missing += [name for name in REQUIRED_BUFFERS if name not in buffers]
    if missing:
        raise ValueError(
            f"'{path}' is a TorchScript file but not an llpr model: missing {', '.join(missing)}. "
            "Export it with `llpr export` (which adds the LLPR covariance factor and metadata)."
        )
    version = int(module.llpr_format_version)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"'{path}' has llpr format version {version}, this llpr reads version {FORMAT_VERSION}; "
            "re-export the model with this version of llpr"
        )
    return module
