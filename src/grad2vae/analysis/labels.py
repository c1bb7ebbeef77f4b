"""How the report names our models: the paper's names, the paper's order, and the CAE OCSVM
oracle pseudo-model beside its model."""

from __future__ import annotations

import logging
from typing import Iterable

from grad2vae import published as pub
from grad2vae.analysis import stats

log = logging.getLogger(__name__)


ORACLE_MODEL = stats.ORACLE_MODEL


ORACLE_LABEL = "CAE OCSVM oracle: selects hyperparameters on the test labels"


ORACLE_PROTOCOL = "oracle: selects hyperparameters on the test labels"


def model_label(model: str) -> str:
    """The paper's name for one of our models (Baseline CAE, vanilla VAE, ...), else the key."""
    if model == ORACLE_MODEL:
        return ORACLE_LABEL
    return str(pub.load_published().get("paper_model_labels", {}).get(model, model))


def with_oracle(models: Iterable[str]) -> list[str]:
    """``models`` with the CAE + OC-SVM oracle pseudo-model right after ``cae_ocsvm`` (if there)."""
    out = []
    for model in models:
        if model != ORACLE_MODEL:
            out.append(model)
        if model == "cae_ocsvm":
            out.append(ORACLE_MODEL)
    return out


def model_order(models: Iterable[str]) -> list[str]:
    """Our models in the paper's order (Fig. 6: Baseline CAE, vanilla VAE, Inception CAENN,
    Grad2VAE; Table 1's other baselines after the CAE), then any others alphabetically."""
    models = list(dict.fromkeys(models))
    paper = [m for m in pub.load_published().get("paper_model_labels", {}) if m in models]
    return paper + sorted(m for m in models if m not in paper)
