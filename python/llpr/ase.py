"""ASE calculator that runs an exported llpr model file (the same file LAMMPS runs)."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from llpr.modelfile import load_exported, require_ensemble, require_extrapolation_grade, run_exported


class LLPRCalculator(Calculator):
    """Energy, forces, stress and LLPR uncertainties from an exported llpr file.

    Results: ``energy`` / ``free_energy`` (eV), ``energies`` (per atom, eV), ``forces``
    (eV/A), ``stress`` (eV/A^3, Voigt, for fully periodic cells), ``sigma`` (per-atom
    sigma_i, eV), ``lpr`` (per-atom local prediction rigidity) and ``energy_sigma`` (sigma
    of the total energy, eV) and, when the file carries the training set's max q (files from
    `llpr calibrate` and `llpr export`), ``gamma`` (per-atom extrapolation grade ``q_i /
    max_train q``: above 1, an environment more novel than every training atom).

    ``ensemble=True`` (the file needs a last-layer ensemble, ``llpr export --ensemble K``) also
    gives ``force_sigma`` (per-atom force sigma ``sqrt(sum_k |F_k,i - F_i|^2 / (3 (K-1)))``,
    eV/A), ``energy_ensemble`` (K member energies, eV) and, for periodic cells,
    ``stress_ensemble`` (K x 6 member stresses, eV/A^3) and ``stress_sigma`` (6, their spread);
    it costs one more model evaluation and min(K - 1, n_features) backward passes per call.

    >>> atoms.calc = LLPRCalculator("model.pt")
    >>> atoms.get_potential_energy(), atoms.calc.results["energy_sigma"]
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "sigma", "lpr", "energy_sigma",
                              "gamma", "force_sigma", "energy_ensemble", "stress_ensemble", "stress_sigma"]

    def __init__(self, model, device: str = "cpu", ensemble: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.module = load_exported(model, device) if isinstance(model, str) else model
        self.ensemble = bool(ensemble)
        if self.ensemble:
            require_ensemble(self.module, f"'{model}'" if isinstance(model, str) else "the model")
        self.device = torch.device(device)
        self.path = f"'{model}'" if isinstance(model, str) else "the model"
        self.cutoff = float(self.module.cutoff)
        self.species = set(int(z) for z in self.module.species)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if "gamma" in properties:
            require_extrapolation_grade(self.module, self.path)
        atoms = self.atoms
        unknown = sorted(set(int(z) for z in atoms.numbers) - self.species)
        if unknown:
            raise ValueError(
                f"structure contains atomic number(s) {unknown} that the model does not know; "
                f"it was trained for {sorted(self.species)}"
            )
        periodic = bool(np.all(atoms.pbc))
        out = run_exported(self.module, atoms, forces=True, virial=periodic, ensemble=self.ensemble,
                           device=self.device)
        self.results["energy"] = out["energy"]
        self.results["free_energy"] = out["energy"]
        for key in ("energies", "forces", "stress", "sigma", "lpr", "gamma", "energy_sigma", "force_sigma",
                    "energy_ensemble", "stress_ensemble", "stress_sigma"):
            if key in out:
                self.results[key] = out[key]
