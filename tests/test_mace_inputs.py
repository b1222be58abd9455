"""Input model files llpr reads before wrapping them: MACE files and llpr's own checkpoints.

libtorch loads a zip archive without checking its CRCs, so a damaged MACE file used to be
calibrated, exported and sealed as sound ("CRC-64 verified") with slightly wrong weights: every
record's CRC-32 is now checked first (llpr.integrity). A MACE model that gives NaN (NaN weights,
or finite weights that overflow) is named as the culprit instead of the data."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from llpr.integrity import DamagedInputError, verify_zip

BIN = os.path.dirname(sys.executable)
needs_mace = pytest.mark.skipif(importlib.util.find_spec("mace") is None,
                                reason="mace-torch is not installed (pip install llpr[mace])")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _record_span(path, record):
    """(start, end) byte offsets of the stored bytes of ``record`` (a ZipInfo) in ``path``."""
    data = open(path, "rb").read()
    local_extra = int.from_bytes(data[record.header_offset + 28 : record.header_offset + 30], "little")
    start = record.header_offset + 30 + len(record.filename.encode()) + local_extra
    return start, start + record.compress_size


def _damaged_copy(path, out, which="tensor", offset=5, mask=0x10):
    """A copy of ``path`` with one byte XOR-ed with ``mask``: by default byte 5 of the first
    float64 of the largest tensor record (a mantissa byte: the value changes a little and stays
    finite); ``which="code"`` damages the middle of the largest deflated record instead.
    Returns the damaged record's name."""
    with zipfile.ZipFile(path) as archive:
        if which == "tensor":
            record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
            assert record.compress_type == zipfile.ZIP_STORED
        else:
            record = max((r for r in archive.infolist() if r.compress_type == zipfile.ZIP_DEFLATED),
                         key=lambda r: r.compress_size)
            offset = record.compress_size // 2
    start, _ = _record_span(path, record)
    data = bytearray(open(path, "rb").read())
    data[start + offset] ^= mask
    open(out, "wb").write(bytes(data))
    return record.filename


@pytest.fixture(scope="module")
def mace_files(tmp_path_factory):
    from mace_models import make_mace, save_mace

    return save_mace(make_mace([6, 14], seed=1, pair_repulsion=True), tmp_path_factory.mktemp("mace_inputs"))


# ----------------------------------------------------------------------------- damaged archives
@needs_mace
def test_damaged_compiled_mace_file_with_finite_values_is_refused(mace_files, tmp_path):
    """The case that passed as sound: a compiled MACE file whose damaged tensor stays finite."""
    from llpr.models.mace import MACEModel

    _, compiled = mace_files
    damaged = str(tmp_path / "damaged_compiled.model")
    record = _damaged_copy(compiled, damaged)
    # the damage is silent for libtorch: the file loads, with finite weights that differ a little
    sound, broken = torch.jit.load(compiled), torch.jit.load(damaged)
    pairs = list(zip(sound.named_parameters(), broken.named_parameters()))
    pairs += list(zip(sound.named_buffers(), broken.named_buffers()))
    changed = [n for (n, a), (_, b) in pairs if not torch.equal(a, b)]
    assert len(changed) == 1 and all(bool(torch.isfinite(t).all()) for t in broken.parameters())
    message = rf"model file '{damaged}' is damaged \(record '{record}' fails its CRC-32 check\): .*mace-torch"
    with pytest.raises(DamagedInputError, match=message):
        MACEModel.from_file(damaged)
    # and from the command line, before any data is read
    res = subprocess.run([os.path.join(BIN, "llpr"), "calibrate", "--model", damaged, "--train", "t.xyz",
                          "--val", "v.xyz"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and f"model file '{damaged}' is damaged (record '{record}'" in res.stderr, res.stderr
    assert "Copy it again from where it was written" in res.stderr
    # the sound file still reads
    assert MACEModel.from_file(compiled).n_features > 0


@needs_mace
@pytest.mark.parametrize("kind", ["pickle", "compiled code", "truncated"])
def test_other_damage_to_mace_files_is_refused(kind, mace_files, tmp_path):
    from llpr.models.mace import MACEModel

    pickled, compiled = mace_files
    damaged = str(tmp_path / ("damaged.model" if kind == "pickle" else "damaged_compiled.model"))
    if kind == "truncated":
        data = open(compiled, "rb").read()
        open(damaged, "wb").write(data[: len(data) - 100])
        why = r"its zip directory is unreadable"
    else:
        record = _damaged_copy(pickled if kind == "pickle" else compiled, damaged,
                               which="tensor" if kind == "pickle" else "code")
        why = rf"record '{record}' (fails its CRC-32 check|is corrupt|cannot be read)"
    with pytest.raises(DamagedInputError, match=rf"model file '{damaged}' is damaged \({why}"):
        MACEModel.from_file(damaged, allow_pickle=True)


def test_damaged_llpr_checkpoint_is_refused(tmp_path):
    from llpr.models.checkpoint import load_model, save_model
    from llpr.models.potential import LocalPotential

    path = str(tmp_path / "model.ckpt")
    save_model(LocalPotential([14], hidden=(8,)).to(torch.float64), path)
    assert verify_zip(path, "llpr", "write it again") > 0
    damaged = str(tmp_path / "damaged.ckpt")
    record = _damaged_copy(path, damaged)
    with pytest.raises(DamagedInputError, match=rf"model file '{damaged}' is damaged \(record '{record}' fails"):
        load_model(damaged)
    assert load_model(path) is not None


def test_files_that_are_not_zip_archives_are_left_to_their_readers(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert verify_zip(str(tmp_path / "notes.txt"), "llpr", "write it again") == 0


# ----------------------------------------------------------------------------- NaN from the model
@needs_mace
def test_mace_model_with_nan_weights_is_named(tmp_path):
    from mace_models import make_mace, save_mace

    from llpr.models.mace import MACEModel

    model = make_mace([6, 14], seed=1)
    with torch.no_grad():
        model.readouts[0].linear.weight[3] = float("nan")
    _, compiled = save_mace(model, tmp_path)
    message = (rf"MACE model '{compiled}' holds non-finite \(NaN or inf\) weights \(readouts.0.linear.weight\): "
               r"the model file is damaged or the model diverged")
    with pytest.raises(ValueError, match=message):
        MACEModel.from_file(compiled)


@needs_mace
def test_mace_model_that_gives_nan_on_finite_inputs_is_named(tmp_path):
    """Finite weights that overflow: NaN for any structure. The fit used to blame the data
    ("check the inputs")."""
    from lammps_helpers import sic_zincblende
    from mace_models import make_mace, save_mace

    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.mace import MACEModel
    from llpr.uncertainty.estimator import LLPR

    model = make_mace([6, 14], seed=1)
    with torch.no_grad():
        model.node_embedding.linear.weight.mul_(1e120)
    _, compiled = save_mace(model, tmp_path)
    wrapped = MACEModel.from_file(compiled)
    atoms = sic_zincblende(rattle=0.1, seed=0)
    atoms.info["energy"] = -40.0
    atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    loader = make_loader(AtomisticDataset([atoms], wrapped.cutoff, torch.float64), 1)
    with pytest.raises(ValueError, match=rf"MACE model '{compiled}' gave non-finite \(NaN or inf\) energies or "
                                         r"features for a structure with finite positions \(closest pair: 1.\d+ A\): "
                                         r"the model file is damaged or the model diverged"):
        LLPR(wrapped).fit(loader)


@needs_mace
def test_overlapping_atoms_are_not_blamed_on_the_model(mace_files):
    """NaN from two atoms at one place is the structure's problem: the MACE wrapper leaves it to
    the caller's message instead of naming the model file."""
    from lammps_helpers import sic_zincblende

    from llpr.graphs import graph_tensors
    from llpr.models.mace import MACEModel

    model = MACEModel.from_file(mace_files[1])
    atoms = sic_zincblende()
    atoms.positions[1] = atoms.positions[0]
    g = graph_tensors(atoms, model.cutoff, torch.float64)
    vectors = g["positions"][g["edge_index"][1]] - g["positions"][g["edge_index"][0]] + g["edge_shifts"]
    energies, _ = model(g["atomic_numbers"], g["edge_index"], vectors, len(atoms))
    assert not bool(torch.isfinite(energies).all())
