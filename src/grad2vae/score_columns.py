"""The names of the scores and of their AUC columns, in history.tsv, metrics.json, runs.csv and
every table after them: one convention, read in one place (torch-free).

- per-image scores: ``main`` -> ``auc``, any other score ``s`` -> ``auc_{s}`` (``mse``,
  ``bce_excess``, ``*_zero_noise``; ``evaluate.auc_of``);
- pixel-level AUCs of an output image (``evaluate.pixel_metrics``, the quantity the authors'
  notebook logged): ``pixel`` -> ``pixel_auc`` (the reconstruction), ``pixel_attention`` ->
  ``pixel_auc_attention`` (Grad2VAE's attention image), each also ``..._keras`` (Keras'
  200-threshold computation).
"""

from __future__ import annotations

from typing import Iterable

#: the first part of every pixel-level score's name, and of its column
PIXEL = "pixel"
PIXEL_COLUMN = "pixel_auc"

#: AUC columns that are not a score of their own: the VAEs' reconstruction score is their main
#: score again
NOT_SCORES = ("auc_reconstruction",)


def score_column(score: str) -> str:
    """The AUC column of ``score`` (see the module docstring)."""
    if score == "main":
        return "auc"
    if score == PIXEL or score.startswith(PIXEL + "_"):
        return PIXEL_COLUMN + score.removeprefix(PIXEL)
    return f"auc_{score}"


def column_score(column: str) -> str | None:
    """The score whose AUC ``column`` holds, None for a column that is none."""
    if column == "auc":
        return "main"
    if column == PIXEL_COLUMN or column.startswith(PIXEL_COLUMN + "_"):
        return PIXEL + column.removeprefix(PIXEL_COLUMN)
    if column.startswith("auc_"):
        return column.removeprefix("auc_")
    return None


def is_pixel_score(score: str) -> bool:
    return score == PIXEL or score.startswith(PIXEL + "_")


def score_columns(columns: Iterable[str], skip: Iterable[str] = NOT_SCORES) -> list[str]:
    """The AUC columns among ``columns``: ``auc`` first, the per-image scores, then the
    pixel-level ones (each group in the given order), without ``skip``."""
    columns, skip = list(columns), set(skip)
    found = [c for c in columns if column_score(c) is not None and c not in skip]
    per_image = [c for c in found if c != "auc" and not is_pixel_score(column_score(c))]
    pixel = [c for c in found if is_pixel_score(column_score(c))]
    return (["auc"] if "auc" in found else []) + per_image + pixel
