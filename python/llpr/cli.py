"""Command-line interface: ``llpr data | train | calibrate | export | evaluate | check |
reweight | plugin-path``.

Each command imports what it needs when it runs: torch, scipy and ASE take seconds to
import, and ``llpr --help`` or ``llpr plugin-path`` need none of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DESCRIPTION = (
    "Calibrated uncertainty for machine-learned interatomic potentials (last-layer prediction "
    "rigidity, LLPR), from reference data to LAMMPS. The workflow: llpr data, train, calibrate, "
    "export, evaluate; check and plugin-path inspect an exported file and the LAMMPS plugin; "
    "reweight gives the model uncertainty of averages from a LAMMPS run."
)
EPILOG = "llpr COMMAND --help lists the options of a command. Progress bars go to a terminal only; -q hides them."


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with each option's default, where it has one worth showing (not for
    required options, flags, options without a default, or help that states its default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text
            or action.required
            or not action.option_strings
            or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        ):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that uses :class:`_Formatter` (for the sub-commands too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _progress(args) -> bool:
    """Progress bars only on a terminal: redirected to a log file, every update of a bar would
    be a line of it."""
    return not args.quiet and sys.stderr.isatty()


def _read(path: str, args=None):
    from llpr.data import read_dataset

    keys = {k: getattr(args, k) for k in ("energy_key", "forces_key", "stress_key") if getattr(args, k, None)}
    return read_dataset(path, **keys)


def _load_model(args):
    """The model to calibrate: an `llpr train` checkpoint, or a MACE model file."""
    from llpr.models.checkpoint import load_model
    from llpr.models.mace import MACEModel, is_torchscript, mace_file_kind

    exists = os.path.exists(args.model)
    if exists and (mace_file_kind(args.model) is not None or is_torchscript(args.model)):
        return MACEModel.from_file(args.model, head=args.head, allow_pickle=args.allow_pickle, dtype=args.dtype)
    if args.head:
        raise ValueError(f"--head selects the head of a multi-head MACE model; '{args.model}' is not one")
    try:
        return load_model(args.model)
    except ValueError as exc:
        raise ValueError(f"{exc}; --model takes an `llpr train` checkpoint or a MACE model file") from None


def _distributed():
    """Join the process group torchrun describes (WORLD_SIZE > 1); (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def _leave_process_group() -> None:
    """Shut down the process group :func:`_distributed` joined: left to the interpreter's exit,
    its threads may abort the process after the work is done."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _check_output_file(path, option: str, example: str) -> None:
    """Refuse an output file that cannot be written, before the work that makes it."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name, e.g. {os.path.join(path, example)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{option} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path}: no permission to write there; choose another path")


def _check_output_folder(path, option: str) -> None:
    """Refuse an output folder that cannot be made or written, before the work that fills it."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} is a file; give a folder name")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path}: {existing} is a file, so the folder cannot be made there")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"{option} {path}: no permission to write in {existing}; choose another folder")


def cmd_data(args) -> None:
    from llpr.data import split_dataset, write_dataset
    from llpr.lammps.sampling import generate_dataset

    _check_output_folder(args.output, "-o")
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    structures = generate_dataset(
        potential=args.potential, n_per_type=args.n_per_type, seed=args.seed, progress=_progress(args)
    )
    train, val, test = split_dataset(structures, tuple(args.split), seed=args.seed)
    for name, part in (("all", structures), ("train", train), ("val", val), ("test", test)):
        write_dataset(part, os.path.join(args.output, f"{name}.xyz"))
    print(
        f"wrote {len(structures)} structures ({len(train)} train / {len(val)} val / {len(test)} test) "
        f"labelled with {args.potential} to {args.output}/ in {time.perf_counter() - start:.1f} s"
    )


def cmd_train(args) -> None:
    from llpr.models.train import TrainConfig, evaluate_errors, train_model
    from llpr.graphs import AtomisticDataset

    _check_output_file(args.output, "-o", "model.ckpt")
    train, val = _read(args.train, args), _read(args.val, args)
    model_kwargs = {"cutoff": args.cutoff} if args.cutoff else {}
    config = TrainConfig(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        time_limit_s=args.time_limit,
        seed=args.seed,
        dtype=args.dtype,
        energy_weight=args.energy_weight,
        force_weight=args.force_weight,
        stress_weight=args.stress_weight,
        model=model_kwargs,
    )
    model, history = train_model(train, val, config, checkpoint=args.output, progress=_progress(args))
    errors = evaluate_errors(model, AtomisticDataset(val, model.cutoff, next(model.parameters()).dtype))
    stress = "" if errors["stress_rmse"] is None else f", stress RMSE {errors['stress_rmse']:.5f} eV/A^3"
    print(
        f"trained {len(history['epoch'])} epochs (stopped: {history['stop_reason']}; best validation loss at "
        f"epoch {history['best_epoch'] + 1}, kept) in {history['wall_time_s']:.0f} s; validation energy RMSE "
        f"{1000 * errors['energy_rmse_per_atom']:.2f} meV/atom, force RMSE {errors['force_rmse']:.4f} eV/A{stress}; "
        f"saved {args.output}"
    )


def cmd_calibrate(args) -> None:
    from llpr.uncertainty.calibrate import check_enough_targets
    from llpr.graphs import AtomisticDataset, StreamingDataset, make_loader
    from llpr.models.protocol import check_atomistic_model
    from llpr.uncertainty.estimator import LLPR, save_llpr

    _check_output_file(args.output, "-o", "llpr.ckpt")
    model = _load_model(args)
    try:
        check_atomistic_model(model)
    except TypeError as exc:
        raise ValueError(
            f"llpr calibrate fits atomistic models on structures; '{args.model}' holds a "
            f"{type(model).__name__}, which is not one ({exc}); calibrate it from Python "
            "(llpr.uncertainty.estimator.LLPR, docs/python_api.md)"
        ) from None
    dtype = next(model.parameters()).dtype
    rank, world = _distributed()
    # the training set is streamed (and shared out between torchrun's processes); the
    # validation set is small and every process calibrates on all of it, identically
    train = StreamingDataset(args.train, model.cutoff, dtype, energy_key=args.energy_key,
                             forces_key=args.forces_key, rank=rank, world_size=world)
    val_structures = _read(args.val, args)
    extra_structures = _read(args.calibration_extra, args) if args.calibration_extra else []
    # before the pass over the training set: whether the validation set can determine the calibration
    calibration_set = val_structures + extra_structures
    check_enough_targets(len(calibration_set), sum(len(a) for a in calibration_set) if args.force_calibration > 0
                         else 0, args.sigma_power)
    val = AtomisticDataset(val_structures, model.cutoff, dtype)
    progress = _progress(args) and rank == 0
    llpr = LLPR(model).fit(make_loader(train, args.batch_size), progress=progress)
    extra = None
    if args.calibration_extra:
        extra = make_loader(AtomisticDataset(extra_structures, model.cutoff, dtype), args.batch_size)
    # then a second pass over the training atoms, with the calibrated C: the extrapolation grade's max q
    llpr.calibrate(make_loader(val, args.batch_size), train_loader=make_loader(train, args.batch_size),
                   progress=progress, force_weight=args.force_calibration, sigma_power=args.sigma_power,
                   extra=extra, extra_source=args.calibration_extra or "")
    if rank != 0:
        return
    save_llpr(llpr, args.output)
    s = llpr.calibration_summary()
    print(
        f"fitted F^T F on {s['n_train']} structures; calibrated ({s['method']}) on {s['n_validation']}: "
        f"alpha = {s['alpha']:.4g}, varsigma = {s['varsigma']:.4g}; "
        f"validation NLL {s['nll_before']:.3f} (alpha=1, varsigma=1) -> {s['nll']:.3f}; "
        f"max q of the {s['n_train_atoms']} training atoms {s['max_train_q']:.4g} (gamma = 1); saved {args.output}"
    )


def cmd_export(args) -> None:
    import torch

    from llpr.modelfile import export_model
    from llpr.uncertainty.estimator import load_llpr

    _check_output_file(args.output, "-o", "model.pt")
    llpr = load_llpr(args.checkpoint)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    export_model(llpr, args.output, dtype=dtype, ensemble=args.ensemble, seed=args.seed)
    extra = f", last-layer ensemble of {args.ensemble} (seed {args.seed})" if args.ensemble else ""
    print(f"exported {args.output} ({args.dtype} model, float64 LLPR factor{extra})")


def cmd_evaluate(args) -> None:
    from llpr.evaluate import evaluate_model, format_summary, write_metrics_json, write_plots

    _check_output_file(args.json, "--json", "metrics.json")
    _check_output_folder(args.plots, "--plots")
    ensemble = False if args.no_ensemble else None
    result = evaluate_model(args.model, _read(args.data, args), progress=_progress(args), ensemble=ensemble,
                            source=args.data)
    m = result["metrics"]
    print(format_summary(m))
    if args.plots:
        paths = write_plots(result["arrays"], args.plots)
        print(f"plots: {', '.join(paths.values())}")
    if args.json:
        write_metrics_json(m, args.json)


def cmd_check(args) -> None:
    from llpr.lammps.plugin import check_model

    info = check_model(args.model)
    for key, value in info.items():
        print(f"{key:20s} {value}")
    calibration = info.get("calibration")
    for warning in calibration.get("warnings", []) if isinstance(calibration, dict) else []:
        print(f"{'calibration warning':20s} {warning}")


def cmd_reweight(args) -> None:
    import warnings

    from llpr.lammps.reweight import ReweightWarning, format_report, plot_result, reweight_record, write_json

    blocks = "auto" if args.blocks == "auto" else int(args.blocks)
    _check_output_file(args.json, "--json", "reweight.json")
    _check_output_file(args.plot, "--plot", "reweight.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReweightWarning)  # they are printed with the report
        result = reweight_record(
            args.temperature, args.record, observables=args.observable or None, run=args.run, start=args.start,
            model=args.model, blocks=blocks, min_ess_fraction=args.min_ess,
        )
    print(format_report(result))
    if args.json:
        print(f"json: {write_json(result, args.json)}")
    if args.plot:
        print(f"plot: {plot_result(result, args.plot)}")


def cmd_plugin_path(args) -> None:
    from llpr.lammps.plugin import plugin_dir

    print(plugin_dir())


def _label_keys(p) -> None:
    p.add_argument("--energy-key", default="energy", help="extxyz key of the energies (e.g. REF_energy)")
    p.add_argument("--forces-key", default="forces", help="extxyz key of the forces (e.g. REF_forces)")
    p.add_argument("--stress-key", default="stress", help="extxyz key of the stresses (e.g. REF_stress)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llpr", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, even on a terminal")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("data", help="generate labelled reference structures with LAMMPS potentials")
    p.add_argument("-o", "--output", default="data", help="output folder (train/val/test/all .xyz)")
    p.add_argument("--potential", default="sw", help="sw (default), tersoff, snap or sic")
    p.add_argument("--n-per-type", type=int, default=40, help="structures per configuration type")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling and of the split")
    p.add_argument("--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of train, validation and test structures")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a local potential on energies, forces and (where labelled) stresses")
    p.add_argument("--train", required=True, help="training structures (extxyz)")
    p.add_argument("--val", required=True, help="validation structures (extxyz), for early stopping")
    p.add_argument("-o", "--output", default="model.ckpt", help="checkpoint to write, of the best validation state")
    p.add_argument("--epochs", type=int, default=400, help="most epochs to train; early stopping may end sooner")
    p.add_argument("--time-limit", type=float, default=None, help="wall-clock budget in seconds (default: none)")
    p.add_argument("--batch-size", type=int, default=8, help="structures per optimiser step")
    p.add_argument("--lr", type=float, default=5e-3, help="initial learning rate of Adam, halved on plateaus")
    p.add_argument("--energy-weight", type=float, default=100.0, help="loss weight of the energy per atom, on (eV/atom)^2")
    p.add_argument("--force-weight", type=float, default=1.0, help="loss weight of the forces, on (eV/A)^2")
    p.add_argument("--stress-weight", type=float, default=100.0,
                   help="loss weight of the stress, on (eV/A^3)^2, for structures with a stress label; 0: ignore them")
    p.add_argument("--cutoff", type=float, default=None, help="cutoff in Angstrom (default: 4.0)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision of the model")
    p.add_argument("--seed", type=int, default=0, help="random seed of the initial weights and of the batches")
    _label_keys(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="fit the LLPR covariance and calibrate alpha, varsigma")
    p.add_argument("--model", required=True,
                   help="checkpoint from `llpr train`, or a MACE model (*_compiled.model; *.model with --allow-pickle)")
    p.add_argument("--train", required=True, help="training structures (for F^T F; read as a stream)")
    p.add_argument("--val", required=True, help="validation structures (for alpha, varsigma)")
    p.add_argument("-o", "--output", default="llpr.ckpt", help="calibrated checkpoint to write")
    p.add_argument("--head", default=None, help="the head of a multi-head MACE model")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a pickled MACE *.model file (this runs code stored in the file: only for files you trust)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="the precision a MACE model must have (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=16, help="structures per batch")
    p.add_argument("--force-calibration", type=float, default=0.0, metavar="WEIGHT",
                   help="calibrate on forces too: minimise NLL(energies) + WEIGHT * NLL(force components) "
                        "(default 0: energies only; 1 weighs the two sets equally)")
    p.add_argument("--calibration-extra", default=None, metavar="FILE",
                   help="extra labelled structures (extxyz) added to the calibration set, e.g. a few "
                        "surfaces or defects like those the simulations will meet")
    p.add_argument("--sigma-power", action="store_true",
                   help="fit a power law sigma = s * sqrt(q)^b on the energies instead of sigma = alpha * sqrt(q)")
    _label_keys(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="write one TorchScript file for LAMMPS and ASE")
    p.add_argument("checkpoint", help="checkpoint from `llpr calibrate`")
    p.add_argument("-o", "--output", default="model.pt", help="model file to write")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="precision of the network in the file (the LLPR factor is float64 either way)")
    p.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="add a last-layer ensemble of K >= 2 members (for force uncertainties); default 0: none")
    p.add_argument("--seed", type=int, default=0, help="random seed of the ensemble (default 0)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="accuracy and uncertainty metrics of an exported model")
    p.add_argument("model", help="exported model file")
    p.add_argument("--data", required=True, help="labelled structures (extxyz)")
    p.add_argument("--plots", default=None,
                   help="folder for parity.png, calibration.png, error_vs_sigma.png and (files with the "
                        "extrapolation grade) gamma.png")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--no-ensemble", action="store_true",
                   help="skip the force uncertainties even if the file has a last-layer ensemble")
    _label_keys(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("check", help="validate an exported file exactly as LAMMPS loads it")
    p.add_argument("model", help="exported model file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("reweight", help="model uncertainty of MD averages: reweight a run to the ensemble members")
    p.add_argument("record", nargs="+",
                   help="file(s) written by fix llpr/record (a run and its continuations, in order)")
    p.add_argument("--temperature", type=float, required=True, help="the thermostat's temperature (K)")
    p.add_argument("--observable", action="append", metavar="NAME[@AXIS]",
                   help="a recorded value: pe, press, pxx..pyz, temp, vol, or one given to the fix (v_rho, "
                        "c_rdf[2]); repeat for several (default: pe, press and every value given to the fix)")
    p.add_argument("--model", default=None, help="the exported model file the run must have used (checked)")
    p.add_argument("--start", type=int, default=None, help="first time step to use (drop equilibration)")
    p.add_argument("--run", type=int, default=None,
                   help="reweight only this run of the record (1, 2, ...; default: all runs, which must agree)")
    p.add_argument("--blocks", default="auto", help="number of blocks for the sampling errors (default: auto)")
    p.add_argument("--min-ess", type=float, default=0.1,
                   help="warn when a member's effective sample size is below this fraction of the frames")
    p.add_argument("--plot", default=None, help="write a PNG: each observable with its model-uncertainty band")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    p.set_defaults(func=cmd_reweight)

    p = sub.add_parser("plugin-path", help="print the folder holding the LAMMPS plugin")
    p.set_defaults(func=cmd_plugin_path)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"llpr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
