"""The model protocol with a second atomistic model (tests/pairwise_model.py, a radial-only
pair network registered here): train -> checkpoint -> fit -> calibrate -> save/load -> export
-> LAMMPS on 1 rank (in-process) and 2 ranks (mpirun), against the Python reference, with no
line of code for this model outside its own module; and its message-passing variant, which
is exported with its receptive field and evaluated in one block (in LAMMPS:
tests/test_lammps_message_passing.py)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from lammps_helpers import (
    compare,
    label_randomly,
    lammps_module_marks,
    lammps_script,
    MPIRUN,
    reference,
    run_in_process,
    si_diamond,
    sic_triclinic,
    sic_zincblende,
    subprocess_results,
    write_data,
)
from llpr.models.checkpoint import load_model, read_checkpoint, register_model
from llpr.modelfile import export_model, load_exported
from llpr.graphs import AtomisticDataset, graph_tensors, make_loader
from llpr.lammps.plugin import check_model
from llpr.models.train import TrainConfig, train_model
from llpr.uncertainty.estimator import LLPR, load_llpr, save_llpr
from pairwise_model import PairwiseModel

pytestmark = lammps_module_marks()

register_model("PairwiseModel", PairwiseModel)

SPECIES = [6, 14]
# structure, element order of the LAMMPS types
CASES = {
    "si_periodic_64": (lambda: si_diamond((2, 2, 2), rattle=0.08, seed=31), ["Si"]),
    "sic_triclinic": (lambda: sic_triclinic(seed=32), ["Si", "C"]),
}


def _labelled(n, seed):
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n):
        atoms = sic_zincblende(rattle=0.15, seed=seed + k)
        atoms.numbers = rng.choice(SPECIES, size=len(atoms))
        label_randomly(atoms, rng)
        structures.append(atoms)
    return structures


def _loader(structures, cutoff):
    return make_loader(AtomisticDataset(structures, cutoff, torch.float64), 8)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairwise")
    torch.manual_seed(0)
    train, val = _labelled(16, 0), _labelled(8, 100)
    # built by train_model from its registered name, with the training set's species
    config = TrainConfig(max_epochs=2, batch_size=4, dtype="float64", seed=0, model_class="PairwiseModel",
                         model={"cutoff": 3.5})
    trained, _ = train_model(train, val, config, checkpoint=str(d / "model.ckpt"), progress=False)
    model = load_model(str(d / "model.ckpt"))
    llpr = LLPR(model).fit(_loader(train, model.cutoff)).calibrate(_loader(val, model.cutoff))
    save_llpr(llpr, str(d / "llpr.ckpt"))
    path = export_model(load_llpr(str(d / "llpr.ckpt")), str(d / "pairwise.pt"))
    return {"dir": d, "trained": trained, "model": model, "llpr": llpr, "path": path}


def test_checkpoints_rebuild_the_registered_class(pipeline):
    payload = read_checkpoint(str(pipeline["dir"] / "model.ckpt"))
    assert payload["class"] == "PairwiseModel" and payload["config"]["species"] == SPECIES
    model = pipeline["model"]
    assert type(pipeline["trained"]) is PairwiseModel and type(model) is PairwiseModel
    # training fitted the per-species constants through set_species_energies
    assert float(model.species_energies().abs().sum()) > 0
    for name, value in pipeline["trained"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    again = load_llpr(str(pipeline["dir"] / "llpr.ckpt"))
    assert type(again.model) is PairwiseModel and again.alpha == pipeline["llpr"].alpha


def test_exported_file_carries_the_models_metadata(pipeline):
    meta = check_model(pipeline["path"])
    assert meta["species"] == SPECIES and meta["cutoff"] == 3.5 and meta["receptive_field"] == 3.5
    module = load_exported(pipeline["path"])
    assert module.strictly_local and module.n_features == pipeline["model"].n_features
    # the exported head gives the estimator's uncertainty on a structure
    atoms = sic_triclinic(seed=33)
    ref = reference(pipeline["path"], atoms)
    batch = next(iter(make_loader(AtomisticDataset([atoms], 3.5, torch.float64, require_labels=False), 1)))
    out = pipeline["llpr"].predict(batch)
    assert abs(out["prediction"][0] - ref["energy"]) < 1e-12
    np.testing.assert_allclose(out["atom_sigma"].numpy(), ref["sigma"], rtol=1e-12, atol=0)
    assert abs(float(out["sigma"][0]) - ref["energy_sigma"]) < 1e-12 * ref["energy_sigma"]


@pytest.mark.parametrize("case", list(CASES))
def test_lammps_one_rank_matches_reference(pipeline, tmp_path, case):
    make, elements = CASES[case]
    atoms = make()
    ref = reference(pipeline["path"], atoms)
    dev = compare(run_in_process(tmp_path, pipeline["path"], atoms, elements, post="run 0"), ref, tol=1e-10)
    print(case, "1 rank", {k: f"{v:.1e}" for k, v in dev.items()})


@pytest.mark.mpi
@pytest.mark.skipif(not os.path.exists(MPIRUN) and shutil.which("mpirun") is None, reason="no mpirun")
@pytest.mark.parametrize("case", list(CASES))
def test_lammps_two_ranks_match_reference(pipeline, tmp_path, case):
    make, elements = CASES[case]
    atoms = make()
    ref = reference(pipeline["path"], atoms)
    data = write_data(atoms, tmp_path / "data.lmp", elements)
    res = subprocess_results(lammps_script(pipeline["path"], data, elements), tmp_path, 2)
    assert "2 by 1 by 1 MPI processor grid" in res["stdout"] or "1 by 2 by 1" in res["stdout"] \
        or "1 by 1 by 2" in res["stdout"]
    dev = compare(res, ref, tol=1e-10)
    print(case, "2 ranks", {k: f"{v:.1e}" for k, v in dev.items()})


# ------------------------------------------------------------------ the message-passing variant
@pytest.fixture(scope="module")
def message_passing(tmp_path_factory):
    torch.manual_seed(1)
    model = PairwiseModel(SPECIES, message_passing=True).double()
    structures = _labelled(12, 200)
    llpr = LLPR(model).fit(_loader(structures[:8], model.cutoff)).calibrate(_loader(structures[8:], model.cutoff))
    return export_model(llpr, str(tmp_path_factory.mktemp("mp") / "mp.pt"))


def _evaluate(module, atoms):
    g = graph_tensors(atoms, module.cutoff, torch.float64)
    return module.evaluate(g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"], len(atoms),
                           True, False)


def test_message_passing_model_is_exported_with_its_receptive_field(message_passing):
    module = load_exported(message_passing)
    assert module.receptive_field == 2 * module.cutoff and not module.strictly_local
    atoms = sic_triclinic(seed=34)
    whole = _evaluate(module, atoms)
    # blocks of one centre would cut the neighbours' messages; a model that is not strictly
    # local runs in one block whatever chunk_centers says
    module.chunk_centers = 1
    blocked = _evaluate(module, atoms)
    for key in ("energies", "forces", "features"):
        torch.testing.assert_close(blocked[key], whole[key], rtol=0, atol=1e-14)
    module.strictly_local = True
    wrongly_blocked = _evaluate(module, atoms)
    assert float((wrongly_blocked["features"] - whole["features"]).abs().max()) > 1e-3

