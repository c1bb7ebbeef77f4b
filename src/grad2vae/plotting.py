"""What every figure of the pipeline shares: matplotlib without a display, one way to save a PNG
(atomically, without the matplotlib version in its metadata, so that equal figures are
byte-identical), the model colours and the "no data" panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from grad2vae.atomic import atomic_path  # noqa: E402

__all__ = ["no_data", "palette", "plt", "save_png"]


def save_png(fig: plt.Figure, path: Path, dpi: int) -> None:
    """Write ``fig`` to ``path`` as PNG (tight bounding box) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def palette(models: list[str]) -> dict[str, Any]:
    """One colour per model, in the order given."""
    # colorblind has 10 distinct colours; an ablation grid has more models
    colours = sns.color_palette(
        "colorblind" if len(models) <= 10 else "husl", n_colors=max(len(models), 4)
    )
    return {model: colours[i] for i, model in enumerate(models)}


def no_data(ax: plt.Axes, text: str) -> None:
    """Turn ``ax`` into a panel that says why it shows nothing."""
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35"
    )
    ax.set_xticks([])
    ax.set_yticks([])
