"""Checkpoints: models (``llpr train``) and calibrated LLPR estimators (``llpr calibrate``)
as PyTorch pickles, rebuilt through a registry of model classes.

A model checkpoint stores the name its class was registered under, the constructor's keyword
arguments (the model's ``init_kwargs``), its state dict and dtype; :func:`load_model` looks the
name up with :func:`registered_model` and rebuilds the model. llpr registers its own classes
(``LocalPotential``, ``MLPRegressor``); a new class is registered once, before saving or
loading, with :func:`register_model`.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from torch import nn

from llpr.integrity import verify_zip
from llpr.models.mace import MACEModel
from llpr.models.potential import LocalPotential
from llpr.models.tabular import MLPRegressor

MODEL_KIND = "llpr.model"
LLPR_KIND = "llpr.LLPR"

_REGISTRY: Dict[str, type] = {}


def register_model(name: str, cls: type) -> type:
    """Register ``cls`` under ``name`` so that checkpoints of it can be written and read.

    Re-registering the same class under the same name is a no-op; another class under a taken
    name, or the class under a second name, is a ``ValueError``. Returns ``cls``."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_model needs a torch.nn.Module subclass, got {cls!r}")
    known = _REGISTRY.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"model name {name!r} is already registered for {known.__module__}.{known.__qualname__}")
    other = registered_name(cls)
    if other is not None and other != name:
        raise ValueError(f"{cls.__qualname__} is already registered as {other!r}")
    _REGISTRY[name] = cls
    return cls


def registered_name(cls: type) -> Optional[str]:
    """The name ``cls`` is registered under (None: not registered)."""
    for name, known in _REGISTRY.items():
        if known is cls:
            return name
    return None


def registered_model(name: str) -> type:
    """The class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(
            f"no model class is registered as {name!r} (registered: {', '.join(sorted(_REGISTRY))}); "
            "call llpr.models.checkpoint.register_model(name, cls) before loading"
        )
    return _REGISTRY[name]


register_model("LocalPotential", LocalPotential)
register_model("MLPRegressor", MLPRegressor)
register_model("MACEModel", MACEModel)


def _dtype_name(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return "float64" if param is not None and param.dtype == torch.float64 else "float32"


def model_payload(model: nn.Module, extra: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Class name, constructor arguments and weights of a model, as a picklable dict."""
    name = registered_name(type(model))
    if name is None:
        raise TypeError(
            f"{type(model).__qualname__} is not a registered model class; register it with "
            f"llpr.models.checkpoint.register_model({type(model).__name__!r}, {type(model).__name__}) to save it"
        )
    config = getattr(model, "init_kwargs", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"{type(model).__qualname__} has no `init_kwargs` dict (its constructor's keyword arguments), "
            "which a checkpoint needs to rebuild it"
        )
    return {
        "kind": MODEL_KIND,
        "class": name,
        "config": dict(config),
        "state_dict": model.state_dict(),
        "dtype": _dtype_name(model),
        "extra": extra or {},
    }


def model_from_payload(payload: Dict[str, object]) -> nn.Module:
    """The model a :func:`model_payload` describes, in eval mode."""
    model = registered_model(payload.get("class"))(**payload["config"])
    model = model.to(torch.float64 if payload["dtype"] == "float64" else torch.float32)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model


def read_checkpoint(path: str) -> Dict[str, object]:
    """The payload of a checkpoint written by llpr, with clear errors for a missing or
    unreadable file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; check the path")
    # torch.load does not check the archive's CRCs: a damaged checkpoint would load with wrong numbers
    verify_zip(path, "llpr", "write it again (`llpr train`, `llpr calibrate`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"'{path}' is not a readable llpr checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(payload, dict) or "kind" not in payload:
        raise ValueError(f"'{path}' is not an llpr checkpoint (found {type(payload).__name__!r})")
    return payload


def _is_model_payload(payload: Dict[str, object]) -> bool:
    return payload.get("kind") == MODEL_KIND


def save_model(model: nn.Module, path: str, extra: Optional[Dict[str, object]] = None) -> None:
    """Save a model of a registered class (constructor arguments + weights) to ``path``."""
    torch.save(model_payload(model, extra), path)


def load_model(path: str) -> nn.Module:
    """Load a model checkpoint written by :func:`save_model` (e.g. by `llpr train`)."""
    payload = read_checkpoint(path)
    if not _is_model_payload(payload):
        raise ValueError(f"'{path}' is not a model checkpoint of this llpr (its kind is {payload.get('kind')!r}, "
                         f"not {MODEL_KIND!r}); write it again with `llpr train` or llpr.save_model")
    return model_from_payload(payload)


def save_llpr_payload(path: str, model: nn.Module, state: Dict[str, object]) -> None:
    """Write an LLPR checkpoint: the model's payload and the estimator's state."""
    torch.save({"kind": LLPR_KIND, "model": model_payload(model), "llpr": state}, path)


def read_llpr_payload(path: str) -> Dict[str, object]:
    """Read an LLPR checkpoint; a model checkpoint is refused with the `llpr calibrate` hint."""
    payload = read_checkpoint(path)
    if _is_model_payload(payload):
        raise ValueError(
            f"'{path}' is not a llpr.LLPR checkpoint: it holds a trained model that is not "
            f"calibrated yet; run `llpr calibrate --model {path} --train ... --val ...` first"
        )
    if payload.get("kind") != LLPR_KIND:
        raise ValueError(f"'{path}' is not a {LLPR_KIND} checkpoint (found {payload.get('kind')!r})")
    return payload
