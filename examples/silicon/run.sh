#!/usr/bin/env bash
# End-to-end silicon demo: reference data -> training -> LLPR fit and calibration ->
# one exported TorchScript file -> evaluation on a held-out test set -> LAMMPS MD (NVT) of a
# silicon slab with a vacancy, per-atom sigma dumped, global sigma in the thermo output.
# Usage: bash examples/silicon/run.sh [output folder]   (default: demo_output/)
# Run from a shell where the project's environment is active, or let the script find .venv.
set -euo pipefail
. "$(dirname "$0")/../_env.sh"  # here, root, and the environment
out="${1:-$root/demo_output}"
mkdir -p "$out"
cd "$out"
start=$(date +%s)

echo "== 1. reference data: Si.sw (LAMMPS), 7 kinds of configurations"
llpr data -o data --potential sw --n-per-type 40 --seed 0

echo "== 2. train a local potential (energies, forces and stresses, early stopping, <= 6 min)"
llpr train --train data/train.xyz --val data/val.xyz -o model.ckpt --time-limit 360

echo "== 3. LLPR: covariance on the training set, alpha and varsigma on the validation set"
llpr calibrate --model model.ckpt --train data/train.xyz --val data/val.xyz -o llpr.ckpt

echo "== 4. export one TorchScript file (model + covariance factor + metadata + a 32-member last-layer ensemble)"
llpr export llpr.ckpt -o model.pt --dtype float64 --ensemble 32

echo "== 5. evaluate on the held-out test set"
llpr evaluate model.pt --data data/test.xyz --plots plots --json metrics.json

echo "== 6. LAMMPS: NVT MD of a Si slab (two free surfaces + a vacancy) with llpr uncertainty"
cp "$here/in.silicon" .
lmp -in in.silicon -var model model.pt -var nsteps 3000 -log log.lammps -screen none
sed -n '/^ *Step/,/^Loop time/p' log.lammps
echo "per-atom sigma is in dump.llpr (columns: id type x y z sigma lpr); LAMMPS log in log.lammps"

echo "== 7. where is the model unsure? (surface and vacancy atoms vs bulk)"
python "$here/summarize.py" dump.llpr

echo "== 8. a picture: the last frame, a cross-section through the vacancy, atoms coloured by sigma_i"
python "$here/render.py" dump.llpr -o sigma.png --slab y 6.6 9.7 --no-cell

echo "demo finished in $(( $(date +%s) - start )) s; results in $out"
