"""Pretrained MACE models through llpr (llpr.models.mace): the feature convention against MACE's own
node energies, the exported file against MACE's own ASE calculator, the command line
(calibrate -> export -> check), the streamed and distributed covariance, and the messages for
bad input. The LAMMPS side (message passing) is in test_lammps_mace.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mace", reason="mace-torch is not installed (pip install llpr[mace])")

from ase.io import write  # noqa: E402

from lammps_helpers import sic_triclinic, sic_zincblende, si_diamond  # noqa: E402
from mace_models import make_mace, save_mace  # noqa: E402
from llpr.ase import LLPRCalculator  # noqa: E402
from llpr.data import read_dataset  # noqa: E402
from llpr.graphs import AtomisticDataset, StreamingDataset, graph_tensors, make_loader  # noqa: E402
from llpr.models.mace import MACEModel, mace_file_kind, read_mace  # noqa: E402
from llpr.modelfile import export_model  # noqa: E402
from llpr.uncertainty.estimator import LLPR, load_llpr  # noqa: E402

BIN = os.path.dirname(sys.executable)


def mace_calculator(path, atoms):
    from mace.calculators import MACECalculator

    atoms = atoms.copy()
    atoms.calc = MACECalculator(model_paths=path, device="cpu", default_dtype="float64")
    return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
            "stress": atoms.get_stress() if atoms.pbc.all() else None,
            "node_energy": atoms.calc.results["node_energy"]}


def labelled(n, seed, species=(6, 14), keys=("energy", "forces")):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = sic_zincblende(rattle=0.12, seed=seed + k) if len(species) == 2 else si_diamond(rattle=0.12, seed=seed + k)
        atoms.info[keys[0]] = float(rng.normal()) - 5.0 * len(atoms)
        atoms.arrays[keys[1]] = rng.normal(size=(len(atoms), 3))
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def sic_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mace_sic")
    return save_mace(make_mace([6, 14], seed=1, pair_repulsion=True), d)


@pytest.fixture(scope="module")
def si_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mace_si")
    return save_mace(make_mace([14], seed=2), d)


def _adapter_outputs(model, atoms):
    g = graph_tensors(atoms, model.cutoff, torch.float64)
    vectors = g["positions"][g["edge_index"][1]] - g["positions"][g["edge_index"][0]] + g["edge_shifts"]
    with torch.no_grad():
        return model(g["atomic_numbers"], g["edge_index"], vectors, len(atoms))


@pytest.mark.parametrize("which", ["sic", "si"])
def test_readout_of_features_is_mace_node_energy(which, sic_files, si_files):
    pickled, compiled = sic_files if which == "sic" else si_files
    atoms = sic_triclinic(seed=3) if which == "sic" else si_diamond((2, 1, 1), rattle=0.1, seed=4)
    model = MACEModel.from_file(compiled)
    energies, features = _adapter_outputs(model, atoms)
    assert features.shape == (len(atoms), model.n_features) and features.dtype == torch.float64
    # MACE's own per-atom energy: E0 + shift + scale (pair + read-outs)
    ref = mace_calculator(pickled, atoms)
    own = torch.load(pickled, weights_only=False)
    e0 = own.atomic_energies_fn.atomic_energies.detach().numpy().reshape(-1)
    index = np.searchsorted(model.species, atoms.numbers)
    node = ref["node_energy"] + e0[index]
    w, b = model.readout_weights(), model.species_energies()
    readout = (features @ w + b[torch.as_tensor(index)]).numpy()
    pair = energies.numpy() - readout  # the ZBL repulsion is outside the features
    if which == "si":
        assert np.abs(pair).max() == 0.0
    assert np.abs(readout + pair - node).max() < 1e-12
    assert abs(float(energies.sum()) - ref["energy"]) < 1e-10
    # the pickle and the compiled file give the same model
    from_pickle = MACEModel.from_file(pickled, allow_pickle=True)
    torch.testing.assert_close(_adapter_outputs(from_pickle, atoms)[1], features, rtol=0, atol=1e-13)


def _calibrated(compiled, species=(6, 14), ensemble=4, tmp=None):
    model = MACEModel.from_file(compiled)
    train = AtomisticDataset(labelled(6, 0, species), model.cutoff, torch.float64)
    val = AtomisticDataset(labelled(4, 40, species), model.cutoff, torch.float64)
    llpr = LLPR(model).fit(make_loader(train, 4)).calibrate(make_loader(val, 4))
    return llpr, export_model(llpr, str(tmp / "mace_llpr.pt"), ensemble=ensemble)


@pytest.mark.parametrize("structure", ["triclinic", "orthogonal", "small_cell"])
def test_exported_file_equals_mace_calculator(structure, sic_files, tmp_path):
    pickled, compiled = sic_files
    llpr, path = _calibrated(compiled, tmp=tmp_path)
    atoms = {"triclinic": lambda: sic_triclinic(seed=5),
             "orthogonal": lambda: sic_zincblende((2, 1, 1), rattle=0.1, seed=6),
             # 2 atoms, cell edges (3.1 A) shorter than the cutoff and the receptive field (8 A)
             "small_cell": lambda: __import__("ase.build", fromlist=["bulk"]).bulk("SiC", "zincblende", 4.36)}[structure]()
    if structure == "small_cell":
        atoms.rattle(0.05, seed=7)
    ref = mace_calculator(pickled, atoms)
    atoms.calc = LLPRCalculator(path, ensemble=True)
    assert abs(atoms.get_potential_energy() - ref["energy"]) < 1e-10
    assert np.abs(atoms.get_forces() - ref["forces"]).max() < 1e-10
    assert np.abs(atoms.get_stress() - ref["stress"]).max() < 1e-10
    res = atoms.calc.results
    # sigma_i and the global sigma equal the Python estimator's
    feats = _adapter_outputs(llpr.model, atoms)[1]
    sigma, lpr = llpr.local_uncertainty(feats)
    head = llpr.head()
    assert np.abs(res["sigma"] - sigma.numpy()).max() < 1e-10 * max(1.0, float(sigma.max()))
    assert np.allclose(res["lpr"], lpr.numpy(), rtol=1e-10, atol=0)
    total = float(torch.sqrt(head.energy_variance(feats.sum(0))).reshape(-1)[0])
    assert abs(res["energy_sigma"] - total) < 1e-10 * total
    assert res["force_sigma"].shape == (len(atoms),) and (res["force_sigma"] > 0).all()


def test_finite_difference_forces_of_the_exported_file(sic_files, tmp_path):
    _, path = _calibrated(sic_files[1], ensemble=0, tmp=tmp_path)
    atoms = sic_triclinic(seed=8)
    atoms.calc = LLPRCalculator(path)
    forces = atoms.get_forces()
    h = 1e-5
    for i, c in [(0, 0), (3, 2), (9, 1)]:
        e = []
        for s in (1, -1):
            moved = atoms.copy()
            moved.positions[i, c] += s * h
            moved.calc = LLPRCalculator(path)
            e.append(moved.get_potential_energy())
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[i, c]) < 1e-6


def test_empty_structure_gives_what_the_native_model_gives(sic_files, tmp_path):
    """An empty Atoms has zero energy and empty per-atom results with a MACE file as with
    llpr's own models; MACE's blocks used to fail on zero nodes with an internal TorchScript
    error."""
    from ase import Atoms

    from lammps_helpers import make_model

    native = make_model(tmp_path / "native.pt", species=(6, 14), seed=0, n_structures=9, ensemble=4,
                        gamma=False)  # as _calibrated
    _, path = _calibrated(sic_files[1], tmp=tmp_path)
    for empty in (Atoms(), Atoms(cell=[5.0, 5.0, 5.0], pbc=True)):
        results = []
        for file in (native, path):
            atoms = empty.copy()
            atoms.calc = LLPRCalculator(str(file), ensemble=True)
            assert atoms.get_potential_energy() == 0.0 and atoms.get_forces().shape == (0, 3)
            results.append(atoms.calc.results)
        assert results[0].keys() == results[1].keys()
        for key, value in results[0].items():
            assert np.shape(value) == np.shape(results[1][key]) and np.all(np.asarray(results[1][key]) == 0.0), key
    # the file called with no centres among atoms that are there (ghost atoms only): no
    # energies, zero forces
    g = graph_tensors(sic_zincblende(), 4.0, torch.float64)
    out = torch.jit.load(path)(*g.values(), 0, True, True)
    assert out["energies"].shape == (0,) and out["features"].shape == (0, 16)
    assert float(out["energy"]) == 0.0 and not bool(out["forces"].any()) and not bool(out["virial"].any())


@pytest.mark.slow
def test_cli_calibrate_export_check_with_mace_keys(sic_files, tmp_path):
    _, compiled = sic_files
    write(tmp_path / "train.xyz", labelled(6, 0, keys=("REF_energy", "REF_forces")))
    write(tmp_path / "val.xyz", labelled(4, 40, keys=("REF_energy", "REF_forces")))
    llpr_cli = os.path.join(BIN, "llpr")
    run = lambda *a: subprocess.run([llpr_cli, *a], capture_output=True, text=True, cwd=tmp_path)  # noqa: E731
    res = run("-q", "calibrate", "--model", compiled, "--train", "train.xyz", "--val", "val.xyz",
              "--energy-key", "REF_energy", "--forces-key", "REF_forces", "-o", "llpr.ckpt")
    assert res.returncode == 0, res.stderr
    assert "fitted F^T F on 6 structures; calibrated (energy) on 4" in res.stdout and "training atoms" in res.stdout
    res = run("export", "llpr.ckpt", "--ensemble", "4", "-o", "mace.pt")
    assert res.returncode == 0, res.stderr
    res = run("check", "mace.pt")
    assert res.returncode == 0, res.stderr
    assert "'architecture': 'MACE'" in res.stdout and "'layers': 2" in res.stdout
    assert "'r_max': 4.0" in res.stdout and "receptive_field      8.0" in res.stdout
    # without the keys, the message names them
    res = run("calibrate", "--model", compiled, "--train", "train.xyz", "--val", "val.xyz")
    assert res.returncode == 2 and "--energy-key" in res.stderr


def test_streamed_fit_equals_in_memory_fit(sic_files, tmp_path):
    model = MACEModel.from_file(sic_files[1])
    write(tmp_path / "train.xyz", labelled(7, 0))
    structures = read_dataset(str(tmp_path / "train.xyz"))  # as written (extxyz rounds positions)
    memory = LLPR(model).fit(make_loader(AtomisticDataset(structures, model.cutoff, torch.float64), 3))
    streamed = LLPR(model).fit(make_loader(StreamingDataset(str(tmp_path / "train.xyz"), model.cutoff,
                                                            torch.float64), 2))
    torch.testing.assert_close(streamed.covariance_, memory.covariance_, rtol=1e-13, atol=0)
    assert streamed.n_train_samples_ == memory.n_train_samples_ == 7
    # shards of two ranks add up to the whole set
    parts = [LLPR(model).fit(make_loader(StreamingDataset(str(tmp_path / "train.xyz"), model.cutoff, torch.float64,
                                                          rank=r, world_size=2), 2)) for r in (0, 1)]
    assert [p.n_train_samples_ for p in parts] == [4, 3]
    torch.testing.assert_close(parts[0].covariance_ + parts[1].covariance_, memory.covariance_, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_torchrun_two_processes_give_the_serial_covariance(sic_files, tmp_path):
    _, compiled = sic_files
    write(tmp_path / "train.xyz", labelled(7, 0))
    write(tmp_path / "val.xyz", labelled(3, 40))
    common = ["calibrate", "--model", compiled, "--train", "train.xyz", "--val", "val.xyz", "--batch-size", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    serial = subprocess.run([os.path.join(BIN, "llpr"), "-q", *common, "-o", "serial.ckpt"], capture_output=True,
                            text=True, cwd=tmp_path, env=env)
    assert serial.returncode == 0, serial.stderr
    dist = subprocess.run([os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", "29611",
                           "-m", "llpr.cli", "-q", *common, "-o", "dist.ckpt"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = load_llpr(str(tmp_path / "serial.ckpt")), load_llpr(str(tmp_path / "dist.ckpt"))
    assert a.n_train_samples_ == b.n_train_samples_ == 7
    scale = float(a.covariance_.abs().max())
    assert float((a.covariance_ - b.covariance_).abs().max()) <= 1e-12 * scale
    assert abs(a.calibration_.alpha - b.calibration_.alpha) <= 1e-8 * a.calibration_.alpha
    # the extrapolation grade's max q: each process passes its share of the atoms, the maximum is all-reduced
    assert a.n_train_atoms_ == b.n_train_atoms_ == sum(len(s) for s in read_dataset(str(tmp_path / "train.xyz")))
    assert abs(a.max_train_q_ - b.max_train_q_) <= 1e-8 * a.max_train_q_


# ----------------------------------------------------------------------------- bad input
def test_pickle_needs_explicit_opt_in(sic_files):
    pickled, compiled = sic_files
    assert mace_file_kind(pickled) == "pickle" and mace_file_kind(compiled) == "torchscript"
    with pytest.raises(ValueError, match=r"is a Python pickle .* runs code .*_compiled.model.*allow_pickle=True"):
        MACEModel.from_file(pickled)


def test_multi_head_model_needs_a_head(tmp_path):
    _, compiled = save_mace(make_mace([14], seed=3, heads=["pbe", "r2scan"]), tmp_path)
    with pytest.raises(ValueError, match=r"multi-head MACE model \(heads pbe, r2scan\); choose one with head="):
        MACEModel.from_file(compiled)
    with pytest.raises(ValueError, match=r"has no head 'hse'; its heads are pbe, r2scan"):
        MACEModel.from_file(compiled, head="hse")
    # each head's read-out of its features is that head's MACE node energy
    atoms = si_diamond(rattle=0.1, seed=9)
    own = torch.load(str(tmp_path / "mace.model"), weights_only=False)
    for k, head in enumerate(["pbe", "r2scan"]):
        model = MACEModel.from_file(compiled, head=head)
        energies, features = _adapter_outputs(model, atoms)
        from mace.data import AtomicData, config_from_atoms
        from mace.tools import torch_geometric, utils

        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # MACE's data follow the default dtype
        try:
            config = config_from_atoms(atoms, head_name=head)
            data = AtomicData.from_config(config, z_table=utils.AtomicNumberTable([14]), cutoff=4.0,
                                          heads=["pbe", "r2scan"])
            batch = next(iter(torch_geometric.dataloader.DataLoader([data], batch_size=1)))
            out = own(batch.to_dict(), compute_force=False)
        finally:
            torch.set_default_dtype(previous)
        assert np.abs(energies.numpy() - out["node_energy"].detach().numpy()).max() < 1e-12, head


def test_float32_model_when_float64_is_asked(tmp_path):
    _, compiled = save_mace(make_mace([14], seed=4, dtype=torch.float32), tmp_path)
    with pytest.raises(ValueError, match=r"is a float32 MACE model but float64 was asked for"):
        MACEModel.from_file(compiled, dtype="float64")
    assert MACEModel.from_file(compiled).weights.dtype == torch.float32
    res = subprocess.run([os.path.join(BIN, "llpr"), "calibrate", "--model", compiled, "--dtype", "float64",
                          "--train", "t.xyz", "--val", "v.xyz"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "is a float32 MACE model but float64 was asked for" in res.stderr


def test_element_missing_from_the_model(si_files):
    model = MACEModel.from_file(si_files[1])
    with pytest.raises(ValueError, match=r"element the MACE model does not know; it knows \[14\]"):
        _adapter_outputs(model, sic_zincblende())


def test_file_that_is_neither_mace_nor_llpr(tmp_path, sic_files):
    other = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(other, str(tmp_path / "linear.pt"))
    with pytest.raises(ValueError, match=r"is a TorchScript file but not a MACE model"):
        read_mace(str(tmp_path / "linear.pt"))
    (tmp_path / "notes.txt").write_text("hello")
    res = subprocess.run([os.path.join(BIN, "llpr"), "calibrate", "--model", str(tmp_path / "notes.txt"),
                          "--train", "t.xyz", "--val", "v.xyz"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "--model takes an `llpr train` checkpoint or a MACE model file" in res.stderr


def test_calibrating_without_mace_installed(sic_files, tmp_path):
    code = ("import sys; sys.modules['mace'] = None\n"
            "from llpr.cli import main\n"
            f"sys.exit(main(['calibrate', '--model', {sic_files[1]!r}, '--train', 't.xyz', '--val', 'v.xyz']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2
    assert "needs the mace-torch package, which is not installed: install it with `pip install llpr[mace]`" \
        in res.stderr
