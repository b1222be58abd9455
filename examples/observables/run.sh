#!/usr/bin/env bash
# Uncertainty of thermodynamic observables from one MD run per temperature: hot diamond
# silicon in NPT at a few temperatures with the mean model; its trajectory reweighted to every
# member of the last-layer ensemble gives the model uncertainty of the density (thermal
# expansion) and of the radial distribution function, next to their sampling errors.
#
# Usage: bash examples/observables/run.sh [output folder]   (default: runs/observables)
# Needs the silicon demo's output (bash examples/silicon/run.sh), or DEMO=folder with its
# llpr.ckpt (or model.ckpt and data/). Sizes (environment): NSTEPS (40000 steps of 1 fs per temperature),
# TEMPS ("900 1200 1500" K), MEMBERS (32), CELLS (2: 64 atoms).
set -euo pipefail
. "$(dirname "$0")/../_env.sh"  # here, root, and the environment
out="${1:-$root/runs/observables}"
demo="$(cd "${DEMO:-$root/demo_output}" 2>/dev/null && pwd)" || demo=""
NSTEPS=${NSTEPS:-40000}
TEMPS=${TEMPS:-"900 1200 1500"}
MEMBERS=${MEMBERS:-32}
CELLS=${CELLS:-2}
if [ -z "$demo" ] || { [ ! -f "$demo/llpr.ckpt" ] && [ ! -f "$demo/model.ckpt" ]; }; then
  echo "error: no trained model in ${DEMO:-$root/demo_output}: run bash examples/silicon/run.sh first" \
    "(or set DEMO to a folder with llpr.ckpt, or with model.ckpt and data/)" >&2
  exit 2
fi
every=$(( NSTEPS >= 2000 ? NSTEPS / 2000 : 1 ))  # about 2000 frames per run
nequil=$(( NSTEPS / 5 ))
mkdir -p "$out"
cd "$out"
start=$(date +%s)

echo "== 1. the model with a $MEMBERS-member last-layer ensemble"
if [ ! -f "$demo/llpr.ckpt" ]; then
  llpr calibrate --model "$demo/model.ckpt" --train "$demo/data/train.xyz" --val "$demo/data/val.xyz" -o llpr.ckpt
  ckpt=llpr.ckpt
else
  ckpt="$demo/llpr.ckpt"
fi
llpr export "$ckpt" -o model_ens.pt --ensemble "$MEMBERS"

echo "== 2. NPT at $TEMPS K, $NSTEPS steps each after $nequil of equilibration (two at a time)"
cp "$here/in.observables" .
pids=()
for T in $TEMPS; do
  lmp -in in.observables -var model model_ens.pt -var T "$T" -var nsteps "$NSTEPS" -var nequil "$nequil" \
      -var every "$every" -var seed 4928 -var cells "$CELLS" -log "log_$T.lammps" -screen none &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done

echo "== 3. reweighting to the members: density and RDF with their model uncertainty"
python "$here/summarize.py" --temps $TEMPS -o observables.png

echo "finished in $(( $(date +%s) - start )) s; results in $out (observables.png, observables.md)"
