"""Shared fixtures: a small labelled silicon dataset and a small fitted, calibrated and
exported model (float64), built once per test session."""

from __future__ import annotations

import pytest
import torch

# one thread: the test systems are small, and OpenMP threads that wait on a core another
# process holds make every parallel region crawl (the in-process LAMMPS runs share them)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def si_structures():
    from llpr.lammps.sampling import generate_dataset

    return generate_dataset(potential="sw", n_per_type=4, seed=123, progress=False)


@pytest.fixture(scope="session")
def si_splits(si_structures):
    from llpr.data import split_dataset

    return split_dataset(si_structures, (0.6, 0.2, 0.2), seed=0)


@pytest.fixture(scope="session")
def small_model(si_splits):
    """A small float64 potential trained for a few epochs (enough to have meaningful,
    non-random features; accuracy is not the point here)."""
    from llpr.models.train import TrainConfig, train_model

    train, val, _ = si_splits
    config = TrainConfig(
        max_epochs=4, batch_size=4, dtype="float64", seed=0, model={"hidden": (24, 16), "n_channels": 4}
    )
    model, _ = train_model(train, val, config, progress=False)
    return model


@pytest.fixture(scope="session")
def small_llpr(small_model, si_splits):
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.uncertainty.estimator import LLPR

    train, val, _ = si_splits
    llpr = LLPR(small_model)
    train_loader = make_loader(AtomisticDataset(train, small_model.cutoff, torch.float64), 8)
    llpr.fit(train_loader)
    llpr.calibrate(make_loader(AtomisticDataset(val, small_model.cutoff, torch.float64), 8), train_loader=train_loader)
    return llpr


@pytest.fixture(scope="session")
def exported_path(small_llpr, tmp_path_factory):
    from llpr.modelfile import export_model

    path = tmp_path_factory.mktemp("export") / "model.pt"
    export_model(small_llpr, str(path))
    return str(path)
