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


# ------------------------------------------------------------------- LAMMPS model files, shared
# Built once per session: several LAMMPS modules (and tests/test_lammps_consistency.py, which
# holds the proofs they share: finite-difference forces, NVE, N ranks = 1 rank) use each set.
@pytest.fixture(scope="session")
def native_lammps_models(tmp_path_factory):
    """The native LocalPotential files "si" and "sic" (lammps_helpers.si_and_sic_models)."""
    from lammps_helpers import si_and_sic_models

    return si_and_sic_models(tmp_path_factory.mktemp("lammps_models"))


@pytest.fixture(scope="session")
def message_passing_models(tmp_path_factory):
    """"si": cutoff 4 A (the second neighbour shell of diamond, 3.84 A, inside it), trained
    briefly on Stillinger-Weber labels of rattled diamond cells (stable MD); "sic": cutoff 3.5 A,
    untrained (C and Si); both pass messages and carry a K-member ensemble (K = 8). "local": the
    pair network without message passing."""
    from lammps_helpers import make_model, si_diamond
    from llpr.models.checkpoint import register_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.lammps.labelling import label_structures
    from llpr.modelfile import export_model
    from llpr.models.train import TrainConfig, train_model
    from llpr.uncertainty.estimator import LLPR
    from pairwise_model import PairwiseModel

    d = tmp_path_factory.mktemp("message_passing")
    register_model("PairwiseModel", PairwiseModel)
    labelled = label_structures([si_diamond(rattle=0.05 + 0.01 * k, seed=100 + k) for k in range(24)], "sw")
    config = TrainConfig(max_epochs=30, batch_size=4, learning_rate=1e-2, dtype="float64", seed=0,
                         model_class="PairwiseModel", model={"cutoff": 4.0, "message_passing": True})
    model, _ = train_model(labelled[:18], labelled[18:], config, progress=False)
    assert model.receptive_field == 8.0 and not model.strictly_local
    loaders = [make_loader(AtomisticDataset(part, model.cutoff, torch.float64), 8) for part in (labelled[:18], labelled[18:])]
    llpr = LLPR(model).fit(loaders[0]).calibrate(loaders[1])
    return {
        "si": export_model(llpr, str(d / "si.pt"), ensemble=8, seed=1),
        "sic": make_model(d / "sic.pt", species=(6, 14), seed=1, n_structures=12, ensemble=8, ensemble_seed=2,
                          model_class=PairwiseModel, message_passing=True),
        "local": make_model(d / "local.pt", species=(14,), seed=0, n_structures=12, model_class=PairwiseModel),
    }


@pytest.fixture(scope="session")
def mace_lammps_models(tmp_path_factory):
    """Exported llpr files of a Si MACE (r_max 3.5 A, receptive field 7 A) and of a SiC MACE
    with ZBL repulsion (r_max 4 A), each beside the MACE pickle the oracle reads; with a
    last-layer ensemble of 4."""
    pytest.importorskip("mace", reason="mace-torch is not installed (pip install llpr[mace])")
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.mace import MACEModel
    from llpr.modelfile import export_model
    from llpr.uncertainty.estimator import LLPR
    from mace_models import make_mace, save_mace
    from test_mace import labelled

    d = tmp_path_factory.mktemp("lammps_mace")
    out = {}
    for name, species, kwargs in (("si", [14], {"r_max": 3.5, "seed": 5}),
                                  ("sic", [6, 14], {"seed": 6, "pair_repulsion": True})):
        folder = d / name
        folder.mkdir()
        pickled, compiled = save_mace(make_mace(species, **kwargs), folder)
        model = MACEModel.from_file(compiled)
        loaders = [make_loader(AtomisticDataset(labelled(n, seed, species), model.cutoff, torch.float64), 4)
                   for n, seed in ((6, 0), (4, 40))]
        llpr = LLPR(model).fit(loaders[0]).calibrate(loaders[1])
        out[name] = {"pickle": pickled, "file": export_model(llpr, str(folder / f"{name}.pt"), ensemble=4)}
    return out
