"""llpr._core (the C++ core the LAMMPS plugin uses) against the Python reference, model-file
validation, and the plugin location helpers."""

from __future__ import annotations

import importlib.metadata
import os
from typing import Tuple

import numpy as np
import pytest
import torch

from lammps_helpers import make_model, reference, si_and_sic_models, sic_cluster, sic_triclinic, si_diamond

core = pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

TOL = 1e-10
KEYS = ("energies", "forces", "virial", "virial_atom", "features", "sigma", "lpr")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("core_models")
    return {
        **si_and_sic_models(d),
        "sic32": make_model(d / "sic32.pt", species=(6, 14), seed=1, dtype=torch.float32),
        "dir": d,
    }


STRUCTURES = {
    "si_small_periodic_box": lambda: si_diamond(rattle=0.1, seed=1),
    "sic_triclinic": sic_triclinic,
    "sic_cluster": sic_cluster,
}


def _run_core(path, ref, device="cpu"):
    g = ref["graph"]
    model = core.Model(path, device)
    return model.compute(g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"])


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_core_matches_python_reference(models, name):
    atoms = STRUCTURES[name]()
    path = models["si"] if set(atoms.numbers) == {14} else models["sic"]
    ref = reference(path, atoms)
    out = _run_core(path, ref)
    assert abs(out["energy"] - ref["energy"]) < TOL
    for key in KEYS:
        np.testing.assert_allclose(out[key], ref[key], rtol=0, atol=TOL * max(1.0, np.abs(ref[key]).max()), err_msg=key)
    assert abs(out["energy_sigma"] - ref["energy_sigma"]) < TOL
    # per-atom sigma is the quadratic form of each atom's own feature
    assert np.all(out["sigma"] > 0) and np.all(out["lpr"] > 0)


def test_float32_model_matches_python(models):
    atoms = sic_triclinic(seed=2)
    ref = reference(models["sic32"], atoms)
    out = _run_core(models["sic32"], ref)
    assert core.check(models["sic32"])["dtype"] == "float32"
    np.testing.assert_allclose(out["forces"], ref["forces"], rtol=0, atol=1e-5 * np.abs(ref["forces"]).max())
    np.testing.assert_allclose(out["sigma"], ref["sigma"], rtol=1e-5)
    assert abs(out["energy"] - ref["energy"]) < 1e-4 * max(1, abs(ref["energy"]))


@pytest.mark.parametrize("rows", [7, 9000])
def test_uncertainty_methods_match_exported_methods(models, rows):
    """Also above 4096 rows, where the C++ side solves in blocks of rows."""
    from llpr.modelfile import load_exported

    module = load_exported(models["sic"])
    model = core.Model(models["sic"])
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(rows, model.metadata["n_features"]))
    t = torch.tensor(feats)
    np.testing.assert_allclose(model.quadratic_form(feats), module.quadratic_form(t).numpy(), rtol=TOL)
    sigma, lpr = model.local_uncertainty(feats)
    ref_sigma, ref_lpr = module.local_uncertainty(t)
    np.testing.assert_allclose(sigma, ref_sigma.numpy(), rtol=TOL)
    np.testing.assert_allclose(lpr, ref_lpr.numpy(), rtol=TOL)
    s = feats.sum(0)
    assert model.energy_variance(s) == pytest.approx(float(module.energy_variance(torch.tensor(s))), rel=TOL)


def test_check_model_metadata(models):
    from llpr.modelfile import load_exported
    from llpr.lammps.plugin import check_model

    module = load_exported(models["sic"])
    meta = check_model(models["sic"])
    assert meta["format_version"] == 2
    assert meta["species"] == [6, 14] and meta["elements"] == ["C", "Si"]
    assert meta["cutoff"] == module.cutoff and meta["receptive_field"] == module.receptive_field
    assert (meta["energy_unit"], meta["length_unit"]) == ("eV", "Angstrom")
    assert meta["dtype"] == "float64" and meta["feature_reduction"] == "sum"
    assert meta["n_features"] == module.n_features
    assert meta["alpha"] == float(module.head.alpha) and meta["varsigma"] == float(module.head.varsigma)
    assert isinstance(meta["calibration"], dict) and meta["calibration"]["alpha"] == pytest.approx(meta["alpha"])
    assert meta["torch_version"] == torch.__version__.split("+")[0]


def test_missing_and_corrupt_files(models):
    from llpr.lammps.plugin import check_model

    missing = str(models["dir"] / "nope.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model(missing)
    corrupt = models["dir"] / "corrupt.pt"
    data = open(models["si"], "rb").read()
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is damaged .*truncated"):
        check_model(str(corrupt))
    text = models["dir"] / "text.pt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="not a readable TorchScript file"):
        check_model(str(text))


def test_torchscript_without_llpr_data(models):
    from llpr.models.potential import LocalPotential
    from llpr.lammps.plugin import check_model

    path = str(models["dir"] / "bare.pt")
    torch.jit.save(torch.jit.script(LocalPotential([14], hidden=(8,))), path)
    with pytest.raises(ValueError) as info:
        check_model(path)
    msg = str(info.value)
    assert "not a valid llpr model" in msg and "llpr export" in msg
    for name in ("llpr_format_version", "energy_unit", "length_unit", "dtype", "feature_reduction",
                 "head", "evaluate", "ensemble_forward"):
        assert name in msg


def _export_modified(llpr_module_path, out_path, head_changes=None, head_class=None, wrapper_class=None, **changes):
    """Re-script an exported model (of lammps_helpers.make_model) with some contract items
    changed: attributes of the wrapper (or buffers, when given a tensor), in ``head_changes``
    buffers of its head, the class of the head (``head_class``, a subclass of LLPRHead) and of
    the wrapper (``wrapper_class``, a subclass of ExportedLLPRModel)."""
    from llpr.export import ExportedLLPRModel
    from llpr.uncertainty.llpr_head import LLPRHead
    from llpr.models.potential import LocalPotential

    src = torch.jit.load(llpr_module_path)
    model = LocalPotential(list(src.species), cutoff=4.0, n_basis=6, n_channels=4, l_max=2, hidden=(16, 16)).double()
    # a scripted module also lists the model's non-persistent (derived) buffers: keep the saved ones
    saved = model.state_dict().keys()
    model.load_state_dict({k[6:]: v for k, v in src.state_dict().items() if k.startswith("model.") and k[6:] in saved})
    head = (head_class or LLPRHead)(src.head.cholesky, float(src.head.alpha), float(src.head.varsigma),
                                    src.head.ensemble_deviations)
    wrapper = (wrapper_class or ExportedLLPRModel)(model, head, {}, "test")
    for name, value in (head_changes or {}).items():
        setattr(wrapper.head, name, value)
    for name, value in changes.items():
        setattr(wrapper, name, value)
    torch.jit.save(torch.jit.script(wrapper), out_path)
    return out_path


def test_strictly_local_is_read_and_checked(models):
    """The file's strictly_local reaches the metadata (LAMMPS picks the graph by it); True with a
    receptive field beyond the cutoff contradicts itself and is refused."""
    assert core.check(models["sic"])["strictly_local"] is True
    passing = _export_modified(models["sic"], str(models["dir"] / "not_local.pt"), strictly_local=False)
    assert core.check(passing)["strictly_local"] is False
    wrong = _export_modified(models["sic"], str(models["dir"] / "contradiction.pt"), receptive_field=8.0)
    with pytest.raises(ValueError, match=r"strictly_local is True but receptive_field \(8\) exceeds cutoff \(4\)"):
        core.check(wrong)


def test_version_1_file_is_refused_with_one_message(models):
    """Format version 1 (llpr 0.1) kept the LLPR state in top-level buffers: this llpr does not
    read it, and says so in one message instead of listing what the old layout lacks."""
    path = _export_modified(models["sic"], str(models["dir"] / "v1.pt"), llpr_format_version=1)
    with pytest.raises(ValueError) as info:
        core.check(path)
    msg = str(info.value)
    assert "format version 1" in msg and "reads version 2" in msg and "re-export it with `llpr export" in msg
    assert "missing" not in msg


@pytest.mark.parametrize("chunk", [1, 5, 13])
def test_force_evaluation_in_blocks_of_centres(models, chunk):
    """evaluate() runs the centres in blocks (4096 by default, for the CPU caches); blocks of a few
    centres give the same energies, forces, virials and features as one block, from Python
    (unsorted vesin edges) and from C++ (centre-sorted edges), within round-off."""
    atoms = sic_triclinic()
    ref = reference(models["sic"], atoms)
    path = _export_modified(models["sic"], str(models["dir"] / f"chunk{chunk}.pt"), chunk_centers=chunk)
    assert torch.jit.load(path).chunk_centers == chunk and len(atoms) > chunk
    python = reference(path, atoms)
    g = ref["graph"]
    order = np.argsort(g["edge_index"][0], kind="stable")
    core_out = core.Model(path, "cpu").compute(g["positions"], g["atomic_numbers"], g["edge_index"][:, order],
                                               g["edge_shifts"][order])
    for out in (python, core_out):
        assert abs(out["energy"] - ref["energy"]) < 1e-12
        for key in KEYS:
            np.testing.assert_allclose(out[key], ref[key], rtol=0, atol=1e-12 * max(1.0, np.abs(ref[key]).max()),
                                       err_msg=key)


def test_each_contract_mismatch_is_named(models):
    from llpr.lammps.plugin import check_model

    path = _export_modified(
        models["sic"],
        str(models["dir"] / "bad.pt"),
        energy_unit="kcal/mol",
        length_unit="nm",
        feature_reduction="mean",
        dtype="float16",
        cutoff=-1.0,
        species=[6, 200],
    )
    with pytest.raises(ValueError) as info:
        check_model(path)
    msg = str(info.value)
    for piece in ("energy_unit is 'kcal/mol', expected 'eV'",
                  "length_unit is 'nm', expected 'Angstrom'", "feature_reduction is 'mean', expected 'sum'",
                  "dtype is 'float16'", "cutoff is -1", "species is [6, 200]"):
        assert piece in msg, (piece, msg)


def test_bad_llpr_buffers_are_named(models):
    from llpr.lammps.plugin import check_model

    n = torch.jit.load(models["sic"]).n_features
    cases = [
        ({"cholesky": torch.ones(n, n, dtype=torch.float64)}, "head.cholesky is not a lower-triangular"),
        ({"cholesky": torch.eye(n + 1, dtype=torch.float64)},
         r"head.cholesky has dtype Double and shape \[%d, %d\], expected float64 \(%d, %d\)" % (n + 1, n + 1, n, n)),
        ({"inverse_factor_t": 2 * torch.eye(n, dtype=torch.float64)}, "head.inverse_factor_t is not the inverse"),
        ({"alpha": torch.tensor(1.0, dtype=torch.float32)}, r"head.alpha has dtype Float and shape \[\], expected float64 scalar"),
        ({"alpha": torch.tensor(-1.0, dtype=torch.float64)}, "head.alpha is -1, expected a positive number"),
        ({"varsigma": torch.tensor(float("nan"), dtype=torch.float64)}, "head.varsigma is not finite"),
        # optional, but when present a positive float64 scalar (NaN: not recorded)
        ({"max_train_q": torch.tensor(-1.0, dtype=torch.float64)},
         r"head.max_train_q is -1, expected a positive number \(or NaN: not recorded\)"),
        ({"max_train_q": torch.tensor(float("inf"), dtype=torch.float64)}, "head.max_train_q is inf"),
        ({"max_train_q": torch.tensor(2.0, dtype=torch.float32)}, "head.max_train_q is not a float64 scalar tensor"),
    ]
    for k, (head_changes, message) in enumerate(cases):
        path = _export_modified(models["sic"], str(models["dir"] / f"badbuf{k}.pt"), head_changes)
        with pytest.raises(ValueError, match=message):
            check_model(path)


def _older_format_2_layouts():
    """Wrapper and head classes that write a format-2 file without the items `llpr export` did
    not always write (what was optional within the version): name -> (export kwargs, missing)."""
    from llpr.export import ExportedLLPRModel
    from llpr.uncertainty.llpr_head import LLPRHead

    class NoStrictlyLocal(ExportedLLPRModel):
        # the wrapper's code reads it, but as a property it is no attribute of the scripted file
        __annotations__ = {"locality": bool}  # a type, not a string (this file defers annotations)

        @property
        def strictly_local(self) -> bool:
            return self.locality

        @strictly_local.setter
        def strictly_local(self, value: bool) -> None:
            self.locality = value

    class NoMaxTrainQ(LLPRHead):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self._buffers["max_train_q"]

        # not exported (no @torch.jit.export): absent from the scripted head
        def extrapolation_grade(self, features):
            raise NotImplementedError

        def has_extrapolation_grade(self):
            return False

    class NoBias(LLPRHead):
        def bias_sigma(self, feature_sum: torch.Tensor, sigma_cap: float):
            raise NotImplementedError

    class NoGraphs(ExportedLLPRModel):
        def forward_graph(self, positions, atomic_numbers, edge_index, edge_shifts, n_centers, compute_forces=True,
                          compute_virial=False):
            raise NotImplementedError

        def backward_graph(self, graph, n_atoms, center_weights, feature_cotangent, with_energy, compute_forces,
                           compute_virial, retain_graph):
            raise NotImplementedError

    class NoSigmaLaw(LLPRHead):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self._buffers["sigma_scale"]
            del self._buffers["sigma_power"]

        @torch.jit.export
        def local_uncertainty(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            q = self.quadratic_form(features)
            return self.alpha * torch.sqrt(q), 1.0 / q

        @torch.jit.export
        def energy_variance(self, feature_sums: torch.Tensor) -> torch.Tensor:
            return self.alpha**2 * self.quadratic_form(feature_sums)

    return {
        "strictly_local": ({"wrapper_class": NoStrictlyLocal}, "strictly_local"),
        "max_train_q": ({"head_class": NoMaxTrainQ}, "head.max_train_q, head.extrapolation_grade"),
        "bias_sigma": ({"head_class": NoBias}, "head.bias_sigma"),
        "forward_graph": ({"wrapper_class": NoGraphs}, "forward_graph, backward_graph"),
        "sigma law": ({"head_class": NoSigmaLaw}, "head.sigma_scale, head.sigma_power"),
    }


@pytest.mark.parametrize("layout", ["strictly_local", "max_train_q", "bias_sigma", "forward_graph", "sigma law"])
def test_format_2_file_of_an_older_llpr_is_refused_saying_to_reexport(models, layout):
    """Every item `llpr export` writes is required: a format-2 file from an older llpr that lacks
    some of them is refused in one message that names them and says to re-export."""
    kwargs, lacks = _older_format_2_layouts()[layout]
    path = _export_modified(models["sic"], str(models["dir"] / f"older_{layout.replace(' ', '_')}.pt"), **kwargs)
    with pytest.raises(ValueError) as info:
        core.check(path)
    msg = str(info.value)
    assert "format version 2 written by an older llpr: it lacks " + lacks + ", which this llpr requires" in msg, msg
    assert "re-export it with `llpr export llpr.ckpt -o model.pt`" in msg and "not a valid" not in msg


@pytest.mark.skipif(core.cuda_available(), reason="a CUDA device is available")
def test_cuda_without_gpu_is_a_clear_error(models):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        core.Model(models["si"], "cuda")


def test_plugin_location_and_entry_point():
    from llpr.lammps.plugin import plugin_dir

    folder = plugin_dir()
    assert isinstance(folder, str) and os.path.isdir(folder)
    assert os.path.exists(os.path.join(folder, "libllpr_lammpsplugin.so"))
    eps = [ep for ep in importlib.metadata.entry_points(group="lammps.plugins") if ep.name == "llpr"]
    assert len(eps) == 1 and eps[0].load()() == folder
