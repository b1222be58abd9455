"""Training loop: loss decreases, early stopping, checkpoints; the stress (the strain
derivative of the energy, its term in the loss, its labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llpr.graphs import AtomisticDataset, make_loader
from llpr.models.checkpoint import load_model
from llpr.models.potential import LocalPotential
from llpr.models.train import TrainConfig, evaluate_errors, predict, train_model

from lammps_helpers import sic_triclinic


def test_training_reduces_errors_and_writes_checkpoint(si_splits, tmp_path):
    train, val, _ = si_splits
    config = TrainConfig(max_epochs=6, batch_size=4, model={"hidden": (16, 16), "n_channels": 4}, seed=1)
    ckpt = str(tmp_path / "model.ckpt")
    model, history = train_model(train, val, config, checkpoint=ckpt, progress=False)
    assert len(history["val_loss"]) == 6
    assert min(history["val_loss"]) < history["val_loss"][0]
    assert history["best_val_loss"] == min(history["val_loss"])
    loaded = load_model(ckpt)
    e1 = evaluate_errors(model, AtomisticDataset(val, model.cutoff))
    e2 = evaluate_errors(loaded, AtomisticDataset(val, loaded.cutoff))
    assert e1["force_rmse"] == pytest.approx(e2["force_rmse"], rel=1e-6)


def test_early_stopping(si_splits):
    train, val, _ = si_splits
    # a learning rate this large makes validation worse at once; patience 2 stops the run
    config = TrainConfig(
        max_epochs=50, learning_rate=0.5, early_stopping_patience=2, lr_patience=100,
        model={"hidden": (8,), "n_channels": 2},
    )
    _, history = train_model(train[:6], val[:3], config, progress=False)
    assert history["stop_reason"] == "early_stopping"
    assert len(history["epoch"]) < 50


def test_training_input_errors(si_splits):
    train, val, _ = si_splits
    with pytest.raises(ValueError, match="training set is empty"):
        train_model([], val)
    with pytest.raises(ValueError, match="validation set is empty"):
        train_model(train, [])
    with pytest.raises(ValueError, match="dtype"):
        train_model(train, val, TrainConfig(dtype="float16"))
    unlabelled = [a.copy() for a in train[:2]]
    for a in unlabelled:
        a.info.pop("energy")
    with pytest.raises(ValueError, match="no energy/forces labels"):
        train_model(unlabelled + train, val, TrainConfig(max_epochs=1))


# ------------------------------------------------------------------------------ stress
def _batch(structures, model, dtype=torch.float64):
    dataset = AtomisticDataset(structures, model.cutoff, dtype, require_labels=False)
    return next(iter(make_loader(dataset, len(structures))))


def _strained(atoms, i, j, h):
    """``atoms`` under the symmetric strain eps_ij = eps_ji = h / 2 (eps_ii = h), positions
    scaled with the cell."""
    eps = np.zeros((3, 3))
    eps[i, j] += h / 2
    eps[j, i] += h / 2
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return out


def test_model_stress_is_the_strain_derivative_of_its_energy():
    """stress_ij = (1 / V) dE / d eps_ij (ASE's sign), on a triclinic two-element cell, in
    Voigt order; each component against a central difference of the energy."""
    torch.manual_seed(3)
    model = LocalPotential([6, 14], hidden=(12, 8), n_channels=4).double()
    atoms = sic_triclinic(seed=2)
    # the stress is computed for the structures with a stress label (its value does not matter)
    assert "stress" not in predict(model, _batch([atoms], model), stress=True)
    atoms.info["stress"] = np.zeros(6)
    stress = predict(model, _batch([atoms], model), stress=True)["stress"][0].detach().numpy()
    h = 1e-5
    fd = []
    for i, j in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)):
        e = [float(predict(model, _batch([_strained(atoms, i, j, s * h)], model), forces=False)["energy"][0].detach())
             for s in (1, -1)]
        fd.append((e[0] - e[1]) / (2 * h) / atoms.get_volume())
    fd = np.array(fd)
    assert np.abs(fd).max() > 1e-5  # a stress worth comparing
    np.testing.assert_allclose(stress, fd, rtol=0, atol=1e-7 * np.abs(fd).max())


def test_stress_term_of_the_loss_covers_the_labelled_structures_only(si_splits):
    """In a batch where some structures have no stress label, the stress term is the weight
    times the mean squared Voigt error over the labelled ones; without labels it is absent."""
    from llpr.models.train import _loss

    train = [a.copy() for a in si_splits[0][:4]]
    for a in train[1::2]:
        del a.info["stress"]
    torch.manual_seed(0)
    model = LocalPotential([14], hidden=(8,), n_channels=2).double()
    batch = _batch(train, model)
    assert batch["has_stress"].tolist() == [True, False, True, False]
    out = predict(model, batch, stress=True)
    labelled = [0, 2]
    expected = float(((out["stress"][labelled] - batch["stress"][labelled]) ** 2).mean())
    assert expected > 0
    with_stress, _, _, s_sq, s_n = _loss(model, batch, TrainConfig(stress_weight=250.0), create_graph=False)
    without, _, _, s_sq0, s_n0 = _loss(model, batch, TrainConfig(stress_weight=0.0), create_graph=False)
    assert float(with_stress - without) == pytest.approx(250.0 * expected, rel=1e-10)
    assert s_n == s_n0 == 12 and s_sq == pytest.approx(12 * expected, rel=1e-10)
    unlabelled = [a.copy() for a in train[1::2]]
    loss, _, _, s_sq, s_n = _loss(model, _batch(unlabelled, model), TrainConfig(stress_weight=250.0), False)
    assert (s_sq, s_n) == (0.0, 0) and torch.isfinite(loss)


@pytest.mark.slow
def test_training_with_stress_lowers_the_stress_error(si_splits):
    """The same model, data and seed trained with the default stress weight and with none:
    the stress term lowers the stress RMSE on the test structures, which all have labels
    (periodic cells labelled by LAMMPS); the history and evaluate_errors report it."""
    train, val, test = si_splits
    assert all("stress" in a.info for a in train + val + test)
    errors = {}
    for weight in (0.0, TrainConfig().stress_weight):
        config = TrainConfig(max_epochs=60, batch_size=4, seed=2, dtype="float64", stress_weight=weight,
                             model={"hidden": (16, 16), "n_channels": 4})
        model, history = train_model(train, val, config, progress=False)
        assert all(s is not None and s > 0 for s in history["val_stress_rmse"])
        errors[weight] = evaluate_errors(model, AtomisticDataset(test, model.cutoff, torch.float64))
        assert errors[weight]["n_stress_structures"] == len(test)
    without, with_stress = errors[0.0], errors[TrainConfig().stress_weight]
    assert with_stress["stress_rmse"] < 0.8 * without["stress_rmse"], (with_stress, without)
    # and the stress term does not come at a large cost in forces
    assert with_stress["force_rmse"] < 1.3 * without["force_rmse"], (with_stress, without)


def test_training_stress_is_the_exported_files(small_model, exported_path, si_splits):
    """The stress the loss sees is the one the exported file gives (ASE calculator, from the
    file's virial), to round-off."""
    from llpr.ase import LLPRCalculator

    structures = [a.copy() for a in si_splits[2][:3]]
    stress = predict(small_model, _batch(structures, small_model), stress=True)["stress"].detach().numpy()
    calc = LLPRCalculator(exported_path)
    for k, atoms in enumerate(structures):
        atoms.calc = calc
        np.testing.assert_allclose(stress[k], atoms.get_stress(), rtol=1e-9, atol=1e-12)
