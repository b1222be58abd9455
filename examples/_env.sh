# Sourced by the examples' run.sh scripts (bash), right after `set -euo pipefail`:
#   . "$(dirname "$0")/../_env.sh"
# Sets `here` (the folder of the running script) and `root` (the folder examples/ is in: the
# repository root), as given, without resolving symbolic links; and when `llpr` is not on
# PATH, activates $root/.venv (which `bash scripts/setup.sh` makes).
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if ! command -v llpr >/dev/null 2>&1; then
  if [ ! -f "$root/.venv/bin/activate" ]; then
    echo "error: llpr is not on PATH and $root/.venv does not exist: run bash scripts/setup.sh first," \
      "or activate the environment llpr is installed in" >&2
    exit 1
  fi
  . "$root/.venv/bin/activate"
fi
# One thread per process unless you say otherwise: a second OpenMP thread speeds a training
# step up by ~1.1x and an MD step by ~1.7x on an idle 2-core machine, but as soon as another
# process competes for the cores, spinning OpenMP threads make steps 3-60x slower
# (docs/performance.md). Export OMP_NUM_THREADS before running to choose.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
