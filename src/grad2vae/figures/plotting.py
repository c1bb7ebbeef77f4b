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


#: the comparison the paper is about gets two colours no reader confuses, in colour or printed
#: in grey: Grad2VAE dark blue (relative luminance 0.16), the vanilla VAE orange (0.35); given
#: by position in seaborn's colorblind palette, whatever the other models are
FIXED_COLOURS = {"grad2vae": 0, "vae": 1}


def palette(models: list[str]) -> dict[str, Any]:
    """One colour per model: ``FIXED_COLOURS`` for Grad2VAE and the VAE, the rest of the
    colorblind palette for the others in the order given (husl when they are more)."""
    colorblind = sns.color_palette("colorblind", n_colors=10)
    fixed = {m: colorblind[i] for m, i in FIXED_COLOURS.items() if m in models}
    others = [m for m in models if m not in fixed]
    spare = [c for i, c in enumerate(colorblind) if i not in FIXED_COLOURS.values()]
    if len(others) > len(spare):  # an ablation grid has more models
        spare = sns.color_palette("husl", n_colors=len(others))
    return {**fixed, **dict(zip(others, spare))}


def no_data(ax: plt.Axes, text: str) -> None:
    """Turn ``ax`` into a panel that says why it shows nothing."""
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35"
    )
    ax.set_xticks([])
    ax.set_yticks([])
