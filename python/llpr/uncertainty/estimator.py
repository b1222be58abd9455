"""The LLPR estimator: ``fit`` / ``calibrate`` / ``predict`` for any torch model with a
linear last layer.

The model is atomistic or tabular (:mod:`llpr.models.protocol`), which chooses the default feature
function: :func:`atomistic_outputs` or :func:`tabular_outputs`.

A *feature function* maps ``(model, batch)`` to a dict with

* ``prediction`` (B,): the model's predictions, ``prediction = features @ w (+ constant)``;
* ``features`` (B, F): the last-layer features of each prediction;
* ``target`` (B,), optional: the reference values (needed by ``calibrate``);
* ``atom_features`` (N, F) and ``batch`` (N,), optional: per-atom features for local
  uncertainties.

Atomistic convention (:func:`atomistic_outputs`): the energy is extensive, so a structure's
feature is the **sum** of its atoms' features (no per-atom mean) and its variance is
``alpha^2 (sum_i f_i)^T C^-1 (sum_i f_i)``, with ``C = F^T F + varsigma^2 I`` where ``F``
stacks the training structures' summed features. Per-atom: ``sigma_i = alpha sqrt(f_i^T
C^-1 f_i)`` (eV) and ``LPR_i = 1 / (f_i^T C^-1 f_i)``.

Tabular convention (:func:`tabular_outputs`): one feature row per sample, no reduction.
A model trained on a standardised target ``t = (y - target_shift) / target_scale`` is wrapped
with ``LLPR(model, target_scale=..., target_shift=...)``: predictions, targets, errors and
hence ``alpha``, ``sigma`` and the NLL are then all in the units of ``y``.

Last-layer ensemble (Laplace sampling of the read-out): :meth:`LLPR.sample_ensemble` draws
``w_k ~ N(w, alpha^2 C^-1)`` (re-centred on ``w``), and ``predict(batch, ensemble=W,
forces=True)`` propagates them to per-member predictions and forces (see
:mod:`llpr.uncertainty.propagation` for the conventions).
"""

from __future__ import annotations

import math
import warnings

import torch
from tqdm.auto import tqdm

from llpr.models.checkpoint import model_from_payload, read_llpr_payload, save_llpr_payload
from llpr.models.potential import edge_vectors_from_positions
from llpr.uncertainty.calibrate import CalibrationResult, calibrate_hyperparameters
from llpr.uncertainty.fit import CovarianceAccumulator, MaximumAccumulator
from llpr.uncertainty.llpr_head import LLPRHead
from llpr.uncertainty.propagation import (
    edge_gradients_to_forces,
    ensemble_energy_deviations,
    ensemble_force_virial_deviations,
    ensemble_sigma,
    force_sigma,
    sample_deviations,
)
from llpr.models.protocol import model_kind, readout_weights, tabular_input


def atomistic_outputs(model, batch: dict) -> dict:
    """Feature function for atomistic models (:class:`llpr.models.protocol.AtomisticModel`) on
    batches from :func:`llpr.graphs.collate`."""
    if not torch.isfinite(batch["positions"]).all():
        raise ValueError("structure has non-finite (NaN or inf) positions")
    vectors = edge_vectors_from_positions(batch["positions"], batch["edge_index"], batch["edge_shifts"])
    n_atoms = batch["positions"].shape[0]
    energies, feats = model(batch["atomic_numbers"], batch["edge_index"], vectors, n_atoms)
    n_struct = int(batch["n_structures"])
    index = batch["batch"]
    prediction = torch.zeros(n_struct, dtype=torch.float64).index_add(0, index, energies.to(torch.float64))
    summed = torch.zeros((n_struct, feats.shape[1]), dtype=torch.float64).index_add(
        0, index, feats.to(torch.float64)
    )
    out = {
        "prediction": prediction,
        "features": summed,
        "atom_features": feats,
        "atom_energies": energies,
        "batch": index,
    }
    if "energy" in batch:
        out["target"] = batch["energy"].to(torch.float64)
    return out


def tabular_outputs(model, batch) -> dict:
    """Feature function for tabular models (:class:`llpr.models.protocol.TabularModel`): batches are
    ``(x, y)`` pairs or plain ``x`` (tensors or arrays, any floating dtype: ``x`` is converted
    to the model's); ``prediction = features(x) @ w`` in the model's (standardised) units."""
    x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
    feats = model.features(tabular_input(model, x))
    out = {"prediction": (feats @ readout_weights(model)).to(torch.float64), "features": feats}
    if y is not None:
        target = torch.as_tensor(y).reshape(-1).to(torch.float64)
        if target.shape[0] != feats.shape[0]:
            raise ValueError(f"the batch has {feats.shape[0]} inputs but {target.shape[0]} targets")
        out["target"] = target
    return out


class LLPR:
    """Last-layer prediction rigidity of a trained model.

    >>> llpr = LLPR(model).fit(train_loader).calibrate(val_loader)
    >>> out = llpr.predict(batch)   # prediction, variance, sigma (+ atom_sigma, lpr)

    ``model`` follows :mod:`llpr.models.protocol` (atomistic or tabular) unless a ``feature_fn(model,
    batch)`` is given. ``target_scale`` and ``target_shift`` (tabular models only): the model
    predicts ``(y - target_shift) / target_scale``; the targets in the batches are ``y``, and
    predictions, ``alpha``, ``sigma`` and the NLL come out in the units of ``y``.

    Fitted attributes (scikit-learn's convention: set by :meth:`fit` and :meth:`calibrate`,
    read-only, None before): ``covariance_`` (F^T F, float64) and ``n_train_samples_`` (rows
    fitted) by ``fit``; ``calibration_`` (:class:`llpr.uncertainty.calibrate.CalibrationResult`)
    by ``calibrate``; ``max_train_q_`` and ``n_train_atoms_`` (the extrapolation grade's
    reference) by ``calibrate(..., train_loader=...)`` or :meth:`fit_extrapolation_grade`.
    """

    # fitted attribute -> what sets it (for the messages of __setattr__ and of the old names)
    _FITTED = {
        "covariance_": "fit()",
        "n_train_samples_": "fit()",
        "calibration_": "calibrate()",
        "max_train_q_": "calibrate(..., train_loader=...) or fit_extrapolation_grade()",
        "n_train_atoms_": "calibrate(..., train_loader=...) or fit_extrapolation_grade()",
    }
    _RENAMED = {"covariance": "covariance_", "n_train": "n_train_samples_", "calibration": "calibration_",
                "max_train_q": "max_train_q_", "n_train_atoms": "n_train_atoms_"}

    def __init__(
        self, model: torch.nn.Module, feature_fn=None, target_scale: float = 1.0, target_shift: float = 0.0
    ) -> None:
        self.model = model
        if feature_fn is None:
            self.kind = model_kind(model)
            feature_fn = atomistic_outputs if self.kind == "atomistic" else tabular_outputs
        else:
            try:
                self.kind = model_kind(model)
            except TypeError:
                self.kind = "custom"
        self.feature_fn = feature_fn
        self.target_scale = float(target_scale)
        self.target_shift = float(target_shift)
        if not (math.isfinite(self.target_scale) and self.target_scale > 0 and math.isfinite(self.target_shift)):
            raise ValueError(
                f"target_scale must be a positive number and target_shift a finite one, got {target_scale}, "
                f"{target_shift}"
            )
        if self.kind == "atomistic" and (self.target_scale != 1.0 or self.target_shift != 0.0):
            raise ValueError(
                "target_scale and target_shift are for tabular models: an atomistic model predicts energies "
                "in eV (put per-species constants in its species_energies())"
            )
        self._set_state(covariance_=None, n_train_samples_=None, calibration_=None, max_train_q_=None,
                        n_train_atoms_=None)

    # ------------------------------------------------------------------ state
    def _set_state(self, **changes) -> None:
        """The one place the fitted attributes change. What is derived from them is cached once
        per fitted state and dropped here: the Cholesky factor of ``C`` when the covariance or
        the calibration changes, the head (which also holds ``max_train_q_``) at every change."""
        unknown = set(changes) - set(self._FITTED)
        if unknown:
            raise AttributeError(f"not a fitted attribute of LLPR: {sorted(unknown)}")
        for name, value in changes.items():
            object.__setattr__(self, name, value)
        cache = self.__dict__.get("_cache", {})
        if "covariance_" in changes or "calibration_" in changes:
            cache = {}
        cache.pop("head", None)
        object.__setattr__(self, "_cache", cache)

    def __setattr__(self, name: str, value) -> None:
        # assigning a fitted attribute would leave the cached head of the old state in use
        if name in self._FITTED or name in self._RENAMED:
            fitted = self._RENAMED.get(name, name)
            raise AttributeError(
                f"LLPR.{fitted} is a fitted attribute, set by {self._FITTED[fitted]}; to take the state of "
                "another estimator, use load_state_dict(other.state_dict())"
            )
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # only called for names not found: point the pre-underscore names at the fitted attributes
        if name in LLPR._RENAMED:
            raise AttributeError(f"LLPR.{name} is now LLPR.{LLPR._RENAMED[name]} (fitted attributes end in an "
                                 "underscore, as in scikit-learn)")
        raise AttributeError(f"'LLPR' object has no attribute '{name}'")

    @property
    def alpha(self) -> float:
        self._require_calibrated("read alpha")
        return self.calibration_.alpha

    @property
    def varsigma(self) -> float:
        self._require_calibrated("read varsigma")
        return self.calibration_.varsigma

    def _require_fitted(self, what: str) -> None:
        if self.covariance_ is None:
            raise RuntimeError(f"cannot {what}: call LLPR.fit(train_loader) first")

    def _require_calibrated(self, what: str) -> None:
        self._require_fitted(what)
        if self.calibration_ is None:
            raise RuntimeError(f"cannot {what}: call LLPR.calibrate(validation_loader) after fit()")

    def _outputs(self, batch) -> dict:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.feature_fn(self.model, batch)
        finally:
            self.model.train(was_training)
        if self.target_scale != 1.0 or self.target_shift != 0.0:
            out["prediction"] = self.target_shift + self.target_scale * out["prediction"]
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, loader, progress: bool = False) -> "LLPR":
        """Accumulate F^T F (float64) over the training ``loader`` (streaming).

        Under ``torch.distributed`` (e.g. ``torchrun``), each process fits the batches of its
        own loader (e.g. a :class:`llpr.graphs.StreamingDataset`, which shards by rank) and the
        sums are all-reduced: every process ends with the covariance of the whole set."""
        acc = CovarianceAccumulator(getattr(self.model, "n_features", None))
        for batch in tqdm(loader, desc="llpr fit", disable=not progress, leave=False):
            acc.update(self._outputs(batch)["features"])
        acc.all_reduce()
        # a new covariance: the calibration and the grade's reference of the old one no longer apply
        self._set_state(covariance_=acc.result(), n_train_samples_=acc.n_samples, calibration_=None,
                        max_train_q_=None, n_train_atoms_=None)
        return self

    # ------------------------------------------------------------------ calibrate
    def collect(self, loader) -> dict:
        """Structure-level predictions, features and targets over a loader."""
        preds, feats, targets = [], [], []
        for batch in loader:
            out = self._outputs(batch)
            if "target" not in out:
                raise ValueError("calibration needs targets: the validation batches carry no reference values")
            preds.append(out["prediction"])
            feats.append(out["features"].to(torch.float64))
            targets.append(out["target"])
        if not preds:
            raise ValueError("the validation loader is empty: calibration needs at least one structure")
        return {"prediction": torch.cat(preds), "features": torch.cat(feats), "target": torch.cat(targets)}

    def collect_forces(self, loader) -> dict:
        """Per-atom force errors (M, 3) and the force Jacobian of the summed features, ``d(sum_j
        f_j)/d r_ic`` (M, 3, F), over a loader of atomistic batches with reference forces."""
        if self.kind != "atomistic":
            raise ValueError("force calibration needs an atomistic model (llpr.models.protocol.AtomisticModel)")
        n = self.covariance_.shape[0]
        # one backward pass per feature: the force "deviations" of the unit read-outs e_k are
        # minus the Jacobian rows (the sign cancels in the quadratic form)
        unit = torch.eye(n, dtype=torch.float64)
        errors, jacobian = [], []
        for batch in loader:
            if not isinstance(batch, dict) or "forces" not in batch:
                raise ValueError("force calibration needs reference forces in every validation structure")
            out = self._ensemble_forces(batch, unit)
            errors.append(out["forces"] - batch["forces"].to(torch.float64))
            jacobian.append(out["force_deviations"].permute(1, 2, 0))
        if not errors:
            raise ValueError("the validation loader is empty: calibration needs at least one structure")
        return {"errors": torch.cat(errors), "jacobian": torch.cat(jacobian)}

    def calibrate(self, loader, train_loader=None, progress: bool = False, force_weight: float = 0.0,
                  sigma_power: bool = False, extra=None, extra_source: str = "", **kwargs) -> "LLPR":
        """Fit alpha and varsigma on a validation ``loader`` by minimising the Gaussian NLL.

        ``force_weight`` w > 0: minimise ``NLL_energy + w NLL_force`` (mean NLL over structures
        plus w times the mean over force components), which calibrates the force sigma too
        (atomistic models; the batches need reference forces). ``sigma_power=True``: fit the
        power law ``sigma = s (sqrt q)^b`` on the energies (see :mod:`llpr.uncertainty.calibrate`).
        ``extra``: a second loader of structures (e.g. a few unlike the training set) added to
        the calibration set; ``extra_source`` names it in the calibration record. With
        ``train_loader`` (the training set given to :meth:`fit`), also record the extrapolation
        grade's reference (:meth:`fit_extrapolation_grade`).

        The grade's reference depends on ``varsigma``: a reference recorded before is kept when
        the new calibration has the same ``varsigma``, recomputed with ``train_loader``, and
        otherwise dropped with a RuntimeWarning saying how to record it again."""
        self._require_fitted("calibrate")
        loaders = [loader] if extra is None else [loader, extra]
        parts = [self.collect(ld) for ld in loaders]
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        errors = data["prediction"] - data["target"]
        if float(force_weight) > 0:
            fparts = [self.collect_forces(ld) for ld in loaders]
            kwargs.update(force_jacobian=torch.cat([p["jacobian"] for p in fparts]),
                          force_errors=torch.cat([p["errors"] for p in fparts]))
        kwargs.setdefault("unit", "sample" if self.kind == "tabular" else "structure")
        calibration = calibrate_hyperparameters(self.covariance_, data["features"], errors,
                                                force_weight=force_weight, fit_power=sigma_power, **kwargs)
        if extra is not None:
            calibration.n_extra = int(parts[1]["target"].shape[0])
            calibration.extra_source = str(extra_source)
        previous = self.calibration_
        grade = {}
        if train_loader is not None:
            grade = {"max_train_q_": None, "n_train_atoms_": None}  # recorded again below
        elif self.max_train_q_ is not None:
            # q = f^T C^-1 f depends on varsigma only (not on alpha or the power law): same varsigma, same q
            if previous is None or calibration.varsigma != previous.varsigma:
                before = f"{previous.varsigma:.6g}" if previous is not None else "none"
                warnings.warn(
                    f"calibrate() changed varsigma ({before} -> {calibration.varsigma:.6g}): the extrapolation "
                    "grade's reference max_train_q_, recorded with the old one, no longer applies and is dropped; "
                    "pass train_loader= to calibrate() or call fit_extrapolation_grade(train_loader) to record it "
                    "again",
                    RuntimeWarning,
                    stacklevel=2,
                )
                grade = {"max_train_q_": None, "n_train_atoms_": None}
        self._set_state(calibration_=calibration, **grade)
        if train_loader is not None:
            self.fit_extrapolation_grade(train_loader, progress=progress)
        return self

    def fit_extrapolation_grade(self, train_loader, progress: bool = False) -> "LLPR":
        """Record ``max_train_q``, the largest ``f_i^T C^-1 f_i`` over the atoms of the
        training ``loader`` (one streaming pass; rows of a tabular set), with the calibrated
        ``C``: the reference of :meth:`extrapolation_grade`. Under ``torch.distributed`` each
        process passes its share and the maximum is all-reduced."""
        self._require_calibrated("record the extrapolation grade's reference")
        acc = MaximumAccumulator(self.head())
        for batch in tqdm(train_loader, desc="llpr max q", disable=not progress, leave=False):
            out = self._outputs(batch)
            acc.update(out["atom_features"] if "atom_features" in out else out["features"])
        acc.all_reduce()
        self._set_state(max_train_q_=acc.result(), n_train_atoms_=acc.n_atoms)
        return self

    def extrapolation_grade(self, atom_features: torch.Tensor) -> torch.Tensor:
        """Per-atom ``gamma_i = f_i^T C^-1 f_i / max_train_q`` (float64): above 1, an
        environment more novel than every training atom."""
        self._require_calibrated("compute the extrapolation grade")
        if self.max_train_q_ is None:
            raise RuntimeError(
                "cannot compute the extrapolation grade: the training set's max q is not recorded; call "
                "LLPR.fit_extrapolation_grade(train_loader) (or calibrate(val_loader, train_loader=train_loader))"
            )
        return self.head().extrapolation_grade(atom_features)

    def calibration_summary(self) -> dict:
        self._require_calibrated("summarise the calibration")
        summary = self.calibration_.summary()
        summary["n_train"] = self.n_train_samples_
        if self.max_train_q_ is not None:
            summary["max_train_q"] = self.max_train_q_
            summary["n_train_atoms"] = self.n_train_atoms_
        # a structure's feature is the sum of its atoms'; tabular rows are not reduced
        summary["feature_reduction"] = "sum" if self.kind == "atomistic" else "none"
        if self.kind != "atomistic":
            summary["target_scale"] = self.target_scale
            summary["target_shift"] = self.target_shift
        return summary

    # ------------------------------------------------------------------ predict
    def cholesky_factor(self) -> torch.Tensor:
        """Lower Cholesky factor L of C = F^T F + varsigma^2 I (float64)."""
        self._require_calibrated("build the covariance factor")
        if "cholesky" not in self._cache:
            n = self.covariance_.shape[0]
            reg = self.covariance_ + self.varsigma**2 * torch.eye(n, dtype=torch.float64)
            L, info = torch.linalg.cholesky_ex(reg)
            if int(info) != 0:
                raise RuntimeError(
                    "the regularised covariance is not positive definite; recalibrate with a "
                    "larger varsigma"
                )
            self._cache["cholesky"] = L
        return self._cache["cholesky"]

    def head(self, ensemble: int = 0, seed: int = 0) -> LLPRHead:
        """The calibrated :class:`llpr.uncertainty.llpr_head.LLPRHead` (what the exported file carries), with a
        last-layer ensemble of ``ensemble`` members drawn with ``seed`` when ``ensemble`` >= 2."""
        self._require_calibrated("build the LLPR head")
        if ensemble == 0:
            # built once per fitted state (its inverse factor costs O(F^3)); _set_state drops it
            if "head" not in self._cache:
                self._cache["head"] = LLPRHead(self.cholesky_factor(), self.alpha, self.varsigma, None,
                                               self.max_train_q_, *self._sigma_law())
            return self._cache["head"]
        return LLPRHead(self.cholesky_factor(), self.alpha, self.varsigma, self.ensemble_deviations(ensemble, seed),
                        self.max_train_q_, *self._sigma_law())

    def _sigma_law(self) -> tuple[float, float]:
        """(s, b) of ``sigma = s q^(b/2)`` (alpha, 1 unless a power law was calibrated)."""
        return self.calibration_.energy_scale, self.calibration_.sigma_power

    def quadratic_form(self, features: torch.Tensor) -> torch.Tensor:
        """f^T C^-1 f per row (float64), by :meth:`LLPRHead.quadratic_form`."""
        return self.head().quadratic_form(features)

    def variance(self, features: torch.Tensor) -> torch.Tensor:
        return self.head().energy_variance(features)

    def local_uncertainty(self, atom_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom sigma_i (target units) and local prediction rigidity LPR_i."""
        return self.head().local_uncertainty(atom_features)

    # ------------------------------------------------------------------ ensemble
    def readout_weights(self) -> torch.Tensor:
        """The model's last-layer weights ``w`` (F,) in float64 (``prediction = features @ w``
        + constant), in the units of the predictions (times ``target_scale``); read from
        ``model.readout_weights()`` or ``model.readout.weight``."""
        return readout_weights(self.model).to(device="cpu", dtype=torch.float64) * self.target_scale

    def ensemble_deviations(self, k: int, seed: int = 0) -> torch.Tensor:
        """``dw_k = w_k - w`` (K, F) float64 of a last-layer ensemble: ``alpha L^-T z_k`` with
        ``z_k ~ N(0, I)`` from ``torch.randn`` seeded with ``seed``, minus their mean (so the
        ensemble mean is the model's prediction)."""
        return sample_deviations(self.cholesky_factor(), self.alpha, int(k), int(seed))

    def sample_ensemble(self, k: int, seed: int = 0) -> torch.Tensor:
        """``K`` last-layer weight vectors ``w_k = w + dw_k`` (K, F) float64, samples of the
        LLPR posterior ``N(w, alpha^2 C^-1)`` re-centred so that their mean is exactly ``w``
        (up to float64 rounding). Same ``(k, seed)``, same ensemble (also the one that
        ``llpr export --ensemble K --seed S`` stores, as deviations)."""
        return self.readout_weights().unsqueeze(0) + self.ensemble_deviations(k, seed)

    def _ensemble_forces(self, batch: dict, deviations: torch.Tensor) -> dict:
        """Forces and member force deviations of an atomistic batch."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                vectors = edge_vectors_from_positions(batch["positions"], batch["edge_index"], batch["edge_shifts"])
                vectors = vectors.detach().requires_grad_(True)
                n_atoms = batch["positions"].shape[0]
                energies, feats = self.model(batch["atomic_numbers"], batch["edge_index"], vectors, n_atoms)
                # structures are disconnected: the gradient of the batch's summed features gives
                # each structure's own member forces
                dforces, _ = ensemble_force_virial_deviations(
                    feats.sum(dim=0), vectors, batch["edge_index"], n_atoms, deviations, True, False
                )
                (g,) = torch.autograd.grad(energies.sum(), vectors)
        finally:
            self.model.train(was_training)
        forces = edge_gradients_to_forces(g.detach().to(torch.float64).unsqueeze(0), batch["edge_index"], n_atoms)[0]
        if deviations.shape[0] == 0:
            dforces = torch.zeros((0, n_atoms, 3), dtype=torch.float64)
        return {"forces": forces, "force_deviations": dforces}

    def predict(self, batch, ensemble: torch.Tensor | None = None, forces: bool = False) -> dict:
        """Predictions with their variance and sigma; per-atom sigma and LPR when the
        feature function gives atom features, and their extrapolation grade ``gamma`` when
        ``max_train_q`` is recorded (:meth:`fit_extrapolation_grade`).

        ``ensemble``: last-layer weights (K, F) from :meth:`sample_ensemble`; adds
        ``ensemble_prediction`` (B, K), each member's prediction ``prediction + features @
        (w_k - w)``, and ``ensemble_sigma`` (B,), their spread ``sqrt(sum_k (y_k - y)^2 /
        (K-1))``. ``forces=True`` (atomistic batches) adds ``forces`` (N, 3, eV/A, float64)
        and, with an ensemble, ``ensemble_forces`` (K, N, 3), each member's forces, and
        ``force_sigma`` (N,), ``sqrt(sum_k |F_k,i - F_i|^2 / (3 (K-1)))`` (eV/A).
        """
        self._require_calibrated("predict uncertainties")
        out = self._outputs(batch)
        var = self.variance(out["features"])
        result = {"prediction": out["prediction"], "variance": var, "sigma": torch.sqrt(var)}
        if "atom_features" in out:
            sigma_i, lpr_i = self.local_uncertainty(out["atom_features"])
            result.update(atom_sigma=sigma_i, lpr=lpr_i, atom_energies=out["atom_energies"])
            if self.max_train_q_ is not None:
                result["gamma"] = self.head().extrapolation_grade(out["atom_features"])
        if "target" in out:
            result["target"] = out["target"]
        deviations = None
        if ensemble is not None:
            weights = torch.as_tensor(ensemble, dtype=torch.float64)
            w = self.readout_weights()
            if weights.dim() != 2 or weights.shape[1] != w.shape[0]:
                raise ValueError(
                    f"ensemble must be last-layer weights of shape (K, {w.shape[0]}) (from sample_ensemble), "
                    f"got {tuple(weights.shape)}"
                )
            deviations = weights - w
            # the members need no head (nor its inverse factor): the head's own formulas, on these deviations
            member_dev = ensemble_energy_deviations(deviations, out["features"])  # (B, K)
            result["ensemble_prediction"] = out["prediction"].unsqueeze(1) + member_dev
            result["ensemble_sigma"] = ensemble_sigma(member_dev.t())
        if forces:
            if self.kind != "atomistic" or not isinstance(batch, dict) or "positions" not in batch:
                raise ValueError("forces=True needs an atomistic model and batch (llpr.graphs.collate)")
            if deviations is None:
                deviations = torch.zeros((0, self.covariance_.shape[0]), dtype=torch.float64)
            f = self._ensemble_forces(batch, deviations)
            result["forces"] = f["forces"]
            if ensemble is not None:
                result["ensemble_forces"] = f["forces"].unsqueeze(0) + f["force_deviations"]
                result["force_sigma"] = force_sigma(f["force_deviations"])
        return result

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        self._require_fitted("save the LLPR state")
        # the checkpoint's keys predate the fitted attributes' names: checkpoints written before load
        state = {"covariance": self.covariance_, "n_train": self.n_train_samples_, "target_scale": self.target_scale,
                 "target_shift": self.target_shift}
        if self.calibration_ is not None:
            state["calibration"] = self.calibration_.__dict__.copy()
        if self.max_train_q_ is not None:
            state["max_train_q"] = self.max_train_q_
            state["n_train_atoms"] = self.n_train_atoms_
        return state

    def load_state_dict(self, state: dict) -> "LLPR":
        self.target_scale = float(state.get("target_scale", 1.0))
        self.target_shift = float(state.get("target_shift", 0.0))
        cal = state.get("calibration")
        q = state.get("max_train_q")
        self._set_state(
            covariance_=state["covariance"].to(torch.float64),
            n_train_samples_=int(state["n_train"]),
            calibration_=CalibrationResult(**cal) if cal is not None else None,
            max_train_q_=None if q is None else float(q),
            n_train_atoms_=int(state.get("n_train_atoms", 0)) if q is not None else None,
        )
        return self


def save_llpr(llpr: LLPR, path: str) -> None:
    """Save a fitted (and possibly calibrated) LLPR: the model (a registered class, see
    :mod:`llpr.models.checkpoint`), its covariance, calibration and target scaling."""
    save_llpr_payload(path, llpr.model, llpr.state_dict())


def load_llpr(path: str) -> LLPR:
    """Load what :func:`save_llpr` wrote (e.g. by `llpr calibrate`)."""
    payload = read_llpr_payload(path)
    state = payload["llpr"]
    model = model_from_payload(payload["model"])
    return LLPR(model, target_scale=state.get("target_scale", 1.0), target_shift=state.get("target_shift", 0.0)
                ).load_state_dict(state)
