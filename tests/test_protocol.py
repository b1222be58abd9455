"""The model protocol (llpr.models.protocol) and the checkpoint registry (llpr.models.checkpoint): what is
missing is named, inconsistent metadata are refused, checkpoints rebuild registered classes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llpr.models.checkpoint import load_model, model_payload, read_checkpoint, register_model, save_model
from llpr.models.potential import LocalPotential
from llpr.models.protocol import check_atomistic_model, model_kind
from llpr.models.tabular import MLPRegressor
from llpr.uncertainty.estimator import LLPR


class HalfAtomistic(torch.nn.Module):
    """Has some atomistic items, lacks others."""

    def __init__(self):
        super().__init__()
        self.species = [14]
        self.cutoff = 4.0
        self.readout = torch.nn.Linear(3, 1, bias=False)

    def features(self, x):
        return x


class BiasedReadout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.readout = torch.nn.Linear(3, 1)

    def features(self, x):
        return x


def test_llprs_models_follow_the_protocol():
    assert model_kind(LocalPotential([14], hidden=(8,))) == "atomistic"
    assert model_kind(MLPRegressor(3)) == "tabular"
    potential = LocalPotential([14], hidden=(8,))
    assert potential.receptive_field == potential.cutoff and potential.strictly_local
    assert potential.species_energies().shape == (1,)


def test_missing_items_are_named():
    with pytest.raises(TypeError, match=r"HalfAtomistic is not an llpr atomistic model: it lacks receptive_field, "
                                        r"strictly_local, n_features, readout_weights\(\), species_energies\(\)"):
        LLPR(HalfAtomistic())
    with pytest.raises(TypeError, match=r"follows neither llpr model protocol.*features\(x\)"):
        LLPR(torch.nn.Linear(3, 1))
    with pytest.raises(TypeError, match="bias-free `readout`"):
        LLPR(BiasedReadout())


def test_inconsistent_metadata_are_refused():
    model = LocalPotential([14], hidden=(8,))
    model.receptive_field = 2 * model.cutoff
    with pytest.raises(ValueError, match="says it is strictly local but its receptive field"):
        check_atomistic_model(model)
    model.receptive_field = 0.5 * model.cutoff
    with pytest.raises(ValueError, match="must be at least the cutoff"):
        check_atomistic_model(model)


def test_target_scaling_is_for_tabular_models():
    with pytest.raises(ValueError, match="target_scale and target_shift are for tabular models"):
        LLPR(LocalPotential([14], hidden=(8,)), target_scale=2.0)


def test_registry(tmp_path):
    class Unregistered(MLPRegressor):
        pass

    with pytest.raises(TypeError, match=r"not a registered model class; register it with "
                                        r"llpr.models.checkpoint.register_model\('Unregistered', Unregistered\)"):
        save_model(Unregistered(2), str(tmp_path / "u.ckpt"))
    with pytest.raises(ValueError, match="'MLPRegressor' is already registered"):
        register_model("MLPRegressor", Unregistered)
    with pytest.raises(ValueError, match="already registered as 'MLPRegressor'"):
        register_model("Another", MLPRegressor)
    register_model("MLPRegressor", MLPRegressor)  # the same pair again: nothing changes
    payload = model_payload(MLPRegressor(2))
    payload["class"] = "Nope"
    torch.save(payload, str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match=r"no model class is registered as 'Nope' \(registered: .*LocalPotential"):
        load_model(str(tmp_path / "nope.ckpt"))


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    """A checkpoint whose kind is not llpr's model kind (e.g. one without the class name) is
    refused, saying how to write it again."""
    torch.manual_seed(0)
    model = LocalPotential([14], hidden=(8,)).double()
    payload = model_payload(model)
    payload.pop("class")
    payload["kind"] = "llpr.LocalPotential"
    torch.save(payload, str(tmp_path / "old.ckpt"))
    with pytest.raises(ValueError, match="is not a model checkpoint of this llpr .its kind is 'llpr.LocalPotential', "
                                         "not 'llpr.model'.; write it again with `llpr train`"):
        load_model(str(tmp_path / "old.ckpt"))


def test_cli_calibrate_of_a_tabular_checkpoint_says_what_to_do(tmp_path):
    save_model(MLPRegressor(3), str(tmp_path / "tab.ckpt"))
    assert read_checkpoint(str(tmp_path / "tab.ckpt"))["class"] == "MLPRegressor"
    proc = subprocess.run([sys.executable, "-m", "llpr.cli", "calibrate", "--model", "tab.ckpt", "--train", "x.xyz",
                           "--val", "x.xyz"], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds a MLPRegressor, which is not one" in proc.stderr and "calibrate it from Python" in proc.stderr
