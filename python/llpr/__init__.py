"""llpr: calibrated last-layer prediction rigidity (LLPR) uncertainty for
machine-learned interatomic potentials."""

__version__ = "0.1.0"
