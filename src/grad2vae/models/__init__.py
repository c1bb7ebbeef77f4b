"""Model registry: models are found by name, so no caller ever branches on a model's name."""

from __future__ import annotations

import inspect
import math
from typing import Any

from grad2vae.errors import UserError
from grad2vae.models.base import AnomalyModel

MODELS: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make ``cls`` available as ``create_model(cls.name, ...)``."""
    MODELS[cls.name] = cls
    return cls


def model_class(name: str) -> type[AnomalyModel]:
    """The class registered as ``name``; UserError listing the known models otherwise."""
    _load_builtin_models()
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UserError(f"unknown model {name!r}; known models: {known}") from None


def check_options(
    name: str, options: dict[str, Any] | None, label: str | None = None
) -> dict[str, Any]:
    """``options`` for model ``name``'s constructor, each value converted to its declared type
    (``AnomalyModel.options``); UserError naming ``label`` (the variant, default the model), the
    option and the accepted ones for an unknown option or value."""
    cls = model_class(name)
    label = label or name
    accepted = cls.options
    checked: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in accepted:
            offered = ", ".join(sorted(accepted)) if accepted else "none"
            raise UserError(
                f"{label}: model {name!r} has no option {key!r}; its options: {offered}"
            )
        allowed = accepted[key]
        if allowed is float:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not math.isfinite(number):
                raise UserError(
                    f"{label}: option {key!r} of {name!r} must be a number, not {value!r}"
                )
            checked[key] = number
        elif value not in allowed:
            raise UserError(
                f"{label}: option {key!r} of {name!r} is {value!r}; "
                f"accepted: {', '.join(map(str, allowed))}"
            )
        else:
            checked[key] = value
    return checked


def create_model(
    name: str,
    latent_dim: int,
    dataset: str | None = None,
    derivatives: str | None = None,
    options: dict[str, Any] | None = None,
) -> AnomalyModel:
    """Build the model registered as ``name``; ``latent_dim`` is the dataset's bottleneck size
    (16 for MNIST, 32 for Fashion-MNIST in the paper). Models whose source fixes its own code
    size say so in their docstring and ignore it. Each further option is passed on only to
    models whose constructor takes an argument of its name, so the caller never branches on the
    model: ``dataset`` (Deep SVDD picks its network by it), ``derivatives`` (Grad2VAE's
    second-derivative implementation, ``grad2vae train --derivatives``). ``options``: the
    constructor options of a variant (``check_options``); none = the model as published."""
    cls = model_class(name)
    accepted = inspect.signature(cls).parameters
    passed = {
        key: value
        for key, value in (("dataset", dataset), ("derivatives", derivatives))
        if value is not None and key in accepted
    }
    return cls(latent_dim=latent_dim, **passed, **check_options(name, options))


def accepts(name: str, argument: str) -> bool:
    """Whether the model registered as ``name`` takes ``argument`` (``create_model`` passes it
    then): what a caller asks instead of branching on the model's name."""
    return argument in inspect.signature(model_class(name)).parameters


def model_names() -> list[str]:
    _load_builtin_models()
    return sorted(MODELS)


def _load_builtin_models() -> None:
    # Imported here, not at module top, so that model files can import `register` from us.
    from grad2vae.models import cae, cae_ocsvm, deep_svdd, grad2vae, inception_caenn, vae  # noqa: F401


__all__ = [
    "AnomalyModel",
    "MODELS",
    "check_options",
    "create_model",
    "model_class",
    "model_names",
    "register",
]
