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
        # as the C++ core does for such models (cpp/src/core.cpp, Model::Model): their graph
        # sizes change with every structure, and re-optimising for each costs more than it saves
        torch._C._set_graph_executor_optimize(False)
    return module
