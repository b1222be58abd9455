"""The model protocol: what a model must provide for llpr to wrap it.

LLPR needs a prediction that is a linear read-out ``y = w . f(x) (+ a constant)`` of last-layer
features ``f``. llpr knows two kinds of such models, told apart by what they provide (duck
typing, not a base class to inherit from):

**Atomistic** (:class:`AtomisticModel`): an interatomic potential. It gives per-atom energies
and per-atom last-layer features from a graph of atoms, ``E_i = w . f_i + E0[species_i]``.
Such a model can be trained (:func:`llpr.models.train.train_model`), wrapped (:class:`llpr.uncertainty.estimator.LLPR`),
checkpointed (:mod:`llpr.models.checkpoint`) and exported for LAMMPS (:func:`llpr.modelfile.export_model`).

**Tabular** (:class:`TabularModel`): a regressor on ``(batch, n_inputs)`` inputs with
``prediction = features(x) @ w``. It can be wrapped, checkpointed and exported to a TorchScript
file of its own (:class:`llpr.models.tabular.ExportedTabularModel`).

:func:`model_kind` says which kind a model is; :func:`check_atomistic_model` and
:func:`check_tabular_model` raise a ``TypeError`` that names every missing item (and a
``ValueError`` for inconsistent values).
"""

from __future__ import annotations

import math
from typing import List, Protocol, Tuple

import torch
from torch import nn


class AtomisticModel(Protocol):
    """An interatomic potential llpr can wrap, train, checkpoint and export.

    Attributes (TorchScript attributes too, since the exported file copies them):

    * ``species`` (List[int]): the atomic numbers the model knows, ascending;
    * ``cutoff`` (float, Angstrom): the neighbour-list cutoff of the graph it is given;
    * ``receptive_field`` (float, Angstrom): the distance beyond which atoms do not change an
      atom's energy; ``cutoff`` for a strictly local model, ``layers x cutoff`` for a
      message-passing one;
    * ``strictly_local`` (bool): an atom's energy and features depend only on its own edges,
      so the centres may be evaluated in blocks (requires ``receptive_field == cutoff``);
    * ``n_features`` (int): the dimension ``F`` of the last-layer features.

    Methods (scriptable with ``torch.jit.script``; the last two marked ``@torch.jit.export``):

    * ``forward(atomic_numbers (N,) int64, edge_index (2, E) int64, edge_vectors (E, 3),
      n_centers: int) -> (energies (n_centers,), features (n_centers, F))``: atoms
      ``0 .. n_centers-1`` are the centres, whose energies and features are returned;
      ``edge_vectors[e] = r[edge_index[1, e]] - r[edge_index[0, e]]`` (with periodic shifts);
      a strictly local model is given only edges whose first atom is a centre, a model that
      is not strictly local also the edges of the other atoms (in LAMMPS: of every ghost
      atom, out to the receptive field), through which their messages reach the centres;
    * ``readout_weights() -> (F,)``: the read-out ``w``;
    * ``species_energies() -> (len(species),)``: the per-species constant ``E0`` (in the
      order of ``species``), so that ``energies = features @ w + E0[species index]``.

    Optional, for :func:`llpr.models.train.train_model`: ``set_species_energies(values)`` (the
    least-squares reference energies are written through it) and ``fit_statistics(graphs)``
    (called once before the first epoch with the training graphs, dicts with
    ``positions``, ``atomic_numbers``, ``edge_index`` and ``edge_shifts``). For checkpoints
    (:mod:`llpr.models.checkpoint`): ``init_kwargs``, the constructor's keyword arguments, and a
    class registered with :func:`llpr.models.checkpoint.register_model`.
    """

    species: List[int]
    cutoff: float
    receptive_field: float
    strictly_local: bool
    n_features: int

    def forward(
        self, atomic_numbers: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_centers: int
    ) -> Tuple[torch.Tensor, torch.Tensor]: ...

    def readout_weights(self) -> torch.Tensor: ...

    def species_energies(self) -> torch.Tensor: ...


class TabularModel(Protocol):
    """A regressor on tabular inputs ``x`` (batch, n_inputs).

    * ``features(x) -> (batch, F)``: the last-layer features; the prediction is
      ``features(x) @ w`` (a bias belongs in the features, as a constant column);
    * ``readout_weights() -> (F,)``, or a bias-free ``torch.nn.Linear`` named ``readout``.

    Optional: ``n_inputs`` (int), with which inputs of the wrong shape are refused with a
    clear message; for export, a model scriptable with ``torch.jit.script``; for checkpoints,
    ``init_kwargs`` and a registered class (as for atomistic models).
    """

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


ATOMISTIC_ATTRIBUTES = ("species", "cutoff", "receptive_field", "strictly_local", "n_features")
ATOMISTIC_METHODS = ("forward", "readout_weights", "species_energies")


def _has_method(model, name: str) -> bool:
    return callable(getattr(model, name, None))


def missing_atomistic(model) -> List[str]:
    """The items of :class:`AtomisticModel` that ``model`` lacks (empty: none)."""
    missing = [name for name in ATOMISTIC_ATTRIBUTES if not hasattr(model, name)]
    missing += [f"{name}()" for name in ATOMISTIC_METHODS if not _has_method(model, name)]
    return missing


def _readout_problem(model) -> str | None:
    """Why the read-out weights of a tabular model cannot be read (None: they can)."""
    if _has_method(model, "readout_weights"):
        return None
    readout = getattr(model, "readout", None)
    if not isinstance(readout, nn.Linear):
        return "readout_weights() or a torch.nn.Linear `readout`"
    if readout.bias is not None:
        return (
            "a bias-free `readout` (its bias is not part of the features LLPR treats: append a "
            "constant 1 to the features, as llpr.models.tabular.MLPRegressor does)"
        )
    return None


def missing_tabular(model) -> List[str]:
    """The items of :class:`TabularModel` that ``model`` lacks (empty: none)."""
    missing = [] if _has_method(model, "features") else ["features(x)"]
    problem = _readout_problem(model)
    return missing + ([problem] if problem else [])


def _name(model) -> str:
    return type(model).__name__


def check_atomistic_model(model) -> None:
    """Raise ``TypeError`` naming what ``model`` lacks of :class:`AtomisticModel`, or
    ``ValueError`` when its metadata are inconsistent."""
    missing = missing_atomistic(model)
    if missing:
        raise TypeError(
            f"{_name(model)} is not an llpr atomistic model: it lacks {', '.join(missing)} "
            "(see llpr.models.protocol.AtomisticModel)"
        )
    species = [int(z) for z in model.species]
    if not species or len(set(species)) != len(species) or any(z < 1 or z > 118 for z in species):
        raise ValueError(f"{_name(model)}.species must be distinct atomic numbers in 1..118, got {species}")
    cutoff, field = float(model.cutoff), float(model.receptive_field)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"{_name(model)}.cutoff must be a positive number, got {cutoff}")
    if not (math.isfinite(field) and field >= cutoff):
        raise ValueError(f"{_name(model)}.receptive_field ({field}) must be at least the cutoff ({cutoff})")
    if bool(model.strictly_local) and field != cutoff:
        raise ValueError(
            f"{_name(model)} says it is strictly local but its receptive field ({field}) is not its "
            f"cutoff ({cutoff})"
        )
    if int(model.n_features) < 1:
        raise ValueError(f"{_name(model)}.n_features must be at least 1, got {model.n_features}")


def check_tabular_model(model) -> None:
    """Raise ``TypeError`` naming what ``model`` lacks of :class:`TabularModel`."""
    missing = missing_tabular(model)
    if missing:
        raise TypeError(
            f"{_name(model)} is not an llpr tabular model: it needs {' and '.join(missing)} "
            "(see llpr.models.protocol.TabularModel)"
        )


def _looks_atomistic(model) -> bool:
    """The model means to be atomistic: it has any item only atomistic models have."""
    return any(hasattr(model, name) for name in ("species", "cutoff", "receptive_field", "species_energies"))


def model_kind(model) -> str:
    """``"atomistic"`` or ``"tabular"``; ``TypeError`` naming what is missing otherwise.

    A model with any atomistic item (``species``, ``cutoff``, ...) must have them all."""
    if _looks_atomistic(model):
        check_atomistic_model(model)
        return "atomistic"
    missing = missing_tabular(model)
    if not missing:
        return "tabular"
    raise TypeError(
        f"{_name(model)} follows neither llpr model protocol: an atomistic model needs "
        f"{', '.join(missing_atomistic(model))}; a tabular model needs {' and '.join(missing)} "
        "(see llpr.models.protocol)"
    )


def readout_weights(model) -> torch.Tensor:
    """The read-out ``w`` (F,) of a model of either kind, in its own dtype (graph detached)."""
    if _has_method(model, "readout_weights"):
        return model.readout_weights().detach().reshape(-1)
    problem = _readout_problem(model)
    if problem is not None:
        raise TypeError(f"cannot find the last-layer weights of {_name(model)}: give it {problem}")
    return model.readout.weight.detach().reshape(-1)


def tabular_input(model, x) -> torch.Tensor:
    """``x`` (a tensor or array of shape (batch, n_inputs)) as a tensor of the model's dtype
    and device; ``ValueError`` for a wrong shape or a non-numeric input."""
    x = torch.as_tensor(x)
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    n_inputs = getattr(model, "n_inputs", None)
    width = n_inputs if n_inputs is not None else "n_inputs"
    if x.dim() != 2 or (n_inputs is not None and x.shape[1] != n_inputs):
        hint = " (one sample: x.reshape(1, -1); one input column: x.reshape(-1, 1))" if x.dim() == 1 else ""
        raise ValueError(f"{_name(model)} expects inputs of shape (batch, {width}), got {tuple(x.shape)}{hint}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{_name(model)} expects real-valued inputs, got {x.dtype}")
    return x.to(device=param.device if param is not None else x.device, dtype=dtype)
