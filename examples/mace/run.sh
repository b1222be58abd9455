#!/usr/bin/env bash
# Bring your own model: a MACE potential trained with MACE's own `mace_run_train`, then
# calibrated with llpr (no retraining), exported to one file, run in LAMMPS with per-atom
# uncertainty, and evaluated on held-out data.
# Usage: bash examples/mace/run.sh [output folder]   (default: mace_output/)
# Sizes: N_PER_TYPE (structures per configuration type, default 32), EPOCHS (MACE epochs,
# default 40), NSTEPS (MD steps, default 2000).
set -euo pipefail
. "$(dirname "$0")/../_env.sh"  # here, root, and the environment
out="${1:-$root/mace_output}"
N_PER_TYPE=${N_PER_TYPE:-32}
EPOCHS=${EPOCHS:-40}
NSTEPS=${NSTEPS:-2000}
EVERY=$(( NSTEPS >= 40 ? NSTEPS / 4 : 10 ))  # dump interval: a few frames whatever the length
python -c "import mace" 2>/dev/null || { echo "error: mace-torch is not installed: pip install --no-build-isolation '.[mace]'" >&2; exit 1; }
mkdir -p "$out"
cd "$out"
start=$(date +%s)

echo "== 1. reference data: Si.sw (LAMMPS), 7 kinds of configurations"
llpr data -o data --potential sw --n-per-type "$N_PER_TYPE" --seed 0

echo "== 2. train a small MACE with mace_run_train (2 interactions, r_max 4 A, float64)"
mace_run_train --name si_mace --train_file data/train.xyz --valid_file data/val.xyz \
  --energy_key energy --forces_key forces --E0s average --model MACE \
  --hidden_irreps '8x0e+8x1o' --MLP_irreps 16x0e --max_L 1 --correlation 2 --r_max 4.0 \
  --num_interactions 2 --batch_size 4 --max_num_epochs "$EPOCHS" --device cpu \
  --default_dtype float64 --seed 0 > mace_train.log 2>&1
grep -E "Final|Loaded|Evaluating" mace_train.log | tail -3 || true

echo "== 3. LLPR on the trained MACE: F^T F on the training set, alpha and varsigma on the validation set"
llpr calibrate --model si_mace_compiled.model --train data/train.xyz --val data/val.xyz -o mace_llpr.ckpt

echo "== 4. export one file (MACE + covariance factor + a 32-member last-layer ensemble)"
llpr export mace_llpr.ckpt -o si_mace.pt --ensemble 32
llpr check si_mace.pt | grep -E "model_info|receptive_field|alpha"

echo "== 5. evaluate on the held-out test set"
llpr evaluate si_mace.pt --data data/test.xyz --plots plots --json metrics.json

echo "== 6. LAMMPS: NVT MD of a Si slab with a vacancy (message passing over 2 ranks), sigma_i dumped"
cp "$root/examples/silicon/in.silicon" .
mpirun -np 2 lmp -in in.silicon -var model si_mace.pt -var nsteps "$NSTEPS" -var every "$EVERY" -log log.lammps -screen none
sed -n '/^ *Step/,/^Loop time/p' log.lammps

echo "== 7. where is the MACE model unsure? (surface and vacancy atoms vs bulk)"
python "$root/examples/silicon/summarize.py" dump.llpr

echo "finished in $(( $(date +%s) - start )) s; results in $out"
