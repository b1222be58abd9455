"""The documentation runs: every fenced code block of docs/*.md and README.md is executed.

Convention (also stated in docs/README.md), by the fence's info string:

* ```` ```bash ```` runs in bash (``set -euo pipefail``); the variables it sets and the folder
  it ``cd``s into carry over to the page's later blocks, as in one terminal session;
* ```` ```python ```` runs in one Python namespace per page, as in one interpreter session;
* ```` ```lammps ```` is a complete LAMMPS input, run with ``lmp -in``; it must finish without
  an ERROR or a WARNING (other than "no fixes with time integration" of a ``run 0``);
* ```` ```lammps file=in.name ```` (any language) is not run but saved as ``in.name`` for the
  blocks after it ("save this as ..."), and must be used by one of them;
* ``expect-error`` after the language: the block must fail, and the ```` ```text ```` block
  right after it holds the message it must print (each line, whitespace-normalised, must
  appear in the output; ``...`` stands for any text);
* ```` ```text ```` (or no language) is not code: syntax synopses, formulas, messages. It
  must not hold commands (a line starting with ``$``, ``llpr``, ``lmp``, ``python``, ``pip``);
  ```` ```text error=ID ```` quotes the message of newcomer mistake ``ID``, which
  tests/test_newcomer_errors.py checks against the real output; ```` ```text output ```` is
  output that the block right before it must print (checked the same way).

Each page runs in its own empty folder holding ``model.pt`` (a small silicon model, exported
without a last-layer ensemble), ``llpr.ckpt`` (the calibrated checkpoint it was exported from,
as ``llpr calibrate`` writes it, for pages that re-export it, e.g. with ``--ensemble``),
``sic.pt`` (Si and C, species [6, 14]) and ``examples`` (a link to the repository's examples),
with the size knobs the docs use (``${N_PER_TYPE:-40}`` and friends) set to tiny values.
The first block of README.md (set up .venv and run the full demo) is the only one not run
here: it is what a fresh machine runs, and CI runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import traceback

import pytest

from lammps_helpers import LMP, plugin_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(f"docs/{name}" for name in os.listdir(DOCS) if name.endswith(".md")) + ["README.md"]
RUN_LANGS = {"bash", "python", "lammps"}
TEXT_LANGS = {"text", ""}
COMMANDISH = re.compile(r"^\s*(\$ |llpr (-q )?(data|train|calibrate|export|evaluate|check|reweight|plugin-path)( |$)|lmp -|python |pip |mpirun |bash )")

# LAMMPS warnings that a documentation example may trigger on purpose
BENIGN_WARNINGS = ("No fixes with time integration, atoms won't move",)  # `run 0` to evaluate a structure

# tiny sizes for the knobs the docs expose as ${NAME:-default}
TINY = {
    "N_PER_TYPE": "5",  # 35 structures: a validation set of 4, what a power-law calibration needs at least
    "EPOCHS": "2",
    "TIME_LIMIT": "60",
    "NSTEPS": "20",
    "OMP_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}


class Block:
    def __init__(self, page, line, info, body):
        self.page, self.line, self.body = page, line, body
        words = info.split()
        self.lang = words[0] if words else ""
        self.attrs = {}
        for word in words[1:]:
            key, _, value = word.partition("=")
            self.attrs[key] = value or True

    def __repr__(self):
        return f"{self.page}:{self.line} ({self.lang})"


def parse_blocks(page):
    """Fenced blocks of a markdown file, in order."""
    blocks, current, start, info = [], None, 0, ""
    with open(os.path.join(ROOT, page), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for k, line in enumerate(lines, start=1):
        m = re.match(r"^(`{3,}|~{3,})(.*)$", line)
        if current is None:
            if m:
                current, start, info, fence = [], k, m.group(2).strip(), m.group(1)
        elif m and m.group(1) == fence and not m.group(2).strip():
            blocks.append(Block(page, start, info, "\n".join(current) + "\n"))
            current = None
        else:
            current.append(line)
    assert current is None, f"{page}:{start}: unclosed code fence"
    return blocks


def page_blocks(page):
    blocks = parse_blocks(page)
    if page == "README.md":
        blocks = blocks[1:]  # the setup commands (see the module docstring)
    return blocks


def _normalise(text):
    return " ".join(text.split())


def assert_message(output, expected, where):
    """Each non-empty line of `expected` appears in `output` (whitespace-normalised; '...'
    matches anything)."""
    out = _normalise(output)
    for line in expected.strip().splitlines():
        parts = [_normalise(p) for p in line.split("...") if p.strip()]
        pos = 0
        for part in parts:
            found = out.find(part, pos)
            assert found >= 0, f"{where}: the documented message part {part!r} is not in the output:\n{output[-3000:]}"
            pos = found + len(part)


# ------------------------------------------------------------------------------ static checks
@pytest.mark.parametrize("page", PAGES)
def test_blocks_follow_the_convention(page):
    blocks = parse_blocks(page)
    for k, b in enumerate(page_blocks(page)):
        assert b.lang in RUN_LANGS | TEXT_LANGS, f"{b}: unknown block language {b.lang!r} (use bash, python, lammps or text)"
        unknown = set(b.attrs) - {"file", "expect-error", "error", "output"}
        assert not unknown, f"{b}: unknown attributes {unknown}"
        if b.lang in TEXT_LANGS:
            for line in b.body.splitlines():
                assert not COMMANDISH.match(line), f"{b}: a text block holds a command ({line!r}); make it a bash block"
        if "expect-error" in b.attrs:
            rest = page_blocks(page)[k + 1:]
            assert rest and rest[0].lang == "text", f"{b}: an expect-error block must be followed by a text block with the message"
        if "file" in b.attrs:
            name = b.attrs["file"]
            later = "".join(x.body for x in page_blocks(page)[k + 1:] if x.lang in RUN_LANGS)
            assert name in later, f"{b}: file={name} is never used by a later block"


def test_error_quotes_are_checked_by_newcomer_tests():
    import test_newcomer_errors

    quoted = {b.attrs["error"]: b for p in PAGES for b in parse_blocks(p) if "error" in b.attrs}
    assert quoted, "docs/troubleshooting.md quotes no newcomer error messages"
    missing = set(quoted) - set(test_newcomer_errors.DOC_QUOTES)
    assert not missing, f"error quotes without a test in tests/test_newcomer_errors.py: {missing}"


def test_links_resolve():
    """Relative links in the docs, the README and the examples' READMEs point to files that exist."""
    pages = PAGES + [os.path.relpath(os.path.join(dp, f), ROOT) for dp, _, fs in os.walk(os.path.join(ROOT, "examples"))
                     for f in fs if f.endswith(".md")]
    for page in pages:
        text = open(os.path.join(ROOT, page), encoding="utf-8").read()
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target.split("#")[0]))
            assert os.path.exists(path), f"{page}: broken link {target}"


def test_every_page_is_in_the_index():
    index = open(os.path.join(DOCS, "README.md"), encoding="utf-8").read()
    for page in PAGES:
        name = os.path.basename(page)
        if page.startswith("docs/") and name != "README.md":
            assert f"({name})" in index, f"docs/README.md does not link {name}"


def test_install_pins_match_setup_script():
    """The versions the installation page names are the ones scripts/setup.sh and
    pyproject.toml install."""
    install = open(os.path.join(DOCS, "installation.md"), encoding="utf-8").read()
    setup = open(os.path.join(ROOT, "scripts", "setup.sh"), encoding="utf-8").read()
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    torch_pin = re.search(r'torch==([\d.]+)', setup).group(1)
    lammps_pin = re.search(r'lammps\[mpi\]==([\d.]+)', setup).group(1)
    assert f'lammps[mpi]=={lammps_pin}' in pyproject
    assert f"torch=={torch_pin}" in install and f"lammps[mpi]=={lammps_pin}" in install


# ------------------------------------------------------------------------------ running
def docs_model(path, species, seed, noise=0.005, checkpoint=None):
    """A small exported model with uncertainties of a realistic size: an untrained network
    whose LLPR is calibrated on its own predictions plus `noise` eV per atom**0.5 of scatter
    (so sigma_i comes out at a few meV, as for a trained model, and the thresholds in the
    docs' examples mean what they say). `checkpoint`: also save the calibrated LLPR there
    (what `llpr calibrate` writes)."""
    import numpy as np
    import torch

    from llpr.modelfile import export_model
    from llpr.graphs import AtomisticDataset, make_loader
    from llpr.models.potential import LocalPotential
    from llpr.uncertainty.estimator import LLPR
    from lammps_helpers import sic_zincblende, si_diamond

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LocalPotential(list(species), cutoff=4.0, n_basis=6, n_channels=4, l_max=2, hidden=(16, 16))
    model = model.to(torch.float64)
    structures = []
    for k in range(24):
        atoms = sic_zincblende(rattle=0.12, seed=k) if len(species) > 1 else si_diamond(rattle=0.12, seed=k)
        atoms.info["energy"] = 0.0
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
        structures.append(atoms)
    llpr = LLPR(model)
    predictions = llpr.collect(make_loader(AtomisticDataset(structures, 4.0, torch.float64), 8))["prediction"]
    for atoms, e in zip(structures, predictions.tolist()):
        atoms.info["energy"] = e + noise * np.sqrt(len(atoms)) * rng.normal()
    train = AtomisticDataset(structures[:16], 4.0, torch.float64)
    val = AtomisticDataset(structures[16:], 4.0, torch.float64)
    llpr.fit(make_loader(train, 8)).calibrate(make_loader(val, 8), train_loader=make_loader(train, 8))
    export_model(llpr, str(path))
    if checkpoint is not None:
        from llpr.uncertainty.estimator import save_llpr

        save_llpr(llpr, str(checkpoint))
    return str(path)


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs_models")
    models = {"model.pt": docs_model(d / "model.pt", species=(14,), seed=0, checkpoint=d / "llpr.ckpt"),
              "sic.pt": docs_model(d / "sic.pt", species=(6, 14), seed=1)}
    models["llpr.ckpt"] = str(d / "llpr.ckpt")
    return models


class PageRunner:
    def __init__(self, page, folder, models):
        self.page = page
        self.cwd = str(folder)
        for name, path in models.items():
            shutil.copy(path, os.path.join(self.cwd, name))
        os.symlink(os.path.join(ROOT, "examples"), os.path.join(self.cwd, "examples"))
        env = plugin_env()
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(TINY)
        self.env = env
        self.namespace = {"__name__": "__main__"}
        self.state = os.path.join(self.cwd, ".docs_state")

    def run_blocks(self, blocks):
        """Run the runnable blocks of `blocks` in order; an expect-error block's message and a
        ```` ```text output ```` block are checked against the output of the block before
        them. Return the outputs."""
        outputs = []
        for k, block in enumerate(blocks):
            if block.lang not in RUN_LANGS:
                continue
            expect_error = "expect-error" in block.attrs
            output = self.run(block, expect_error)
            follower = blocks[k + 1] if k + 1 < len(blocks) else None
            if expect_error or (follower is not None and follower.lang == "text" and "output" in follower.attrs):
                assert_message(output, follower.body, str(block))
            outputs.append(output)
        return outputs

    def run(self, block, expect_error):
        if "file" in block.attrs:
            with open(os.path.join(self.cwd, block.attrs["file"]), "w") as fh:
                fh.write(block.body)
            return ""
        return getattr(self, f"run_{block.lang}")(block, expect_error)

    def run_bash(self, block, expect_error):
        script = ("set -euo pipefail\nset -a\n" + block.body + "\nset +a\n"
                  f"env -0 > {self.state}.env\npwd > {self.state}.pwd\n")
        proc = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=600)
        output = proc.stdout + proc.stderr
        if expect_error:
            assert proc.returncode != 0, f"{block}: expected to fail but succeeded:\n{output[-3000:]}"
            return output
        assert proc.returncode == 0, f"{block}: failed (exit {proc.returncode}):\n{output[-5000:]}"
        with open(self.state + ".env", "rb") as fh:
            pairs = [item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item]
        self.env = {k.decode(): v.decode() for k, v in pairs if not k.startswith(b"BASH_FUNC_")}
        for key in ("SHLVL", "_", "OLDPWD", "PWD"):
            self.env.pop(key, None)
        self.cwd = open(self.state + ".pwd").read().strip()
        return output

    def run_lammps(self, block, expect_error):
        path = os.path.join(self.cwd, f".docs_block_{block.line}.in")
        with open(path, "w") as fh:
            fh.write(block.body)
        proc = subprocess.run([LMP, "-in", path, "-log", "none", "-nocite"], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        if expect_error:
            assert proc.returncode != 0 or "ERROR" in output, f"{block}: expected an error:\n{output[-3000:]}"
            return output
        assert proc.returncode == 0, f"{block}: LAMMPS failed:\n{output[-5000:]}"
        bad = [ln for ln in output.splitlines() if ln.startswith(("ERROR", "WARNING"))
               and not any(ok in ln for ok in BENIGN_WARNINGS)]
        assert not bad, f"{block}: LAMMPS printed {bad}"
        return output

    def run_python(self, block, expect_error):
        old_cwd, old_env = os.getcwd(), dict(os.environ)
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.env)
        if "LAMMPS_PLUGIN_PATH" in old_env:
            # `import lammps` sets it once per process; in a fresh session the docs' own import would
            os.environ["LAMMPS_PLUGIN_PATH"] = old_env["LAMMPS_PLUGIN_PATH"]
        from io import StringIO
        from contextlib import redirect_stderr, redirect_stdout

        buffer = StringIO()
        try:
            with redirect_stdout(buffer), redirect_stderr(buffer):
                code = compile(block.body, f"{block.page}:{block.line}", "exec")
                exec(code, self.namespace)
        except Exception as exc:  # noqa: BLE001
            if expect_error:
                return buffer.getvalue() + f"{type(exc).__name__}: {exc}"
            raise AssertionError(f"{block}: raised\n{traceback.format_exc()}\noutput:\n{buffer.getvalue()[-3000:]}")
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)
        assert not expect_error, f"{block}: expected an exception, none was raised"
        return buffer.getvalue()


RUN_PAGES = [p for p in PAGES if any(b.lang in RUN_LANGS for b in page_blocks(p))]


@pytest.mark.slow
@pytest.mark.lammps
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning", "ignore::UserWarning")
@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_runs(page, fixture_models, tmp_path):
    pytest.importorskip("llpr._core", reason="llpr was installed without its C++ parts")
    PageRunner(page, tmp_path, fixture_models).run_blocks(page_blocks(page))
