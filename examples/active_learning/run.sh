#!/usr/bin/env bash
# Active learning with llpr uncertainty: run MD until the model becomes unsure (fix halt on
# the largest per-atom extrapolation grade gamma_i), label the configuration where it stopped with the reference
# potential, add it to the training set, continue training the model on it, recalibrate, and
# go again.
#
# Usage: bash examples/active_learning/run.sh [start folder] [output folder]
#   start folder: holds data/train.xyz, data/val.xyz, model.ckpt and model.pt, as the silicon demo
#                 writes them (default: demo_output; run bash examples/silicon/run.sh first)
#   output folder: default runs/active_learning
# Sizes (environment): ROUNDS (3), NSTEPS (4000 MD steps per round), EPOCHS (400) and
# TIME_LIMIT (240 s) per round of training; DUMP_GAMMA (0.5) and HALT_GAMMA (1): the gamma_i
# above which atoms are dumped and the run stops (gamma_i = 1: as unfamiliar as the least
# familiar training atom of that round's model).
set -euo pipefail
. "$(dirname "$0")/../_env.sh"  # here, root, and the environment
start="$(cd "${1:-$root/demo_output}" 2>/dev/null && pwd)" || {
  echo "error: start folder '${1:-$root/demo_output}' does not exist; run bash examples/silicon/run.sh first" >&2
  exit 2
}
out="${2:-$root/runs/active_learning}"
ROUNDS=${ROUNDS:-3}
NSTEPS=${NSTEPS:-4000}
EPOCHS=${EPOCHS:-400}
TIME_LIMIT=${TIME_LIMIT:-240}
for f in data/train.xyz data/val.xyz model.ckpt model.pt; do
  if [ ! -f "$start/$f" ]; then
    echo "error: $start/$f is missing; the start folder must hold the silicon demo's output (bash examples/silicon/run.sh)" >&2
    exit 2
  fi
done

mkdir -p "$out/data"
cp "$start/data/train.xyz" "$start/data/val.xyz" "$out/data/"
cp "$start/model.pt" "$out/model_0.pt"
cp "$start/model.ckpt" "$out/model_0.ckpt"
cp "$here/in.active" "$out/"
cd "$out"
summary="round  structures  stopped at step  largest gamma_i  largest sigma_i (meV)"
dump_gamma=${DUMP_GAMMA:-0.5}
halt_gamma=${HALT_GAMMA:-1}
python "$here/al.py" check model_0.pt
echo "== dump atoms with gamma_i > $dump_gamma, stop when one has gamma_i > $halt_gamma"

for ((round = 0; round < ROUNDS; round++)); do
  model="model_$round.pt"
  echo "== round $round: $model"
  mkdir -p "round_$round"
  (cd "round_$round" && lmp -in ../in.active -var model "../$model" -var nsteps "$NSTEPS" \
     -var dump_gamma "$dump_gamma" -var halt_gamma "$halt_gamma" -var seed $((20917 + round)) \
     -log log.lammps -screen none)
  read -r _ _ step _ gamma_max _ sigma_max _ _ <<< "$(grep '^AL_RESULT' "round_$round/log.lammps" | tail -1)"
  n_unsure=$(grep -c "^ITEM: TIMESTEP" "round_$round/dump.unsure" || true)
  summary+=$'\n'"$(awk -v r="$round" -v n="$(grep -c '^[0-9][0-9]*$' data/train.xyz)" -v s="$step" \
    -v g="$gamma_max" -v m="$sigma_max" 'BEGIN { printf "%5d  %10d  %15d  %15.3f  %21.2f", r, n, s, g, 1000 * m }')"
  if [ "$step" -ge "$NSTEPS" ]; then
    echo "   the model stayed below gamma_i = $halt_gamma for all $NSTEPS steps: done"
    break
  fi
  echo "   stopped at step $step (largest gamma_i $gamma_max > $halt_gamma); $n_unsure dump frames with uncertain atoms"
  echo "   label the configuration where it stopped and add it to the training set"
  python "$here/al.py" label "round_$round/halt.dump" data/train.xyz --potential sw --tag "active_learning_$round"
  next="model_$((round + 1))"
  echo "   continue training model_$round on the grown training set, recalibrate (max q of the new training set), export $next.pt"
  python "$here/al.py" retrain "model_$round.ckpt" data/train.xyz data/val.xyz "$next" \
    --epochs "$EPOCHS" --time-limit "$TIME_LIMIT"
done

echo
echo "$summary"
echo "results in $out (round_*/log.lammps, round_*/dump.unsure, round_*/halt.dump, data/train.xyz)"
