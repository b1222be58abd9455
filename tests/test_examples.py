"""The examples run: every code block of every examples/*/README.md is executed, in document
order, from a scratch folder laid out like the repository root (``examples`` links to the
real folder) with a small silicon demo output in ``demo_output/`` (data, checkpoint, exported
model, and a dump written by examples/silicon/in.silicon), and with the size knobs the
examples read (N_PER_TYPE, EPOCHS, NSTEPS, ROUNDS, ...) set tiny. The block convention is
the one of tests/test_docs.py."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from lammps_helpers import lammps_module_marks, LMP, plugin_env
from test_docs import COMMANDISH, RUN_LANGS, TEXT_LANGS, PageRunner, parse_blocks

pytestmark = lammps_module_marks(extra=[pytest.mark.filterwarnings("ignore::UserWarning")])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(d for d in os.listdir(os.path.join(ROOT, "examples"))
                  if os.path.isfile(os.path.join(ROOT, "examples", d, "README.md")))

# per example, on top of tests/test_docs.py's TINY sizes
EXTRA_ENV = {
    # one round, forced to stop at the first check (step 10), so that labelling and retraining run
    "active_learning": {"ROUNDS": "1", "HALT_GAMMA": "0", "DUMP_GAMMA": "0"},
    # enough structures for a validation set of 3 4-coordinated ones (fewer cannot calibrate)
    "local_rigidity": {"N_PER_TYPE": "13"},
    # two temperatures (the README's command reweights the 1200 K run), a small ensemble
    "observables": {"TEMPS": "1200 1500", "MEMBERS": "8"},
}


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """What examples/silicon/run.sh leaves in demo_output/ (data, model.ckpt, llpr.ckpt,
    model.pt), in miniature."""
    import torch

    from llpr.data import split_dataset, write_dataset
    from llpr.models.checkpoint import save_model
    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.lammps.sampling import generate_dataset
    from llpr.models.train import TrainConfig, train_model
    from llpr.uncertainty.estimator import LLPR, save_llpr

    d = tmp_path_factory.mktemp("demo_output")
    # 14 structures: 3 to validate on, the fewest that can calibrate alpha and varsigma
    structures = generate_dataset(potential="sw", n_per_type=2, seed=0, progress=False)
    train, val, test = split_dataset(structures, (0.6, 0.2, 0.2), seed=0)
    (d / "data").mkdir()
    for name, part in (("all", structures), ("train", train), ("val", val), ("test", test)):
        write_dataset(part, str(d / "data" / f"{name}.xyz"))
    config = TrainConfig(max_epochs=2, dtype="float64", seed=0, model={"hidden": (16, 16), "n_channels": 4})
    model, _ = train_model(train, val, config, progress=False)
    save_model(model, str(d / "model.ckpt"))

    def loader(part):
        return make_loader(AtomisticDataset(part, model.cutoff, torch.float64), 8)

    llpr = LLPR(model).fit(loader(train)).calibrate(loader(val), train_loader=loader(train))
    save_llpr(llpr, str(d / "llpr.ckpt"))  # as `llpr calibrate` leaves it (with max q for gamma)
    export_model(llpr, str(d / "model.pt"))
    proc = subprocess.run([LMP, "-in", os.path.join(ROOT, "examples", "silicon", "in.silicon"), "-var", "model",
                           "model.pt", "-var", "nsteps", "20", "-var", "every", "10", "-log", "log.lammps"],
                          cwd=str(d), env=plugin_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d


def _link_demo(demo, folder):
    """A private copy of demo_output in `folder` (examples may write into it)."""
    target = folder / "demo_output"
    (target / "data").mkdir(parents=True)
    for path in demo.rglob("*"):
        if path.is_file():
            rel = path.relative_to(demo)
            (target / rel).write_bytes(path.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_readme_runs(example, demo_output, tmp_path):
    page = f"examples/{example}/README.md"
    blocks = parse_blocks(page)
    runnable = [b for b in blocks if b.lang in RUN_LANGS]
    assert runnable, f"{page} shows no command to run"
    for b in blocks:
        assert b.lang in RUN_LANGS | TEXT_LANGS, f"{b}: unknown block language {b.lang!r}"
        if b.lang in TEXT_LANGS:
            assert not any(COMMANDISH.match(line) for line in b.body.splitlines()), f"{b}: a text block holds a command"
    _link_demo(demo_output, tmp_path)
    runner = PageRunner(page, tmp_path, {})
    runner.env.update(EXTRA_ENV.get(example, {}))
    outputs = runner.run_blocks(blocks)
    CHECKS.get(example, lambda root, output: None)(tmp_path, "\n".join(outputs))


# ------------------------------------------------------------------ what each example must leave
def _png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", path


def check_silicon(root, output):
    assert "ratio to bulk" in output and "vacancy" in output
    _png(root / "demo_output" / "sigma.png")


def check_active_learning(root, output):
    out = root / "runs" / "active_learning"
    # round 0 stopped at the first check, its configuration was labelled and added, and the
    # next model was trained, calibrated and exported
    assert "stopped at step 10" in output, output[-3000:]
    assert (out / "round_0" / "halt.dump").exists() and (out / "round_0" / "dump.unsure").exists()
    assert (out / "model_1.pt").exists()
    from llpr.data import read_dataset

    before = read_dataset(str(root / "demo_output" / "data" / "train.xyz"))
    after = read_dataset(str(out / "data" / "train.xyz"))
    assert len(after) == len(before) + 1 and after[-1].info["config_type"] == "active_learning_0"
    from llpr.lammps.plugin import check_model

    assert check_model(str(out / "model_1.pt"))["elements"] == ["Si"]
    summary = [ln for ln in output.splitlines() if ln.strip().startswith("0 ")]
    assert summary, output[-2000:]


def check_sic(root, output):
    out = root / "runs" / "sic"
    from llpr.lammps.plugin import check_model

    assert sorted(check_model(str(out / "sic.pt"))["elements"]) == ["C", "Si"]
    assert "energy uncertainty (eV): whole box" in output and "Si atoms" in output and "C atoms" in output
    lines = (out / "dump.sic").read_text().splitlines()
    assert "ITEM: ATOMS id type element x y z sigma lpr" in lines
    start = lines.index("ITEM: ATOMS id type element x y z sigma lpr") + 1
    rows = [ln.split() for ln in lines[start:start + 215]]
    assert {r[2] for r in rows} == {"Si", "C"}
    assert all((r[1] == "1") == (r[2] == "Si") for r in rows)  # type 1 is written as Si


def check_python_api(root, output):
    out = root / "my_model"
    assert (out / "model.pt").exists() and (out / "llpr.ckpt").exists()
    assert "errors within 1 sigma" in output
    from ase.io import read

    frames = read(str(out / "test_sigma.xyz"), ":")
    assert all("sigma" in a.arrays and np.all(a.arrays["sigma"] > 0) for a in frames)


def check_ase_md(root, output):
    from ase.io import read

    frames = read(str(root / "md.xyz"), ":")
    assert len(frames) == 3  # steps 0, 10, 20
    assert all(np.all(a.arrays["sigma"] > 0) and "energy_sigma" in a.info for a in frames)
    assert "energy_sigma" in output or "max sigma_i" in output


def check_local_rigidity(root, output):
    table = (root / "lpr_results" / "lpr_by_coordination.md").read_text()
    assert "| 4 |" in table and "## B." in table
    _png(root / "lpr_results" / "lpr_by_coordination.png")


def check_observables(root, output):
    out = root / "runs" / "observables"
    _png(out / "observables.png")
    _png(out / "rdf_1200.png")
    table = (out / "observables.md").read_text()
    assert all(f"| {t} |" in table for t in (1200, 1500)), table
    assert "member values (pe + dE_k" in output and "reweighting to 8 ensemble members at T = 1200 K" in output
    import json

    result = json.loads((out / "rdf_1200.json").read_text())
    rdf = result["observables"]["c_rdf[2]"]  # g(r) of fix llpr/record, against its bins c_rdf[1]
    assert rdf["axis_name"] == "c_rdf[1]" and len(rdf["axis"]) == 100 and len(rdf["model_sigma"]["cea"]) == 100
    assert np.all(np.diff(rdf["axis"]) > 0)
    assert all(np.isfinite(rdf["model_sigma"]["cea"])) and result["frames"] == 21  # NSTEPS=20: a frame per step
    assert set(result["observables"]) == {"v_rho", "pe", "c_rdf[2]"}
    # one segment, recorded after the equilibration only
    from llpr.lammps.reweight import read_record

    segments = read_record(out / "md_1200.rec")
    assert len(segments) == 1 and segments[0].steps.tolist() == list(range(21))


CHECKS = {
    "observables": check_observables,
    "silicon": check_silicon,
    "local_rigidity": check_local_rigidity,
    "active_learning": check_active_learning,
    "sic": check_sic,
    "python_api": check_python_api,
    "ase_md": check_ase_md,
}


def test_example_errors_are_clear(tmp_path, demo_output):
    """The examples' own error messages, for the usual slips."""
    import sys

    py = sys.executable
    env = plugin_env()
    # the active-learning loop without the demo's output
    proc = subprocess.run(["bash", os.path.join(ROOT, "examples", "active_learning", "run.sh"),
                           str(tmp_path / "nothing")], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 2 and "run bash examples/silicon/run.sh first" in proc.stderr
    # the observables example without a trained model
    proc = subprocess.run(["bash", os.path.join(ROOT, "examples", "observables", "run.sh"), str(tmp_path / "obs")],
                          capture_output=True, text=True, env=dict(env, DEMO=str(tmp_path / "nothing")),
                          cwd=str(tmp_path))
    assert proc.returncode == 2 and "no trained model in" in proc.stderr
    assert "run bash examples/silicon/run.sh first" in proc.stderr
    # your own file, with other key names
    from ase.io import read, write

    frames = read(str(demo_output / "data" / "all.xyz"), ":")
    for a in frames:
        a.info["REF_energy"] = a.calc.results["energy"]
        a.arrays["REF_forces"] = a.calc.results["forces"]
        a.calc = None
    write(str(tmp_path / "ref.xyz"), frames)
    script = os.path.join(ROOT, "examples", "python_api", "fit_my_data.py")
    proc = subprocess.run([py, script, str(tmp_path / "ref.xyz"), "-o", str(tmp_path / "m")], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2
    assert "no energy 'energy' and no forces 'forces'" in proc.stderr
    assert "REF_energy" in proc.stderr and "REF_forces" in proc.stderr and "--energy-key" in proc.stderr
    # the ASE example with a path typo
    proc = subprocess.run([py, os.path.join(ROOT, "examples", "ase_md", "md.py"), "demo_output/modle.pt"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 2 and "model file 'demo_output/modle.pt' does not exist" in proc.stderr
