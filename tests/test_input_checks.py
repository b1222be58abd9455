"""Inputs that gave wrong numbers or unclear errors: each is refused with a message that names
the problem, the structure (its index and file) and the fix. `llpr evaluate` on NaN or inf
labels or on a structure the model cannot evaluate, its JSON (strict, no bare NaN), a NaN label
in training, a frame without atoms, a periodic direction without a cell vector, an element the
model does not know, a NaN label in the --calibration-extra file, a float16 export and a virial
on a cell that is not fully periodic."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from ase import Atoms

from llpr.cli import main
from llpr.data import read_dataset, stress_label, write_dataset
from llpr.evaluate import evaluate_model
from llpr.graphs import AtomisticDataset

from lammps_helpers import label_randomly, make_model, si_diamond

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small silicon model (untrained, calibrated on random labels), with a 4-member
    last-layer ensemble so that force outputs are checked too."""
    return make_model(tmp_path_factory.mktemp("checks") / "si.pt", ensemble=4)


def _structures(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [label_randomly(si_diamond(rattle=0.1, seed=seed + k), rng) for k in range(n)]


def _evaluate_cli(model_path, structures, tmp_path, capsys, *extra):
    path = str(tmp_path / "test.xyz")
    write_dataset(structures, path)
    rc = main(["-q", "evaluate", model_path, "--data", path, *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, path


# --- evaluate: non-finite labels and predictions ------------------------------------------------


@pytest.mark.parametrize("label, value, message", [
    ("energy", np.nan, r"structure 3 in '.*test.xyz' has a non-finite energy label \(nan\)"),
    ("energy", np.inf, r"structure 3 in '.*test.xyz' has a non-finite energy label \(inf\)"),
    ("forces", np.nan, r"structure 3 in '.*test.xyz' has non-finite \(NaN or inf\) force labels on 1 atom\(s\), "
                       r"indices \[5\]"),
    ("stress", np.nan, r"structure 3 in '.*test.xyz' has a non-finite \(NaN or inf\) stress label"),
    ("virial", np.inf, r"structure 3 in '.*test.xyz' has a non-finite \(NaN or inf\) virial label"),
])
def test_evaluate_refuses_non_finite_labels(model_path, tmp_path, capsys, label, value, message):
    """A NaN energy label gave exit status 0, a NaN RMSE next to plausible coverages, the
    structure counted as a miss; now nothing is computed."""
    structures = _structures()
    bad = structures[3]
    if label == "energy":
        bad.info["energy"] = value
    elif label == "forces":
        bad.arrays["forces"][5, 1] = value
    elif label == "stress":
        bad.info["stress"] = np.array([0.01, 0.0, value, 0.0, 0.0, 0.0])
    else:
        bad.info["virial"] = np.full((3, 3), value)
    rc, out, err, _ = _evaluate_cli(model_path, structures, tmp_path, capsys, "--json", str(tmp_path / "m.json"))
    assert rc == 2 and "RMSE" not in out and not (tmp_path / "m.json").exists()
    assert re.search(message, err), err
    assert "fix or remove" in err
    # structures given in Python are refused the same way (named by index)
    with pytest.raises(ValueError, match=message.replace(r" in '.*test.xyz'", "")):
        evaluate_model(model_path, structures)


def test_evaluate_refuses_a_structure_the_model_cannot_evaluate(model_path, tmp_path, capsys):
    """Two atoms on one site give NaN predictions: the metrics were NaN, 1.17 % of atoms at
    gamma > 1 but 0 % of structures, and the JSON held a bare NaN. Now the structure is refused
    as the ASE calculator and LAMMPS refuse it: the atoms, their closest pair, the likely cause."""
    structures = _structures()
    structures[2].positions[1] = structures[2].positions[0]
    rc, out, err, _ = _evaluate_cli(model_path, structures, tmp_path, capsys, "--json", str(tmp_path / "m.json"))
    assert rc == 2 and "RMSE" not in out and not (tmp_path / "m.json").exists()
    assert "structure 2 in '" in err and "test.xyz': the model gave non-finite" in err
    assert "closest pair: atoms 0 and 1, 0 A apart" in err and "overlapping atoms" in err
    with pytest.raises(ValueError, match=r"^structure 2: the model gave non-finite .*overlapping atoms"):
        evaluate_model(model_path, structures, ensemble=False)


def test_evaluate_json_is_strict(model_path, tmp_path, capsys):
    """Metrics that are undefined (the Spearman correlation of two structures) are written as
    null, never as the bare NaN strict JSON readers refuse."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    rc, _, err, _ = _evaluate_cli(model_path, _structures(2), tmp_path, capsys, "--json", str(tmp_path / "m.json"))
    assert rc == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert metrics["n_structures"] == 2
    assert metrics["spearman_abs_error_sigma"] is None
    assert isinstance(metrics["energy_rmse"], float)


# --- unclear messages ----------------------------------------------------------------------------


def test_training_refuses_a_nan_label_before_training():
    """A NaN label read as 'training diverged ... lower the learning rate' after the first
    epoch; now the structure and its label are named before any training."""
    from llpr.models.train import TrainConfig, train_model

    train, val = _structures(4), _structures(2, seed=10)
    train[1].info["energy"] = np.nan
    config = TrainConfig(max_epochs=1, dtype="float64", model={"hidden": (8,), "n_channels": 2})
    with pytest.raises(ValueError, match=r"structure 1 of the training set has a non-finite energy label"):
        train_model(train, val, config, progress=False)
    train[1].info["energy"] = 0.0
    val[1].arrays["forces"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"structure 1 of the validation set has non-finite \(NaN or inf\) force"):
        train_model(train, val, config, progress=False)


def test_cli_train_names_the_file_of_a_nan_label(tmp_path, capsys):
    train, val = _structures(4), _structures(2, seed=10)
    val[0].info["energy"] = np.nan
    write_dataset(train, str(tmp_path / "train.xyz"))
    write_dataset(val, str(tmp_path / "val.xyz"))
    rc = main(["-q", "train", "--train", str(tmp_path / "train.xyz"), "--val", str(tmp_path / "val.xyz"),
               "-o", str(tmp_path / "m.ckpt"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "structure 0 in '" in err and "val.xyz' has a non-finite energy label" in err
    assert "diverged" not in err


def test_a_frame_without_atoms_is_named(tmp_path):
    """It read 'has no energy/forces labels' (a 0-atom frame has no forces column)."""
    empty = Atoms()
    empty.info["energy"] = 1.0
    path = str(tmp_path / "d.xyz")
    write_dataset(_structures(2)[:1] + [empty] + _structures(2)[1:], path)
    with pytest.raises(ValueError, match=r"structure 1 in '.*d.xyz' has no atoms \(its atom-count line reads 0\); "
                                         r"remove that frame"):
        read_dataset(path)
    with pytest.raises(ValueError, match=r"structure 1 of the training set has no atoms"):
        AtomisticDataset([_structures(1)[0], empty], 4.0, source="the training set")


def test_a_periodic_direction_without_a_cell_vector_is_named(model_path, tmp_path, capsys):
    """It read 'a periodic structure needs a non-degenerate cell', naming no structure."""
    structures = _structures(4)
    structures[2].cell[1] = 0.0
    message = (r"structure 2 in '.*test.xyz' is periodic along cell vector b \(pbc \[True, True, True\]\) but that "
               r"vector has length 0 .*Lattice=.*pbc=\"T F T\"")
    rc, _, err, path = _evaluate_cli(model_path, structures, tmp_path, capsys)
    assert rc == 2 and re.search(message, err), err
    with pytest.raises(ValueError, match=message):
        read_dataset(path)
    with pytest.raises(ValueError, match=r"structure 2 is periodic along cell vector b"):
        AtomisticDataset(structures, 4.0)
    # three vectors in one plane: named too
    flat = _structures(1)[0]
    flat.cell[2] = flat.cell[0] + flat.cell[1]
    with pytest.raises(ValueError, match=r"structure 0 is periodic but its cell vectors are linearly dependent"):
        AtomisticDataset([flat], 4.0)


def test_evaluate_names_an_element_the_model_does_not_know(model_path, tmp_path, capsys):
    """It was a TorchScript traceback; now the structure, the element and the model's elements,
    before any evaluation."""
    structures = _structures(4)
    structures[3].numbers[[0, 4]] = [6, 8]
    rc, out, err, _ = _evaluate_cli(model_path, structures, tmp_path, capsys)
    assert rc == 2 and "RMSE" not in out
    assert "structure 3 in '" in err and "test.xyz' contains element(s) C (Z = 6), O (Z = 8) that the model" in err
    assert "the model's elements: Si (Z = 14)" in err
    assert "Traceback" not in err and "HERE" not in err


def test_calibration_extra_file_with_a_nan_force_is_named(tmp_path, capsys):
    """A NaN force in the --calibration-extra file was reported as 'in the validation set'."""
    from llpr.models.checkpoint import save_model
    from llpr.models.potential import LocalPotential

    torch.manual_seed(0)
    model = LocalPotential([14], cutoff=4.0, n_basis=4, n_channels=2, l_max=1, hidden=(8,)).to(torch.float64)
    save_model(model, str(tmp_path / "m.ckpt"))
    extra = _structures(3, seed=20)
    extra[2].arrays["forces"][1, 2] = np.nan
    for name, part in (("train", _structures(6)), ("val", _structures(3, seed=10)), ("extra", extra)):
        write_dataset(part, str(tmp_path / f"{name}.xyz"))
    rc = main(["-q", "calibrate", "--model", str(tmp_path / "m.ckpt"), "--train", str(tmp_path / "train.xyz"),
               "--val", str(tmp_path / "val.xyz"), "--calibration-extra", str(tmp_path / "extra.xyz"),
               "--force-calibration", "1", "-o", str(tmp_path / "llpr.ckpt")])
    err = capsys.readouterr().err
    assert rc == 2 and "structure 2 in '" in err and "extra.xyz' has non-finite (NaN or inf) force labels" in err
    assert "validation set" not in err


def test_float16_export_is_refused(tmp_path):
    """A float16 tabular model was exported, recorded as float32, and every call of the file
    failed on mixed dtypes."""
    from llpr.modelfile import export_model
    from llpr.models.tabular import MLPRegressor
    from llpr.uncertainty.estimator import LLPR

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x = rng.normal(size=(40, 3))
    y = x.sum(axis=1)
    llpr = LLPR(MLPRegressor(3, hidden=(8,))).fit([(x, y)]).calibrate([(x[:20], y[:20])])
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match=rf"cannot export a tabular model with {dtype} parameters; .*float32 or "
                                             r"float64 network.*dtype=torch.float32"):
            export_model(llpr, str(tmp_path / "t.pt"), dtype=dtype)
        assert not (tmp_path / "t.pt").exists()
    export_model(llpr, str(tmp_path / "t.pt"), dtype=torch.float32)  # what the message says works


def test_float16_atomistic_export_is_refused(small_llpr, tmp_path):
    from llpr.modelfile import export_model

    with pytest.raises(ValueError, match=r"cannot export a model with torch.float16 parameters.*--dtype float32"):
        export_model(small_llpr, str(tmp_path / "m.pt"), dtype=torch.float16)


def test_virial_on_a_cell_not_fully_periodic_is_refused_like_a_stress(tmp_path):
    """A virial there was dropped silently while a stress there was refused."""
    structures = _structures(3)
    structures[1].pbc = [True, True, False]
    structures[1].info["virial"] = np.eye(3)
    path = str(tmp_path / "d.xyz")
    write_dataset(structures, path)
    with pytest.raises(ValueError, match=r"structure 1 in '.*d.xyz' has a virial label but is periodic only along "
                                         r"\[True, True, False\].*del atoms.info\['virial'\]"):
        read_dataset(path)
    with pytest.raises(ValueError, match=r"structure 1 has a virial label but is periodic only along"):
        AtomisticDataset(structures, 4.0)
    # in Python too, a virial on a periodic cell is the stress label -virial / volume
    cell = _structures(1)[0]
    cell.info["virial"] = np.diag([1.0, 2.0, 3.0])
    np.testing.assert_allclose(stress_label(cell), -np.array([1.0, 2.0, 3.0, 0, 0, 0]) / cell.get_volume())
