"""llpr: calibrated last-layer prediction rigidity (LLPR) uncertainty for
machine-learned interatomic potentials.

The package has three parts, and the public API of each is re-exported here:

* :mod:`llpr.uncertainty`: the uncertainty core, for any model whose prediction is a linear
  read-out of last-layer features: the LLPR head (every formula), the fit of the covariance,
  the calibration, the estimator :class:`LLPR`, last-layer ensembles;
* :mod:`llpr.models`: the model protocol, llpr's own potential, MACE models, tabular models,
  checkpoints and training;
* :mod:`llpr.lammps`: the LAMMPS side: opening LAMMPS, the plugin, reference data, records of
  MD runs and their reweighting;

and beside them the exported file (:mod:`llpr.modelfile`), structures and graphs
(:mod:`llpr.data`, :mod:`llpr.graphs`), the ASE calculator (:mod:`llpr.ase`), evaluation
(:mod:`llpr.evaluate`) and the command line (:mod:`llpr.cli`).

Names are imported on first use, so ``import llpr`` (which the ``lammps`` package does for the
plugin's entry point) loads neither torch nor LAMMPS.
"""

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    # uncertainty core
    "LLPR": "llpr.uncertainty.estimator",
    "load_llpr": "llpr.uncertainty.estimator",
    "save_llpr": "llpr.uncertainty.estimator",
    "LLPRHead": "llpr.uncertainty.llpr_head",
    "CalibrationResult": "llpr.uncertainty.calibrate",
    "calibrate_hyperparameters": "llpr.uncertainty.calibrate",
    "CovarianceAccumulator": "llpr.uncertainty.fit",
    # models
    "LocalPotential": "llpr.models.potential",
    "MACEModel": "llpr.models.mace",
    "MLPRegressor": "llpr.models.tabular",
    "TrainConfig": "llpr.models.train",
    "train_model": "llpr.models.train",
    "register_model": "llpr.models.checkpoint",
    "save_model": "llpr.models.checkpoint",
    "load_model": "llpr.models.checkpoint",
    # structures, the exported file, ASE, evaluation
    "read_dataset": "llpr.data",
    "write_dataset": "llpr.data",
    "split_dataset": "llpr.data",
    "AtomisticDataset": "llpr.graphs",
    "make_loader": "llpr.graphs",
    "export_model": "llpr.modelfile",
    "load_exported": "llpr.modelfile",
    "LLPRCalculator": "llpr.ase",
    "evaluate_model": "llpr.evaluate",
    # the LAMMPS side
    "open_lammps": "llpr.lammps.session",
    "check_model": "llpr.lammps.plugin",
    "generate_dataset": "llpr.lammps.sampling",
    "label_structures": "llpr.lammps.labelling",
    "read_record": "llpr.lammps.reweight",
    "reweight_record": "llpr.lammps.reweight",
    "reweight": "llpr.lammps.reweight",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'llpr' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
