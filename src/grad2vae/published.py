"""The paper's published numbers (``published.yaml``): Table 1, parameter counts, learning setup.

``load_published()`` reads and checks the data file once; helpers turn it into the shapes the
aggregation, figures and report need. Numbers are in the paper's units (AUC in percent).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

from grad2vae.errors import UserError

N_CLASSES = 10


@functools.lru_cache(maxsize=1)
def load_published() -> dict[str, Any]:
    """The parsed ``published.yaml`` (cached; treat as read-only)."""
    text = resources.files("grad2vae").joinpath("published.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    _check(data)
    return data


def _check(data: dict[str, Any]) -> None:
    table = data["table1"]
    columns = table["columns"]
    for dataset, per_column in table["per_class"].items():
        if set(per_column) != set(columns):
            raise UserError(
                f"published.yaml: table1.per_class.{dataset} must list {sorted(columns)}"
            )
        for column, values in per_column.items():
            if len(values) != N_CLASSES:
                raise UserError(
                    f"published.yaml: table1.per_class.{dataset}.{column} needs {N_CLASSES} values"
                )
        if len(table["class_labels"][dataset]) != N_CLASSES:
            raise UserError(
                f"published.yaml: table1.class_labels.{dataset} needs {N_CLASSES} labels"
            )
        if set(table["average"][dataset]) != set(columns):
            raise UserError(f"published.yaml: table1.average.{dataset} must list {sorted(columns)}")


def citation() -> str:
    """One line: authors, title, venue, DOI."""
    c = load_published()["citation"]
    return f"{c['authors']}: {c['title']}. {c['venue']}. doi:{c['doi']}"


def published_columns() -> dict[str, dict[str, Any]]:
    """Table 1's columns in the paper's order: key -> {label, ours, source}."""
    return load_published()["table1"]["columns"]


def column_for_model(model: str) -> str | None:
    """The Table 1 column that our ``model`` is compared with, or None (e.g. the vanilla VAE)."""
    for key, column in published_columns().items():
        if column.get("ours") == model:
            return key
    return None


def published_auc(dataset: str, column: str, normal_class: int) -> float | None:
    """Table 1's AUC (percent) for one cell, or None when the paper has no such cell."""
    per_class = load_published()["table1"]["per_class"].get(dataset, {})
    values = per_class.get(column)
    if values is None or not 0 <= int(normal_class) < len(values):
        return None
    return float(values[int(normal_class)])


def published_average(dataset: str, column: str) -> float | None:
    """Table 1's printed "Average" row (percent) for one column, or None."""
    value = load_published()["table1"]["average"].get(dataset, {}).get(column)
    return None if value is None else float(value)


def class_label(dataset: str, normal_class: int) -> str:
    """The row label Table 1 uses for a normal class (digit, or Fashion-MNIST's short name)."""
    labels = load_published()["table1"]["class_labels"].get(dataset)
    if labels and 0 <= int(normal_class) < len(labels):
        return str(labels[int(normal_class)])
    return str(normal_class)


def dataset_label(dataset: str) -> str:
    return str(load_published()["table1"]["dataset_labels"].get(dataset, dataset))


def parameters_millions() -> dict[str, float]:
    """The paper's parameter counts in millions, keyed by our model names."""
    return {k: float(v) for k, v in load_published()["parameters_millions"].items()}


def learning_setup() -> dict[str, Any]:
    return load_published()["learning_setup"]


def mstd_claims() -> dict[str, float]:
    return {k: float(v) for k, v in load_published()["mstd"].items()}


def claims() -> dict[str, dict[str, Any]]:
    """The paper's claims judged by ``grad2vae.analysis.claims``: id -> {section, words, ...}."""
    return dict(load_published()["claims"])
