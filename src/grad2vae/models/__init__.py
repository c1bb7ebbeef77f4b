"""Model registry: models are found by name, so no caller ever branches on a model's name."""

from __future__ import annotations

import inspect

from grad2vae.errors import UserError
from grad2vae.models.base import AnomalyModel

MODELS: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make ``cls`` available as ``create_model(cls.name, ...)``."""
    MODELS[cls.name] = cls
    return cls


def create_model(
    name: str, latent_dim: int, dataset: str | None = None, derivatives: str | None = None
) -> AnomalyModel:
    """Build the model registered as ``name``; ``latent_dim`` is the dataset's bottleneck size
    (16 for MNIST, 32 for Fashion-MNIST in the paper). Models whose source fixes its own code
    size say so in their docstring and ignore it. Each further option is passed on only to
    models whose constructor takes an argument of its name, so the caller never branches on the
    model: ``dataset`` (Deep SVDD picks its network by it), ``derivatives`` (Grad2VAE's
    second-derivative implementation, ``grad2vae train --derivatives``)."""
    _load_builtin_models()
    try:
        cls = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UserError(f"unknown model {name!r}; known models: {known}") from None
    accepted = inspect.signature(cls).parameters
    options = {
        key: value
        for key, value in (("dataset", dataset), ("derivatives", derivatives))
        if value is not None and key in accepted
    }
    return cls(latent_dim=latent_dim, **options)


def model_names() -> list[str]:
    _load_builtin_models()
    return sorted(MODELS)


def _load_builtin_models() -> None:
    # Imported here, not at module top, so that model files can import `register` from us.
    from grad2vae.models import cae, cae_ocsvm, deep_svdd, grad2vae, inception_caenn, vae  # noqa: F401


__all__ = ["AnomalyModel", "MODELS", "create_model", "model_names", "register"]
