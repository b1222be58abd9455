"""The exported TorchScript file: round trip in a fresh process, ASE calculator, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk

from llpr.ase import LLPRCalculator
from llpr.models.checkpoint import save_model
from llpr.modelfile import export_model, load_exported
from llpr.graphs import AtomisticDataset, collate, make_loader
from llpr.models.train import predict_batch
from llpr.uncertainty.estimator import LLPR

FRESH_PROCESS = r"""
import sys, json, numpy as np, torch
from ase.io import read
from vesin import NeighborList
module = torch.jit.load(sys.argv[1])
atoms = read(sys.argv[2])
i, j, S = NeighborList(cutoff=module.cutoff, full_list=True).compute(
    points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="ijS")
out = module(torch.tensor(atoms.positions), torch.tensor(atoms.numbers),
             torch.tensor(np.stack([i, j]), dtype=torch.long),
             torch.tensor(S @ atoms.cell.array), len(atoms), True, True)
np.savez(sys.argv[3], energy=out["energy"].numpy(), energies=out["energies"].numpy(),
         forces=out["forces"].numpy(), sigma=out["sigma"].numpy(), lpr=out["lpr"].numpy(),
         virial=out["virial"].numpy(),
         energy_sigma=torch.sqrt(module.energy_variance(out["features"].sum(0))).numpy())
print(json.dumps({"species": list(module.species), "cutoff": module.cutoff, "dtype": module.dtype,
                  "energy_unit": module.energy_unit, "length_unit": module.length_unit,
                  "version": module.llpr_format_version, "calibration": json.loads(module.calibration)}))
"""


def _in_memory(llpr, atoms):
    batch = collate([AtomisticDataset([atoms], llpr.model.cutoff, torch.float64, require_labels=False)[0]])
    energy, forces = predict_batch(llpr.model, batch, forces=True)
    pred = llpr.predict(batch)
    return energy.detach(), forces.detach(), pred


@pytest.fixture()
def test_atoms(si_splits):
    return si_splits[2][1].copy()


def test_round_trip_in_fresh_process(small_llpr, exported_path, test_atoms, tmp_path):
    test_atoms.write(tmp_path / "s.traj")  # full-precision positions
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, exported_path, str(tmp_path / "s.traj"), str(tmp_path / "o.npz")],
        capture_output=True,
        text=True,
        check=True,
    )
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert meta["species"] == [14]
    assert meta["dtype"] == "float64"
    assert meta["energy_unit"] == "eV" and meta["length_unit"] == "Angstrom"
    assert meta["version"] == 2
    assert meta["calibration"]["alpha"] == pytest.approx(small_llpr.alpha, rel=1e-15)
    assert meta["calibration"]["feature_reduction"] == "sum"
    got = np.load(tmp_path / "o.npz")
    energy, forces, pred = _in_memory(small_llpr, test_atoms)
    np.testing.assert_allclose(got["energy"], energy.numpy()[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["energies"], pred["atom_energies"].numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["forces"], forces.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["sigma"], pred["atom_sigma"].numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got["lpr"], pred["lpr"].numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got["energy_sigma"], pred["sigma"].numpy(), rtol=1e-12, atol=0)


def test_ase_calculator_equals_in_memory_model(small_llpr, exported_path, test_atoms):
    calc = LLPRCalculator(exported_path)
    test_atoms.calc = calc
    energy, forces, pred = _in_memory(small_llpr, test_atoms)
    assert test_atoms.get_potential_energy() == pytest.approx(float(energy[0]), abs=1e-12)
    np.testing.assert_allclose(test_atoms.get_forces(), forces.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(calc.results["sigma"], pred["atom_sigma"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(calc.results["lpr"], pred["lpr"].numpy(), rtol=1e-12)
    assert calc.results["energy_sigma"] == pytest.approx(float(pred["sigma"][0]), rel=1e-12)
    np.testing.assert_allclose(test_atoms.get_potential_energies(), pred["atom_energies"].numpy(), atol=1e-12)


def test_ase_stress_is_strain_derivative(exported_path):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.05, seed=2)
    atoms.set_cell(atoms.cell.array + np.array([[0.0, 0.1, 0.0], [0.05, 0.0, 0.0], [0.0, 0.0, 0.2]]), scale_atoms=True)
    atoms.calc = LLPRCalculator(exported_path)
    stress = atoms.get_stress(voigt=False)
    h = 1e-5
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] = sign * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                strained.calc = LLPRCalculator(exported_path)
                e.append(strained.get_potential_energy())
            numeric[a, b] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(stress, 0.5 * (numeric + numeric.T), atol=1e-7)


def test_forces_are_minus_energy_gradient(exported_path):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.1, seed=4)
    atoms.calc = LLPRCalculator(exported_path)
    forces = atoms.get_forces()
    h = 1e-5
    for i, c in [(0, 0), (3, 1), (7, 2)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, c] += sign * h
            moved.calc = LLPRCalculator(exported_path)
            e.append(moved.get_potential_energy())
        assert forces[i, c] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-7)


def test_float32_export(small_llpr, tmp_path, test_atoms):
    path = export_model(small_llpr, str(tmp_path / "m32.pt"), dtype=torch.float32)
    module = load_exported(path)
    assert module.dtype == "float32"
    assert module.head.cholesky.dtype == torch.float64 and module.head.inverse_factor_t.dtype == torch.float64
    calc = LLPRCalculator(path)
    test_atoms.calc = calc
    energy, forces, pred = _in_memory(small_llpr, test_atoms)
    assert test_atoms.get_potential_energy() == pytest.approx(float(energy[0]), abs=1e-3)
    np.testing.assert_allclose(calc.results["sigma"], pred["atom_sigma"].numpy(), rtol=1e-3)
    # the original model was not converted in place
    assert next(small_llpr.model.parameters()).dtype == torch.float64


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_exported(str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError):
        LLPRCalculator(str(tmp_path / "nope.pt"))


def test_corrupt_model_file(tmp_path, exported_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(open(exported_path, "rb").read()[:2000])
    with pytest.raises(ValueError, match="is damaged .*truncated"):
        load_exported(str(bad))
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable TorchScript file"):
        load_exported(str(text))


def test_torchscript_without_llpr_data(tmp_path, small_model):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(small_model), str(path))
    with pytest.raises(ValueError, match="not a valid llpr model: missing .*head"):
        load_exported(str(path))


def test_export_before_calibration(small_model, si_splits, tmp_path):
    with pytest.raises(RuntimeError, match="fit"):
        export_model(LLPR(small_model), str(tmp_path / "m.pt"))
    fitted = LLPR(small_model).fit(
        make_loader(AtomisticDataset(si_splits[0][:3], small_model.cutoff, torch.float64))
    )
    with pytest.raises(RuntimeError, match="calibrate"):
        export_model(fitted, str(tmp_path / "m.pt"))
    with pytest.raises(TypeError, match="llpr.LLPR"):
        export_model(small_model, str(tmp_path / "m.pt"))


def test_export_to_missing_folder(small_llpr, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(small_llpr, str(tmp_path / "no" / "such" / "m.pt"))


def test_calculator_unknown_element(exported_path):
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.numbers[3] = 6
    atoms.calc = LLPRCalculator(exported_path)
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[6\]"):
        atoms.get_potential_energy()


def test_exported_head_is_the_calibrated_llpr(small_llpr, exported_path):
    """The file's head carries L with L L^T = F^T F + varsigma^2 I, its inverse, alpha and
    varsigma of the estimator, and gives the estimator's uncertainties."""
    module = load_exported(exported_path)
    head = module.head
    n = module.n_features
    C = small_llpr.covariance_ + small_llpr.varsigma**2 * torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(head.cholesky @ head.cholesky.t(), C, rtol=1e-12, atol=1e-12 * float(C.abs().max()))
    torch.testing.assert_close(head.cholesky @ head.inverse_factor_t.t(), torch.eye(n, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    assert float(head.alpha) == small_llpr.alpha and float(head.varsigma) == small_llpr.varsigma
    f = torch.randn(7, n, dtype=torch.float64)
    torch.testing.assert_close(module.energy_variance(f), small_llpr.variance(f), rtol=1e-13, atol=0)


def test_checkpoint_instead_of_exported_file(small_model, tmp_path):
    save_model(small_model, str(tmp_path / "model.ckpt"))
    with pytest.raises(ValueError, match=r"PyTorch checkpoint .*llpr export"):
        load_exported(str(tmp_path / "model.ckpt"))
