"""How the report names our models: the paper's names and the paper's order; a bound
(``grad2vae.analysis.bounds``) by its model's name and how it selects."""

from __future__ import annotations

from typing import Iterable, Mapping

from grad2vae import published as pub


def model_label(model: str, bounds: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The paper's name for one of our models (Baseline CAE, vanilla VAE, ...), else the key; for
    a bound of ``bounds`` (``bounds.bounds_of``), e.g. "CAE OCSVM oracle: selects
    hyperparameters on the test labels"."""
    if bounds and model in bounds:
        return f"{model_label(bounds[model]['of'])} {bounds[model]['protocol']}"
    return str(pub.load_published().get("paper_model_labels", {}).get(model, model))


def model_order(models: Iterable[str]) -> list[str]:
    """Our models in the paper's order (Fig. 6: Baseline CAE, vanilla VAE, Inception CAENN,
    Grad2VAE; Table 1's other baselines after the CAE), then any others alphabetically."""
    models = list(dict.fromkeys(models))
    paper = [m for m in pub.load_published().get("paper_model_labels", {}) if m in models]
    return paper + sorted(m for m in models if m not in paper)
