"""Fault injection: inputs that used to give a plausible wrong number without an error.

Damaged model files (random offsets, bursts, truncation, appended bytes) must be refused by
every loader; NaN from the model must stop LAMMPS on every rank together and make the ASE
calculator raise; bad device names and skipped ensembles must say what they are. The group
and MPI cases of the computes live in tests/test_groups_property.py, the messages users see
in tests/test_newcomer_errors.py (quoted in docs/troubleshooting.md).
"""

from __future__ import annotations

import os
import random
import re
import zipfile

import numpy as np
import pytest
import torch

from lammps_helpers import assert_lammps_error, make_model, run_lmp, si_diamond, write_data

pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

N_SINGLE_BYTES = 400
N_BURSTS = 60
N_TRUNCATIONS = 20


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("fault") / "model.pt", species=(14,), seed=0, ensemble=4)


def _tensor_record_span(path):
    """(start, end) byte offsets of the data of the largest stored record (a tensor)."""
    data = open(path, "rb").read()
    with zipfile.ZipFile(path) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
    assert record.compress_type == zipfile.ZIP_STORED
    local_extra = int.from_bytes(data[record.header_offset + 28 : record.header_offset + 30], "little")
    start = record.header_offset + 30 + len(record.filename.encode()) + local_extra
    return start, start + record.file_size


def _refused(core, path):
    try:
        core.verify_file(path)
    except ValueError as exc:
        assert "is damaged" in str(exc) and "export it again" in str(exc), str(exc)
        return True
    return False


def test_crc_check_values():
    import zlib

    from llpr import _core

    assert _core.crc64(b"123456789") == 0x995DC9BBDF1939FA  # CRC-64/XZ check value
    blob = os.urandom(100_003)
    assert _core.crc32(blob) == zlib.crc32(blob)


def test_exported_file_is_sealed_and_still_a_zip(model):
    from llpr import _core

    report = _core.verify_file(model)
    assert report["sealed"] and report["bytes"] == os.path.getsize(model)
    with zipfile.ZipFile(model) as archive:
        assert archive.testzip() is None and archive.comment.startswith(b"llpr-integrity crc64-xz=")
    assert torch.jit.load(model).n_features > 0


def test_random_corruption_is_refused(model, tmp_path):
    """Every byte of a sealed file counts: single bytes XOR-ed with a random value anywhere,
    bursts of 2-64 bytes, truncations and appended bytes are all refused."""
    from llpr import _core

    data = open(model, "rb").read()
    rng = random.Random(20261201)
    bad = str(tmp_path / "bad.pt")
    accepted = []
    cases = []
    for _ in range(N_SINGLE_BYTES):
        offset = rng.randrange(len(data))
        cases.append(("byte", offset, 1))
    for _ in range(N_BURSTS):
        length = rng.randrange(2, 65)
        cases.append(("burst", rng.randrange(len(data) - length), length))
    for _ in range(N_TRUNCATIONS):
        cases.append(("truncate", rng.randrange(1, len(data)), 0))
    cases.append(("append", len(data), 17))
    loaded_by_torch = 0
    for kind, offset, length in cases:
        if kind == "truncate":
            damaged = data[:offset]
        elif kind == "append":
            damaged = data + os.urandom(length)
        else:
            chunk = bytearray(data[offset : offset + length])
            for k in range(length):
                chunk[k] ^= rng.randrange(1, 256)
            damaged = data[:offset] + bytes(chunk) + data[offset + length :]
        with open(bad, "wb") as fh:
            fh.write(damaged)
        if not _refused(_core, bad):
            accepted.append((kind, offset, length))
        elif kind == "byte" and loaded_by_torch < 3:
            # what the check protects against: libtorch itself loads many of these files
            try:
                torch.jit.load(bad)
                loaded_by_torch += 1
            except Exception:
                pass
    assert not accepted, f"damaged files accepted: {accepted[:10]}"
    assert loaded_by_torch > 0


def test_damaged_file_refused_by_every_loader(model, tmp_path):
    """50 inverted bytes inside a tensor: LAMMPS, `llpr check`, the ASE calculator,
    load_exported and the C++ binding all refuse it."""
    from llpr import _core
    from llpr.ase import LLPRCalculator
    from llpr.cli import main
    from llpr.modelfile import load_exported

    data = bytearray(open(model, "rb").read())
    start, end = _tensor_record_span(model)
    middle = (start + end) // 2
    for k in range(middle, middle + 50):
        data[k] ^= 0xFF
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(data))
    torch.jit.load(str(bad))  # libtorch alone would have run it
    for load in (load_exported, LLPRCalculator, _core.check, lambda p: _core.Model(p, "cpu")):
        with pytest.raises(ValueError, match="is damaged"):
            load(str(bad))
    assert main(["check", str(bad)]) == 2
    write_data(si_diamond(rattle=0.05, seed=3), tmp_path / "si.data", ["Si"])
    proc = run_lmp("units metal\natom_style atomic\nread_data si.data\npair_style llpr model.pt\n"
                   "pair_coeff * * Si\nrun 0\n", tmp_path)
    assert_lammps_error(proc, "is damaged", "export it again")


def test_unsealed_file_gets_its_records_checked(model, tmp_path):
    """A file re-saved by torch.jit.save has no seal: its stored records' CRC-32 still count."""
    from llpr import _core

    resaved = str(tmp_path / "resaved.pt")
    torch.jit.save(torch.jit.load(model), resaved)
    report = _core.verify_file(resaved)
    assert not report["sealed"] and report["records"] > 0 and "no whole-file checksum" in report["summary"]
    assert _core.check(resaved)["sealed"] is False
    data = bytearray(open(resaved, "rb").read())
    start, end = _tensor_record_span(resaved)
    rng = random.Random(5)
    for _ in range(20):
        damaged = bytearray(data)
        damaged[rng.randrange(start, end)] ^= rng.randrange(1, 256)
        (tmp_path / "bad.pt").write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="fails its CRC-32 check"):
            _core.verify_file(str(tmp_path / "bad.pt"))
    # a comment that is not llpr's seal is no seal: refused, not ignored
    with zipfile.ZipFile(resaved, "a") as archive:
        archive.comment = b"llpr-integrity crc64-xz=not a checksum"
    with pytest.raises(ValueError, match="not an llpr integrity seal"):
        _core.verify_file(resaved)


def _overlap_script(model, extra=""):
    return f"""
units metal
atom_style atomic
read_data overlap.data
pair_style llpr {model} device cpu
pair_coeff * * Si
compute usum all llpr
compute u all llpr/atom
variable se equal c_usum[1]
thermo_style custom step pe c_usum[1] c_usum[2] c_usum[3]
fix halt all halt 1 v_se > 1.0 error hard
dump d all custom 1 dump.out id c_u[1]
{extra}
run 0
"""


def _overlapping_atoms():
    from ase import Atoms

    atoms = si_diamond((3, 3, 3), rattle=0.0)
    return atoms + Atoms("Si", positions=[atoms.positions[10]])


@pytest.mark.lammps
@pytest.mark.mpi
@pytest.mark.parametrize("bias", ["", "fix b all llpr/bias tau 0.5"], ids=["plain", "biased"])
@pytest.mark.parametrize("nprocs", [1, 2])
def test_nan_energy_stops_every_rank(model, tmp_path, nprocs, bias):
    """Before: pe = -nan, sigma_E = 0 and `fix halt` never fired. Now: one LAMMPS error,
    the same on every rank count, naming both atoms of the overlapping pair (IDs 11, 217);
    also when fix llpr/bias splits the evaluation (the NaN comes out of its forward pass,
    before any sigma or bias force)."""
    write_data(_overlapping_atoms(), tmp_path / "overlap.data", ["Si"])
    proc = run_lmp(_overlap_script(model, bias), tmp_path, nprocs=nprocs, timeout=120)
    assert_lammps_error(proc, "non-finite", "on timestep 0", "0 A apart")
    error = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("ERROR")][0]
    ids = re.search(r"IDs ([\d .]+);", error).group(1).split()
    assert "217" in ids and "11" in ids, error
    assert "atoms 11 and 217, 0 A apart" in error


def test_nan_in_ase_raises(model):
    from ase.calculators.calculator import CalculationFailed

    from llpr.ase import LLPRCalculator

    atoms = _overlapping_atoms()
    atoms.calc = LLPRCalculator(model, ensemble=True)
    with pytest.raises(CalculationFailed, match=r"non-finite .*atoms 10 and 216, 0 A apart"):
        atoms.get_potential_energy()
    # a sound structure still works with the same calculator
    sound = si_diamond((2, 2, 2), rattle=0.05, seed=1)
    sound.calc = atoms.calc
    assert np.isfinite(sound.get_potential_energy())
    assert np.all(np.isfinite(sound.calc.results["force_sigma"]))


@pytest.mark.lammps
@pytest.mark.parametrize("device", ["cudax", "cuda:", "cuda:1x", "gpu"])
def test_device_keyword_is_exact(model, tmp_path, device):
    proc = run_lmp(f"units metal\natom_style atomic\npair_style llpr {model} device {device}\n", tmp_path)
    assert_lammps_error(proc, "device must be auto, cpu, cuda or cuda:N", device)


def test_ase_device_without_gpu_names_the_gpu(model):
    from llpr.ase import LLPRCalculator

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(ValueError, match="no CUDA GPU is usable"):
        LLPRCalculator(model, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'cudax'"):
        LLPRCalculator(model, device="cudax")


@pytest.mark.lammps
def test_neigh_modify_exclude_between_model_types(model, tmp_path):
    write_data(si_diamond(rattle=0.05, seed=3), tmp_path / "si.data", ["Si"])
    proc = run_lmp("units metal\natom_style atomic\nread_data si.data\npair_style llpr "
                   f"{model}\npair_coeff * * Si\nneigh_modify exclude type 1 1\nrun 0\n", tmp_path)
    assert_lammps_error(proc, "neigh_modify exclude type 1 1", "needs every pair")


def test_evaluate_no_ensemble_says_it_was_skipped(model, tmp_path, capsys):
    from ase.io import write

    from llpr.cli import main

    structures = []
    for k in range(3):
        atoms = si_diamond(rattle=0.05, seed=k)
        atoms.info["energy"] = -4.0 * len(atoms)
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
        structures.append(atoms)
    write(str(tmp_path / "test.xyz"), structures)
    assert main(["-q", "evaluate", model, "--data", str(tmp_path / "test.xyz"), "--no-ensemble"]) == 0
    out = capsys.readouterr().out
    assert "skipped (--no-ensemble)" in out and "4-member" in out
    assert "export with `llpr export --ensemble K`" not in out
