"""ASE calculator that runs an exported llpr model file (the same file LAMMPS runs)."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

from llpr.modelfile import has_extrapolation_grade, load_exported, require_ensemble, require_extrapolation_grade
from llpr.graphs import graph_tensors


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
        self.has_gamma = has_extrapolation_grade(self.module)
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
        graph = graph_tensors(atoms, self.cutoff, self.module.dtype, self.device)
        inputs = tuple(graph.values())
        has_edges = graph["edge_index"].shape[1] > 0
        periodic = bool(np.all(atoms.pbc))
        out = self.module(*inputs, len(atoms), True, periodic)
        _check_finite(out, has_edges, atoms, ("energies", "forces", "features") + (("virial_atom",) if periodic else ()))
        energy = float(out["energy"].to(torch.float64))
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = out["energies"].detach().cpu().double().numpy()
        self.results["forces"] = out["forces"].detach().cpu().double().numpy()
        if periodic:
            virial = out["virial"].detach().cpu().double().numpy()
            stress = -virial / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
        self.results["sigma"] = out["sigma"].cpu().numpy()
        self.results["lpr"] = out["lpr"].cpu().numpy()
        if self.has_gamma:
            self.results["gamma"] = self.module.head.extrapolation_grade(out["features"]).cpu().numpy()
        feature_sum = out["features"].to(torch.float64).sum(0)
        self.results["energy_sigma"] = float(torch.sqrt(self.module.energy_variance(feature_sum))[0])
        if self.ensemble:
            ens = self.module.ensemble_forward(*inputs, len(atoms), True, periodic)
            _check_finite(ens, has_edges, atoms, ("force_deviations", "energy_deviations"))
            self.results["force_sigma"] = ens["force_sigma"].detach().cpu().numpy()
            self.results["energy_ensemble"] = energy + ens["energy_deviations"].detach().cpu().numpy()
            if periodic:
                dvir = ens["virial_deviations"].detach().cpu().numpy()
                dstress = -dvir.reshape(-1, 9)[:, [0, 4, 8, 5, 2, 1]] / atoms.get_volume()
                self.results["stress_ensemble"] = self.results["stress"][None, :] + dstress
                k = dstress.shape[0]
                self.results["stress_sigma"] = np.sqrt((dstress**2).sum(0) / (k - 1))


def _check_finite(out, has_edges: bool, atoms, keys) -> None:
    """CalculationFailed naming the atoms (0-based indices) and their closest pair when the
    model gave NaN or inf: as in LAMMPS, a broken evaluation never passes for a result."""
    for key in keys:
        value = out[key].detach()
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        if key.endswith("deviations") and value.dim() == 3:  # (K, N, 3): per atom over members
            finite = finite.all(dim=0)
        if value.dim() == 1 and key == "energy_deviations":
            bad = np.arange(len(atoms))
        else:
            bad = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(dim=1).cpu().numpy())
        message = f"the model gave non-finite {key} (NaN or inf) for {len(bad)} atom(s), indices {bad[:10].tolist()}"
        if len(bad) > 10:
            message = message[:-1] + ", ...]"
        if len(atoms) > 1 and has_edges:
            d = atoms.get_all_distances(mic=bool(np.any(atoms.pbc)))
            np.fill_diagonal(d, np.inf)
            rows = bad if len(bad) < len(atoms) else np.arange(len(atoms))
            sub = d[rows]
            r, j = np.unravel_index(np.argmin(sub), sub.shape)
            message += f"; closest pair: atoms {min(rows[r], j)} and {max(rows[r], j)}, {sub[r, j]:.4g} A apart"
        raise CalculationFailed(
            message + ". No uncertainty is defined for a broken evaluation; check the structure for "
            "overlapping atoms"
        )
