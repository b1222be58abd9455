"""Tabular regression: a small network with LLPR-ready features, and its exported file.

* :class:`MLPRegressor`: ``prediction = features(x) @ w`` with a constant 1 as the last
  feature (the read-out's bias is part of the last layer LLPR treats); it follows
  :class:`llpr.models.protocol.TabularModel`.
* :class:`ExportedTabularModel`: what :func:`llpr.modelfile.export_model` writes for a tabular
  model, one TorchScript file with the regressor, the calibrated :class:`llpr.uncertainty.llpr_head.LLPRHead`
  and the target scaling; ``forward(x) -> (prediction, sigma)`` in the user's units.
  :func:`load_tabular` reads it back after checking its integrity seal.
"""


import json
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from llpr.lammps.plugin import _core
from llpr.uncertainty.llpr_head import LLPRHead

TABULAR_FORMAT_VERSION = 1


class MLPRegressor(nn.Module):
    """One-hidden-layer (or deeper) regressor for tabular data, with LLPR-ready features.

    ``features(x)`` returns the last hidden activations with a constant 1 appended (so the
    read-out bias is part of the last layer LLPR treats) and ``readout`` is a bias-free
    linear layer: ``forward(x) = features(x) @ readout_weights()``. ``dropout`` (probability)
    applies to the hidden activations during training, and in MC-dropout sampling.
    """

    n_inputs: int
    n_features: int

    def __init__(self, n_inputs: int, hidden: Tuple[int, ...] = (50,), dropout: float = 0.0) -> None:
        super().__init__()
        if int(n_inputs) < 1:
            raise ValueError(f"n_inputs must be at least 1, got {n_inputs}")
        # constructor arguments, to rebuild the model from a checkpoint (not scripted)
        self.init_kwargs = {"n_inputs": int(n_inputs), "hidden": [int(h) for h in hidden], "dropout": float(dropout)}
        layers: List[nn.Module] = []
        width = int(n_inputs)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.n_inputs = int(n_inputs)
        self.n_features = width + 1
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.readout = nn.Linear(width + 1, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.body(x))
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)

    @torch.jit.export
    def readout_weights(self) -> torch.Tensor:
        return self.readout.weight.view(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.readout_weights()


class ExportedTabularModel(nn.Module):
    """TorchScript-able tabular model + LLPR head + target scaling (tabular format 1).

    ``forward(x)``: ``x`` (B, n_inputs), any floating dtype (converted to the model's);
    returns ``(prediction, sigma)``, both (B,) float64 in the units of the user's target:
    ``prediction = target_shift + target_scale * features(x) @ w`` and ``sigma = sqrt(alpha^2
    f^T C^-1 f)`` (``alpha`` was calibrated on errors in those units). Also exported:
    ``features(x)`` (B, F), ``variance(x)`` (B,) and, for a file with a last-layer ensemble,
    ``ensemble_predictions(x)`` (B, K), each member's prediction.
    """

    llpr_kind: str
    llpr_tabular_format_version: int
    n_inputs: int
    n_features: int
    dtype: str
    target_scale: float
    target_shift: float
    calibration: str
    llpr_package_version: str
    ensemble_info: str

    def __init__(
        self,
        model: nn.Module,
        head: LLPRHead,
        readout: torch.Tensor,
        target_scale: float,
        target_shift: float,
        calibration: Dict[str, object],
        package_version: str,
        ensemble_info: Optional[Dict[str, object]] = None,
    ) -> None:
        super().__init__()
        self.model = model
        param = next(model.parameters(), None)
        model_dtype = param.dtype if param is not None else torch.get_default_dtype()
        self.llpr_kind = "tabular"
        self.llpr_tabular_format_version = TABULAR_FORMAT_VERSION
        self.n_inputs = int(getattr(model, "n_inputs", -1))
        self.n_features = head.n_features()
        if readout.reshape(-1).shape[0] != self.n_features:
            raise ValueError(f"the read-out has {readout.numel()} weights, the LLPR head {self.n_features} features")
        # the file's inputs, read-out and records are float32 or float64: a network in another
        # dtype (float16, bfloat16) would be recorded as float32 and fail on every call
        dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
        if not dtypes <= {torch.float32, torch.float64}:
            raise ValueError(
                f"cannot export a tabular model with {', '.join(sorted(str(d) for d in dtypes))} parameters; the "
                "exported file holds a float32 or float64 network: export with dtype=torch.float32 or "
                "torch.float64 (export_model(..., dtype=torch.float32)), or convert the model first (model.float())"
            )
        self.dtype = "float64" if model_dtype == torch.float64 else "float32"
        # a copy of w in the model's dtype: the prediction is the product the estimator takes
        self.register_buffer("readout", readout.detach().reshape(-1).to(model_dtype).clone())
        self.target_scale = float(target_scale)
        self.target_shift = float(target_shift)
        self.calibration = json.dumps(calibration, sort_keys=True)
        self.llpr_package_version = package_version
        self.ensemble_info = json.dumps(ensemble_info or {}, sort_keys=True)
        self.head = head

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or (self.n_inputs > 0 and x.shape[1] != self.n_inputs):
            width = str(self.n_inputs) if self.n_inputs > 0 else "n_inputs"
            raise ValueError("expected inputs of shape (batch, " + width + "), got " + str(x.shape))
        return x.to(torch.float64 if self.dtype == "float64" else torch.float32)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-layer features (B, F) in the model's dtype."""
        return self.model.features(self._inputs(x))

    @torch.jit.export
    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted variance (B,), float64, in the target's units squared."""
        return self.head.energy_variance(self.features(x))

    @torch.jit.export
    def ensemble_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """Each last-layer ensemble member's prediction (B, K), float64."""
        if self.head.ensemble_size() == 0:
            raise RuntimeError("this file has no last-layer ensemble; export it with ensemble=K")
        f = self.features(x)
        return self._prediction(f).unsqueeze(1) + self.head.ensemble_energy_deviations(f)

    def _prediction(self, f: torch.Tensor) -> torch.Tensor:
        return self.target_shift + self.target_scale * (f @ self.readout).to(torch.float64)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self._prediction(f), torch.sqrt(self.head.energy_variance(f))


def load_tabular(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a file written by :func:`llpr.modelfile.export_model` for a tabular model, after
    checking its integrity seal. Raises FileNotFoundError for a missing path and ValueError
    for a damaged file or one that is not a tabular llpr file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file '{path}' does not exist; check the path")
    _core().verify_file(path)
    module = torch.jit.load(path, map_location=device)
    if getattr(module, "llpr_kind", None) != "tabular":
        raise ValueError(f"'{path}' is not a tabular llpr file; an atomistic one loads with llpr.modelfile.load_exported")
    return module
