"""Train: fit an atomistic model (:class:`llpr.models.protocol.AtomisticModel`, by default a
:class:`~llpr.models.potential.LocalPotential`) to energies, forces and, where labelled, stresses.

Weighted loss ``w_E * MSE(E/N) + w_F * MSE(F) + w_S * MSE(stress)`` (per-atom energies so
that cells of different sizes weigh alike; the stress term over the Voigt components of the
structures that have a stress label, so a batch without any adds nothing). Forces and the
virial come from one gradient of the energy with respect to the edge vectors ``r_e``:
``F_i = sum_(e from i) dE/dr_e - sum_(e to i) dE/dr_e`` and ``W = -sum_e r_e (x) dE/dr_e``,
the same convention as the exported file (:mod:`llpr.uncertainty.propagation`); the stress is
``-W / volume`` (ASE's sign). Adam with a reduce-on-plateau learning-rate schedule,
validation-based early stopping (the best validation state is kept), an optional wall-clock
budget, checkpoints and a tqdm progress bar. Before the first epoch, the per-species reference
energies are fitted by least squares (for a model with ``set_species_energies``) and the model's
``fit_statistics`` hook, if any, sees the training graphs.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from llpr.graphs import AtomisticDataset, make_loader
from llpr.models.checkpoint import registered_model, save_model
from llpr.models.potential import edge_vectors_from_positions
from llpr.models.protocol import AtomisticModel, check_atomistic_model
from llpr.uncertainty.propagation import voigt_stress


#: default weight of the stress term: a stress error of 0.005 eV/A^3 (0.8 GPa) weighs as much as
#: a force error of 0.05 eV/A (force_weight 1); how it was chosen: docs/tutorial.md.
STRESS_WEIGHT = 100.0


@dataclass
class TrainConfig:
    max_epochs: int = 400
    batch_size: int = 8
    learning_rate: float = 5e-3
    min_learning_rate: float = 1e-5
    lr_factor: float = 0.5
    lr_patience: int = 8
    energy_weight: float = 100.0  # on (eV/atom)^2
    force_weight: float = 1.0  # on (eV/A)^2
    stress_weight: float = STRESS_WEIGHT  # on (eV/A^3)^2; 0: ignore stress labels
    early_stopping_patience: int = 30
    time_limit_s: float | None = None
    seed: int = 0
    dtype: str = "float32"
    num_threads: int | None = None
    model_class: str = "LocalPotential"  # a name registered with llpr.models.checkpoint.register_model
    model: dict = field(default_factory=dict)  # its keyword arguments (besides species)


def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return torch.float32 if name == "float32" else torch.float64


def composition_matrix(atoms_list, species: list[int]) -> np.ndarray:
    index = {z: k for k, z in enumerate(species)}
    X = np.zeros((len(atoms_list), len(species)))
    for row, atoms in enumerate(atoms_list):
        for z in atoms.numbers:
            if int(z) not in index:
                raise ValueError(
                    f"structure {row} contains atomic number {int(z)}, not among the model species {species}"
                )
            X[row, index[int(z)]] += 1
    return X


def fit_energy_shift(model: AtomisticModel, atoms_list) -> None:
    """Per-species reference energies by least squares on the composition, written with the
    model's ``set_species_energies``."""
    X = composition_matrix(atoms_list, model.species)
    y = np.array([a.info["energy"] for a in atoms_list])
    shift, *_ = np.linalg.lstsq(X, y, rcond=None)
    model.set_species_energies(torch.tensor(shift))


def prepare_model(model: AtomisticModel, train_atoms, train_dataset: AtomisticDataset) -> None:
    """What the model takes from the training set before the first epoch: its reference
    energies (``set_species_energies``) and input statistics (``fit_statistics``), for a model
    that has these hooks."""
    if callable(getattr(model, "set_species_energies", None)):
        fit_energy_shift(model, train_atoms)
    if callable(getattr(model, "fit_statistics", None)):
        model.fit_statistics(train_dataset.items)


def predict(model: AtomisticModel, batch: dict, forces: bool = True, stress: bool = False,
            create_graph: bool = False) -> dict:
    """``energy`` (n_structures, float64, eV) of a collated batch and, if asked, ``forces``
    (eV/A) and ``stress`` (n_structures, 6, eV/A^3: rows of structures without a stress label
    in the batch are zero). ``create_graph`` keeps the graph of the gradients, for a loss."""
    vectors = edge_vectors_from_positions(batch["positions"], batch["edge_index"], batch["edge_shifts"])
    stress = stress and "has_stress" in batch
    if forces or stress:
        vectors = vectors.detach().requires_grad_(True)
    energies, _ = model(batch["atomic_numbers"], batch["edge_index"], vectors, batch["positions"].shape[0])
    n_struct = int(batch["n_structures"])
    total = torch.zeros(n_struct, dtype=energies.dtype).index_add(0, batch["batch"], energies)
    out = {"energy": total.to(torch.float64)}
    if forces or stress:
        (g,) = torch.autograd.grad(total.sum(), vectors, create_graph=create_graph)
        centres, neighbours = batch["edge_index"][0], batch["edge_index"][1]
        if forces:
            out["forces"] = torch.zeros_like(batch["positions"]).index_add(0, centres, g).index_add(0, neighbours, -g)
        if stress:
            per_edge = -vectors.detach().unsqueeze(2) * g.unsqueeze(1)  # -r_e (x) dE/dr_e
            virial = torch.zeros((n_struct, 3, 3), dtype=g.dtype, device=g.device).index_add(
                0, batch["batch"][centres], per_edge
            )
            volume = torch.where(batch["has_stress"], batch["volume"], torch.ones_like(batch["volume"]))
            out["stress"] = voigt_stress(virial, volume) * batch["has_stress"].unsqueeze(1)
    return out


def predict_batch(model: AtomisticModel, batch: dict, forces: bool = True, create_graph: bool = False):
    """Structure energies (float64, eV) and forces (eV/A, None unless ``forces``) of a
    collated batch (:func:`predict` without the stress)."""
    out = predict(model, batch, forces=forces, create_graph=create_graph)
    return out["energy"], out.get("forces")


def _stress_errors(out: dict, batch: dict):
    """Voigt stress errors (n_labelled, 6) of the structures of ``batch`` with a stress label
    (None when there is none)."""
    if "stress" not in out:
        return None
    mask = batch["has_stress"]
    if not bool(mask.any()):
        return None
    return out["stress"][mask] - batch["stress"][mask].to(out["stress"].dtype)


def _loss(model, batch, config: TrainConfig, create_graph: bool):
    """The loss of a batch and its detached parts: energy and force MSE, and the stress sum
    of squares and number of values (0 and 0 without stress labels). The stress is computed
    even with stress_weight 0 (it costs one scatter of the edge gradient), to be reported."""
    out = predict(model, batch, forces=True, stress=True, create_graph=create_graph)
    energy, forces = out["energy"], out["forces"]
    n = batch["n_atoms"].to(energy.dtype)
    e_err = (energy - batch["energy"].to(energy.dtype)) / n
    f_err = forces - batch["forces"].to(forces.dtype)
    e_mse = (e_err**2).mean()
    f_mse = (f_err**2).mean()
    loss = config.energy_weight * e_mse + config.force_weight * f_mse
    s_err = _stress_errors(out, batch)
    s_sq, s_n = 0.0, 0
    if s_err is not None:
        if config.stress_weight > 0:
            loss = loss + config.stress_weight * (s_err**2).mean()
        s_sq, s_n = float((s_err.detach() ** 2).sum()), s_err.numel()
    return loss, e_mse.detach(), f_mse.detach(), s_sq, s_n


def evaluate_errors(model: AtomisticModel, dataset: AtomisticDataset, batch_size: int = 16) -> dict:
    """Energy RMSE (eV/atom and eV/structure), force RMSE (eV/A) and stress RMSE (eV/A^3,
    over the Voigt components of the structures with a stress label; None when none has one)
    of ``model`` on ``dataset``."""
    e_pa, e_tot, f_sq, n_f, s_sq, n_s = [], [], 0.0, 0, 0.0, 0
    was = model.training
    model.eval()
    for batch in make_loader(dataset, batch_size):
        out = predict(model, batch, forces=True, stress=True)
        err = (out["energy"].detach() - batch["energy"]).to(torch.float64)
        e_tot.append(err)
        e_pa.append(err / batch["n_atoms"].to(torch.float64))
        f_sq += float(((out["forces"].detach() - batch["forces"]) ** 2).sum())
        n_f += batch["forces"].numel()
        s_err = _stress_errors(out, batch)
        if s_err is not None:
            s_sq += float((s_err.detach().to(torch.float64) ** 2).sum())
            n_s += s_err.numel()
    model.train(was)
    e_pa = torch.cat(e_pa)
    e_tot = torch.cat(e_tot)
    return {
        "energy_rmse_per_atom": float(torch.sqrt((e_pa**2).mean())),
        "energy_rmse": float(torch.sqrt((e_tot**2).mean())),
        "force_rmse": math.sqrt(f_sq / n_f),
        "stress_rmse": math.sqrt(s_sq / n_s) if n_s else None,
        "n_structures": len(dataset),
        "n_stress_structures": n_s // 6,
    }


def train_model(
    train_atoms,
    val_atoms,
    config: TrainConfig | None = None,
    model: AtomisticModel | None = None,
    checkpoint: str | None = None,
    progress: bool = True,
    log=None,
) -> tuple[AtomisticModel, dict]:
    """Train a potential on ``train_atoms`` with early stopping on ``val_atoms``.

    ``model``: any :class:`llpr.models.protocol.AtomisticModel`; by default a new
    ``config.model_class`` (registered name) built with the training set's species and
    ``config.model``. A ``checkpoint`` needs a registered class (:mod:`llpr.models.checkpoint`).

    Returns the model in its best-validation state and a history dict (per-epoch losses,
    learning rates, RMSEs, wall time).
    """
    config = config or TrainConfig()
    if len(train_atoms) == 0:
        raise ValueError("the training set is empty")
    if len(val_atoms) == 0:
        raise ValueError("the validation set is empty: early stopping needs validation structures")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    dtype = _dtype(config.dtype)
    if model is None:
        species = sorted({int(z) for a in train_atoms for z in a.numbers})
        model = registered_model(config.model_class)(species=species, **config.model)
    check_atomistic_model(model)
    model = model.to(dtype)
    # the datasets refuse NaN or inf labels, naming the structure: one such label would only
    # surface as a non-finite loss, which reads like a divergence
    train_ds = AtomisticDataset(train_atoms, model.cutoff, dtype, source="the training set")
    val_ds = AtomisticDataset(val_atoms, model.cutoff, dtype, source="the validation set")
    prepare_model(model, train_atoms, train_ds)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_learning_rate
    )
    loader = make_loader(train_ds, config.batch_size, shuffle=True, seed=config.seed)
    val_loader = make_loader(val_ds, 16)
    best_state, best_val, best_epoch, stale = None, math.inf, -1, 0
    history = {"epoch": [], "train_loss": [], "val_loss": [], "lr": [], "val_energy_rmse": [], "val_force_rmse": [],
               "val_stress_rmse": []}
    start = time.perf_counter()
    bar = tqdm(range(config.max_epochs), desc="train", disable=not progress)
    stop_reason = "max_epochs"
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            loss = _loss(model, batch, config, create_graph=True)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * int(batch["n_structures"])
            count += int(batch["n_structures"])
        model.eval()
        v_loss, v_e, v_f, v_n, v_s, v_sn = 0.0, 0.0, 0.0, 0, 0.0, 0
        for batch in val_loader:
            loss, e_mse, f_mse, s_sq, s_n = _loss(model, batch, config, create_graph=False)
            k = int(batch["n_structures"])
            v_loss += float(loss.detach()) * k
            v_e += float(e_mse) * k
            v_f += float(f_mse) * k
            v_n += k
            v_s += s_sq
            v_sn += s_n
        v_loss /= v_n
        v_stress = math.sqrt(v_s / v_sn) if v_sn else None
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(v_loss)
        history["epoch"].append(epoch)
        history["train_loss"].append(total / count)
        history["val_loss"].append(v_loss)
        history["lr"].append(lr)
        history["val_energy_rmse"].append(math.sqrt(v_e / v_n))
        history["val_force_rmse"].append(math.sqrt(v_f / v_n))
        history["val_stress_rmse"].append(v_stress)
        postfix = {"val_E": f"{1000 * math.sqrt(v_e / v_n):.2f}meV/at", "val_F": f"{math.sqrt(v_f / v_n):.3f}eV/A"}
        if v_stress is not None:
            postfix["val_S"] = f"{1000 * v_stress:.2f}meV/A3"
        bar.set_postfix(postfix, lr=f"{lr:.1e}")
        if not math.isfinite(v_loss):
            stop_reason = "diverged"
            break
        if v_loss < best_val:
            best_val, best_epoch, stale = v_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            if checkpoint:
                model.load_state_dict(best_state)
                save_model(model, checkpoint, extra={"epoch": epoch, "val_loss": v_loss, "train_config": asdict(config)})
        else:
            stale += 1
        if log is not None:
            log(f"epoch {epoch}: train {total / count:.4g} val {v_loss:.4g} lr {lr:.2e}")
        if stale >= config.early_stopping_patience:
            stop_reason = "early_stopping"
            break
        if lr <= config.min_learning_rate * 1.0001 and stale >= config.lr_patience:
            stop_reason = "min_learning_rate"
            break
        if config.time_limit_s is not None and time.perf_counter() - start > config.time_limit_s:
            stop_reason = "time_limit"
            break
    bar.close()
    if best_state is None:
        raise RuntimeError(
            "training diverged (non-finite validation loss) before any usable epoch; "
            "lower the learning rate"
        )
    model.load_state_dict(best_state)
    model.eval()
    history.update(
        best_epoch=best_epoch,
        best_val_loss=best_val,
        wall_time_s=time.perf_counter() - start,
        stop_reason=stop_reason,
        config=asdict(config),
    )
    if checkpoint:
        save_model(model, checkpoint, extra={"history": history})
    return model, history
