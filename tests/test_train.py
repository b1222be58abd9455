"""Training loop: loss decreases, early stopping, checkpoints."""

from __future__ import annotations

import pytest

from llpr.graphs import AtomisticDataset
from llpr.checkpoint import load_model
from llpr.train import TrainConfig, evaluate_errors, train_model


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
