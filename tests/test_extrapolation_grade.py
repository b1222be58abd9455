"""The extrapolation grade gamma_i = q_i / max_train q: its reference over the training atoms
(Python), the exported file (optional within format 2: files without it load, and asking them
for gamma says to re-export), and the LAMMPS column of compute llpr/atom and fix pair against
the Python reference on 1 and 2 ranks."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from lammps_helpers import (
    assert_lammps_error,
    compare,
    dump_table,
    lammps_module_marks,
    atom_array,
    lammps_results,
    lammps_script,
    make_model,
    reference,
    run_in_process,
    run_lmp,
    si_diamond,
    write_data,
)

# export seals files with llpr's C++ core, which the LAMMPS tests need too
pytestmark = lammps_module_marks(mpi=True)


def _loader(model, structures, batch_size=8):
    from llpr.graphs import AtomisticDataset, make_loader

    return make_loader(AtomisticDataset(structures, model.cutoff, torch.float64), batch_size)


def _atom_gammas(llpr, structures):
    """Per structure, the gamma of its atoms, by LLPR.predict."""
    from llpr.graphs import AtomisticDataset, make_loader

    out = []
    for batch in make_loader(AtomisticDataset(structures, llpr.model.cutoff, torch.float64, require_labels=False), 8):
        g = llpr.predict(batch)["gamma"]
        out += [g[batch["batch"] == k].numpy() for k in range(int(batch["n_structures"]))]
    return out


# ------------------------------------------------------------------------------- Python side
def test_training_atoms_have_gamma_at_most_one(small_llpr, si_splits):
    train, _, _ = si_splits
    gammas = np.concatenate(_atom_gammas(small_llpr, train))
    assert gammas.size == small_llpr.n_train_atoms_ == sum(len(a) for a in train)
    assert np.all(gammas <= 1.0 + 1e-12)
    assert abs(gammas.max() - 1.0) < 1e-12  # the training atom that sets max q
    # gamma is the head's quadratic form over max q, the same C as sigma_i = alpha sqrt(q_i)
    batch = next(iter(_loader(small_llpr.model, train[:2])))
    out = small_llpr.predict(batch)
    q = (out["atom_sigma"] / small_llpr.alpha) ** 2
    np.testing.assert_allclose(out["gamma"].numpy(), (q / small_llpr.max_train_q_).numpy(), rtol=1e-12)


def test_bulk_trained_llpr_grades_surfaces_above_one_and_vacancies_above_bulk(small_model, si_structures):
    from llpr.uncertainty.estimator import LLPR

    # bulk crystal only (300 K): surfaces and vacancies hold environments it never saw; one
    # validation crystal, calibrated on its forces too (each atom a target: enough to determine
    # alpha and varsigma)
    bulk = [a for a in si_structures if a.info["config_type"] == "crystal"]
    train, val = bulk[: len(bulk) * 3 // 4], bulk[len(bulk) * 3 // 4 :]
    llpr = LLPR(small_model).fit(_loader(small_model, train)).calibrate(_loader(small_model, val), force_weight=1.0,
                                                                        train_loader=_loader(small_model, train))
    seen = max(g.max() for g in _atom_gammas(llpr, val))
    surfaces = [g.max() for g in _atom_gammas(llpr, [a for a in si_structures if a.info["config_type"] == "surface"])]
    vacancies = [g.max() for g in _atom_gammas(llpr, [a for a in si_structures if a.info["config_type"] == "vacancy"])]
    assert min(surfaces) > 1.0, surfaces
    # a vacancy's neighbours are graded above any atom of the held-out bulk, but not above 1 by
    # this small model (the grade's known blind spot out of distribution)
    assert min(vacancies) > seen, (vacancies, seen)


def test_gamma_needs_the_training_pass(small_model, si_splits, tmp_path):
    from llpr.modelfile import export_model, load_exported, require_extrapolation_grade
    from llpr.uncertainty.estimator import LLPR, load_llpr, save_llpr

    train, val, _ = si_splits
    llpr = LLPR(small_model).fit(_loader(small_model, train)).calibrate(_loader(small_model, val))
    assert llpr.max_train_q_ is None and "gamma" not in llpr.predict(next(iter(_loader(small_model, val))))
    with pytest.raises(RuntimeError, match="fit_extrapolation_grade"):
        llpr.extrapolation_grade(torch.ones(2, small_model.n_features, dtype=torch.float64))
    # a file exported without it loads, and refuses gamma with the fix
    path = export_model(llpr, str(tmp_path / "no_gamma.pt"))
    module = load_exported(path)
    with pytest.raises(ValueError, match="re-export"):
        require_extrapolation_grade(module, path)
    with pytest.raises(torch.jit.Error, match="max_train_q"):
        module.head.extrapolation_grade(torch.ones(1, small_model.n_features, dtype=torch.float64))
    # recorded afterwards and saved with the checkpoint
    llpr.fit_extrapolation_grade(_loader(small_model, train))
    save_llpr(llpr, str(tmp_path / "llpr.ckpt"))
    again = load_llpr(str(tmp_path / "llpr.ckpt"))
    assert again.max_train_q_ == llpr.max_train_q_ and again.n_train_atoms_ == llpr.n_train_atoms_
    assert load_exported(export_model(again, str(tmp_path / "gamma.pt"))).head.max_train_q.item() == llpr.max_train_q_


def test_calibrate_keeps_recomputes_or_warns_about_the_grade(small_model, si_splits):
    """calibrate() never drops the grade's reference silently: kept when varsigma (hence C and
    every q) is unchanged, recomputed with train_loader, dropped with a warning otherwise."""
    from llpr.uncertainty.estimator import LLPR

    train, val, _ = si_splits
    llpr = LLPR(small_model).fit(_loader(small_model, train))
    llpr.calibrate(_loader(small_model, val), train_loader=_loader(small_model, train))
    q, n_atoms, varsigma = llpr.max_train_q_, llpr.n_train_atoms_, llpr.varsigma
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llpr.calibrate(_loader(small_model, val))
    assert not [w for w in caught if "max_train_q_" in str(w.message)]  # nothing dropped, nothing to say
    assert llpr.varsigma == varsigma and (llpr.max_train_q_, llpr.n_train_atoms_) == (q, n_atoms)
    # another validation set, another varsigma: the old reference no longer applies
    other = val[: len(val) // 2] + train[:3]
    with pytest.warns(RuntimeWarning, match=r"max_train_q_.*dropped.*fit_extrapolation_grade"):
        llpr.calibrate(_loader(small_model, other))
    assert llpr.varsigma != varsigma and llpr.max_train_q_ is None and llpr.n_train_atoms_ is None
    with pytest.raises(RuntimeError, match="fit_extrapolation_grade"):
        llpr.extrapolation_grade(torch.ones(2, small_model.n_features, dtype=torch.float64))
    # with the training loader it is recorded again, for the new C
    llpr.calibrate(_loader(small_model, other), train_loader=_loader(small_model, train))
    fresh = LLPR(small_model).load_state_dict({**llpr.state_dict(), "max_train_q": None})
    fresh.fit_extrapolation_grade(_loader(small_model, train))
    assert llpr.max_train_q_ == fresh.max_train_q_ != q


def _head_without_gamma(head):
    """The head of a checkpoint calibrated without the training set: max_train_q is NaN (not
    recorded), so the file gives everything but the extrapolation grade."""
    from llpr.uncertainty.llpr_head import LLPRHead

    return LLPRHead(head.cholesky, float(head.alpha), float(head.varsigma), head.ensemble_deviations)


@pytest.fixture(scope="module")
def files(small_llpr, tmp_path_factory):
    """The session's small model exported with gamma, and a copy without its reference (NaN)."""
    import copy

    from llpr import __version__
    from llpr.export import ExportedLLPRModel
    from llpr.modelfile import export_model
    from llpr.lammps.plugin import _core

    d = tmp_path_factory.mktemp("gamma_files")
    new = export_model(small_llpr, str(d / "gamma.pt"), ensemble=4, seed=1)
    model = copy.deepcopy(small_llpr.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    wrapper = ExportedLLPRModel(model, _head_without_gamma(small_llpr.head()), small_llpr.calibration_summary(),
                                __version__)
    old = str(d / "no_gamma.pt")
    torch.jit.save(torch.jit.script(wrapper), old)
    _core().seal_file(old)
    return {"gamma": new, "no_gamma": old}


def test_core_gamma_equals_the_head(files, si_splits):
    """The C++ core (what LAMMPS calls) runs the file's LLPRHead.extrapolation_grade."""
    from llpr.lammps.plugin import _core

    atoms = si_splits[2][0]
    ref = reference(files["gamma"], atoms)
    g = ref["graph"]
    out = _core().Model(files["gamma"], "cpu").compute(g["positions"], g["atomic_numbers"], g["edge_index"],
                                                       g["edge_shifts"])
    np.testing.assert_allclose(out["gamma"], ref["gamma"], rtol=1e-12, atol=0)
    model = _core().Model(files["gamma"], "cpu")
    np.testing.assert_allclose(model.extrapolation_grade(ref["features"]), ref["gamma"], rtol=1e-12, atol=0)
    old = _core().Model(files["no_gamma"], "cpu")
    with pytest.raises(ValueError, match="re-export"):
        old.extrapolation_grade(ref["features"])
    assert "gamma" not in old.compute(g["positions"], g["atomic_numbers"], g["edge_index"], g["edge_shifts"])


def test_file_without_gamma_loads_and_says_to_reexport(files, si_splits):
    from llpr.ase import LLPRCalculator
    from llpr.evaluate import evaluate_model
    from llpr.modelfile import has_extrapolation_grade, load_exported
    from llpr.lammps.plugin import check_model

    info = check_model(files["no_gamma"])
    assert info["has_extrapolation_grade"] is False and info["max_train_q"] is None
    assert not has_extrapolation_grade(load_exported(files["no_gamma"]))
    new = check_model(files["gamma"])
    assert new["has_extrapolation_grade"] and new["max_train_q"] > 0
    _, _, test = si_splits
    atoms = test[0].copy()
    atoms.calc = LLPRCalculator(files["no_gamma"])
    atoms.get_potential_energy()
    assert "gamma" not in atoms.calc.results and atoms.calc.results["sigma"].shape == (len(atoms),)
    with pytest.raises(ValueError, match="re-export"):
        atoms.calc.get_property("gamma", atoms)
    m = evaluate_model(files["no_gamma"], test[:2], ensemble=False)["metrics"]
    assert m["gamma_available"] is False


def test_ase_and_evaluate_report_gamma(files, small_llpr, si_splits):
    from llpr.ase import LLPRCalculator
    from llpr.evaluate import evaluate_model, format_summary

    _, _, test = si_splits
    expected = _atom_gammas(small_llpr, test)
    calc = LLPRCalculator(files["gamma"])
    for atoms, want in zip(test[:3], expected):
        atoms = atoms.copy()
        atoms.calc = calc
        np.testing.assert_allclose(calc.get_property("gamma", atoms), want, rtol=1e-10, atol=0)
    result = evaluate_model(files["gamma"], test, ensemble=False)
    m = result["metrics"]
    g = np.concatenate(expected)
    assert m["gamma_available"] and m["gamma_max"] == pytest.approx(g.max(), rel=1e-10)
    assert m["gamma_fraction_atoms_above_1"] == pytest.approx(float((g > 1).mean()))
    assert m["gamma_max_structure"] == int(np.argmax([x.max() for x in expected]))
    assert "max gamma" in format_summary(m)


# ------------------------------------------------------------------------------------ LAMMPS
def _with_gamma(lmp):
    res = lammps_results(lmp)
    table = atom_array(lmp, "ug")
    res["gamma"] = table[:, 3]  # [1] sigma, [2] LPR, [3] force sigma, [4] gamma
    res["force_sigma"] = table[:, 2]
    return res


@pytest.mark.parametrize("nprocs", [1, 2])
def test_lammps_gamma_column_equals_python(files, tmp_path, nprocs):
    atoms = si_diamond((2, 2, 2), rattle=0.12, seed=3)
    ref = reference(files["gamma"], atoms)
    post = "compute ug all llpr/atom forces yes gamma yes\n"
    if nprocs == 1:
        res = run_in_process(tmp_path, files["gamma"], atoms, ["Si"], collect=_with_gamma, post=post + "run 0")
    else:
        data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
        script = lammps_script(files["gamma"], data, ["Si"], post=post + f"""
fix fp all pair 1 llpr gamma 1
dump d all custom 1 {tmp_path / 'dump.out'} id c_u[1] c_u[2] c_ug[1] c_ug[2] c_ug[3] c_ug[4] f_fp
dump_modify d sort id format float %.17g
run 0
""")
        proc = run_lmp(script, tmp_path, nprocs=2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        table = dump_table(tmp_path / "dump.out")
        res = {"ids": table[:, 0].astype(int), "gamma": table[:, 6], "fix_pair": table[:, 7],
               "sigma": table[:, 3], "lpr": table[:, 4]}
        # c_ug[1], [2] are the columns existing scripts read: unchanged by gamma yes
        np.testing.assert_array_equal(table[:, 3], table[:, 1])
        np.testing.assert_array_equal(table[:, 4], table[:, 2])
        np.testing.assert_array_equal(res["fix_pair"], res["gamma"])
    assert list(res["ids"]) == list(range(1, len(atoms) + 1))
    np.testing.assert_allclose(res["gamma"], ref["gamma"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["sigma"], ref["sigma"], rtol=1e-10, atol=1e-12)
    if nprocs == 1:
        compare(res, ref, tol=1e-10)
        assert np.all(res["force_sigma"] > 0)  # column [3] is still the force sigma


def test_lammps_gamma_on_a_file_without_gamma_says_to_reexport(files, tmp_path):
    atoms = si_diamond(rattle=0.1, seed=1)
    data = write_data(atoms, tmp_path / "data.lmp", ["Si"])
    for extra in ("compute ug all llpr/atom gamma yes", "fix fp all pair 1 llpr gamma 1"):
        script = lammps_script(files["no_gamma"], data, ["Si"], post=f"{extra}\nrun 0\n")
        proc = run_lmp(script, tmp_path)
        assert_lammps_error(proc, "extrapolation grade", "re-export")
    # without gamma the file runs as any other
    proc = run_lmp(lammps_script(files["no_gamma"], data, ["Si"], post="run 0\n"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_make_model_helper_without_gamma(tmp_path):
    from llpr.lammps.plugin import check_model

    path = make_model(tmp_path / "m.pt", gamma=False, n_structures=6)
    assert check_model(path)["has_extrapolation_grade"] is False
    assert os.path.exists(path)
