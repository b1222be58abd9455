"""Model files: write a calibrated LLPR to one sealed TorchScript file, and read one back.

:func:`export_model` wraps an atomistic model in :class:`llpr.export.ExportedLLPRModel` (what
LAMMPS runs) and a tabular one in :class:`llpr.models.tabular.ExportedTabularModel`, saves it and
seals it with a whole-file checksum. :func:`load_exported` reads a file after the C++ core, the
validator LAMMPS uses too, has checked it.
"""

import copy
import json
import os
import warnings
from typing import Optional

import torch

from llpr import __version__
from llpr.export import ExportedLLPRModel
from llpr.lammps.plugin import _core
from llpr.models.protocol import readout_weights
from llpr.models.tabular import ExportedTabularModel
from llpr.uncertainty.estimator import LLPR


def export_model(
    llpr, path: str, dtype: Optional[torch.dtype] = None, ensemble: int = 0, seed: int = 0
) -> str:
    """Write ``llpr`` (a fitted and calibrated :class:`llpr.uncertainty.estimator.LLPR`) to one
    TorchScript file at ``path``: an :class:`ExportedLLPRModel` for an atomistic model (what
    LAMMPS runs), an :class:`llpr.models.tabular.ExportedTabularModel` for a tabular one.

    ``dtype`` (torch.float32 / torch.float64) converts the model first; the LLPR head is
    float64 in any case. ``ensemble`` = K >= 2 adds a last-layer ensemble of K members drawn
    with ``seed`` (:meth:`llpr.uncertainty.estimator.LLPR.ensemble_deviations`); 0 (default) adds none.
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
            "(llpr.models.protocol.AtomisticModel, llpr.models.protocol.TabularModel)"
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


def has_extrapolation_grade(module) -> bool:
    """Whether a loaded exported module carries the extrapolation grade's reference
    (``head.max_train_q``; files exported before it, or from a checkpoint calibrated without
    the training set, do not)."""
    head = getattr(module, "head", None)
    q = getattr(head, "max_train_q", None)
    return isinstance(q, torch.Tensor) and bool(q > 0.0) and hasattr(head, "extrapolation_grade")


def require_extrapolation_grade(module, path: str = "the model file") -> None:
    """ValueError with the re-export hint unless ``module`` can give the extrapolation grade."""
    if not has_extrapolation_grade(module):
        raise ValueError(_core().no_extrapolation_grade_message(path))


def calibration_warnings(module) -> list:
    """The warnings recorded when the loaded exported ``module`` was calibrated (e.g. the best
    varsigma at the edge of the search grid), from its ``calibration`` JSON; files written
    before the record existed have none."""
    try:
        record = json.loads(getattr(module, "calibration", "") or "{}")
    except json.JSONDecodeError:
        return []
    found = record.get("warnings") if isinstance(record, dict) else None
    return [str(w) for w in found] if isinstance(found, list) else []


def run_exported(module, atoms, forces: bool = True, virial: bool = False, ensemble: bool = False,
                 device=None, where: str = "structure") -> dict:
    """Run a loaded exported (atomistic) ``module`` on one ASE structure: the one Python path for
    an exported file (the ASE calculator, ``llpr evaluate`` and the tests' reference of LAMMPS).

    The graph comes from :func:`llpr.graphs.graph_tensors` (vesin neighbour list) on ``device``
    (``where`` names the structure in its messages). Returns float64 NumPy arrays, on the CPU:

    * every output of ``module.forward`` (``energies``, ``features``, ``sigma``, ``lpr``, and
      ``forces`` with ``forces``, ``virial`` (3, 3) and ``virial_atom`` with ``virial``);
      ``energy`` and ``energy_sigma`` (the LLPR sigma of the total energy) as floats;
    * ``gamma`` (N,), the extrapolation grade, when the file carries the training set's max q;
    * ``stress`` (6, Voigt, eV/A^3) when ``virial`` and the cell is fully periodic;
    * with ``ensemble`` (the file's last-layer ensemble): ``energy_deviations`` (K,),
      ``energy_ensemble`` (K,) and their spread ``ensemble_energy_sigma`` (float);
      ``force_deviations`` (K, N, 3) and ``force_sigma`` (N,) with ``forces``;
      ``virial_deviations`` (K, 3, 3) with ``virial``, and ``stress_ensemble`` (K, 6) and
      ``stress_sigma`` (6,) with ``stress``;
    * ``graph``: the model inputs (NumPy).

    A NaN or inf output raises ``ase.calculators.calculator.CalculationFailed`` naming the atoms
    and their closest pair: as in LAMMPS, a broken evaluation never passes for a result."""
    import numpy as np

    from llpr.graphs import graph_tensors
    from llpr.uncertainty.propagation import ensemble_sigma, voigt_stress

    graph = graph_tensors(atoms, float(module.cutoff), module.dtype, device, where=where)
    inputs = tuple(graph.values())
    n_atoms = len(atoms)
    has_edges = graph["edge_index"].shape[1] > 0
    out = module(*inputs, n_atoms, bool(forces), bool(virial))
    check_finite(out, has_edges, atoms, ("energies", "features") + (("forces",) if forces else ())
                 + (("virial_atom",) if virial else ()))
    ens = None
    if ensemble:
        ens = module.ensemble_forward(*inputs, n_atoms, bool(forces), bool(virial))
        check_finite(ens, has_edges, atoms, ("energy_deviations",) + (("force_deviations",) if forces else ()))

    def array(value: torch.Tensor) -> np.ndarray:
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()

    result = {key: array(value) for key, value in out.items()}
    result["energy"] = float(out["energy"].detach().to(torch.float64))
    feature_sum = out["features"].detach().to(torch.float64).sum(0)
    result["energy_sigma"] = float(torch.sqrt(module.energy_variance(feature_sum))[0])
    if has_extrapolation_grade(module):
        result["gamma"] = array(module.head.extrapolation_grade(out["features"].detach()))
    volume = None
    if virial and bool(np.all(atoms.pbc)):
        volume = float(atoms.get_volume())
        virial64 = out["virial"].detach().to(device="cpu", dtype=torch.float64)
        result["stress"] = voigt_stress(virial64.unsqueeze(0), torch.tensor([volume], dtype=torch.float64))[0].numpy()
    if ens is not None:
        dE = ens["energy_deviations"].detach().to(device="cpu", dtype=torch.float64)
        result["energy_deviations"] = dE.numpy()
        result["energy_ensemble"] = result["energy"] + dE.numpy()
        result["ensemble_energy_sigma"] = float(ensemble_sigma(dE))
        if forces:
            result["force_deviations"] = array(ens["force_deviations"])
            result["force_sigma"] = array(ens["force_sigma"])
        if virial:
            dW = ens["virial_deviations"].detach().to(device="cpu", dtype=torch.float64)
            result["virial_deviations"] = dW.numpy()
            if volume is not None:
                dS = voigt_stress(dW, torch.full((dW.shape[0],), volume, dtype=torch.float64))
                result["stress_ensemble"] = result["stress"][None, :] + dS.numpy()
                result["stress_sigma"] = ensemble_sigma(dS).numpy()
    result["graph"] = {key: value.detach().cpu().numpy() for key, value in graph.items()}
    return result


def check_finite(out: dict, has_edges: bool, atoms, keys) -> None:
    """``ase.calculators.calculator.CalculationFailed`` naming the atoms (0-based indices) and
    their closest pair when the outputs ``keys`` of a model hold NaN or inf."""
    import numpy as np
    from ase.calculators.calculator import CalculationFailed

    for key in keys:
        value = out[key].detach()
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        if key.endswith("deviations") and value.dim() == 3:  # (K, N, 3): per atom over members
            finite = finite.all(dim=0)
        if value.dim() == 1 and key == "energy_deviations":
            bad = np.arange(len(atoms))
        else:
            bad = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(dim=1).cpu().numpy())
        message = f"the model gave non-finite {key} (NaN or inf) for {len(bad)} atom(s), indices {bad[:10].tolist()}"
        if len(bad) > 10:
            message = message[:-1] + ", ...]"
        if len(atoms) > 1 and has_edges:
            d = atoms.get_all_distances(mic=bool(np.any(atoms.pbc)))
            np.fill_diagonal(d, np.inf)
            rows = bad if len(bad) < len(atoms) else np.arange(len(atoms))
            sub = d[rows]
            r, j = np.unravel_index(np.argmin(sub), sub.shape)
            message += f"; closest pair: atoms {min(rows[r], j)} and {max(rows[r], j)}, {sub[r, j]:.4g} A apart"
        raise CalculationFailed(
            message + ". No uncertainty is defined for a broken evaluation; check the structure for "
            "overlapping atoms"
        )


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
    module = torch.jit.load(path, map_location=device)
    if not module.strictly_local or module.receptive_field > module.cutoff:
        # as the C++ core does for such models (cpp/src/model_file.cpp, Model::Model): their graph
        # sizes change with every structure, and re-optimising for each costs more than it saves
        torch._C._set_graph_executor_optimize(False)
    return module
