"""The command line, end to end on tiny data, and its error messages."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from llpr.models.checkpoint import save_model
from llpr.cli import main
from llpr.data import read_dataset, write_dataset
from llpr.evaluate import evaluate_model
from llpr.lammps.sampling import generate_dataset


def _llpr(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "llpr.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_plumbing_cli_pipeline(si_splits, tmp_path, capsys):
    train, val, test = si_splits
    for name, part in (("train", train), ("val", val), ("test", test)):
        write_dataset(part, str(tmp_path / f"{name}.xyz"))
    d = str(tmp_path)
    assert main(["-q", "train", "--train", f"{d}/train.xyz", "--val", f"{d}/val.xyz", "-o", f"{d}/m.ckpt",
                 "--epochs", "2", "--dtype", "float64"]) == 0
    assert "force RMSE" in capsys.readouterr().out
    assert main(["-q", "calibrate", "--model", f"{d}/m.ckpt", "--train", f"{d}/train.xyz",
                 "--val", f"{d}/val.xyz", "-o", f"{d}/llpr.ckpt"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "NLL" in out
    assert main(["-q", "export", f"{d}/llpr.ckpt", "-o", f"{d}/model.pt"]) == 0
    assert main(["-q", "evaluate", f"{d}/model.pt", "--data", f"{d}/test.xyz", "--plots", f"{d}/plots",
                 "--json", f"{d}/metrics.json"]) == 0
    out = capsys.readouterr().out
    for key in ("energy RMSE", "force RMSE", "NLL", "Spearman", "miscalibration area"):
        assert key in out
    metrics = json.load(open(f"{d}/metrics.json"))
    assert metrics["n_structures"] == len(test)
    assert metrics["miscalibration_area"] == evaluate_model(f"{d}/model.pt", read_dataset(f"{d}/test.xyz"))[
        "metrics"]["miscalibration_area"]
    for png in ("parity.png", "calibration.png"):
        path = tmp_path / "plots" / png
        assert path.stat().st_size > 5000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plumbing_cli_data_command(tmp_path):
    proc = _llpr("-q", "data", "-o", str(tmp_path / "d"), "--n-per-type", "1", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 7 structures" in proc.stdout
    parts = {name: read_dataset(str(tmp_path / "d" / f"{name}.xyz")) for name in ("all", "train", "val", "test")}
    # all.xyz holds what generate_dataset makes for the seed; the split covers it once
    expected = generate_dataset("sw", n_per_type=1, seed=3, progress=False)
    assert [a.info["energy"] for a in parts["all"]] == pytest.approx([a.info["energy"] for a in expected], abs=1e-9)
    split = sorted(a.info["energy"] for name in ("train", "val", "test") for a in parts[name])
    assert split == sorted(a.info["energy"] for a in parts["all"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "missing.pt", "--data", "missing.xyz"], "does not exist"),
        (["export", "missing.ckpt"], "does not exist"),
        (["data", "--potential", "eam", "-o", "x"], "sw"),
        (["calibrate", "--model", "missing.ckpt", "--train", "a.xyz", "--val", "b.xyz"], "does not exist"),
    ],
)
def test_cli_errors_are_clear(tmp_path, args, message):
    proc = _llpr(*args, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_export_of_uncalibrated_checkpoint(tmp_path, small_model):
    save_model(small_model, str(tmp_path / "m.ckpt"))
    proc = _llpr("export", str(tmp_path / "m.ckpt"), "-o", str(tmp_path / "model.pt"))
    assert proc.returncode == 2
    assert "llpr.LLPR checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_plumbing_cli_check_and_plugin_path(exported_path, tmp_path):
    proc = _llpr("check", exported_path)
    assert proc.returncode == 0, proc.stderr
    for key in ("format_version", "species", "cutoff", "energy_unit", "dtype", "alpha"):
        assert key in proc.stdout
    proc = _llpr("plugin-path")
    assert proc.returncode == 0, proc.stderr
    folder = proc.stdout.strip()
    assert os.path.isfile(os.path.join(folder, "libllpr_lammpsplugin.so"))
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    proc = _llpr("check", str(bad))
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_help_describes_the_commands_and_every_option():
    from llpr.cli import DESCRIPTION, build_parser

    proc = _llpr("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert " ".join(DESCRIPTION.split()) in text and "``" not in proc.stdout and "`" not in DESCRIPTION
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"llpr {name} {action.option_strings or action.dest} has no help"
    # the defaults are shown, where there is one to show
    train = " ".join(_llpr("train", "--help").stdout.split())
    for piece in ("(default: 400)", "(default: 8)", "(default: 0.005)", "(default: 100.0)", "(default: 1.0)",
                  "(default: float32)", "(default: model.ckpt)", "(default: 0)", "--stress-weight"):
        assert piece in train, piece
    assert "(default: None)" not in train and "(default: False)" not in train


def test_cli_train_defaults_are_the_train_config_defaults():
    from llpr.cli import build_parser
    from llpr.models.train import TrainConfig

    args = build_parser().parse_args(["train", "--train", "a.xyz", "--val", "b.xyz"])
    config = TrainConfig()
    assert (args.epochs, args.batch_size, args.lr, args.energy_weight, args.force_weight, args.stress_weight,
            args.dtype, args.seed) == (config.max_epochs, config.batch_size, config.learning_rate,
                                       config.energy_weight, config.force_weight, config.stress_weight,
                                       config.dtype, config.seed)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from llpr.cli import _progress

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            pass

    for tty, quiet, expected in ((True, False, True), (True, True, False), (False, False, False)):
        monkeypatch.setattr(sys, "stderr", Stream(tty))
        assert _progress(argparse.Namespace(quiet=quiet)) is expected


def test_cli_train_into_a_log_has_no_bars_and_counts_the_epochs(si_splits, tmp_path):
    """`llpr train > log 2>&1` (no -q): no progress bar lines; the epochs run are the epochs
    asked for, the best one is named, and the stress RMSE is reported (the labels have stress)."""
    train, val, _ = si_splits
    write_dataset(train, str(tmp_path / "train.xyz"))
    write_dataset(val, str(tmp_path / "val.xyz"))
    proc = _llpr("train", "--train", "train.xyz", "--val", "val.xyz", "--epochs", "3", "--dtype", "float64",
                 cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "train:" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert "trained 3 epochs (stopped: max_epochs; best validation loss at epoch " in out, out
    assert "stress RMSE" in out and "eV/A^3" in out
